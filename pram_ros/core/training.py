"""Training the landmark recognizer on a map's own images (PRAM section 2.3): the training views
(the map images and augmented variants, keypoints labelled by the landmark of their 3D point), the
batches, and the loop. The network itself is in recognition.py.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .features import Extractor
from .params import setting, validate
from .recognition import Recognizer, RecognizerConfig, normalize_keypoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    keypoints_per_sample: int = 512  # 384 trains in 0.6x the time with higher held-out landmark accuracy,
    # but the demo map it trained no longer recognized one of test_node's frames (RESULTS.md, 2026-12-06)
    labelled_share: float = 0.7  # at most this share of a sample's keypoints carry a landmark label
    batch_size: int = 8
    steps: int = setting(0, "recognizer training steps (0: `epochs` passes over the training views, at least "
                         "min_steps); steps, not time, decide the map, whatever the machine's load",
                         range=(1, 1_000_000), zero_off=True)
    epochs: float = setting(6.0, "passes over the training views when steps is 0 (larger maps train longer)",
                            range=(0.1, 1000.0))
    min_steps: int = 400
    max_minutes: float = setting(60.0, "safety cap on training time [min] (0: none); a map it stops says so",
                                 range=(0.001, 10_000.0), zero_off=True)
    lr: float = 1e-3
    final_lr_ratio: float = 0.05  # exponential decay to this share of lr at the last step
    weight_no_landmark: float = 0.1
    seed: int = 0
    augmentations: int = setting(2, "photometric/scale variants per map image for training", range=(0, 10))
    val_every: int = 10  # every N-th map image is held out to measure recognition accuracy

    def __post_init__(self) -> None:
        validate(self)

    def planned_steps(self, views: int) -> int:
        """The steps to train for `views` training views (all processes' together)."""
        if self.steps:
            return self.steps
        return max(self.min_steps, int(np.ceil(self.epochs * views / self.batch_size)))


@dataclass
class Sample:
    """One training view: keypoints (N, 2) px, descriptors (N, D), labels (N,), image size."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    labels: np.ndarray
    size: tuple[int, int]


def _batch(samples: list[Sample], n: int, labelled_share: float, rng: np.random.Generator,
           device: torch.device) -> tuple[torch.Tensor, ...]:
    """Fixed-size random subsets (padded and masked when an image has fewer keypoints)."""
    b, dim = len(samples), samples[0].descriptors.shape[1]
    desc = np.zeros((b, n, dim), np.float32)
    kp = np.zeros((b, n, 2), np.float32)
    lab = np.full((b, n), -100, np.int64)  # ignored by the loss
    mask = np.zeros((b, n), bool)
    for i, s in enumerate(samples):
        pos, neg = np.flatnonzero(s.labels > 0), np.flatnonzero(s.labels == 0)
        n_pos = min(len(pos), int(labelled_share * n))
        n_neg = min(len(neg), n - n_pos)
        idx = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)])
        m = len(idx)
        desc[i, :m], lab[i, :m], mask[i, :m] = s.descriptors[idx], s.labels[idx], True
        w, h = s.size
        kp[i, :m] = (s.keypoints[idx] - [w / 2, h / 2]) / (max(w, h) / 2)
    t = [torch.from_numpy(x).to(device) for x in (desc, kp, lab, mask)]
    return tuple(t)


@torch.no_grad()
def accuracy(model: Recognizer, samples: list[Sample], device: torch.device) -> dict[str, float]:
    """Top-1 accuracy on labelled keypoints (landmark recognition) and on all keypoints (under
    torchrun: over every rank's samples)."""
    model.eval()
    hit_lm = n_lm = hit_all = n_all = 0
    for s in samples:
        logits = model(torch.from_numpy(s.descriptors).float()[None].to(device),
                       normalize_keypoints(torch.from_numpy(s.keypoints).float().to(device), s.size)[None])[0]
        pred = logits.argmax(-1).cpu().numpy()
        lm = s.labels > 0
        hit_lm += int((pred[lm] == s.labels[lm]).sum())
        n_lm += int(lm.sum())
        hit_all += int((pred == s.labels).sum())
        n_all += len(pred)
    hit_lm, n_lm, hit_all, n_all = np.sum(distributed.gather((hit_lm, n_lm, hit_all, n_all)), 0).tolist()
    return {"landmark_accuracy": hit_lm / max(n_lm, 1), "overall_accuracy": hit_all / max(n_all, 1),
            "labelled_keypoints": n_lm}


def train(samples: list[Sample], val: list[Sample], conf: RecognizerConfig, tc: TrainConfig = TrainConfig(),
          device: torch.device = torch.device("cpu"), progress: bool = True) -> tuple[Recognizer, dict]:
    """Train on the map's own views; returns the model and a report (loss, accuracy, time).

    Under torchrun each rank trains on its own views with DistributedDataParallel and a share of
    the batch, so the steps and the batch size are the single process's."""
    from tqdm import tqdm

    steps = tc.planned_steps(int(sum(distributed.gather(len(samples)))))
    torch.manual_seed(tc.seed)  # the same initial weights on every rank
    rng = np.random.default_rng([tc.seed, distributed.rank()])
    model = Recognizer(conf).to(device)
    net = torch.nn.parallel.DistributedDataParallel(model) if distributed.world() > 1 else model
    batch_size = max(1, tc.batch_size // distributed.world())
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=tc.final_lr_ratio ** (1 / steps))
    weight = torch.ones(conf.num_classes, device=device)
    weight[0] = tc.weight_no_landmark
    t0 = time.monotonic()
    history: list[float] = []
    order: list[int] = []
    model.train()
    bar = tqdm(range(steps), desc="train recognizer", unit="step", disable=not progress)
    for step in bar:
        if len(order) < batch_size:  # a new epoch: reshuffle
            order += rng.permutation(len(samples)).tolist()
        batch = [samples[i] for i in order[:batch_size]]
        del order[:batch_size]
        desc, kp, lab, mask = _batch(batch, tc.keypoints_per_sample, tc.labelled_share, rng, device)
        logits = net(desc, kp, mask)
        loss = F.cross_entropy(logits.reshape(-1, conf.num_classes), lab.reshape(-1), weight=weight,
                               ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-10:]):.3f}")
        over = tc.max_minutes and (time.monotonic() - t0) / 60 > tc.max_minutes and step + 1 < steps
        if distributed.any_rank(over) if distributed.world() > 1 else over:
            log.warning("recognizer training stopped by its %.1f min safety cap after %d of %d steps",
                        tc.max_minutes, step + 1, steps)
            break
    report = {"steps": len(history), "steps_planned": steps, "stopped_by_time_cap": len(history) < steps,
              "epochs": len(history) * batch_size / len(samples), "processes": distributed.world(),
              "final_loss": float(np.mean(history[-20:])), "loss": history, "train_seconds": time.monotonic() - t0,
              "parameters": sum(p.numel() for p in model.parameters())}
    report.update({f"val_{k}": v for k, v in accuracy(model, val, device).items()})
    model.eval()
    return model, report


def augment(image: np.ndarray, rng: np.random.Generator, max_side: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A photometric and geometric variant of a map image, and the homography that maps it.

    Brightness, contrast, colour cast, vignetting and noise stand in for other lighting; a random
    perspective warp with a scale change stands in for another viewpoint. `max_side`: the variant
    is rendered from the image shrunk to that longest side, as a detector resizing to it sees it
    (its noise shrunk as downscaling averages it away): a 1920 px photograph's variant cost 180 ms
    at full size, most of its training view.
    """
    h, w = image.shape[:2]
    S = np.eye(3)
    if max_side and max(h, w) > max_side:
        k = max_side / max(h, w)
        image = cv2.resize(image, (round(w * k), round(h * k)), interpolation=cv2.INTER_AREA)
        kx, ky = image.shape[1] / w, image.shape[0] / h
        S = np.array([[kx, 0, 0.5 * kx - 0.5], [0, ky, 0.5 * ky - 0.5], [0, 0, 1]])  # pixel centres
        h, w = image.shape[:2]
    noise_scale = S[0, 0]
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    img = img * rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, img.shape[2]) + rng.uniform(-30, 30)
    img = (img - img.mean()) * rng.uniform(0.7, 1.3) + img.mean()
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img *= (1 - rng.uniform(0, 0.3) * r2)[..., None]
    img += rng.normal(0, rng.uniform(1, 6) * noise_scale, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8).squeeze()
    s = rng.uniform(0.7, 1.15)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = (src + rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * [w, h]) * s
    dst -= dst.min(0)
    H = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    size = (int(np.ceil(dst[:, 0].max())), int(np.ceil(dst[:, 1].max())))
    return cv2.warpPerspective(img, H, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT), H @ S


def training_samples(images: list[np.ndarray | None], feats, keypoint_labels: list[np.ndarray], extractor: Extractor,
                     tc: TrainConfig, progress: bool = True, indices: Iterable[int] | None = None
                     ) -> tuple[list[Sample], list[Sample]]:
    """The map images' views plus `tc.augmentations` augmented ones each (features recomputed on
    the warped image, labels carried over from the original keypoints landing within 3 px), for
    the images at `indices` (default: all; under torchrun, each rank's share).
    Every `tc.val_every`-th image's view is held out for validation."""
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    rng = np.random.default_rng(tc.seed)
    train_s, val_s = [], []
    indices = list(range(len(images)) if indices is None else indices)
    for i in tqdm(indices, desc="training views", unit="img", disable=not progress):
        kp, d = feats[i]
        lab = keypoint_labels[i]
        h, w = images[i].shape[:2]
        views = [Sample(kp, d, lab, (w, h))]
        held_out = tc.val_every and i % tc.val_every == tc.val_every // 2
        for _ in range(0 if held_out else tc.augmentations):
            img, H = augment(images[i], rng, extractor.conf.resize_max)
            akp, ad = extractor(img).numpy()
            alab = np.zeros(len(akp), np.int64)
            if len(akp) and len(kp):
                warped = cv2.perspectiveTransform(kp[None].astype(np.float64), H)[0]
                dist, j = cKDTree(warped).query(akp)
                near = dist < 3.0
                alab[near] = lab[j[near]]
            views.append(Sample(akp, ad, alab, (img.shape[1], img.shape[0])))
        (val_s if held_out else train_s).extend(views)
    return train_s, val_s
