"""The acceptance rules of registration: candidates seed the refinement, final poses pass every rule."""
from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from pram_ros.core.camera import Camera
from pram_ros.core.geometry import make_T
from pram_ros.core.registration import RegistrationConfig, register

CAMERA = Camera(640, 480, 500.0, 500.0, 319.5, 239.5)
T_TRUE = make_T(Rotation.from_rotvec([0.05, -0.1, 0.02]).as_matrix(), [0.2, -0.1, 0.3])


def matches(centre: tuple[float, float], half_px: float, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n exact 2D-3D matches whose keypoints lie within `half_px` of `centre`, points 3-5 m away."""
    rng = np.random.default_rng(seed)
    uv = rng.uniform(np.subtract(centre, half_px), np.add(centre, half_px), (n, 2))
    p_cam = np.c_[CAMERA.normalize(uv), np.ones(n)] * rng.uniform(3.0, 5.0, n)[:, None]
    return uv, (p_cam - T_TRUE[:3, 3]) @ T_TRUE[:3, :3]


def test_a_candidate_on_one_poster_is_kept_for_refinement_but_is_no_final_pose():
    """Matches bunched on one poster (a 40 px square) give a candidate, which refinement may confirm,
    but never a final pose; a candidate still needs its inliers."""
    conf = RegistrationConfig()
    uv, xyz = matches((200.0, 150.0), 20.0, 60)
    est, reason = register(uv, xyz, CAMERA, conf, final=False)
    assert reason == "" and est is not None and est.num_inliers == 60
    _, reason = register(uv, xyz, CAMERA, conf, final=True)
    assert reason.startswith("inliers bunched in the image"), reason
    few_uv, few_xyz = matches((200.0, 150.0), 20.0, conf.min_candidate_inliers - 1)
    _, reason = register(few_uv, few_xyz, CAMERA, conf, final=False)
    assert reason == f"{conf.min_candidate_inliers - 1} inliers < {conf.min_candidate_inliers}", reason


def test_matches_spread_over_the_image_give_a_final_pose():
    uv, xyz = matches((320.0, 240.0), 200.0, 80)
    est, reason = register(uv, xyz, CAMERA, RegistrationConfig())
    assert reason == "" and est is not None and est.num_inliers == 80
