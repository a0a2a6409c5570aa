"""Landmarks of a map: BIRCH clusters of well-observed 3D points, one descriptor per point, and
virtual reference frames (VRFs) that cover each landmark (PRAM section 1, steps 2 to 5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from sklearn.cluster import Birch

from .params import setting, validate

if TYPE_CHECKING:
    from .sfm import SfmResult


@dataclass(frozen=True)
class LandmarkConfig:
    num_landmarks: int = setting(0, "number of landmarks K (0: chosen from the map's size)", range=(1, 512),
                                 zero_off=True)
    min_track: int = 3  # points seen in fewer images are not landmarks' points
    points_per_landmark: int = 400  # the adaptive rule's target
    min_landmarks: int = 8
    max_landmarks: int = 512
    vrf_coverage: float = 0.9  # greedy cover stops at this share of the landmark's points,
    vrf_min_gain: float = 0.01  # or when an image adds less than this share,
    max_vrfs: int = 10  # or at this many images
    sparsify_radius_px: float = 15.0

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class Observations:
    """Tracks of the kept points: point index, image index and keypoint index of each observation."""

    point: np.ndarray
    image: np.ndarray
    keypoint: np.ndarray


def well_observed(result: SfmResult, min_track: int) -> tuple[np.ndarray, Observations]:
    """The points of a reconstruction seen in at least `min_track` images, and their observations
    (point indices renumbered among the kept points)."""
    keep = result.track_lengths() >= min_track
    new_index = np.cumsum(keep) - 1
    seen = keep[result.track_point]
    return result.points[keep], Observations(new_index[result.track_point[seen]], result.track_image[seen],
                                             result.track_keypoint[seen])


def choose_k(num_points: int, conf: LandmarkConfig) -> int:
    """K from the map's size: about `points_per_landmark` points each, within [min, max].

    The reference fixes K per scene type (16 indoor, 32 outdoor, 512 city); tying K to the number
    of well-observed points scales the same way, since larger places yield more points.
    """
    if conf.num_landmarks:
        return conf.num_landmarks
    return int(np.clip(round(num_points / conf.points_per_landmark), conf.min_landmarks, conf.max_landmarks))


def ground_plane_coords(points: np.ndarray, camera_centres: np.ndarray) -> np.ndarray:
    """2D coordinates of points on the plane the cameras move in (drops the 'vertical' axis).

    The vertical is the normal of the camera centres' best-fit plane (a robot drives on a floor,
    a hand-held capture circles an object); it is z when the centres are nearly collinear.
    """
    c = camera_centres - camera_centres.mean(0)
    _, s, vt = np.linalg.svd(c, full_matrices=False)
    if len(c) < 3 or s[1] < 1e-6 * max(s[0], 1e-12):
        return points[:, :2].copy()
    normal = vt[2]
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) > 0.95:  # an axis-aligned vertical (a z-up map frame): keep the map's axes
        return np.delete(points, axis, axis=1)
    return (points - camera_centres.mean(0)) @ vt[:2].T


def cluster(points: np.ndarray, camera_centres: np.ndarray, k: int) -> np.ndarray:
    """Labels 1..K (0 is reserved for 'no landmark') of points by BIRCH on the ground plane."""
    xy = ground_plane_coords(points, camera_centres)
    k = min(k, len(points))
    extent = float(np.linalg.norm(xy.max(0) - xy.min(0))) or 1.0
    labels = Birch(threshold=extent / 500, n_clusters=k).fit_predict(xy)
    # Relabel by size so that label 1 is the largest landmark; drop empty ids.
    order = np.argsort(-np.bincount(labels))
    remap = np.zeros(labels.max() + 1, np.int64)
    remap[order] = np.arange(1, len(order) + 1)
    return remap[labels].astype(np.int32)


def medoid_descriptors(obs: Observations, descriptors: list[np.ndarray], num_points: int) -> np.ndarray:
    """One descriptor per point: the observation with the smallest median distance to the others."""
    dim = descriptors[0].shape[1]
    out = np.zeros((num_points, dim), np.float32)
    order = np.argsort(obs.point, kind="stable")
    bounds = np.searchsorted(obs.point[order], np.arange(num_points + 1))
    for p in range(num_points):
        sel = order[bounds[p]:bounds[p + 1]]
        d = np.stack([descriptors[i][k] for i, k in zip(obs.image[sel], obs.keypoint[sel])])
        if len(d) <= 2:
            out[p] = d[0]
            continue
        dist = np.sqrt(np.maximum(2 - 2 * d @ d.T, 0))
        out[p] = d[np.argmin(np.median(dist, 1))]
    return out


def landmark_views(labels: np.ndarray, obs: Observations) -> dict[int, dict[int, np.ndarray]]:
    """For each landmark, the points of it that each image observes (in observation order).

    One pass over the observations, so that the VRF steps below cost what the landmark's own
    observations cost, not what the whole map's do."""
    lm_of = labels[obs.point]
    order = np.lexsort((obs.image, lm_of))  # by landmark, then image; stable within
    lm_sorted, img_sorted = lm_of[order], obs.image[order]
    cuts = np.flatnonzero((np.diff(lm_sorted) != 0) | (np.diff(img_sorted) != 0)) + 1
    out: dict[int, dict[int, np.ndarray]] = {}
    for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(order)]):
        out.setdefault(int(lm_sorted[lo]), {})[int(img_sorted[lo])] = obs.point[order[lo:hi]]
    return out


def greedy_vrfs(labels: np.ndarray, views: dict[int, dict[int, np.ndarray]],
                conf: LandmarkConfig) -> list[tuple[int, int]]:
    """(landmark, image) VRFs: per landmark, images chosen greedily to cover its points."""
    sizes = np.bincount(labels)
    out = []
    for lm in sorted(views):
        img_pts = {i: set(p.tolist()) for i, p in views[lm].items()}
        covered: set[int] = set()
        chosen = 0
        while len(covered) < conf.vrf_coverage * sizes[lm] and img_pts and chosen < conf.max_vrfs:
            best = max(img_pts, key=lambda i: (len(img_pts[i] - covered), -i))
            gain = len(img_pts[best] - covered)
            if gain < max(1, conf.vrf_min_gain * sizes[lm]):
                break
            covered |= img_pts.pop(best)
            out.append((lm, best))
            chosen += 1
    return out


def vrf_points(vrfs: list[tuple[int, int]], views: dict[int, dict[int, np.ndarray]], points: np.ndarray,
               project, conf: LandmarkConfig) -> list[np.ndarray]:
    """Points of each VRF: its own observed landmark points, plus points of the landmark seen by
    the (up to 5) images that share the most of them, when they do not project within
    `sparsify_radius_px` of a point already kept."""
    out = []
    for lm, img in vrfs:
        seen = views[lm]
        own = seen[img]
        shared = sorted(((-len(np.intersect1d(pts, own)), j) for j, pts in seen.items() if j != img))
        kept = list(own)
        grid = _Grid(conf.sparsify_radius_px)
        for q in project(img, points[own]):
            grid.add(q)
        for count, j in shared[:5]:
            if count == 0:
                break
            cand = np.setdiff1d(seen[j], kept)
            if not len(cand):
                continue
            uv = project(img, points[cand])
            ok = np.isfinite(uv).all(1)
            for p, q in zip(cand[ok], uv[ok]):
                if grid.free(q):
                    kept.append(p)
                    grid.add(q)
        out.append(np.array(sorted(kept), np.int64))
    return out


class _Grid:
    """Image points hashed into cells of the sparsification radius: 'is any kept point within r of
    q' looks at 3 x 3 cells instead of every kept point."""

    def __init__(self, radius: float) -> None:
        self.r2, self.cell = radius ** 2, max(radius, 1e-9)
        self.cells: dict[tuple[int, int], list[np.ndarray]] = {}

    def _key(self, q: np.ndarray) -> tuple[int, int]:
        return int(np.floor(q[0] / self.cell)), int(np.floor(q[1] / self.cell))

    def add(self, q: np.ndarray) -> None:
        if np.isfinite(q).all():
            self.cells.setdefault(self._key(q), []).append(q)

    def free(self, q: np.ndarray) -> bool:
        cx, cy = self._key(q)
        return all(np.sum((k - q) ** 2) > self.r2
                   for dx in (-1, 0, 1) for dy in (-1, 0, 1) for k in self.cells.get((cx + dx, cy + dy), ()))
