"""The landmark recognizer: a transformer over an image's sparse keypoints (PRAM section 2).

One token per keypoint (a linear projection of its descriptor); positions enter as a learnable
Fourier-feature rotary encoding of normalized keypoint coordinates, applied to queries and keys in
every layer (as in LightGlue); a linear head gives logits over 1 + K classes (0 = no landmark).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .params import setting, validate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecognizerConfig:
    descriptor_dim: int = 64
    num_classes: int = 17  # 1 + K
    hidden: int = 128
    heads: int = 4
    layers: int = 4

    def __post_init__(self) -> None:
        if self.hidden % (2 * self.heads):
            raise ValueError("hidden must be divisible by 2 * heads")

    def to_dict(self) -> dict:
        return asdict(self)


def normalize_keypoints(kpts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pixels -> [-1, 1] by the longest side, the same in training and inference."""
    w, h = size
    c = torch.tensor([w / 2, h / 2], device=kpts.device, dtype=kpts.dtype)
    return (kpts - c) / (max(w, h) / 2)


class FourierRotary(nn.Module):
    """Learnable Fourier features -> (cos, sin) for rotary position encoding."""

    def __init__(self, head_dim: int, gamma: float = 1.0) -> None:
        super().__init__()
        self.Wr = nn.Linear(2, head_dim // 2, bias=False)
        nn.init.normal_(self.Wr.weight.data, mean=0, std=gamma ** -2)

    def forward(self, xy: torch.Tensor) -> torch.Tensor:
        p = self.Wr(xy)  # (B, N, hd/2)
        emb = torch.stack([torch.cos(p), torch.sin(p)], 0).unsqueeze(-3)  # (2, B, 1, N, hd/2)
        return emb.repeat_interleave(2, dim=-1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(-1)
    return torch.stack((-x2, x1), -1).flatten(-2)


def _rotary(freqs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return t * freqs[0] + _rotate_half(t) * freqs[1]


class SelfBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.Wqkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.Wqkv(x).unflatten(-1, (self.heads, -1, 3)).transpose(1, 2)  # (B, H, N, hd, 3)
        q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
        # Contiguous heads: strided ones send attention down PyTorch's slow reference path on the
        # CPU (5x slower at 1024 keypoints; bench/recognizer_profile.py).
        q, k, v = _rotary(enc, q).contiguous(), _rotary(enc, k).contiguous(), v.contiguous()
        attn_mask = None if mask is None else mask[:, None, None, :]
        msg = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        msg = self.out(msg.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(torch.cat([x, msg], -1))


class Recognizer(nn.Module):
    """Per-keypoint logits over 1 + K landmark classes."""

    def __init__(self, conf: RecognizerConfig) -> None:
        super().__init__()
        self.conf = conf
        self.input_proj = nn.Linear(conf.descriptor_dim, conf.hidden)
        self.posenc = FourierRotary(conf.hidden // conf.heads)
        self.layers = nn.ModuleList([SelfBlock(conf.hidden, conf.heads) for _ in range(conf.layers)])
        self.head = nn.Linear(conf.hidden, conf.num_classes)

    def forward(self, desc: torch.Tensor, kpts_norm: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """desc (B, N, D), normalized keypoints (B, N, 2), optional valid mask (B, N) -> logits (B, N, C)."""
        x = self.input_proj(desc)
        enc = self.posenc(kpts_norm)
        for layer in self.layers:
            x = layer(x, enc, mask)
        return self.head(x)


@dataclass(frozen=True)
class TrainConfig:
    keypoints_per_sample: int = 512
    labelled_share: float = 0.7  # at most this share of a sample's keypoints carry a landmark label
    batch_size: int = 8
    steps: int = setting(400, "recognizer training steps: they decide the map, whatever the machine's load",
                         range=(1, 1_000_000))
    max_minutes: float = setting(60.0, "safety cap on training time [min] (0: none); a map it stops says so",
                                 range=(0.001, 10_000.0), zero_off=True)
    lr: float = 1e-3
    final_lr_ratio: float = 0.05  # exponential decay to this share of lr at the last step
    weight_no_landmark: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        validate(self)


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
    """Top-1 accuracy on labelled keypoints (landmark recognition) and on all keypoints."""
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
    return {"landmark_accuracy": hit_lm / max(n_lm, 1), "overall_accuracy": hit_all / max(n_all, 1),
            "labelled_keypoints": n_lm}


def train(samples: list[Sample], val: list[Sample], conf: RecognizerConfig, tc: TrainConfig = TrainConfig(),
          device: torch.device = torch.device("cpu"), progress: bool = True) -> tuple[Recognizer, dict]:
    """Train on the map's own views; returns the model and a report (loss, accuracy, time)."""
    from tqdm import tqdm

    torch.manual_seed(tc.seed)
    rng = np.random.default_rng(tc.seed)
    model = Recognizer(conf).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=tc.final_lr_ratio ** (1 / max(tc.steps, 1)))
    weight = torch.ones(conf.num_classes, device=device)
    weight[0] = tc.weight_no_landmark
    t0 = time.monotonic()
    history: list[float] = []
    order: list[int] = []
    model.train()
    bar = tqdm(range(tc.steps), desc="train recognizer", unit="step", disable=not progress)
    for step in bar:
        if len(order) < tc.batch_size:  # a new epoch: reshuffle
            order += rng.permutation(len(samples)).tolist()
        batch = [samples[i] for i in order[:tc.batch_size]]
        del order[:tc.batch_size]
        desc, kp, lab, mask = _batch(batch, tc.keypoints_per_sample, tc.labelled_share, rng, device)
        logits = model(desc, kp, mask)
        loss = F.cross_entropy(logits.reshape(-1, conf.num_classes), lab.reshape(-1), weight=weight,
                               ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(history[-10:]):.3f}")
        if tc.max_minutes and (time.monotonic() - t0) / 60 > tc.max_minutes and step + 1 < tc.steps:
            log.warning("recognizer training stopped by its %.1f min safety cap after %d of %d steps",
                        tc.max_minutes, step + 1, tc.steps)
            break
    report = {"steps": len(history), "steps_planned": tc.steps, "stopped_by_time_cap": len(history) < tc.steps,
              "epochs": len(history) * tc.batch_size / len(samples),
              "final_loss": float(np.mean(history[-20:])), "loss": history, "train_seconds": time.monotonic() - t0,
              "parameters": sum(p.numel() for p in model.parameters())}
    report.update({f"val_{k}": v for k, v in accuracy(model, val, device).items()})
    model.eval()
    return model, report
