"""Where Nav2 talks to a localizer as it talks to AMCL: the reinitialize_global_localization
service, /initialpose in any frame TF connects (its covariance widening the search), and planar
mode for ground robots."""
from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from geometry_msgs.msg import PoseWithCovarianceStamped
from scipy.spatial.transform import Rotation
from std_srvs.srv import Empty

from pram_ros.core.evaluation import errors
from pram_ros.core.geometry import invert, make_T
from pram_ros.ros.conversions import T_to_pose, ns_to_time, pose_to_T

from harness import demo_harness, node_fixtures, process


frames, h = node_fixtures(20)


def initialpose(frame: str, T: np.ndarray, cov_xy: float = 0.0, stamp: int = 0) -> PoseWithCovarianceStamped:
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id, msg.header.stamp = frame, ns_to_time(stamp)
    msg.pose.pose = T_to_pose(T)
    cov = np.zeros((6, 6))
    cov[0, 0] = cov[1, 1] = cov_xy
    msg.pose.covariance = [float(x) for x in cov.reshape(-1)]
    return msg


def test_reinitialize_global_localization_drops_the_track(h, frames):
    process(h, frames[0])
    assert h.node.loc.last_T_camera_map is not None
    assert h.call(Empty, "reinitialize_global_localization", Empty.Request()) is not None
    assert h.node.loc.last_T_camera_map is None
    process(h, frames[1])
    assert h.node.stats.last["mode"] == "recognition"


def test_initialpose_in_the_odom_frame_goes_through_tf(h, frames):
    for f in frames[:3]:
        process(h, f)
    child, T_map_odom = h.node._latest_map_tf
    assert child == "odom"
    f = frames[12]
    stamp = h.node.get_clock().now().nanoseconds
    h.node._on_initialpose(initialpose("odom", invert(T_map_odom) @ f.T_map_camera @ invert(f.T_base_camera),
                                       cov_xy=0.5, stamp=stamp))
    assert np.allclose(h.node.loc.prior_T_map_camera, f.T_map_camera, atol=1e-6)
    R = T_map_odom[:3, :3]  # the covariance, given in odom axes, in map axes
    assert np.allclose(h.node.loc.prior_position_cov, R @ np.diag([0.5, 0.5, 0.0]) @ R.T)
    process(h, f)
    assert h.node.stats.last["mode"] == "tracking"
    t, r = errors(invert(h.node.loc.last_T_camera_map), f.T_map_camera)
    assert t < 0.25 and r < 2.0


def test_initialpose_in_an_unknown_frame_is_refused_with_a_warning(h, frames):
    h.node._on_initialpose(initialpose("elsewhere", np.eye(4)))
    assert h.node.loc.prior_T_map_camera is None
    st = h.published[-1]
    assert st.level == DiagnosticStatus.WARN and "'elsewhere'" in st.message


def test_initialpose_covariance_widens_the_landmarks_tried_first(h, frames):
    loc, f = h.node.loc, frames[10]
    T_far = f.T_map_camera.copy()
    T_far[:3, 3] += [4.0, -3.0, 0.0]  # 5 m off
    loc.set_prior(T_far)
    tight = loc._near_prior(f.camera)
    loc.set_prior(T_far, np.diag([4.0, 4.0, 0.0]))  # sigma 2 m: the true position is within 3 sigma
    wide = loc._near_prior(f.camera)
    seen_from_truth = set(loc.map.vrf_landmark[np.linalg.norm(loc.vrf_centers - f.T_map_camera[:3, 3], axis=1) < 1.0])
    assert tight < wide and seen_from_truth and seen_from_truth <= wide
    # a far-off prior orders the candidates, it does not exclude any: the frame still localizes
    loc.set_prior(T_far)
    process(h, f)
    assert h.node.stats.localized == 1
    t, r = errors(invert(loc.last_T_camera_map), f.T_map_camera)
    assert t < 0.25 and r < 2.0


def test_planar_mode_takes_z_roll_and_pitch_from_odometry(domain_id, demo_map, frames):
    h = demo_harness(domain_id, demo_map.out, frames[0], planar=True)
    try:
        poses = []
        publish = h.node.pub_pose.publish
        h.node.pub_pose.publish = lambda m: (poses.append(m), publish(m))
        tilt = make_T(Rotation.from_euler("xy", [3.0, -2.0], degrees=True).as_matrix(), [0.0, 0.0, 0.07])
        for f in frames[:4]:
            T_odom_base = f.T_odom_base @ tilt  # a rough floor: odometry reports some roll, pitch and z
            process(h, f, T_odom_base=T_odom_base)
            T = pose_to_T(poses[-1].pose.pose)
            ypr = Rotation.from_matrix(T[:3, :3]).as_euler("ZYX")
            ypr_odom = Rotation.from_matrix(T_odom_base[:3, :3]).as_euler("ZYX")
            assert np.allclose(ypr[1:], ypr_odom[1:], atol=1e-9) and np.isclose(T[2, 3], T_odom_base[2, 3])
            cov = np.array(poses[-1].pose.covariance).reshape(6, 6)
            assert np.all(cov[[2, 3, 4], :] == 0) and np.all(cov[:, [2, 3, 4]] == 0)
            assert cov[0, 0] > 0 and cov[1, 1] > 0 and cov[5, 5] > 0
            # map -> odom itself is planar
            T_mo = h.node._latest_map_tf[1]
            assert np.isclose(T_mo[2, 3], 0) and np.isclose(T_mo[2, 2], 1)
            t, _ = errors(T @ f.T_base_camera, f.T_map_camera)
            assert t < 0.3  # x, y still follow the camera
    finally:
        h.close()
