"""Overload: flood the localizer node with 640x480 images at 30 Hz (faster than it can process)
for --minutes, and check that it keeps up with the newest frame in bounded latency and memory.

The node runs in its own process (as `ros2 run` would start it) on system time, with the default
sensor-data QoS. This process publishes the demo query images in a loop with fresh stamps and
camera info, samples the node's resident memory (/proc) every second, and reads its poses and
diagnostics. It prints the memory curve's start (after warm-up), end and maximum, latency
percentiles, and the share of frames dropped; writes overload.json and overload.png.

    .venv/bin/python bench/overload.py --map data/demo_map.pram --bag data/demo_query --minutes 10
"""
from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pram_ros  # noqa: F401  (before pycolmap; see README, known issues)
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo

from pram_ros.core.bag import BagReader
from pram_ros.core.evaluation import write_atomic, write_json_atomic
from pram_ros.ros.conversions import camera_info_msg, image_to_msg, time_to_ns
from pram_ros.ros.replay import LATCHED, stop


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--map", default="data/demo_map.pram")
    ap.add_argument("--bag", default="data/demo_query", help="images to loop (any contract bag)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--hz", type=float, default=30.0)
    ap.add_argument("--warmup-s", type=float, default=60.0, help="memory baseline taken after this")
    ap.add_argument("--out", default="reports/overload")
    ap.add_argument("--domain-id", type=int, default=77)
    a = ap.parse_args()
    if not Path(a.map).is_dir() or not Path(a.bag).exists():
        sys.exit(f"need a map and a bag: {a.map}, {a.bag} (run `make demo` first)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with BagReader(a.bag) as r:
        frames = [(f.image, f.camera, f.camera_frame) for f in r.frames()]
    print(f"{len(frames)} images of {frames[0][1].width}x{frames[0][1].height}, {a.hz} Hz for {a.minutes} min")

    env = {**os.environ, "ROS_DOMAIN_ID": str(a.domain_id)}
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    cmd = [sys.executable, "-m", "pram_ros.ros.localizer_node", "--ros-args", "-p", f"map_path:={a.map}",
           "-p", "autostart:=true", "-p", "require_extrinsic:=false", "-p", "publish_debug_image:=false"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(out / "localizer.log", "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=a.domain_id)
    node = rclpy.create_node("pram_overload", context=ctx)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    latencies: list[tuple[float, float]] = []  # (elapsed s, latency ms)
    diags: list[dict[str, str]] = []
    t_start = [0.0]

    def on_pose(msg: PoseWithCovarianceStamped) -> None:
        lat = (node.get_clock().now().nanoseconds - time_to_ns(msg.header.stamp)) * 1e-6
        latencies.append((time.monotonic() - t_start[0], lat))

    def on_diag(msg: DiagnosticArray) -> None:
        for s in msg.status:
            if "pram localizer" in s.name:
                diags.append({kv.key: kv.value for kv in s.values} | {"message": s.message})

    node.create_subscription(PoseWithCovarianceStamped, "/pose", on_pose, LATCHED)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    pub_img = node.create_publisher(type(image_to_msg(frames[0][0], "bgr8", 0, "")), "image", qos_profile_sensor_data)
    pub_info = node.create_publisher(CameraInfo, "camera_info", qos_profile_sensor_data)
    memory: list[tuple[float, float]] = []
    published = 0
    try:
        deadline = time.monotonic() + 120
        while not (diags and pub_img.get_subscription_count()):
            ex.spin_once(timeout_sec=0.1)
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"localizer did not start; see {out / 'localizer.log'}")
        t_start[0] = t0 = time.monotonic()
        next_sample = t0
        period = 1.0 / a.hz
        while (now := time.monotonic()) - t0 < a.minutes * 60:
            image, cam, frame_id = frames[published % len(frames)]
            stamp = node.get_clock().now().nanoseconds
            pub_info.publish(camera_info_msg(cam, stamp, frame_id))
            pub_img.publish(image_to_msg(image, "bgr8", stamp, frame_id))
            published += 1
            if now >= next_sample:
                memory.append((now - t0, rss_mb(proc.pid)))
                next_sample += 1.0
                if len(memory) % 60 == 0:
                    d = diags[-1] if diags else {}
                    print(f"{(now - t0) / 60:5.1f} min: published {published}, node received "
                          f"{d.get('frames_received')}, processed {d.get('frames_processed')}, "
                          f"rss {memory[-1][1]:.0f} MB, poses {len(latencies)}", flush=True)
            while (wait := t0 + published * period - time.monotonic()) > 0:
                ex.spin_once(timeout_sec=min(wait, 0.005))
            ex.spin_once(timeout_sec=0)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            ex.spin_once(timeout_sec=0.05)
        alive = proc.poll() is None
    finally:
        stop(proc, ex, (ctx,))

    d = diags[-1]
    received, processed = int(d["frames_received"]), int(d["frames_processed"])
    dropped = int(d["frames_dropped"])
    after = [m for t, m in memory if t >= a.warmup_s] or [m for _, m in memory]
    lat = np.array([v for t, v in latencies if t >= a.warmup_s] or [v for _, v in latencies])
    pct = {f"p{q}": float(np.percentile(lat, q)) for q in (50, 90, 95, 99)} | {"max": float(lat.max())} \
        if len(lat) else {}
    result = {
        "minutes": a.minutes, "hz": a.hz, "node_alive_at_end": alive, "published": published,
        "received_by_node": received, "processed": processed, "dropped_by_node": dropped,
        "dropped_share_of_received": dropped / max(received, 1),
        "not_processed_share_of_published": 1 - processed / max(published, 1),
        "lost_in_transport": published - received, "poses": len(latencies),
        # RSS swings by a frame's worth of buffers from second to second: compare one-minute medians
        "memory_mb": {"start_after_warmup": after[0], "end": after[-1], "max": max(after),
                      "first_minute_median": float(np.median(after[:60])),
                      "last_minute_median": float(np.median(after[-60:]))},
        "memory_growth": float(np.median(after[-60:]) / np.median(after[:60]) - 1),
        "memory_max_growth": max(after) / float(np.median(after[:60])) - 1,
        "memory_curve": memory, "latency_curve": latencies,
        "latency_ms": pct, "processing_hz": processed / (a.minutes * 60),
    }
    write_json_atomic(out / "overload.json", result)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    ax1.plot([t / 60 for t, _ in memory], [m for _, m in memory])
    ax1.axvline(a.warmup_s / 60, color="grey", ls=":")
    ax1.set_ylabel("node RSS [MB]")
    ax2.plot([t / 60 for t, _ in latencies], [v for _, v in latencies], ".", ms=2)
    ax2.set_ylabel("pose latency [ms]")
    ax2.set_xlabel("minutes")
    fig.suptitle(f"overload: {a.hz:.0f} Hz 640x480 for {a.minutes:.0f} min")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    write_atomic(out / "overload.png", buf.getvalue())

    m = result["memory_mb"]
    print(f"\n| overload, {a.hz:.0f} Hz for {a.minutes:.0f} min | |\n| --- | --- |")
    print(f"| node alive at the end | {alive} |")
    print(f"| published / received by the node / processed | {published} / {received} / {processed} |")
    print(f"| dropped by the node (stale, newest kept) | {dropped} ({result['dropped_share_of_received']:.1%} "
          f"of received) |")
    print(f"| not processed, of published | {result['not_processed_share_of_published']:.1%} |")
    print(f"| processing rate | {result['processing_hz']:.2f} Hz |")
    print(f"| memory after warm-up: start / end / max | {m['start_after_warmup']:.0f} / {m['end']:.0f} / "
          f"{m['max']:.0f} MB |")
    print(f"| memory, median of the first / last minute | {m['first_minute_median']:.0f} / "
          f"{m['last_minute_median']:.0f} MB ({result['memory_growth']:+.1%}; max {result['memory_max_growth']:+.1%}) |")
    if pct:
        print("| pose latency p50 / p95 / p99 / max | " + " / ".join(f"{pct[k]:.0f}" for k in
                                                                  ("p50", "p95", "p99", "max")) + " ms |")
    print(f"goal: memory growth < 5% (last-minute vs first-minute median): "
          f"{'met' if result['memory_growth'] < 0.05 else 'MISSED'}")


if __name__ == "__main__":
    main()
