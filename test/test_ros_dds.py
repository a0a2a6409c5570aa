"""Real rclpy nodes exchanging the contract's messages over Fast DDS (own domain, localhost only)."""
import time

import numpy as np
import rclpy
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from tf2_msgs.msg import TFMessage

from pram_ros.core.bag import stamp_ns, transform_to_T
from pram_ros.core.geometry import look_at
from pram_ros.core.images import decode_image
from pram_ros.core.synthetic import DEMO_CAMERA, MAP_LIGHT, T_BASE_CAMERA, Renderer, build_scene
from pram_ros.core.tf import TfBuffer
from pram_ros.ros.conversions import image_to_msg, transform_msg


def _spin_until(ex, cond, timeout=10.0, tick=None):
    t0 = time.monotonic()
    while not cond() and time.monotonic() - t0 < timeout:
        if tick:
            tick()
        ex.spin_once(timeout_sec=0.05)
    return cond()


def test_image_and_tf_over_dds(ros):
    ctx, ex = ros
    pub_node = rclpy.create_node("pram_test_camera", context=ctx)
    sub_node = rclpy.create_node("pram_test_listener", context=ctx)
    ex.add_node(pub_node)
    ex.add_node(sub_node)
    images, tfs, statics = [], [], []
    sub_node.create_subscription(Image, "camera/image_raw", images.append, qos_profile_sensor_data)
    sub_node.create_subscription(TFMessage, "/tf", tfs.append, 10)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    img_pub = pub_node.create_publisher(Image, "camera/image_raw", qos_profile_sensor_data)
    tf_pub = pub_node.create_publisher(TFMessage, "/tf", 10)
    static_pub = pub_node.create_publisher(TFMessage, "/tf_static", latched)

    frame = Renderer(build_scene(), DEMO_CAMERA).render(look_at(np.array([2.0, 3, 1.3]), np.array([8.0, 3, 1.2])),
                                                       MAP_LIGHT)
    static_pub.publish(TFMessage(transforms=[transform_msg("base_link", "cam", T_BASE_CAMERA, 0)]))
    stamp = 1_234_567_890_123

    def tick():
        img_pub.publish(image_to_msg(frame, "rgb8", stamp, "cam"))
        tf_pub.publish(TFMessage(transforms=[transform_msg("odom", "base_link", np.eye(4), stamp)]))

    assert _spin_until(ex, lambda: images and tfs, tick=tick), "no image or tf received over DDS"
    assert stamp_ns(images[0].header) == stamp and images[0].header.frame_id == "cam"
    assert np.array_equal(decode_image(images[0]), frame)

    # A late subscriber still receives the transient-local static transform.
    sub_node.create_subscription(TFMessage, "/tf_static", statics.append, latched)
    assert _spin_until(ex, lambda: statics), "late subscriber missed /tf_static"
    buf = TfBuffer()
    for tr in statics[0].transforms:
        buf.set_transform(tr.header.frame_id, tr.child_frame_id, 0, transform_to_T(tr.transform), static=True)
    assert np.allclose(buf.lookup("base_link", "cam", 0), T_BASE_CAMERA)
