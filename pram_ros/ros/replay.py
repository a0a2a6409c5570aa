"""`pram-ros replay`: play a contract bag into the real localizer node over DDS, on sim time.

The node runs in its own process; this process publishes /clock and the bag's camera, camera
info and TF topics at `rate` times real time, records everything the node publishes into an
output bag, and writes the same report as `pram-ros evaluate` plus end-to-end latency, the share
of frames dropped, and the accuracy of `map -> odom` composed with the bag's odometry.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message, serialize_message
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

from ..core.bag import BagReader, BagTopics, BagWriter
from ..core.evaluation import (FrameRow, errors, plot_report, scene_scale, summarize, write_json_atomic,
                               write_tum)
from ..core.geometry import invert
from .conversions import ns_to_time, pose_to_T, time_to_ns, transform_to_T

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
TYPES = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CompressedImage": CompressedImage,
         "sensor_msgs/msg/CameraInfo": CameraInfo, "tf2_msgs/msg/TFMessage": TFMessage}


def _node_command(map_dir: Path, image_topic: str, compressed: bool, info_topic: str, has_extrinsic: bool,
                  extra: list[str]) -> list[str]:
    params = {"map_path": str(map_dir), "use_sim_time": "true", "autostart": "true",
              "image_transport": "compressed" if compressed else "raw", "image_reliability": "reliable",
              "require_extrinsic": "true" if has_extrinsic else "false", **dict(p.split(":=", 1) for p in extra)}
    image_remap = f"image/compressed:={image_topic}" if compressed else f"image:={image_topic}"
    cmd = [sys.executable, "-m", "pram_ros.ros.localizer_node", "--ros-args", "-r", image_remap,
           "-r", f"camera_info:={info_topic}"]
    for k, v in params.items():
        cmd += ["-p", f"{k}:={v}"]
    return cmd


def replay(map_dir: str | Path, bag: str | Path, out_dir: str | Path, rate: float = 1.0,
           topics: BagTopics = BagTopics(), domain_id: int | None = None, node_params: list[str] | None = None,
           ready_timeout: float = 120.0, progress: bool = True, lockstep: bool = False,
           answer_timeout: float = 120.0) -> dict[str, Any]:
    """Replay `bag` through a localizer node using `map_dir`; returns the report written to out_dir.

    At `rate` times real time, the node drops the frames it has no time for, as on a robot: the
    report measures the node on this machine. With `lockstep`, the next image is published only
    once the node has answered the previous one (its pose, or a diagnostic saying why not), as
    fast as the node goes: the report then measures accuracy alone, whatever the machine's load.
    """
    if not 0.01 <= rate <= 100:
        raise ValueError(f"rate must be in [0.01, 100], got {rate}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with BagReader(bag, topics) as reader:
        frames = [(f.stamp_ns, f.T_map_camera, f.T_odom_base, f.T_base_camera) for f in reader.frames()]
        tf = reader.tf_buffer()
        messages = list(reader.raw_messages([reader.image_topic, topics.camera_info, topics.tf, topics.tf_static]))
        image_topic, compressed = reader.image_topic, reader.compressed
    has_extrinsic = any(f[3] is not None for f in frames)
    env = dict(os.environ)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(domain_id)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log_path = out / "localizer.log"
    cmd = _node_command(Path(map_dir), image_topic, compressed, topics.camera_info, has_extrinsic, node_params or [])
    domain = domain_id if domain_id is not None else int(env.get("ROS_DOMAIN_ID", 0))
    ctx, image_ctx = Context(), Context()
    rclpy.init(args=[], context=ctx, domain_id=domain)
    node = rclpy.create_node("pram_replay", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    # Images come from a DDS participant of their own, as a camera driver's do on a robot. Fast
    # DDS sends a participant's samples through one shared-memory segment (512 KB by default),
    # which the fragments of large images fill: TF written beside them was then lost until
    # reliable delivery resent it a heartbeat (3 s) later, and the node tracked without odometry.
    rclpy.init(args=[], context=image_ctx, domain_id=domain)
    image_node = rclpy.create_node("pram_replay_images", context=image_ctx)
    recorded: list[tuple[str, str, int, bytes]] = []
    poses: dict[int, tuple[np.ndarray, float]] = {}
    map_tfs: list[tuple[str, int, np.ndarray]] = []
    diags: list[DiagnosticArray] = []
    answered = [0]  # the newest image stamp the node has answered
    published_at: dict[int, float] = {}

    def rec(topic: str, msgtype: str):
        def cb(msg) -> None:
            now = time.monotonic()
            recorded.append((topic, msgtype, node.get_clock().now().nanoseconds or 1, serialize_message(msg)))
            if topic == "/pose":
                poses[time_to_ns(msg.header.stamp)] = (pose_to_T(msg.pose.pose), now)
            elif topic == "/tf":
                for tr in msg.transforms:
                    if tr.header.frame_id == "map":
                        map_tfs.append((tr.child_frame_id, time_to_ns(tr.header.stamp), transform_to_T(tr.transform)))
            elif topic == "/diagnostics":
                diags.append(msg)
                answered[0] = max(answered[0], int(_values([msg]).get("answered_stamp_ns", 0)))
        return cb

    node.create_subscription(PoseWithCovarianceStamped, "/pose", rec("/pose", "geometry_msgs/msg/PoseWithCovarianceStamped"), LATCHED)
    node.create_subscription(PoseStamped, "/pose_stamped", rec("/pose_stamped", "geometry_msgs/msg/PoseStamped"), 10)
    node.create_subscription(TFMessage, "/tf", rec("/tf", "tf2_msgs/msg/TFMessage"), 100)
    node.create_subscription(DiagnosticArray, "/diagnostics", rec("/diagnostics", "diagnostic_msgs/msg/DiagnosticArray"), 10)
    pubs: dict[str, Any] = {}
    # Images go reliable (the node is told to subscribe so): a replay measures the node, not the
    # loss of large best-effort messages in transport.
    reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    for topic, msgtype, _, _ in messages:
        if topic not in pubs:
            qos = LATCHED if topic == topics.tf_static else (100 if topic == topics.tf else reliable)
            pubs[topic] = (image_node if topic == image_topic else node).create_publisher(TYPES[msgtype], topic, qos)
    clock = node.create_publisher(Clock, "/clock", 10)
    t0 = messages[0][2] if messages else 0
    proc = subprocess.Popen(cmd, env=env, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        # Wait until the node reports a loaded map (its timers run on /clock: keep the clock ticking)
        # and subscribes to every topic played: a message written before DDS matched its
        # subscriber can miss it on a busy machine (a lockstep replay once lost the extrinsic so).
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            clock.publish(Clock(clock=ns_to_time(t0)))
            ex.spin_once(timeout_sec=0.1)
            if any(s.message.startswith(("stale", "localized")) for d in diags for s in d.status) and \
                    all(pub.get_subscription_count() > 0 for pub in pubs.values()):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"localizer exited with {proc.returncode}; see {log_path}")
        else:
            raise RuntimeError(f"localizer not ready after {ready_timeout:.0f} s; see {log_path}")
        def is_answered(stamp: int) -> bool:
            return stamp in poses or answered[0] >= stamp

        def wait_until(done: Callable[[], bool], stamp: int) -> None:
            deadline = time.monotonic() + answer_timeout
            while not done():
                if proc.poll() is not None:
                    raise RuntimeError(f"localizer exited with {proc.returncode}; see {log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lockstep: no answer to the image stamped {stamp} within "
                                       f"{answer_timeout:.0f} s; see {log_path}")
                ex.spin_once(timeout_sec=0.01)

        def answer_count() -> int:
            return int(_values(diags).get("frames_answered", 0))

        def lockstep_answer(stamp: int, image: Any) -> None:
            """Wait for the node's answer to `image`. When it answered still waiting for an input
            sent before the image (camera_info, a separate topic taken in any order, or a latched
            static transform, once never delivered over Fast DDS in the suite), send those again,
            then the image, and wait for its new answer."""
            wait_until(lambda: is_answered(stamp), stamp)
            v = _values(diags)
            if stamp in poses or int(v.get("answered_stamp_ns", 0)) != stamp or \
                    not v.get("last_error", "").endswith(": waiting"):
                return
            n = answer_count()
            for st in statics:
                pubs[topics.tf_static].publish(st)
            if latest_info is not None:
                pubs[topics.camera_info].publish(latest_info)
            ex.spin_once(timeout_sec=0.2)
            pubs[image_topic].publish(image)
            wait_until(lambda: stamp in poses or answer_count() > n, stamp)

        statics: list[Any] = []
        latest_info = None  # the last camera_info sent
        start = time.monotonic()
        n_images = 0
        last_image: int | None = None
        last_msg = None  # the last image message
        for topic, msgtype, t, raw in messages:
            if lockstep:
                if topic == image_topic and last_image is not None:
                    lockstep_answer(last_image, last_msg)
            else:
                while (wait := start + (t - t0) * 1e-9 / rate - time.monotonic()) > 0:
                    ex.spin_once(timeout_sec=min(wait, 0.01))
            clock.publish(Clock(clock=ns_to_time(t)))
            msg = deserialize_message(raw, TYPES[msgtype])
            pubs[topic].publish(msg)
            if topic == topics.tf_static:
                statics.append(msg)
            elif topic == topics.camera_info:
                latest_info = msg
            if topic == image_topic:
                last_image, last_msg = time_to_ns(msg.header.stamp), msg
                published_at[last_image] = time.monotonic()
                n_images += 1
                if progress and n_images % 20 == 0:
                    print(f"replay: {n_images}/{len(frames)} images, {len(poses)} poses", flush=True)
            ex.spin_once(timeout_sec=0)
        # Let the node finish the last frame (at most one more processing time when real time)...
        if lockstep and last_image is not None:
            lockstep_answer(last_image, last_msg)
        end = time.monotonic() + 10.0
        while time.monotonic() < end and last_image is not None and not is_answered(last_image):
            ex.spin_once(timeout_sec=0.05)
        # ...then move sim time on, so that its 1 Hz diagnostics fire, until one reports the last
        # image answered: those are its final counters.
        t_end = t_clock = messages[-1][2] if messages else t0

        def final() -> bool:
            return bool(diags) and time_to_ns(diags[-1].header.stamp) > t_end and \
                int(_values(diags).get("answered_stamp_ns", 0)) >= (last_image or 0)

        end = time.monotonic() + 30.0  # a busy machine may take that long to deliver them
        while time.monotonic() < end and not final():
            t_clock += 100_000_000
            clock.publish(Clock(clock=ns_to_time(t_clock)))
            ex.spin_once(timeout_sec=0.05)
    finally:
        stop(proc, ex, (ctx, image_ctx))

    with BagWriter(out / "recorded", overwrite=True) as w:
        for topic, msgtype, t, raw in recorded:
            w.write_cdr(topic, msgtype, raw, t, transient_local=topic == "/pose")
    report = _report(frames, poses, map_tfs, published_at, _values(diags), tf, n_images)
    report["lockstep"] = lockstep
    report["rate"] = None if lockstep else rate
    # The newest frame is never left behind: the node answers the last image of the bag.
    report["last_image_answered"] = last_image is not None and is_answered(last_image)
    write_json_atomic(out / "report.json", report)
    rows = [FrameRow(**r) for r in report["frames"]]
    write_tum(out / "estimated.tum", [(r.stamp_ns, np.array(r.T_map_camera)) for r in rows if r.localized])
    write_tum(out / "groundtruth.tum", [(r.stamp_ns, np.array(r.T_map_camera_gt)) for r in rows if r.T_map_camera_gt])
    plot_report(out / "trajectory.png", rows, f"replay: recall(0.25m,2deg) {report['recall']['0.25m_2deg']:.0%}")
    return report


def stop(proc: subprocess.Popen, ex: SingleThreadedExecutor, contexts: tuple[Context, ...]) -> None:
    """Stop the node process (SIGINT, then SIGKILL after 10 s) and this process's rclpy contexts."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
    ex.shutdown()
    for ctx in contexts:
        rclpy.shutdown(context=ctx)


def _values(diags: list[DiagnosticArray]) -> dict[str, str]:
    for d in reversed(diags):
        for s in d.status:
            if "pram localizer" in s.name:
                return {kv.key: kv.value for kv in s.values}
    return {}


def _report(frames, poses, map_tfs, published_at, last_diag, tf, n_images) -> dict[str, Any]:
    rows, latencies = [], []
    for i, (stamp, T_gt, _, T_base_cam) in enumerate(frames):
        est = poses.get(stamp)
        T_cam = None
        if est is not None:
            T_cam = est[0] @ (T_base_cam if T_base_cam is not None else np.eye(4))
            if stamp in published_at:
                latencies.append((est[1] - published_at[stamp]) * 1e3)
        te = ra = None
        if T_cam is not None and T_gt is not None:
            te, ra = errors(T_cam, T_gt)
        rows.append(FrameRow(i, stamp, T_cam is not None, "node", "", 0, 0, te, ra, {},
                             T_cam.tolist() if T_cam is not None else None,
                             T_gt.tolist() if T_gt is not None else None))
    report = summarize(rows, "pram (node replay)", False,
                       scene_scale(np.array(r.T_map_camera_gt) for r in rows if r.T_map_camera_gt))
    lat = np.array(latencies)
    report["latency_ms"] = {"p50": float(np.median(lat)), "p95": float(np.percentile(lat, 95)),
                            "max": float(lat.max())} if len(lat) else None
    received = int(last_diag.get("frames_received", 0))
    report["images_published"] = n_images
    report["frames_received_by_node"] = received
    # dropped: published but never processed (the node skips stale frames when it falls behind)
    report["processed_fraction"] = int(last_diag.get("frames_processed", 0)) / n_images if n_images else 0.0
    report["dropped_fraction"] = 1.0 - report["processed_fraction"] if n_images else 0.0
    report["lost_in_transport_fraction"] = 1.0 - received / n_images if n_images else 0.0
    report["node_diagnostics"] = last_diag
    # map -> odom composed with the bag's odometry, against the ground-truth base pose
    errs = []
    for child, t, T_map_child in map_tfs:
        if child != "odom":
            continue
        match = [f for f in frames if f[0] <= t and f[2] is not None and f[3] is not None and f[1] is not None]
        if not match:
            continue
        stamp, T_gt, _, T_base_cam = match[-1]
        try:
            T_odom_base = tf.lookup("odom", "base_link", stamp)
        except LookupError:
            continue
        errs.append(errors(T_map_child @ T_odom_base, T_gt @ invert(T_base_cam)))
    if errs:
        e = np.array(errs)
        report["map_odom"] = {"count": len(e), "median_translation_m": float(np.median(e[:, 0])),
                              "median_rotation_deg": float(np.median(e[:, 1])),
                              "within_0.25m_2deg": float(np.mean((e[:, 0] <= 0.25) & (e[:, 1] <= 2.0)))}
    return report
