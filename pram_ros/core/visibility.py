"""Which map points a camera pose can see, at a cost that follows the points near the camera, not
the size of the map.

Refinement and tracking match an image against the map points that project into it. Projecting
every point of a building-sized map costs milliseconds per call, and without occlusion the points
of rooms far behind a wall also "project into view" and swell the matching. Three tests keep the
set local:
- depth: no point farther than the map's own images saw their points (`max_depth`, the 99.5th
  percentile of the VRF points' depths in their VRF images);
- landmarks: a landmark's points are projected only when its bounding sphere reaches in front of
  the camera and within that depth;
- facing: a point is seen from the side its VRF images saw it from (the angle between the viewing
  ray and the mean of theirs is below 90 degrees): the back of a wall is not in view.
"""
from __future__ import annotations

import numpy as np

from .camera import Camera
from .map import PramMap


class PointsInView:
    """Points in front of a pose, within a viewing depth, facing it, projecting into the image."""

    DEPTH_PERCENTILE = 99.5  # of the depths at which the map's VRF images see their points

    def __init__(self, points: np.ndarray, labels: np.ndarray, seen_along: np.ndarray, max_depth: float) -> None:
        """`labels` group the points for culling (a landmark's, any grouping of nearby points);
        `seen_along` is each point's mean viewing direction (zero: seen from anywhere)."""
        self.points = np.asarray(points, np.float64)
        self.max_depth = max_depth
        self.seen_along = np.asarray(seen_along, np.float64)
        order = np.argsort(labels, kind="stable")
        bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2 if len(order) else 1))
        self.groups = [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        self.centres = np.array([self.points[g].mean(0) for g in self.groups]).reshape(-1, 3)
        self.radii = np.array([np.linalg.norm(self.points[g] - c, axis=1).max()
                               for g, c in zip(self.groups, self.centres)])

    @classmethod
    def of_map(cls, m: PramMap) -> "PointsInView":
        """The map's points, grouped by landmark, seen along their VRF images' rays."""
        return cls(m.points, m.labels, cls._viewing_directions(m), cls.viewing_depth(m))

    @classmethod
    def viewing_depth(cls, m: PramMap) -> float:
        """How far the map's images see: a percentile of the VRF points' depths (inf: no VRFs)."""
        depths = []
        for v in range(len(m.vrf_frame)):
            T = m.frame_T[m.vrf_frame[v]]  # map <- camera
            depths.append((m.points[m.vrf_point_ids(v)] - T[:3, 3]) @ T[:3, 2])
        d = np.concatenate(depths) if depths else np.zeros(0)
        d = d[d > 0]
        return float(np.percentile(d, cls.DEPTH_PERCENTILE)) if len(d) else np.inf

    @staticmethod
    def _viewing_directions(m: PramMap) -> np.ndarray:
        """Per point, the sum of the unit rays from the VRF images that hold it ((0, 0, 0): none)."""
        points = m.points.astype(np.float64)
        out = np.zeros_like(points)
        for v in range(len(m.vrf_frame)):
            ids = m.vrf_point_ids(v)
            ray = points[ids] - m.frame_T[m.vrf_frame[v]][:3, 3]
            np.add.at(out, ids, ray / np.maximum(np.linalg.norm(ray, axis=1, keepdims=True), 1e-12))
        return out

    def __call__(self, T_camera_map: np.ndarray, camera: Camera, margin: float = 0.0) -> np.ndarray:
        """Indices of the points in view of `T_camera_map` (projecting within the image + margin px)."""
        R, t = T_camera_map[:3, :3], T_camera_map[:3, 3]
        centre_cam = self.centres @ R.T + t
        near = (centre_cam[:, 2] + self.radii > 0) & \
               (np.linalg.norm(centre_cam, axis=1) - self.radii <= self.max_depth)
        if not near.any():
            return np.zeros(0, np.int64)
        idx = np.concatenate([self.groups[i] for i in np.flatnonzero(near)])
        centre = -R.T @ t
        facing = np.einsum("ij,ij->i", self.points[idx] - centre, self.seen_along[idx]) >= 0
        idx = idx[facing]
        p = self.points[idx] @ R.T + t
        idx, p = idx[p[:, 2] <= self.max_depth], p[p[:, 2] <= self.max_depth]
        uv, front = camera.project(p)
        return np.sort(idx[front & camera.contains(uv, margin)])
