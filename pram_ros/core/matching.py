"""Descriptor matching: mutual nearest neighbours with a ratio test (unit-length descriptors)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
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


def _best_per(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Index of the highest score within each group value."""
    order = np.lexsort((-score, group))
    first = np.ones(len(order), bool)
    first[1:] = group[order][1:] != group[order][:-1]
    return order[first]


def mutual_within_radius(kp: np.ndarray, desc: torch.Tensor, uv: np.ndarray, point_desc: torch.Tensor,
                         radius: float, min_similarity: float, ratio: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(keypoint, point) pairs: each other's most similar partner among those within `radius` px,
    passing a ratio test against the keypoint's second-best candidate in the radius."""
    from scipy.spatial import cKDTree

    empty = np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(kp).sparse_distance_matrix(cKDTree(uv), radius, output_type="ndarray")
    if len(pairs) == 0:
        return empty
    i, j = pairs["i"].astype(np.int64), pairs["j"].astype(np.int64)
    ti, tj = torch.from_numpy(i).to(desc.device), torch.from_numpy(j).to(desc.device)
    sim = (desc[ti] * point_desc[tj]).sum(1).float().cpu().numpy()
    order = np.lexsort((-sim, i))  # per keypoint, candidates by decreasing similarity
    i, j, sim = i[order], j[order], sim[order]
    first = np.ones(len(i), bool)
    first[1:] = i[1:] != i[:-1]
    best = np.flatnonzero(first)
    has_second = np.zeros(len(best), bool)
    second_sim = np.full(len(best), -1.0)
    nxt = best + 1
    ok_next = nxt < len(i)
    ok_next[ok_next] = i[nxt[ok_next]] == i[best[ok_next]]
    has_second[ok_next] = True
    second_sim[ok_next] = sim[nxt[ok_next]]
    d1 = np.sqrt(np.maximum(2 - 2 * sim[best], 0))
    d2 = np.sqrt(np.maximum(2 - 2 * second_sim, 0))
    keep = (sim[best] >= min_similarity) & (~has_second | (d1 <= ratio * d2))
    i, j, sim = i[best[keep]], j[best[keep]], sim[best[keep]]
    sel = _best_per(j, sim)  # the keypoint must also be its point's best
    return i[sel], j[sel]
