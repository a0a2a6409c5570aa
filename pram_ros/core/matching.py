"""Descriptor matching: mutual nearest neighbours with a ratio test (unit-length descriptors)."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MatchConfig:
    ratio: float = 0.9  # best / second-best distance; 1 disables the test
    min_similarity: float = 0.5  # cosine similarity floor of a match

    def __post_init__(self) -> None:
        if not 0 < self.ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {self.ratio}")


def mutual_nn(d0: torch.Tensor, d1: torch.Tensor, conf: MatchConfig = MatchConfig()) -> torch.Tensor:
    """Index pairs (M, 2) of mutual nearest neighbours between descriptor sets (N0, D) and (N1, D)."""
    if d0.shape[0] == 0 or d1.shape[0] == 0:
        return torch.zeros((0, 2), dtype=torch.long, device=d0.device)
    sim = d0 @ d1.t()
    k = min(2, sim.shape[1])
    top, idx01 = sim.topk(k, dim=1)
    # Mutual check for the chosen points only: an argmax over every column of a wide matrix costs
    # more on the CPU than recomputing the chosen points' similarities (1024 x 10,000: 9 vs 2 ms).
    cols, inverse = idx01[:, 0].unique(return_inverse=True)
    idx10 = (d1[cols] @ d0.t()).argmax(1)[inverse]
    i0 = torch.arange(sim.shape[0], device=sim.device)
    ok = (idx10 == i0) & (top[:, 0] >= conf.min_similarity)
    if k == 2 and conf.ratio < 1:
        # distances of unit vectors: d^2 = 2 - 2 sim
        dist = (2 - 2 * top.clamp(max=1)).clamp(min=0).sqrt()
        ok &= dist[:, 0] <= conf.ratio * dist[:, 1]
    return torch.stack([i0[ok], idx01[ok, 0]], 1)

