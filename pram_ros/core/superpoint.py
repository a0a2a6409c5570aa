"""SuperPoint (DeTone et al., 2018): the standard architecture, decoding on the device.

State-dict keys match MagicLeap's `superpoint_v1.pth` (conv1a ... conv4b, convPa, convPb, convDa,
convDb). No weights ship with pram_ros: MagicLeap's licence is non-commercial, so users supply the
file themselves (see `weights_path`).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

DEFAULT_WEIGHTS = Path(os.environ.get("PRAM_ROS_WEIGHTS_DIR", Path.home() / ".local/share/pram_ros/weights")) \
    / "superpoint_v1.pth"


def _shapes() -> dict[str, tuple[int, ...]]:
    """Expected state-dict layout (MagicLeap)."""
    c1, c2, c3, c4, c5 = 64, 64, 128, 128, 256
    convs = {"conv1a": (c1, 1, 3), "conv1b": (c1, c1, 3), "conv2a": (c2, c1, 3), "conv2b": (c2, c2, 3),
             "conv3a": (c3, c2, 3), "conv3b": (c3, c3, 3), "conv4a": (c4, c3, 3), "conv4b": (c4, c4, 3),
             "convPa": (c5, c4, 3), "convPb": (65, c5, 1), "convDa": (c5, c4, 3), "convDb": (256, c5, 1)}
    out = {}
    for name, (o, i, k) in convs.items():
        out[f"{name}.weight"] = (o, i, k, k)
        out[f"{name}.bias"] = (o,)
    return out


class SuperPoint(nn.Module):
    """Greyscale [0, 1] images (B, 1, H, W) -> per image keypoints, scores, unit descriptors."""

    def __init__(self, max_keypoints: int = 1024, detection_threshold: float = 0.005, nms_radius: int = 4,
                 border: int = 4) -> None:
        super().__init__()
        self.max_keypoints, self.threshold = max_keypoints, detection_threshold
        self.nms_radius, self.border = nms_radius, border
        for name, shape in _shapes().items():
            if name.endswith(".weight"):
                o, i, k, _ = shape
                setattr(self, name[:-7], nn.Conv2d(i, o, k, padding=k // 2))
        self.pool = nn.MaxPool2d(2, 2)

    def dense(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score map (B, H, W) and descriptor map (B, 256, H/8, W/8)."""
        r = F.relu
        x = r(self.conv1b(r(self.conv1a(x))))
        x = self.pool(x)
        x = r(self.conv2b(r(self.conv2a(x))))
        x = self.pool(x)
        x = r(self.conv3b(r(self.conv3a(x))))
        x = self.pool(x)
        x = r(self.conv4b(r(self.conv4a(x))))
        logits = self.convPb(r(self.convPa(x)))
        desc = F.normalize(self.convDb(r(self.convDa(x))), dim=1)
        return decode_scores(logits), desc

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        scores, desc = self.dense(x)
        scores = nms(scores, self.nms_radius)
        b = self.border
        if b:
            scores[:, :b] = scores[:, -b:] = 0
            scores[:, :, :b] = scores[:, :, -b:] = 0
        out = []
        for s, d in zip(scores, desc):
            ys, xs = torch.nonzero(s > self.threshold, as_tuple=True)
            sc = s[ys, xs]
            if sc.numel() > self.max_keypoints:
                sc, top = torch.topk(sc, self.max_keypoints)
                ys, xs = ys[top], xs[top]
            else:
                sc, order = torch.sort(sc, descending=True)
                ys, xs = ys[order], xs[order]
            kpts = torch.stack([xs, ys], 1).float()
            out.append({"keypoints": kpts, "scores": sc, "descriptors": sample_descriptors(kpts, d, 8)})
        return out


def decode_scores(logits: torch.Tensor) -> torch.Tensor:
    """Detector head (B, 65, h, w) -> full-resolution keypoint probabilities (B, 8h, 8w)."""
    prob = F.softmax(logits, 1)[:, :-1]  # drop the 'no keypoint' dustbin
    b, _, h, w = prob.shape
    return prob.permute(0, 2, 3, 1).reshape(b, h, w, 8, 8).permute(0, 1, 3, 2, 4).reshape(b, h * 8, w * 8)


def nms(scores: torch.Tensor, radius: int) -> torch.Tensor:
    """Keep local maxima within a (2r+1) window (SuperGlue's NMS); survivors are over r pixels apart."""
    def pool(x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(x[:, None], kernel_size=2 * radius + 1, stride=1, padding=radius)[:, 0]

    zeros = torch.zeros_like(scores)
    keep = scores == pool(scores)
    for _ in range(2):  # suppress neighbours of kept maxima, then recover maxima they hid
        supp = pool(keep.float()) > 0
        supp_scores = torch.where(supp, zeros, scores)
        keep = keep | ((supp_scores == pool(supp_scores)) & ~supp)
    return torch.where(keep, scores, zeros)


def sample_descriptors(kpts: torch.Tensor, desc: torch.Tensor, s: int) -> torch.Tensor:
    """Bilinear descriptors (N, C) at pixel keypoints from a (C, h, w) map of cell size s."""
    c, h, w = desc.shape
    pos = (kpts - s / 2 + 0.5) / torch.tensor([w * s - s / 2 - 0.5, h * s - s / 2 - 0.5], device=kpts.device)
    grid = (pos * 2 - 1).view(1, 1, -1, 2)
    d = F.grid_sample(desc[None], grid, mode="bilinear", align_corners=True)
    return F.normalize(d.reshape(c, -1).t(), dim=1)


def load_superpoint_weights(path: Path | None = None) -> dict[str, torch.Tensor]:
    """A checked MagicLeap-layout state dict (torch.load with weights_only: nothing is unpickled)."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(
            f"SuperPoint weights not found at {path}. pram_ros bundles none: MagicLeap's "
            f"superpoint_v1.pth is under a non-commercial licence. Obtain it yourself and put it at "
            f"{DEFAULT_WEIGHTS} (or set PRAM_ROS_WEIGHTS_DIR, or the 'weights' feature option), or use "
            f"features 'xfeat' (weights included).")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path} is not a loadable torch state dict: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = _shapes()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if not isinstance(state[k], torch.Tensor) or tuple(state[k].shape) != expected[k])
    if missing or extra or wrong:
        raise ValueError(
            f"{path} is not a MagicLeap SuperPoint state dict (expected keys conv1a..conv4b, convPa, convPb, "
            f"convDa, convDb): missing {missing[:6]}, unexpected {extra[:6]}, wrong shape {wrong[:6]}")
    return {k: v.float() for k, v in state.items()}
