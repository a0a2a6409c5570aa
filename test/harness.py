"""A LocalizerNode with a peer node on one executor in a private DDS domain (shared by the tests)."""
import time

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

from pram_ros.ros import conversions
from pram_ros.ros.conversions import image_to_msg, transform_msg
from pram_ros.ros.localizer_node import LocalizerNode

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)


class Harness:
    """A LocalizerNode and a test node sharing one executor in a private DDS domain."""

    def __init__(self, domain_id: int, params: dict):
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = LocalizerNode(context=self.ctx, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
        self.peer = rclpy.create_node("pram_test_peer", context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.ex.add_node(self.peer)
        self.poses, self.diags, self.markers = [], [], []
        self.peer.create_subscription(DiagnosticArray, "/diagnostics", self.diags.append, 10)
        self.img = self.peer.create_publisher(Image, "image", qos_profile_sensor_data)
        self.cimg = self.peer.create_publisher(CompressedImage, "image/compressed", qos_profile_sensor_data)
        self.info = self.peer.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
        self.tf_static = self.peer.create_publisher(TFMessage, "/tf_static", LATCHED)
        self.tf = self.peer.create_publisher(TFMessage, "/tf", 100)
        self.initialpose = self.peer.create_publisher(PoseWithCovarianceStamped, "/initialpose", 5)

    def activate_recording(self) -> None:
        """Configure and activate the node, and keep every status it publishes in `self.published`
        (in the order published, also those that DDS has not delivered yet)."""
        self.node.trigger_configure()
        self.node.trigger_activate()
        self.published = []
        publish = self.node.pub_diag.publish
        self.node.pub_diag.publish = lambda m: (self.published.append(m.status[0]), publish(m))

    def spin(self, cond, timeout=20.0):
        t0 = time.monotonic()
        while not cond() and time.monotonic() - t0 < timeout:
            self.ex.spin_once(timeout_sec=0.05)
        return cond()

    def call(self, srv_type, name, req):
        cli = self.peer.create_client(srv_type, name)
        assert cli.wait_for_service(timeout_sec=5)
        fut = cli.call_async(req)
        self.spin(fut.done, 10)
        return fut.result()

    def close(self):
        self.node.on_shutdown(None)
        self.ex.shutdown()
        self.node.destroy_node()
        self.peer.destroy_node()
        rclpy.shutdown(context=self.ctx)


def demo_harness(domain_id: int, map_dir, f0, **params) -> Harness:
    """An active node on `map_dir` that knows frame f0's camera extrinsic, recording what it
    publishes (`published`) and the map transforms that reach DDS (`map_tf`)."""
    h = Harness(domain_id, {"map_path": str(map_dir), "publish_debug_image": False, **params})
    h.activate_recording()
    h.node._on_tf(TFMessage(transforms=[transform_msg("base_link", f0.camera_frame, f0.T_base_camera, 0)]), True)
    h.map_tf = []
    h.peer.create_subscription(TFMessage, "/tf", lambda m: h.map_tf.extend(
        t for t in m.transforms if t.header.frame_id == "map"), 100)
    return h


def node_fixtures(count: int):
    """The fixtures of a module that drives a localizer node on the demo map: `frames` (the first
    `count` demo query frames) and `h` (a fresh demo_harness per test). Use:
    `frames, h = node_fixtures(20)`."""

    @pytest.fixture(scope="module", name="frames")
    def frames_fixture(demo_query_frames):
        return demo_query_frames[:count]

    @pytest.fixture(name="h")
    def harness_fixture(domain_id, demo_map, frames):
        h = demo_harness(domain_id, demo_map.out, frames[0])
        yield h
        h.close()

    return frames_fixture, harness_fixture


def process(h, f, odometry: bool = True, camera_info: bool = True, T_odom_base=None) -> int:
    """Hand one frame to the node as its callbacks would, stamped as if taken just now (its stamp)."""
    stamp = h.node.get_clock().now().nanoseconds
    if camera_info:
        h.node._on_camera_info(camera_info_msg(f))
    if odometry:
        T = f.T_odom_base if T_odom_base is None else T_odom_base
        h.node._on_tf(TFMessage(transforms=[transform_msg("odom", "base_link", T, stamp)]), False)
    h.node._process(image_to_msg(f.image, "bgr8", stamp, f.camera_frame))
    return stamp


def camera_info_msg(f):
    """The camera info of a bag frame."""
    return conversions.camera_info_msg(f.camera, f.stamp_ns, f.camera_frame)


def feed(h, f, encoding="bgr8"):
    h.info.publish(camera_info_msg(f))
    h.tf.publish(TFMessage(transforms=[transform_msg("odom", "base_link", f.T_odom_base, f.stamp_ns)]))
    h.img.publish(image_to_msg(f.image, encoding, f.stamp_ns, f.camera_frame))


def diag_values(h):
    st = [s for d in h.diags for s in d.status if "pram localizer" in s.name]
    return st[-1] if st else None
