"""The learned matcher: IMP-style iterative matching and pose with adaptive pooling, in
LightGlue's layout (one readable model file).

Two keypoint sets (descriptors and normalized positions) go through layers of self-attention
(rotary position encoding) and cross-attention. After every layer a match head gives a soft
assignment with a dustbin: dual-softmax similarities plus a per-keypoint matchability, the
probability that a keypoint has a match at all. The two ideas of IMP:

- **Iterative pose.** After the layers in `pose_layers`, the current matches go to a geometry
  solver (`Guide`): a relative pose by the essential matrix for two images, a camera pose by PnP
  for an image against 3D points, or a homography. Its model turns into a pixel distance between
  every keypoint pair (the Sampson distance to the epipolar line, the reprojection distance, or
  the homography transfer distance), and the next cross-attention layers add a learned penalty
  of that distance to their logits: the pose guides the matching, the matching refines the pose.
- **Adaptive pooling.** At inference, keypoints whose matchability falls below
  `prune_threshold` leave the later layers (attention cost falls with the square of what remains),
  and a pair whose matches stop changing between two layers stops there.

Training (`matcher_training.py`) supervises every layer's assignment.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .recognition import FourierRotary, SelfBlock, normalize_keypoints

# A geometry solver for one pair: the current matches (M, 2) (indices into the pair's keypoints)
# -> the pixel distance (N0, N1) between every keypoint of image 0 and every keypoint of image 1
# under the model fitted to those matches, or None when no model could be fitted.
Guide = Callable[[np.ndarray], "np.ndarray | None"]
MAX_GUIDE_PX = 1e4  # distances are capped here (the penalty grows with their log anyway)


@dataclass(frozen=True)
class MatcherConfig:
    descriptor_dim: int = 64
    hidden: int = 96
    heads: int = 4
    layers: int = 5
    pose_layers: tuple[int, ...] = (2, 3)  # after these layers (1-based) the pose guides the next ones
    guide_sigma_px: float = 8.0  # scale of the geometric distance in the attention penalty
    filter_threshold: float = 0.1  # a match needs this assignment probability
    prune_threshold: float = 0.02  # inference: keypoints less matchable than this leave the later layers
    stop_agreement: float = 0.97  # inference: stop once this share of matches is unchanged by a layer

    def __post_init__(self) -> None:
        if self.hidden % (2 * self.heads):
            raise ValueError("hidden must be divisible by 2 * heads")
        if any(not 1 <= p < self.layers for p in self.pose_layers):
            raise ValueError(f"pose_layers {self.pose_layers} must lie in [1, layers - 1]")

    def to_dict(self) -> dict:
        return asdict(self)


class CrossBlock(nn.Module):
    """Bidirectional cross-attention (shared query-key projection, so both directions see the same
    similarities, as in LightGlue), with an optional additive bias (B, N0, N1) from the geometry."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.to_qk, self.to_v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(2 * dim, 2 * dim), nn.LayerNorm(2 * dim), nn.GELU(),
                                 nn.Linear(2 * dim, dim))

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, bias: torch.Tensor | None = None,
                mask0: torch.Tensor | None = None, mask1: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.unflatten(-1, (self.heads, -1)).transpose(1, 2).contiguous()

        qk0, qk1, v0, v1 = heads(self.to_qk(x0)), heads(self.to_qk(x1)), heads(self.to_v(x0)), heads(self.to_v(x1))
        # Each direction is its own attention through scaled_dot_product_attention: one shared
        # similarity matrix softmaxed along both axes ran its transposed softmax strided, with
        # copies, on the CPU (a full pass at 1024 x 1024 keypoints: 246 against 146 ms, bench/RESULTS.md)
        mask = None if bias is None else bias[:, None]
        if mask0 is not None:
            pair = mask0[:, None, :, None] & mask1[:, None, None, :]
            mask = (0.0 if mask is None else mask) + (~pair).float() * -1e4
        m0 = F.scaled_dot_product_attention(qk0, qk1, v1, attn_mask=mask)
        m1 = F.scaled_dot_product_attention(qk1, qk0, v0, attn_mask=None if mask is None else mask.transpose(-1, -2))

        def update(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            m = self.out(m.transpose(1, 2).flatten(-2))
            return x + self.ffn(torch.cat([x, m], -1))

        return update(x0, m0), update(x1, m1)


class MatchHead(nn.Module):
    """Log assignment (B, N0 + 1, N1 + 1): dual softmax of the similarities plus each keypoint's
    log matchability; the last row and column are the dustbins (log of 'no match')."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.matchability = nn.Linear(dim, 1)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, mask0: torch.Tensor | None = None,
                mask1: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = x0.shape[-1]
        sim = self.proj(x0) @ self.proj(x1).transpose(-1, -2) / d ** 0.5
        if mask0 is not None:
            sim = sim.masked_fill(~(mask0[:, :, None] & mask1[:, None, :]), -1e4)
        z0, z1 = self.matchability(x0).squeeze(-1), self.matchability(x1).squeeze(-1)
        scores = (F.log_softmax(sim, 2) + F.log_softmax(sim, 1)
                  + F.logsigmoid(z0)[:, :, None] + F.logsigmoid(z1)[:, None, :])
        b, n0, n1 = sim.shape
        out = sim.new_full((b, n0 + 1, n1 + 1), 0.0)
        out[:, :n0, :n1] = scores
        out[:, :n0, -1] = F.logsigmoid(-z0)
        out[:, -1, :n1] = F.logsigmoid(-z1)
        return out, torch.sigmoid(z0), torch.sigmoid(z1)


def assignment_matches(scores: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Mutual best pairs of one log assignment (N0 + 1, N1 + 1) with probability >= threshold:
    (index pairs (M, 2), their probabilities (M,))."""
    p = scores[:-1, :-1]
    if p.numel() == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    best0, best1 = p.argmax(1), p.argmax(0)
    i0 = torch.arange(len(best0), device=p.device)
    prob = p[i0, best0].exp()
    ok = (best1[best0] == i0) & (prob >= threshold)
    return (torch.stack([i0[ok], best0[ok]], 1).cpu().numpy(), prob[ok].detach().cpu().float().numpy())


class Matcher(nn.Module):
    """Matches two keypoint sets; see the module docstring."""

    def __init__(self, conf: MatcherConfig = MatcherConfig()) -> None:
        super().__init__()
        self.conf = conf
        self.input_proj = nn.Linear(conf.descriptor_dim, conf.hidden)
        self.posenc = FourierRotary(conf.hidden // conf.heads)
        self.self_blocks = nn.ModuleList([SelfBlock(conf.hidden, conf.heads) for _ in range(conf.layers)])
        self.cross_blocks = nn.ModuleList([CrossBlock(conf.hidden, conf.heads) for _ in range(conf.layers)])
        self.heads = nn.ModuleList([MatchHead(conf.hidden) for _ in range(conf.layers)])
        # how strongly each layer's attention follows the geometry (softplus of it); used only by
        # the layers after the first pose
        self.guide_weight = nn.Parameter(torch.zeros(conf.layers))

    def guide_bias(self, layer: int, distance_px: torch.Tensor) -> torch.Tensor:
        """Attention penalty of a pixel distance in `layer`: bounded growth, so that a wrong pose
        cannot silence the attention entirely."""
        return -F.softplus(self.guide_weight[layer]) * torch.log1p((distance_px / self.conf.guide_sigma_px) ** 2)

    def forward(self, desc0: torch.Tensor, kpts0: torch.Tensor, desc1: torch.Tensor, kpts1: torch.Tensor,
                guides: list[Guide | None] | None = None, mask0: torch.Tensor | None = None,
                mask1: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Training and batched use: every layer's log assignment (B, N0 + 1, N1 + 1).

        desc (B, N, D) and normalized positions kpts (B, N, 2) per side; guides one solver per pair
        (None: no pose feedback); masks (B, N) mark the real keypoints of a batch padded at the end."""
        x0, x1 = self.input_proj(desc0), self.input_proj(desc1)
        enc0, enc1 = self.posenc(kpts0), self.posenc(kpts1)
        dist = None
        out = []
        for layer in range(self.conf.layers):
            x0 = self.self_blocks[layer](x0, enc0, mask0)
            x1 = self.self_blocks[layer](x1, enc1, mask1)
            bias = None if dist is None else self.guide_bias(layer, dist)
            x0, x1 = self.cross_blocks[layer](x0, x1, bias, mask0, mask1)
            scores, _, _ = self.heads[layer](x0, x1, mask0, mask1)
            out.append(scores)
            if guides is not None and layer + 1 in self.conf.pose_layers:
                dist = self._distances(scores, guides, mask0, mask1)
        return out

    def _distances(self, scores: torch.Tensor, guides: list[Guide | None], mask0: torch.Tensor | None,
                   mask1: torch.Tensor | None) -> torch.Tensor | None:
        """Each pair's geometric distances (B, N0, N1) under the model of its current matches (no
        gradient through the solver); 0 (no penalty) for a pair without a model and for padding,
        None when no pair has a model."""
        b, n0, n1 = scores.shape[0], scores.shape[1] - 1, scores.shape[2] - 1
        dist = torch.zeros((b, n0, n1), device=scores.device)
        found = False
        for i, guide in enumerate(guides):
            if guide is None:
                continue
            s = scores[i].detach()
            if mask0 is not None:  # the real keypoints come first
                s = s[torch.cat([mask0[i], mask0.new_ones(1)])][:, torch.cat([mask1[i], mask1.new_ones(1)])]
            m, _ = assignment_matches(s, self.conf.filter_threshold)
            d = guide(m) if len(m) >= 8 else None
            if d is not None:
                dist[i, :d.shape[0], :d.shape[1]] = torch.from_numpy(np.minimum(d, MAX_GUIDE_PX)).to(dist)
                found = True
        return dist if found else None

    @torch.no_grad()
    def match(self, desc0: torch.Tensor, kp_px0: np.ndarray, size0: tuple[int, int], desc1: torch.Tensor,
              kp_px1: np.ndarray, size1: tuple[int, int], guide: Guide | None = None,
              adaptive: bool = True) -> tuple[np.ndarray, np.ndarray, int]:
        """One pair at inference: (index pairs (M, 2), probabilities (M,), layers run).

        With `adaptive`, unmatchable keypoints are pruned after each layer and the pair stops when
        a layer leaves the matches unchanged (`stop_agreement`)."""
        dev = desc0.device
        k0 = normalize_keypoints(torch.as_tensor(kp_px0, dtype=torch.float32, device=dev), size0)[None]
        k1 = normalize_keypoints(torch.as_tensor(kp_px1, dtype=torch.float32, device=dev), size1)[None]
        x0, x1 = self.input_proj(desc0[None].float()), self.input_proj(desc1[None].float())
        enc0, enc1 = self.posenc(k0), self.posenc(k1)
        idx0 = torch.arange(x0.shape[1], device=dev)  # the original keypoints that remain
        idx1 = torch.arange(x1.shape[1], device=dev)
        dist, previous = None, None
        pairs, prob = np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
        for layer in range(self.conf.layers):
            x0 = self.self_blocks[layer](x0, enc0)
            x1 = self.self_blocks[layer](x1, enc1)
            bias = None if dist is None else self.guide_bias(layer, dist[idx0][:, idx1])[None]
            x0, x1 = self.cross_blocks[layer](x0, x1, bias)
            scores, p0, p1 = self.heads[layer](x0, x1)
            m, prob = assignment_matches(scores[0], self.conf.filter_threshold)
            pairs = np.stack([idx0.cpu().numpy()[m[:, 0]], idx1.cpu().numpy()[m[:, 1]]], 1)
            current = set(map(tuple, pairs.tolist()))
            if adaptive and previous is not None and current and \
                    len(current & previous) >= self.conf.stop_agreement * max(len(current), len(previous)):
                return pairs, prob, layer + 1
            previous = current
            if guide is not None and layer + 1 in self.conf.pose_layers and len(pairs) >= 8:
                d = guide(pairs)
                dist = dist if d is None else torch.from_numpy(np.minimum(d, MAX_GUIDE_PX)).float().to(dev)
            if adaptive:
                keep0, keep1 = p0[0] >= self.conf.prune_threshold, p1[0] >= self.conf.prune_threshold
                if keep0.sum() >= 8 and keep1.sum() >= 8:
                    x0, enc0, idx0 = x0[:, keep0], enc0[..., keep0, :], idx0[keep0]
                    x1, enc1, idx1 = x1[:, keep1], enc1[..., keep1, :], idx1[keep1]
        return pairs, prob, self.conf.layers
