"""Registration: absolute pose from 2D-3D matches (PoseLib LO-RANSAC and refinement), the
acceptance rules every pose is held to (`check`, each verdict with its reason), and a covariance
from the inliers' reprojection residuals."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import poselib
from scipy.spatial.transform import Rotation

from .camera import Camera
from .geometry import invert, make_T
from .params import setting, validate

MIN_POSITION_VAR = 1e-4  # 1 cm^2
MIN_ROTATION_VAR = np.radians(1.0) ** 2  # (1 deg)^2
MIN_MATCHES = 6  # fewer 2D-3D matches are not worth a RANSAC (P3P needs 3, and a few more to test it)


@dataclass(frozen=True)
class RegistrationConfig:
    ransac_thresh_px: float = setting(8.0, "PnP RANSAC threshold [px]", range=(0.5, 100.0))
    min_inliers: int = setting(30, "inliers needed to accept a pose", range=(6, 10000))
    min_candidate_inliers: int = 12  # a candidate this weak may still be confirmed by the map points in view
    min_inlier_ratio: float = 0.15
    min_spread: float = 0.04  # inliers' std along their weaker image axis, as a share of the image size
    min_coverage: float = 0.22  # share of the image the inliers' bounding box must cover: a pose held
    # up by one poster or window alone is the typical wrong fix where the same picture hangs twice

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class PoseEstimate:
    T_camera_map: np.ndarray  # cam_from_world
    inliers: np.ndarray  # bool mask over the correspondences

    @property
    def num_inliers(self) -> int:
        return int(self.inliers.sum())

    @property
    def T_map_camera(self) -> np.ndarray:
        return invert(self.T_camera_map)


def _poselib_camera(camera: Camera) -> poselib.Camera:
    pc = camera.to_pycolmap()
    return poselib.Camera(pc.model.name, list(pc.params), camera.width, camera.height)


def estimate_pose(uv: np.ndarray, xyz: np.ndarray, camera: Camera, conf: RegistrationConfig) -> PoseEstimate | None:
    """PnP: PoseLib's P3P LO-RANSAC with refinement, under the camera's distortion model; None when
    RANSAC finds no model. PoseLib stops as soon as the inlier ratio allows (after 100 iterations at
    least), where pycolmap's estimator spent 3-4x longer on the same matches (2 against 6 ms, 250
    tracking matches)."""
    if len(uv) < 4:
        return None
    ransac = {"max_reproj_error": conf.ransac_thresh_px, "min_iterations": 100, "max_iterations": 10000,
              "seed": 0}  # the same pose for the same matches, whatever ran before in the process
    pose, info = poselib.estimate_absolute_pose(np.asarray(uv, np.float64) + 0.5, np.asarray(xyz, np.float64),
                                                _poselib_camera(camera), ransac, {})
    inliers = np.asarray(info["inliers"], bool)
    if not inliers.any():
        return None
    return PoseEstimate(make_T(pose.R, pose.t), inliers)


def refine_pose(T_camera_map: np.ndarray, uv: np.ndarray, xyz: np.ndarray, camera: Camera,
                loss_scale_px: float = 1.0) -> np.ndarray | None:
    """T_camera_map re-fit to all the correspondences by non-linear least squares (Cauchy loss of
    `loss_scale_px`), without RANSAC: the last step of registration, once the matches are clean.
    PoseLib's Levenberg-Marquardt (1.6 ms for 1500 matches, where pycolmap's took 11)."""
    if len(uv) < 3:
        return None
    pose = poselib.CameraPose()
    pose.R, pose.t = T_camera_map[:3, :3], T_camera_map[:3, 3]
    pose, info = poselib.refine_absolute_pose(np.asarray(uv, np.float64) + 0.5, np.asarray(xyz, np.float64), pose,
                                              _poselib_camera(camera), {"loss_type": "CAUCHY",
                                                                        "loss_scale": loss_scale_px})
    T = make_T(pose.R, pose.t)
    return T if np.isfinite(T).all() else None


def reprojection_errors(T_camera_map: np.ndarray, uv: np.ndarray, xyz: np.ndarray, camera: Camera) -> np.ndarray:
    p = xyz @ T_camera_map[:3, :3].T + T_camera_map[:3, 3]
    proj, front = camera.project(p)
    err = np.linalg.norm(proj - uv, axis=1)
    err[~front] = np.inf
    return err


def register(uv: np.ndarray, xyz: np.ndarray, camera: Camera, conf: RegistrationConfig,
             final: bool = True) -> tuple[PoseEstimate | None, str]:
    """(the pose by PnP RANSAC, "") when it passes `check`, else (None, why not)."""
    if len(uv) < MIN_MATCHES:
        return None, f"{len(uv)} matches, no pose"
    est = estimate_pose(uv, xyz, camera, conf)
    if est is None:
        return None, f"{len(uv)} matches, PnP RANSAC found no pose"
    reason = check(est, uv, camera, conf, final)
    return (None, reason) if reason else (est, "")


def check(est: PoseEstimate, uv: np.ndarray, camera: Camera, conf: RegistrationConfig, final: bool = True) -> str:
    """Empty when the pose is acceptable, else the reason it is not. Candidate poses from a few
    landmarks (final=False) are held to the count and ratio rules only: a candidate just seeds the
    refinement, whose pose must pass every rule. Its inliers are often bunched on one poster even
    when it is right (on the demo's queries two such candidates were all that found the place,
    and refined to correct poses; bench/RESULTS.md, 2026-12-06)."""
    n = est.num_inliers
    need = conf.min_inliers if final else conf.min_candidate_inliers
    if n < need:
        return f"{n} inliers < {need}"
    if n / len(uv) < conf.min_inlier_ratio:
        return f"inlier ratio {n / len(uv):.2f} < {conf.min_inlier_ratio}"
    if not final:
        return ""
    pts = uv[est.inliers]
    spread = np.sqrt(max(np.linalg.eigvalsh(np.cov(pts.T))[0], 0.0)) / max(camera.width, camera.height)
    if spread < conf.min_spread:
        return f"inliers bunched in the image (spread {spread:.3f} < {conf.min_spread})"
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    coverage = (x1 - x0) * (y1 - y0) / (camera.width * camera.height)
    if coverage < conf.min_coverage:
        return f"inliers cover {coverage:.0%} of the image (< {conf.min_coverage:.0%})"
    return ""


def covariance(T_map_camera: np.ndarray, uv: np.ndarray, xyz: np.ndarray, camera: Camera,
               T_camera_body: np.ndarray | None = None, floor: bool = True) -> np.ndarray:
    """6x6 covariance of the body pose in the map frame, over (x, y, z, rot x, rot y, rot z).

    Gauss-Newton on the inliers: sigma^2 (J^T J)^-1 with sigma^2 from the residuals, the
    Jacobian taken numerically with respect to a position offset and a rotation (map frame) of
    the body (the camera itself when T_camera_body is None). Floored at 1 cm^2 and (1 deg)^2:
    never zero, and larger with fewer or noisier inliers.
    """
    T_cb = np.eye(4) if T_camera_body is None else T_camera_body
    T_mb = T_map_camera @ T_cb

    def residual(delta: np.ndarray) -> np.ndarray:
        T = make_T(Rotation.from_rotvec(delta[3:]).as_matrix() @ T_mb[:3, :3], T_mb[:3, 3] + delta[:3])
        T_cm = invert(T @ invert(T_cb))
        p = xyz @ T_cm[:3, :3].T + T_cm[:3, 3]
        proj, _ = camera.project(p)
        return (proj - uv).ravel()

    r0 = residual(np.zeros(6))
    eps = 1e-6
    J = np.stack([(residual(np.eye(6)[k] * eps) - r0) / eps for k in range(6)], 1)
    dof = max(len(r0) - 6, 1)
    sigma2 = max(float(r0 @ r0) / dof, 0.25)  # at least (0.5 px)^2: detector noise
    try:
        cov = sigma2 * np.linalg.inv(J.T @ J)
    except np.linalg.LinAlgError:
        cov = np.diag([1e6] * 6)
    cov = 0.5 * (cov + cov.T)
    if not floor:
        return cov
    least = np.array([MIN_POSITION_VAR] * 3 + [MIN_ROTATION_VAR] * 3)
    d = np.diag(cov)
    scale = np.sqrt(np.maximum(d, least) / np.maximum(d, 1e-30))
    cov = cov * np.outer(scale, scale)
    np.fill_diagonal(cov, np.maximum(np.diag(cov), least))  # exact, despite rounding in the scaling
    return cov
