"""Rigid transforms as 4x4 numpy matrices, and quaternion conversions (ROS order x, y, z, w).

Naming: ``T_a_b`` maps points from frame b into frame a (``p_a = T_a_b @ p_b``), so
``T_map_camera`` is the camera's pose in the map and ``T_camera_map`` (COLMAP's
``cam_from_world``) its inverse.
"""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation, Slerp


def make_T(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A 4x4 transform from a 3x3 rotation and a translation."""
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = np.asarray(t, dtype=float).reshape(3)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    R, t = T[:3, :3], T[:3, 3]
    return make_T(R.T, -R.T @ t)


def quat_to_R(q_xyzw: np.ndarray) -> np.ndarray:
    """Rotation matrix from a quaternion in ROS order (x, y, z, w); it is normalized first."""
    q = np.asarray(q_xyzw, dtype=float)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-9:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    return Rotation.from_quat(q / n).as_matrix()


def R_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) with w >= 0 from a rotation matrix."""
    q = Rotation.from_matrix(R).as_quat()
    return -q if q[3] < 0 else q


def T_from_pose(position: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """A 4x4 transform from a position and a quaternion (x, y, z, w)."""
    return make_T(quat_to_R(q_xyzw), position)


def pose_from_T(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(position, quaternion xyzw) of a 4x4 transform."""
    return T[:3, 3].copy(), R_to_quat(T[:3, :3])


def interpolate(T0: np.ndarray, T1: np.ndarray, alpha: float) -> np.ndarray:
    """Pose between T0 (alpha=0) and T1 (alpha=1): linear translation, slerp rotation."""
    rots = Rotation.from_matrix(np.stack([T0[:3, :3], T1[:3, :3]]))
    R = Slerp([0.0, 1.0], rots)(alpha).as_matrix()
    return make_T(R, (1 - alpha) * T0[:3, 3] + alpha * T1[:3, 3])


def extrapolate(T0: np.ndarray, T1: np.ndarray, s: float) -> np.ndarray:
    """The pose `s` times T0 -> T1's motion past T1 (s=1: as far again): constant velocity."""
    dR = Rotation.from_rotvec(Rotation.from_matrix(T1[:3, :3] @ T0[:3, :3].T).as_rotvec() * s).as_matrix()
    return make_T(dR @ T1[:3, :3], T1[:3, 3] + s * (T1[:3, 3] - T0[:3, 3]))


def essential(R: np.ndarray, t: np.ndarray) -> np.ndarray:
    """The essential matrix [t]x R of the motion x1 = R x0 + t."""
    return np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ R


def sampson_px(x0: np.ndarray, x1: np.ndarray, E: np.ndarray, f: float) -> np.ndarray:
    """Sampson distance in pixels (focal f) of normalized correspondences x0 <-> x1 under E."""
    h0, h1 = np.c_[x0, np.ones(len(x0))], np.c_[x1, np.ones(len(x1))]
    Ex0, Etx1 = h0 @ E.T, h1 @ E
    num = np.sum(h1 * Ex0, 1) ** 2
    den = Ex0[:, 0] ** 2 + Ex0[:, 1] ** 2 + Etx1[:, 0] ** 2 + Etx1[:, 1] ** 2
    return np.sqrt(num / np.maximum(den, 1e-18)) * f


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle of R_est^T R_gt in degrees."""
    c = (np.trace(R_est.T @ R_gt) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> np.ndarray:
    """T_world_camera of an optical frame (z forward, x right, y down) at eye looking at target."""
    z = np.asarray(target, float) - np.asarray(eye, float)
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError("look_at: viewing direction parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_T(np.stack([x, y, z], axis=1), eye)


# base_link (x forward, y left, z up) -> optical frame (z forward, x right, y down):
# the usual camera_link -> camera_optical_frame rotation (roll -pi/2, yaw -pi/2).
R_BASE_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def planar_pose(T_map_base: np.ndarray, T_odom_base: np.ndarray | None) -> np.ndarray:
    """The base pose with map -> odom held to x, y and yaw (a ground robot, as AMCL models it):
    z, roll and pitch then come from odometry (level at z = 0 without any)."""
    T_ob = np.eye(4) if T_odom_base is None else T_odom_base
    T_mo = T_map_base @ invert(T_ob)
    yaw = np.arctan2(T_mo[1, 0], T_mo[0, 0])
    c, s = np.cos(yaw), np.sin(yaw)
    return make_T(np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]), [T_mo[0, 3], T_mo[1, 3], 0.0]) @ T_ob


def planar_covariance(cov: np.ndarray) -> np.ndarray:
    """The (x, y, z, rot x, rot y, rot z) covariance of a planar fix: only x, y and yaw are
    estimated (the marginal block); z, roll and pitch rows are zero, as AMCL publishes them."""
    out = np.zeros((6, 6))
    keep = np.ix_([0, 1, 5], [0, 1, 5])
    out[keep] = np.asarray(cov)[keep]
    return out


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity (s, R, t) with dst ~ s R src + t (least squares)."""
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, xd = src - mu_s, dst - mu_d
    U, S, Vt = np.linalg.svd(xd.T @ xs / len(src))
    D = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / max(xs.var(0).sum(), 1e-12))
    return s, R, mu_d - s * R @ mu_s
