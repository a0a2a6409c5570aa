"""rclpy message <-> core conversions (the thin ROS layer's only translation point)."""
from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
from sensor_msgs.msg import Image

from ..core.geometry import pose_from_T
from ..core.images import encode_image


def ns_to_time(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def time_to_ns(t: Time) -> int:
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def image_to_msg(img: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """A sensor_msgs/Image from a BGR/mono array (bytes assigned in one go: 100x faster than arrays)."""
    f = encode_image(img, encoding)
    msg = Image(height=f["height"], width=f["width"], encoding=f["encoding"], is_bigendian=f["is_bigendian"],
                step=f["step"])
    msg.header.stamp = ns_to_time(stamp_ns)
    msg.header.frame_id = frame_id
    msg.data = f["data"].tobytes()
    return msg


def transform_msg(parent: str, child: str, T: np.ndarray, stamp_ns: int) -> TransformStamped:
    """geometry_msgs/TransformStamped of T_parent_child."""
    p, q = pose_from_T(T)
    m = TransformStamped()
    m.header.stamp = ns_to_time(stamp_ns)
    m.header.frame_id, m.child_frame_id = parent, child
    m.transform.translation.x, m.transform.translation.y, m.transform.translation.z = map(float, p)
    r = m.transform.rotation
    r.x, r.y, r.z, r.w = map(float, q)
    return m
