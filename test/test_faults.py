"""Faults around a running localizer node: camera info late or stopping, odometry stopping, a CUDA
error, a far-off /initialpose, and a map reload that fails."""
from __future__ import annotations

import shutil
import threading

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter

from pram_ros.core.evaluation import errors
from pram_ros.core.geometry import invert, make_T

from harness import camera_info_msg, node_fixtures, process


frames, h = node_fixtures(40)


def status(h) -> DiagnosticStatus:
    h.node._publish_diagnostics()
    return h.published[-1]


def test_camera_info_late_then_stopping(h, frames):
    process(h, frames[0], camera_info=False)
    assert h.node.stats.processed == 0 and "no camera_info" in h.published[-1].message
    assert h.published[-1].level == DiagnosticStatus.WARN
    process(h, frames[1])  # camera info arrives late: from now on frames are localized
    assert h.node.stats.localized == 1
    for f in frames[2:6]:  # camera info stops: the last one keeps being used
        process(h, f, camera_info=False)
    assert h.node.stats.localized == 5 and status(h).level == DiagnosticStatus.OK


def test_the_first_image_waits_briefly_for_the_first_camera_info(h, frames):
    """A camera_info sent with the image but taken a moment after it still serves that image."""
    threading.Timer(0.05, h.node._on_camera_info, [camera_info_msg(frames[0])]).start()
    process(h, frames[0], camera_info=False)
    assert h.node.stats.processed == 1 and h.node.stats.localized == 1


def test_odometry_stopping_stops_map_odom_and_says_so(h, frames):
    for f in frames[:4]:
        process(h, f)
    assert h.spin(lambda: any(t.child_frame_id == "odom" for t in h.map_tf), 5)
    assert status(h).level == DiagnosticStatus.OK
    for f in frames[4:8]:  # odometry stops (its last transform is older than these images)
        process(h, f, odometry=False)
    assert h.node.stats.localized == 8  # poses are still published
    assert h.node._latest_map_tf is None  # map -> odom is no longer sent...
    st = status(h)
    assert st.level == DiagnosticStatus.WARN and "odometry stopped" in st.message  # ...and it says so
    values = {kv.key: kv.value for kv in st.values}
    assert values["tf"] == "none"
    h.spin(lambda: False, 0.5)
    n = len(h.map_tf)
    h.spin(lambda: False, 0.5)
    assert len(h.map_tf) == n  # nothing re-sent
    process(h, frames[8])  # odometry back: map -> odom again, warning cleared
    assert h.node._latest_map_tf[0] == "odom" and status(h).level == DiagnosticStatus.OK


def test_no_odometry_at_all_publishes_map_to_base(h, frames):
    for f in frames[:3]:
        process(h, f, odometry=False)
    assert h.node._latest_map_tf[0] == "base_link"
    assert h.spin(lambda: any(t.child_frame_id == "base_link" for t in h.map_tf), 5)
    assert "publishing map -> base_link" in {kv.key: kv.value for kv in status(h).values}["tf"]


def test_cuda_error_falls_back_to_cpu_and_diagnostics_warn(h, frames):
    def oom(image):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
    h.node.loc.extractor = oom
    process(h, frames[0])
    assert h.node.stats.localized == 1 and h.node.loc.device.type == "cpu"
    st = status(h)
    assert st.level == DiagnosticStatus.WARN and "OutOfMemoryError" in st.message
    assert {kv.key: kv.value for kv in st.values}["device"] == "cpu"


def test_far_off_initialpose_does_not_lock_into_a_wrong_track(h, frames):
    from geometry_msgs.msg import PoseWithCovarianceStamped

    from pram_ros.ros.conversions import T_to_pose

    f = frames[10]
    wrong = f.T_map_camera @ invert(f.T_base_camera) @ make_T(np.eye(3)[[1, 0, 2]] * [1, -1, 1], [4.0, -3.0, 0.0])
    msg = PoseWithCovarianceStamped()
    msg.header.frame_id = "map"
    msg.pose.pose = T_to_pose(wrong)
    h.node._on_initialpose(msg)
    assert h.node.loc.prior_T_map_camera is not None
    good = 0
    for f in frames[10:22]:
        n = h.node.stats.localized
        process(h, f)
        if h.node.stats.localized > n:
            res_T = h.node.loc.last_T_camera_map
            t, r = errors(invert(res_T), f.T_map_camera)
            assert t < 0.25 and r < 2.0, "a pose near the wrong initial pose was published"
            good += 1
    assert good >= 9  # it recovered the true track right away


def test_map_reload_failure_keeps_the_old_map_serving(h, frames, demo_map, tmp_path):
    old = h.node.loc
    bad = tmp_path / "bad"
    shutil.copytree(demo_map.out, bad)
    (bad / "map.npz").write_bytes(b"not a map")
    assert h.node.set_parameters([Parameter("map_path", value=str(bad))])[0].successful  # loads in the background
    h.node.wait_for_reload(60)
    assert h.node.loc is old and h.node.p("map_path") == str(demo_map.out)  # the parameter names the map served
    st = h.published[-1]
    assert st.level == DiagnosticStatus.ERROR and "still serving" in st.message and "checksum" in st.message
    process(h, frames[0])
    assert h.node.stats.localized == 1  # the old map still localizes
    other = tmp_path / "copy"
    shutil.copytree(demo_map.out, other)
    assert h.node.set_parameters([Parameter("map_path", value=str(other))])[0].successful
    h.node.wait_for_reload(60)
    assert h.node.loc is not old and h.node.p("map_path") == str(other)
    process(h, frames[1])
    assert h.node.stats.localized == 2
