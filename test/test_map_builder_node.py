"""The map_builder node: builds from a bag parameter, and from topics recorded live + ~/build."""
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from rclpy.parameter import Parameter
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage
from std_srvs.srv import Trigger

from pram_ros.core.bag import BagReader
from pram_ros.core.map import load_map
from pram_ros.ros.conversions import T_to_pose, camera_info_msg, ns_to_time
from pram_ros.ros.map_builder_node import MapBuilderNode


def _spin(ex, cond, timeout):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        ex.spin_once(timeout_sec=0.1)
    return cond()


def test_builds_from_bag_parameter(ros, fox_bags, tmp_path):
    ctx, ex = ros
    node = MapBuilderNode(context=ctx, parameter_overrides=[
        Parameter("bag_path", value=str(fox_bags["map"])), Parameter("out", value=str(tmp_path / "map")),
        Parameter("steps", value=30),
        Parameter("fine", value=False)])  # the fine layer: what the build tests check, not the node
    peer = rclpy.create_node("peer", context=ctx)
    diags = []
    peer.create_subscription(DiagnosticArray, "/diagnostics", diags.append, 10)
    ex.add_node(node)
    ex.add_node(peer)
    assert _spin(ex, lambda: node.state in ("done", "failed"), 600), node.detail
    assert node.state == "done", node.detail
    assert _spin(ex, lambda: any("done" in s.message for d in diags for s in d.status), 5)
    assert any("stage" in s.message for d in diags for s in d.status)  # progress on /diagnostics while building
    assert node.summary.landmarks > 0 and node.summary.images >= 10
    m = load_map(tmp_path / "map")
    assert len(m.points) > 1000 and m.frame == "map"
    node.destroy_node()


def test_records_live_and_builds_on_service_call(ros, fox_bags, tmp_path):
    ctx, ex = ros
    node = MapBuilderNode(context=ctx, parameter_overrides=[
        Parameter("out", value=str(tmp_path / "live_map")), Parameter("record_dir", value=str(tmp_path)),
        Parameter("image_transport", value="compressed"), Parameter("steps", value=30),
        Parameter("fine", value=False)])  # the fine layer: what the build tests check, not the node
    peer = rclpy.create_node("camera", context=ctx)
    ex.add_node(node)
    ex.add_node(peer)
    assert node.state == "recording"
    img = peer.create_publisher(CompressedImage, "image/compressed", qos_profile_sensor_data)
    info = peer.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
    pose = peer.create_publisher(PoseStamped, "pose", qos_profile_sensor_data)
    _spin(ex, lambda: img.get_subscription_count() > 0 and pose.get_subscription_count() > 0, 10)
    with BagReader(fox_bags["map"]) as r:
        frames = list(r.frames())[:14]
    import cv2

    for f in frames:
        stamp = ns_to_time(f.stamp_ns)
        ci = camera_info_msg(f.camera, f.stamp_ns, f.camera_frame)
        msg = CompressedImage(format="jpeg", data=cv2.imencode(".jpg", f.image)[1].tobytes())
        msg.header.stamp, msg.header.frame_id = stamp, f.camera_frame
        ps = PoseStamped()
        ps.header.stamp, ps.header.frame_id = stamp, "map"
        ps.pose = T_to_pose(f.T_map_camera)
        info.publish(ci)
        pose.publish(ps)
        img.publish(msg)
        n = node.recorded
        _spin(ex, lambda: node.recorded > n, 5)
    assert node.recorded >= 12
    cli = peer.create_client(Trigger, "/map_builder/build")
    assert cli.wait_for_service(timeout_sec=5)
    fut = cli.call_async(Trigger.Request())
    assert _spin(ex, fut.done, 10) and fut.result().success, fut.result()
    assert _spin(ex, lambda: node.state in ("done", "failed"), 600), node.detail
    assert node.state == "done", node.detail
    assert len(load_map(tmp_path / "live_map").points) > 300
    node.destroy_node()
