"""Tracking by optical flow: the last SIFT fit's inlier keypoints followed into new images.

While the track holds, a frame does not need new SIFT keypoints to find where the fine points it
was just fit to lie: pyramidal Lucas-Kanade finds them again, sub-pixel, in a few milliseconds,
where SIFT at full resolution takes 40-60 ms (bench/RESULTS.md). The keypoints are followed from
the keyframe (the last frame fit to SIFT keypoints) to each new frame, not from frame to frame, so
their errors do not add up along the track; the search starts where the fine points project under
the predicted pose, so a fast motion (or dropped frames) starts near its answer. Each track must
also lead back to its keypoint (forward-backward check), which drops tracks that slid along an
edge or onto an occluder. When too few of the keyframe's points survive as inliers, the next frame
goes back to SIFT and becomes the new keyframe.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .params import setting, validate


@dataclass(frozen=True)
class FlowConfig:
    enabled: bool = setting(True, "while tracking, follow the last SIFT fit's keypoints by optical flow instead "
                            "of extracting SIFT on every frame")
    window_px: int = 15  # Lucas-Kanade window: the keyframe's patches deform as the view moves on, and a
    # smaller window is biased less by that (on the demo, 21 px left the tracked poses 15% less precise)
    levels: int = 3  # pyramid levels above the image: the search reaches about 2^levels windows
    max_back_px: float = 1.0  # a track must lead back within this of its keypoint (forward-backward)
    min_kept: float = 0.8  # once fewer than this share of the keyframe's points are inliers, the next
    # frame extracts SIFT again and becomes the keyframe (the view has moved on)

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class Keyframe:
    image: np.ndarray  # greyscale
    uv: np.ndarray  # (M, 2) float32: the keypoints of its fit's inliers
    point_ids: np.ndarray  # (M,) their fine points

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)"""
        return self.image.shape[1], self.image.shape[0]


class FlowTracker:
    """Holds the keyframe and follows its keypoints into new greyscale images."""

    def __init__(self, conf: FlowConfig = FlowConfig()) -> None:
        self.conf = conf
        self.key: Keyframe | None = None
        self._criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 30, 0.01)

    def set_keyframe(self, gray: np.ndarray, uv: np.ndarray, point_ids: np.ndarray) -> None:
        self.key = Keyframe(gray.copy(), np.ascontiguousarray(uv, np.float32), np.asarray(point_ids))

    def reset(self) -> None:
        self.key = None

    def ready(self, gray: np.ndarray) -> bool:
        return self.key is not None and self.key.size == (gray.shape[1], gray.shape[0])

    def track(self, gray: np.ndarray, predicted_uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into the keyframe's points, their positions in `gray`) of the tracks that hold,
        searched from `predicted_uv` (the points projected under the predicted pose; NaN: start
        from the keyframe's position)."""
        key, c = self.key, self.conf
        assert key is not None
        start = np.where(np.isfinite(predicted_uv), predicted_uv, key.uv).astype(np.float32)
        win = (c.window_px, c.window_px)
        flags = cv2.OPTFLOW_USE_INITIAL_FLOW
        fwd, ok, _ = cv2.calcOpticalFlowPyrLK(key.image, gray, key.uv, start, winSize=win,
                                              maxLevel=c.levels, criteria=self._criteria, flags=flags)
        back, ok_back, _ = cv2.calcOpticalFlowPyrLK(gray, key.image, fwd, key.uv.copy(), winSize=win,
                                                    maxLevel=c.levels, criteria=self._criteria, flags=flags)
        w, h = key.size
        good = ok.ravel().astype(bool) & ok_back.ravel().astype(bool) & \
            (np.linalg.norm(back - key.uv, axis=1) < c.max_back_px) & \
            (fwd[:, 0] >= 0) & (fwd[:, 1] >= 0) & (fwd[:, 0] <= w - 1) & (fwd[:, 1] <= h - 1)
        idx = np.flatnonzero(good)
        return idx, fwd[idx].astype(np.float64)
