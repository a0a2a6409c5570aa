"""Generated bad input for the localizer node (fixed seed, bounded counts): 2,000 cases per message
type (Image, CompressedImage, CameraInfo), TF messages with cycles, missing links and garbage, and
out-of-order, duplicate and far-future stamps.

Each case goes through the node's own handler for that message, as its callbacks and worker call
it (a real rclpy LifecycleNode, configured on the demo map), and its published diagnostics are
checked case by case: a rejected message gives one ERROR (WARN for stamps) that says why, an
accepted one is localized. A burst of the same cases then goes over DDS, and the node still
localizes afterwards. The counts are printed for the README's reliability table.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from tf2_msgs.msg import TFMessage

from pram_ros.core.images import encode_compressed
from pram_ros.ros.conversions import image_to_msg, ns_to_time, transform_msg

from harness import Harness, camera_info_msg

CASES = 2000
ERROR, WARN = DiagnosticStatus.ERROR, DiagnosticStatus.WARN


@pytest.fixture(scope="module")
def frames(demo_query_frames):
    return demo_query_frames[:20]


@pytest.fixture
def node(domain_id, demo_map, frames):
    """An active localizer whose published diagnostics are recorded in `h.published`."""
    h = Harness(domain_id, {"map_path": str(demo_map.out), "require_extrinsic": False,
                            "publish_debug_image": False, "image_reliability": "reliable"})
    h.activate_recording()
    h.node._on_camera_info(camera_info_msg(frames[0]))
    h.stamp = frames[-1].stamp_ns
    yield h
    h.close()


def run_case(h, handler, msg) -> tuple[str, DiagnosticStatus | None]:
    """Feed one message; ('accepted' | 'rejected' | 'inconsistent', the diagnostic it raised)."""
    s = h.node.stats
    before = (s.errors, s.processed, s.stamp_rejected, len(h.published))
    handler(msg)  # must not raise: any exception fails the test here
    new = h.published[before[3]:]
    diag = new[-1] if new else None
    errors, processed, stamps = s.errors - before[0], s.processed - before[1], s.stamp_rejected - before[2]
    if processed == 1 and errors == 0 and stamps == 0:
        return "accepted", diag
    if processed == 0 and errors + stamps == 1 and diag is not None:
        return "rejected", diag
    return "inconsistent", diag


def next_stamp(h) -> int:
    h.stamp += 10_000_000
    return h.stamp


def mutate_image(rng, base: np.ndarray, cam_wh: tuple[int, int], stamp: int) -> tuple[Image, str, str]:
    """A mutated Image and what must happen to it: accept, reject, or either."""
    kind = rng.choice(["valid", "encoding", "step", "truncated", "huge", "zero", "size", "noise"],
                      p=[0.02, 0.2, 0.15, 0.2, 0.1, 0.1, 0.18, 0.05])
    enc = str(rng.choice(["bgr8", "rgb8", "mono8", "bgra8", "mono16"]))
    msg = image_to_msg(base, enc, stamp, "camera")
    expect = "accept"
    if kind == "encoding":
        msg.encoding = str(rng.choice(["yuv422", "bayer_rggb8", "32FC1", "", "BGR8", "jpeg", "mono12",
                                       "".join(map(chr, rng.integers(32, 0x2FF, rng.integers(1, 20))))]))
        expect = "reject"
    elif kind == "step":
        msg.step = int(rng.choice([0, 1, msg.step - 1, msg.step // 2]))
        expect = "reject"
    elif kind == "truncated":
        msg.data = bytes(msg.data)[: int(rng.integers(0, len(msg.data)))]
        expect = "reject"
    elif kind == "huge":
        msg.width, msg.height = (int(x) for x in rng.integers(20_000, 2**31, 2))
        msg.step = min(msg.width * 3, 2**32 - 1)
        expect = "reject"
    elif kind == "zero":
        if rng.random() < 0.5:
            msg.width = 0
        else:
            msg.height = 0
        expect = "reject"
    elif kind == "size":  # decodes, but not the camera_info's size
        w, h = (int(x) for x in rng.integers(1, 200, 2))
        msg = image_to_msg(np.ascontiguousarray(base[:h, :w]), enc, stamp, "camera")
        expect = "accept" if (w, h) == cam_wh else "reject"
    elif kind == "noise":  # random pixels, consistent sizes: localized (to nothing)
        msg.data = rng.integers(0, 256, len(msg.data), dtype=np.uint8).tobytes()
        msg.is_bigendian = bool(rng.random() < 0.5)
    return msg, expect, str(kind)


def mutate_compressed(rng, jpeg: bytes, png: bytes, stamp: int) -> tuple[CompressedImage, str, str]:
    kind = rng.choice(["valid", "format", "empty", "garbage", "truncated", "flipped", "bomb"],
                      p=[0.01, 0.14, 0.1, 0.25, 0.2, 0.2, 0.1])
    fmt = str(rng.choice(["jpeg", "png"]))
    data = jpeg if fmt == "jpeg" else png
    expect = "accept"
    if kind == "format":
        fmt = str(rng.choice(["tiff", "webp", "", "raw", "bgr8; compressedDepth"]))
        expect = "reject"
    elif kind == "empty":
        data, expect = b"", "reject"
    elif kind == "garbage":
        data, expect = rng.integers(0, 256, int(rng.integers(1, 5000)), dtype=np.uint8).tobytes(), "reject"
    elif kind == "truncated":  # may still decode (partially): either outcome, consistently reported
        data, expect = data[: int(rng.integers(0, len(data)))], "either"
    elif kind == "flipped":
        buf = bytearray(data)
        for i in rng.integers(0, min(len(buf), 2000), int(rng.integers(1, 30))):
            buf[i] = int(rng.integers(0, 256))
        data, expect = bytes(buf), "either"
    elif kind == "bomb":  # a valid PNG header claiming a gigantic image
        w, h = (int(x) for x in rng.integers(9_000, 100_000, 2))
        ihdr = b"IHDR" + struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr)) + png[33:]
        fmt, expect = "png", "reject"
    msg = CompressedImage(format=fmt, data=data)
    msg.header.stamp, msg.header.frame_id = ns_to_time(stamp), "camera"
    return msg, expect, str(kind)


def mutate_camera_info(rng, good: CameraInfo) -> tuple[CameraInfo, str]:
    msg = CameraInfo()
    msg.width, msg.height = int(rng.integers(16, 4096)), int(rng.integers(16, 4096))
    fx, fy = rng.uniform(50, 3000, 2)
    msg.k = [fx, 0.0, msg.width / 2, 0.0, fy, msg.height / 2, 0.0, 0.0, 1.0]
    model, n = [("plumb_bob", 5), ("rational_polynomial", 8), ("equidistant", 4)][int(rng.integers(3))]
    msg.distortion_model, msg.d = model, list(rng.normal(0, 0.05, n))
    kind = rng.choice(["valid", "nan", "zero_f", "model", "d_len", "size"], p=[0.3, 0.15, 0.15, 0.15, 0.1, 0.15])
    if kind == "nan":
        k = list(msg.k)
        k[int(rng.choice([0, 2, 4, 5]))] = float(rng.choice([np.nan, np.inf, -np.inf]))
        msg.k = k
    elif kind == "zero_f":
        k = list(msg.k)
        k[int(rng.choice([0, 4]))] = float(rng.choice([0.0, -1.0, -500.0]))
        msg.k = k
    elif kind == "model":
        msg.distortion_model = str(rng.choice(["fisheye", "kannala_brandt", "PLUMB_BOB", "none", "x" * 100]))
    elif kind == "d_len":
        msg.d = list(rng.normal(0, 0.1, n + int(rng.integers(1, 10))))
    elif kind == "size":
        if rng.random() < 0.5:
            msg.width = 0
        else:
            msg.height = int(rng.integers(20_001, 2**32))
    return msg, "accept" if kind == "valid" else "reject"


def check(results: dict, kind: str, expect: str, outcome: str, diag, words: tuple[str, ...]) -> None:
    """One fuzz case: its outcome must be the one its mutation `kind` calls for (counted in results)."""
    for key in (kind, outcome):
        results[key] = results.get(key, 0) + 1
    assert outcome != "inconsistent", (kind, diag)
    if expect != "either":
        assert outcome == expect + "ed", (kind, expect, outcome, diag and diag.message)
    if outcome == "rejected":
        assert diag.level in (ERROR, WARN) and any(w in diag.message for w in words), diag.message


def test_fuzzed_images_and_compressed_images(node, frames):
    h, rng = node, np.random.default_rng(7)
    base = frames[0].image
    cam_wh = (h.node.camera.width, h.node.camera.height)
    words = ("image rejected", "does not match camera_info")
    outcomes: dict[str, int] = {}
    for _ in range(CASES):
        msg, expect, kind = mutate_image(rng, base, cam_wh, next_stamp(h))
        outcome, diag = run_case(h, h.node._process, msg)
        check(outcomes, kind, expect, outcome, diag, words)
    jpeg = bytes(encode_compressed(base, "jpeg")["data"])
    png = bytes(encode_compressed(base[::4, ::4], "png")["data"])  # quick to decode, wrong size: rejected
    for _ in range(CASES):
        msg, expect, kind = mutate_compressed(rng, jpeg, png, next_stamp(h))
        if msg.format == "png" and expect == "accept":
            expect = "reject"  # the quarter-size png does not match the camera
        outcome, diag = run_case(h, h.node._process, msg)
        check(outcomes, "c_" + kind, expect, outcome, diag, words)
    print(f"\nimage fuzz ({CASES} Image + {CASES} CompressedImage): {outcomes}")
    assert outcomes.get("accepted", 0) > 10 and outcomes.get("rejected", 0) > 1000
    # The same kind of garbage over DDS (reliable: every message arrives, however busy the
    # machine), through the node's subscription and worker: raw images, then compressed ones.
    reliable = QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
    img = h.peer.create_publisher(Image, "image", reliable)
    cimg = h.peer.create_publisher(CompressedImage, "image/compressed", reliable)
    for transport, pub, mutate in (("raw", img, lambda: mutate_image(rng, base, cam_wh, next_stamp(h))),
                                   ("compressed", cimg, lambda: mutate_compressed(rng, jpeg, png, next_stamp(h)))):
        if h.node.p("image_transport") != transport:  # the node subscribes to one transport
            h.node.trigger_deactivate()
            assert h.node.set_parameters([Parameter("image_transport", value=transport)])[0].successful
            h.node.trigger_activate()
        assert h.spin(lambda: pub.get_subscription_count() > 0, 10), transport
        for _ in range(100):
            n = h.node.stats.received
            pub.publish(mutate()[0])
            assert h.spin(lambda: h.node.stats.received > n, 10), (transport, h.node.stats)
    assert h.node.stats.received == 200, h.node.stats
    assert h.node._worker.is_alive()
    localized = h.node.stats.localized
    for f in frames[:6]:
        h.info.publish(camera_info_msg(f))
        msg = CompressedImage(format="jpeg", data=bytes(encode_compressed(f.image, "jpeg")["data"]))
        msg.header.stamp, msg.header.frame_id = ns_to_time(next_stamp(h)), f.camera_frame
        cimg.publish(msg)
        n = h.node.stats.processed
        h.spin(lambda: h.node.stats.processed > n, 20)
    assert h.node.stats.localized > localized and h.node._worker.is_alive()


def test_fuzzed_camera_info(node, frames):
    h, rng = node, np.random.default_rng(8)
    good = camera_info_msg(frames[0])
    outcomes: dict[str, int] = {}
    for _ in range(CASES):
        msg, expect = mutate_camera_info(rng, good)
        before, n_diag = h.node.camera, len(h.published)
        h.node._on_camera_info(msg)
        new = h.published[n_diag:]
        if expect == "accept":
            assert h.node.camera is not before and not new, new and new[-1].message
        else:
            assert h.node.camera is before, (msg.distortion_model, list(msg.k), list(msg.d), msg.width, msg.height)
            assert len(new) == 1 and new[0].level == ERROR and "camera info rejected" in new[0].message
        outcomes[expect] = outcomes.get(expect, 0) + 1
    print(f"\ncamera info fuzz: {outcomes}")
    assert outcomes["reject"] > 1000


def test_stamps_out_of_order_duplicate_and_far_future(node, frames):
    h, rng = node, np.random.default_rng(9)
    outcomes: dict[str, int] = {}
    last = None
    for i in range(60):
        kind = str(rng.choice(["next", "duplicate", "older", "jump_back", "future"], p=[0.4, 0.15, 0.15, 0.1, 0.2]))
        if last is None or kind == "next":
            stamp = next_stamp(h)
        elif kind == "duplicate":
            stamp = last
        elif kind == "older":
            stamp = last - int(rng.integers(1, 900_000_000))
        elif kind == "jump_back":
            stamp = h.stamp = last - int(rng.integers(2, 100)) * 1_000_000_000
        else:
            stamp = h.node.get_clock().now().nanoseconds + int(rng.integers(6, 10**6)) * 1_000_000_000
        f = frames[i % len(frames)]
        outcome, diag = run_case(h, h.node._process, image_to_msg(f.image, "bgr8", stamp, f.camera_frame))
        assert outcome != "inconsistent"
        expect_drop = last is not None and kind in ("duplicate", "older", "future")
        assert (outcome == "rejected") == expect_drop, (kind, outcome, diag and diag.message)
        if expect_drop:
            assert diag.level == WARN and ("not after the last" in diag.message or "ahead of the clock" in diag.message)
        else:
            last = stamp
        if kind == "jump_back" and outcome == "accepted":
            assert any("time jumped back" in d.message for d in h.published[-3:])
        outcomes[kind] = outcomes.get(kind, 0) + 1
    print(f"\nstamp cases: {outcomes}")


def test_fuzzed_tf_cycles_missing_links_and_garbage(node, frames):
    h, rng = node, np.random.default_rng(10)
    names = ["odom", "base_link", "camera", "a", "b", "c", "", "/odom", "map"]
    bad = 0
    for _ in range(CASES // 2):
        msg = TFMessage()
        expect_errors = 0
        for _ in range(int(rng.integers(1, 5))):
            parent, child = (str(x) for x in rng.choice(names, 2))
            T = np.eye(4)
            T[:3, 3] = rng.normal(0, 5, 3)
            tr = transform_msg(parent, child, T, int(rng.integers(0, 2**40)))
            garbage = rng.random() < 0.2
            if garbage:
                q = rng.choice([[0.0, 0.0, 0.0, 0.0], [np.nan, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, np.inf]])
                tr.transform.rotation.x, tr.transform.rotation.y, tr.transform.rotation.z, tr.transform.rotation.w = (
                    float(v) for v in q)
            ours = parent.lstrip("/") == "map"
            invalid = garbage or not parent.lstrip("/") or not child.lstrip("/") or parent.lstrip("/") == child.lstrip("/")
            expect_errors += invalid and not ours
            msg.transforms.append(tr)
        errors = h.node.stats.errors
        h.node._on_tf(msg, bool(rng.random() < 0.3))
        assert h.node.stats.errors - errors == expect_errors
        bad += expect_errors
        # lookups through whatever tree (cycles, missing links) now exists answer or say no, and
        # what they answer is a rigid transform: garbage never leaks through
        for T in (h.node._extrinsic("camera"), h.node._odometry_at("odom", "base_link", int(rng.integers(0, 2**40)),
                                                                  wait_s=0.0)):
            assert T is None or (np.all(np.isfinite(T)) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-6)
                                 and np.isclose(np.linalg.det(T[:3, :3]), 1.0) and np.allclose(T[3], [0, 0, 0, 1]))
    print(f"\ntf fuzz: {CASES // 2} messages, {bad} bad transforms reported")
    assert bad > 100
    # the node still localizes a good frame (camera as body; odometry may be garbage: no crash)
    f = frames[1]
    outcome, diag = run_case(h, h.node._process, image_to_msg(f.image, "bgr8", next_stamp(h), f.camera_frame))
    assert outcome == "accepted" and h.node._worker.is_alive()

