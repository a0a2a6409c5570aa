"""One declaration per setting: the YAML files, CLI options, ROS declarations and validation all
come from the config dataclasses; every localizer parameter is applied at run time or read-only."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticStatus
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from pram_ros import cli
from pram_ros.core.bag import BagReader
from pram_ros.core.build import build_settings
from pram_ros.core.features import FeatureConfig
from pram_ros.core.localizer import LocalizerConfig
from pram_ros.core.registration import RegistrationConfig
from pram_ros.ros.conversions import image_to_msg
from pram_ros.ros.params import CONFIG_DIR, LOCALIZER_PARAMETERS, MAP_BUILDER_PARAMETERS, RUNTIME, yaml_files

from harness import Harness, camera_info_msg


def test_yaml_files_are_generated_and_hold_the_defaults():
    for name, text in yaml_files().items():
        assert (CONFIG_DIR / name).read_text() == text, f"config/{name} is stale: python -m pram_ros.ros.params --write"
    for name, table in (("localizer.yaml", LOCALIZER_PARAMETERS), ("map_builder.yaml", MAP_BUILDER_PARAMETERS)):
        values = yaml.safe_load((CONFIG_DIR / name).read_text())["/**"]["ros__parameters"]
        assert list(values) == list(table)
        for key, value in values.items():
            default = table[key].default
            assert value == (list(default) if isinstance(default, tuple) else default), key
            assert type(value) is (list if isinstance(default, tuple) else type(default)), key


def test_core_configs_refuse_what_the_tables_refuse():
    with pytest.raises(ValueError, match="max_keypoints=8 outside"):
        FeatureConfig(max_keypoints=8)
    with pytest.raises(ValueError, match="device='gpu'"):
        LocalizerConfig(device="gpu")
    with pytest.raises(ValueError, match="min_inliers=2 outside"):
        RegistrationConfig(min_inliers=2)
    FeatureConfig(resize_max=0)  # 0 is "keep the size", outside the range yet valid
    assert LOCALIZER_PARAMETERS["min_inliers"] is not None
    assert LOCALIZER_PARAMETERS["min_inliers"].default == RegistrationConfig().min_inliers


def test_cli_options_come_from_the_same_declarations(small_bag, tmp_path, capsys):
    parser = cli.build_parser()
    a = parser.parse_args(["build-map", "bag", "--out", "x"])
    for name, spec in build_settings().items():
        assert getattr(a, name) == spec.default, name
    a = parser.parse_args(["evaluate", "map", "bag", "--out", "x"])
    assert a.min_inliers == RegistrationConfig().min_inliers and a.method == LocalizerConfig().method
    assert cli.main(["build-map", str(small_bag), "--out", str(tmp_path / "m"), "--max-keypoints", "8"]) == 2
    assert "max_keypoints=8 outside [16, 16384]" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


@pytest.fixture
def h(domain_id, small_map):
    h = Harness(domain_id, {"map_path": str(small_map.out), "require_extrinsic": False})
    h.activate_recording()
    yield h
    h.close()


def test_read_only_parameters_refuse_a_set(h):
    for name in LOCALIZER_PARAMETERS:
        desc = h.node.describe_parameter(name)
        assert desc.read_only == (name not in RUNTIME), name
    res = h.node.set_parameters([Parameter("base_frame", value="base_footprint")])[0]
    assert not res.successful and h.node.p("base_frame") == "base_link"
    assert h.node.describe_parameter("min_inliers").integer_range[0].from_value == 6
    assert h.node.describe_parameter("camera_extrinsic").type == ParameterType.PARAMETER_DOUBLE_ARRAY


def _set(h, name, value):
    res = h.node.set_parameters([Parameter(name, value=value)])[0]
    assert res.successful, res.reason
    h.node.wait_for_reload(60)


def _frames(small_bag, n=2):
    with BagReader(small_bag) as r:
        return list(r.frames())[:n]


def _effect_map_path(h, small_map, tmp_path, small_bag):
    other = tmp_path / "copy"
    shutil.copytree(small_map.out, other)
    old = h.node.loc
    _set(h, "map_path", str(other))
    assert h.node.loc is not old and h.node._served["map_path"] == str(other)


def _effect_device(h, small_map, tmp_path, small_bag):
    old = h.node.loc
    _set(h, "device", "cpu")
    assert h.node.loc is not old and h.node.loc.device.type == "cpu"
    _set(h, "device", "cuda:7")  # no such GPU here: refused after the attempt, the old map serves on
    assert h.node.p("device") == "cpu" and h.node.loc.device.type == "cpu"
    assert "map reload failed" in h.published[-1].message


def _effect_fp16(h, small_map, tmp_path, small_bag):
    _set(h, "fp16", True)
    assert h.node.loc.conf.half and h.node.loc.extractor.conf.half


def _effect_use_tracking(h, small_map, tmp_path, small_bag):
    _set(h, "use_tracking", False)
    assert h.node.loc.conf.tracking is False


def _effect_ransac_thresh_px(h, small_map, tmp_path, small_bag):
    _set(h, "ransac_thresh_px", 3.5)
    assert h.node.loc.conf.registration.ransac_thresh_px == 3.5


def _effect_min_inliers(h, small_map, tmp_path, small_bag):
    _set(h, "min_inliers", 55)
    assert h.node.loc.conf.registration.min_inliers == 55


def _sent_tf(h, stamp=1_000_000_000):
    sent = []
    h.node.pub_tf.publish = sent.append
    h.node._latest_map_tf = ("odom", np.eye(4))
    h.node._resend_tf(stamp)
    return sent


def _effect_publish_tf(h, *_):
    assert len(_sent_tf(h)) == 1
    _set(h, "publish_tf", False)
    assert _sent_tf(h) == []


def _effect_tf_publish_rate(h, *_):
    _set(h, "tf_publish_rate", 5.0)
    assert h.node._tf_timer.timer_period_ns == 200_000_000


def _effect_transform_tolerance(h, *_):
    _set(h, "transform_tolerance", 2.0)
    st = _sent_tf(h)[0].transforms[0].header.stamp
    assert st.sec == 3 and st.nanosec == 0


def _effect_max_rate_hz(h, small_map, tmp_path, small_bag):
    f = _frames(small_bag, 1)[0]

    def offer(k):
        n = h.node.stats.answered + h.node.stats.dropped
        h.node._on_image(image_to_msg(f.image, "bgr8", f.stamp_ns + k, f.camera_frame))
        assert h.spin(lambda: h.node.stats.answered + h.node.stats.dropped > n, 30)
    _set(h, "max_rate_hz", 0.05)  # one frame per 20 s at most
    offer(1)
    offer(2)
    assert h.node.stats.dropped == 1 and h.node.stats.answered == 1


def _effect_image_transport(h, *_):
    _set(h, "image_transport", "compressed")
    assert h.node._image_sub.msg_type is CompressedImage and h.node._image_sub.topic_name == "/image/compressed"
    _set(h, "image_transport", "raw")
    assert h.node._image_sub.msg_type is Image


def _effect_image_reliability(h, *_):
    assert h.node._image_sub.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    _set(h, "image_reliability", "reliable")
    assert h.node._image_sub.qos_profile.reliability == ReliabilityPolicy.RELIABLE


def _effect_future_stamp_tolerance_s(h, *_):
    ahead = h.node.get_clock().now().nanoseconds + 3_000_000_000
    assert h.node._stamp_ok(ahead, h.node.loc)
    _set(h, "future_stamp_tolerance_s", 1.0)
    assert not h.node._stamp_ok(ahead + 1, h.node.loc)


def _effect_stale_fix_s(h, *_):
    h.node.stats.last_fix_ns = h.node.get_clock().now().nanoseconds - 3_000_000_000
    h.node._publish_diagnostics()
    assert h.published[-1].level == DiagnosticStatus.OK
    _set(h, "stale_fix_s", 1.0)
    h.node._publish_diagnostics()
    assert h.published[-1].message.startswith("stale fix")


def _effect_publish_debug_image(h, small_map, tmp_path, small_bag):
    f = _frames(small_bag, 1)[0]
    seen = []
    h.peer.create_subscription(Image, "debug/image", seen.append, 2)
    assert h.spin(lambda: h.node.pub_debug.get_subscription_count() > 0, 10)
    sent = []
    publish = h.node.pub_debug.publish
    h.node.pub_debug.publish = lambda m: (sent.append(m), publish(m))
    h.node._on_camera_info(camera_info_msg(f))
    h.node._process(image_to_msg(f.image, "bgr8", f.stamp_ns, f.camera_frame))
    assert len(sent) == 1
    _set(h, "publish_debug_image", False)
    h.node._process(image_to_msg(f.image, "bgr8", f.stamp_ns + 1, f.camera_frame))
    assert len(sent) == 1


EFFECTS = {name[len("_effect_"):]: fn for name, fn in globals().items() if name.startswith("_effect_")}


def test_every_runtime_parameter_has_an_effect_test():
    assert set(EFFECTS) == RUNTIME


@pytest.mark.parametrize("name", sorted(RUNTIME))
def test_runtime_parameter_takes_effect(name, h, small_map, tmp_path, small_bag):
    EFFECTS[name](h, small_map, tmp_path, small_bag)


def test_map_reload_runs_off_the_executor_and_tf_keeps_flowing(h, small_map, tmp_path):
    other = tmp_path / "copy"
    shutil.copytree(small_map.out, other)
    h.node._latest_map_tf = ("odom", np.eye(4))
    sent = []
    publish = h.node.pub_tf.publish
    h.node.pub_tf.publish = lambda m: (sent.append(time.monotonic()), publish(m))
    t0 = time.monotonic()
    assert h.node.set_parameters([Parameter("map_path", value=str(other))])[0].successful
    assert time.monotonic() - t0 < 0.5  # the set returns at once; loading goes on in the background
    h.spin(lambda: not h.node._reload.is_alive(), 60)
    done = time.monotonic()
    assert h.node._served["map_path"] == str(other)
    gaps = np.diff([t0, *sent, done])
    assert gaps.max() < 0.5, gaps  # the 20 Hz re-send went on while the map loaded


def test_rectified_images_from_the_topic_name_or_the_parameter(domain_id):
    import rclpy
    from rclpy.context import Context

    from pram_ros.core.synthetic import DEMO_CAMERA
    from pram_ros.ros.conversions import camera_info_msg as info_msg
    from pram_ros.ros.localizer_node import LocalizerNode

    msg = info_msg(DEMO_CAMERA, 1, "cam")
    msg.d = [-0.2, 0.05, 0.0, 0.0, 0.0]
    msg.p = [380.0, 0.0, 318.0, 0.0, 0.0, 381.0, 242.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    try:
        cases = [([], [], DEMO_CAMERA.fx), (["--ros-args", "-r", "image:=/camera/image_rect"], [], 380.0),
                 ([], [Parameter("rectified", value="always")], 380.0),
                 (["--ros-args", "-r", "image:=/camera/image_rect"], [Parameter("rectified", value="never")],
                  DEMO_CAMERA.fx)]
        for k, (cli_args, params, fx) in enumerate(cases):
            node = LocalizerNode(f"localizer_{k}", context=ctx, cli_args=cli_args or None, parameter_overrides=params)
            node._on_camera_info(msg)
            assert node.camera.fx == fx and any(node.camera.D) == (fx != 380.0), (cli_args, params)
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


def test_tf_static_is_read_as_tf2_ros_reads_it(h):
    """Depth 100, transient local: several latched broadcasters all get through."""
    from rclpy.qos import DurabilityPolicy

    (sub,) = [s for s in h.node.subscriptions if s.topic_name == "/tf_static"]
    assert sub.qos_profile.depth == 100 and sub.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
