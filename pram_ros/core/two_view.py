"""Two-view geometry for the matcher: relative pose from matches (essential matrix, RANSAC), its
error against the truth and the AUC of those errors (as the matcher literature reports it), and
the geometric guides the matcher's iterative pose uses (matcher.py: `Guide`).
"""
from __future__ import annotations

import cv2
import numpy as np
import poselib

from .camera import Camera
from .geometry import essential, rotation_error_deg
from .registration import RegistrationConfig, estimate_pose


def relative_pose(kp0: np.ndarray, kp1: np.ndarray, cam0: Camera, cam1: Camera,
                  thresh_px: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(R, unit t, inlier mask) of camera 1 relative to camera 0 (x1 = R x0 + t) from matched
    pixels, by the essential matrix with RANSAC; None with fewer than 5 matches or no model."""
    if len(kp0) < 5:
        return None
    n0, n1 = cam0.normalize(kp0), cam1.normalize(kp1)
    f = np.mean([cam0.fx, cam0.fy, cam1.fx, cam1.fy])
    E, mask = cv2.findEssentialMat(n0, n1, np.eye(3), method=cv2.RANSAC, prob=0.99999, threshold=thresh_px / f)
    if E is None:
        return None
    best = None
    for e in E.reshape(-1, 3, 3):  # several solutions: keep the one most points agree with
        n, R, t, m = cv2.recoverPose(e, n0, n1, np.eye(3), mask=mask.copy())
        if best is None or n > best[0]:
            best = (n, R, t.ravel() / max(np.linalg.norm(t), 1e-12), m.ravel() > 0)
    return best[1], best[2], best[3]


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    cos = np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12)
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def pose_error_deg(R: np.ndarray, t: np.ndarray, T_1_0: np.ndarray) -> float:
    """max(rotation error, angle between translation directions) in degrees against the true
    T_1_0 (camera 0 -> camera 1). The translation direction's sign counts as either (min of the
    angle and 180 minus it), as in SuperGlue's and IMP's evaluation, so the AUCs compare."""
    R_err = rotation_error_deg(R, T_1_0[:3, :3])
    t_err = angle_deg(t, T_1_0[:3, 3])
    return max(R_err, min(t_err, 180.0 - t_err))


def pose_auc(errors_deg: list[float] | np.ndarray, thresholds: tuple[float, ...] = (5.0, 10.0, 20.0)) -> list[float]:
    """Area under the recall-vs-error curve up to each threshold, normalized to [0, 1] (a pair
    with no pose counts as an infinite error)."""
    e = np.sort(np.asarray(errors_deg, float))
    recall = (np.arange(len(e)) + 1) / max(len(e), 1)
    e, recall = np.r_[0.0, e], np.r_[0.0, recall]
    out = []
    for t in thresholds:
        last = np.searchsorted(e, t)
        x = np.r_[e[:last], t]
        y = np.r_[recall[:last], recall[last - 1]]
        out.append(float(np.trapezoid(y, x) / t))
    return out


def epipolar_guide(kp0: np.ndarray, kp1: np.ndarray, cam0: Camera, cam1: Camera, thresh_px: float = 2.0):
    """Guide for two images: the relative pose of the current matches (PoseLib's five-point
    LO-RANSAC: 24 ms for about 500 fox matches, where OpenCV's essential matrix took 56), and every
    keypoint pair's Sampson distance to its epipolar geometry (pixels at the cameras' mean focal
    length; float32, as the attention uses it)."""
    n0 = np.c_[cam0.normalize(kp0), np.ones(len(kp0))]
    n1 = np.c_[cam1.normalize(kp1), np.ones(len(kp1))]
    n0f, n1f = n0.astype(np.float32), n1.astype(np.float32)
    f = float(np.mean([cam0.fx, cam0.fy, cam1.fx, cam1.fy]))
    unit = poselib.Camera("PINHOLE", [1.0, 1.0, 0.0, 0.0], 1, 1)  # the points are already normalized
    ransac = {"max_epipolar_error": thresh_px / f, "seed": 0}

    def guide(m: np.ndarray) -> np.ndarray | None:
        pose, info = poselib.estimate_relative_pose(n0[m[:, 0], :2], n1[m[:, 1], :2], unit, unit, ransac, {})
        if not np.any(info["inliers"]):
            return None
        E = essential(pose.R, pose.t).astype(np.float32)
        Ex0, Etx1 = n0f @ E.T, n1f @ E  # (N0, 3), (N1, 3)
        d = Ex0 @ n1f.T  # x1^T E x0
        np.square(d, out=d)
        d /= np.maximum((Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2)[:, None] + (Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2)[None, :],
                        1e-30)
        np.sqrt(d, out=d)
        d *= f
        return d

    return guide


def homography_guide(kp0: np.ndarray, kp1: np.ndarray, thresh_px: float = 3.0):
    """Guide for a planar scene or a pure rotation: the homography of the current matches, and the
    distance from each keypoint of image 1 to each transferred keypoint of image 0."""
    def guide(m: np.ndarray) -> np.ndarray | None:
        H, _ = cv2.findHomography(kp0[m[:, 0]], kp1[m[:, 1]], cv2.RANSAC, thresh_px)
        if H is None:
            return None
        w = cv2.perspectiveTransform(kp0[None].astype(np.float64), H)[0]
        return np.linalg.norm(w[:, None] - kp1[None], axis=2).astype(np.float32)

    return guide


def projection_guide(kp0: np.ndarray, xyz1: np.ndarray, cam0: Camera, conf: RegistrationConfig = RegistrationConfig()):
    """Guide for an image (side 0) against 3D points (side 1, e.g. a VRF's points): the camera pose
    of the current matches by PnP, and the distance from each keypoint to each point's projection."""
    def guide(m: np.ndarray) -> np.ndarray | None:
        est = estimate_pose(kp0[m[:, 0]], xyz1[m[:, 1]], cam0, conf)
        if est is None:
            return None
        T = est.T_camera_map
        uv, front = cam0.project(xyz1 @ T[:3, :3].T + T[:3, 3])
        k, uv = kp0.astype(np.float32), uv.astype(np.float32)
        d = np.hypot(k[:, None, 0] - uv[None, :, 0], k[:, None, 1] - uv[None, :, 1])
        d[:, ~front] = 1e4
        return np.nan_to_num(d, nan=1e4)

    return guide
