"""Bag round trips (sqlite3 and MCAP, every encoding), camera models, and contract errors."""
import numpy as np
import pytest

from pram_ros.core.bag import BagError, BagReader, BagTopics, BagWriter
from pram_ros.core.camera import Camera, CameraError
from pram_ros.core.images import ImageError, decode_compressed, decode_image, encode_image
from pram_ros.core.synthetic import DEMO_CAMERA, MAP_LIGHT, Renderer, build_scene
from pram_ros.core.geometry import look_at, make_T

S = 1_000_000_000
CAMERAS = {
    "plumb_bob": DEMO_CAMERA,
    "rational_polynomial": Camera(640, 480, 410, 405, 320, 240, "rational_polynomial",
                                  (-0.1, 0.02, 0.001, -0.001, 0.0, 0.05, 0.01, 0.002)),
    "equidistant": Camera(640, 480, 300, 300, 320, 240, "equidistant", (0.05, -0.01, 0.002, 0.0)),
}


@pytest.fixture(scope="module")
def images():
    """Three real rendered frames of the synthetic scene."""
    r = Renderer(build_scene(), DEMO_CAMERA)
    eyes = [((2, 3, 1.3), (8, 3, 1.2)), ((12, 3, 1.3), (12, 10, 1.3)), ((4, 1, 1.3), (0, 5, 1.5))]
    return [r.render(look_at(np.array(e, float), np.array(t, float)), MAP_LIGHT) for e, t in eyes]


def _expected(img, encoding):
    """What decoding should return for a BGR image written with `encoding`."""
    import cv2

    if encoding == "mono8":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if encoding == "mono16":
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.uint16) * 257
    return img


@pytest.mark.parametrize("storage", ["sqlite3", "mcap"])
@pytest.mark.parametrize("encoding", ["mono8", "bgr8", "rgb8", "bgra8", "rgba8", "mono16", "jpeg", "png"])
def test_round_trip(tmp_path, images, storage, encoding):
    compressed = encoding if encoding in ("jpeg", "png") else None
    poses = [look_at(np.array([k, 1.0, 1.2]), np.array([k, 5.0, 1.0])) for k in range(len(images))]
    path = tmp_path / "bag"
    with BagWriter(path, storage=storage, encoding="bgr8" if compressed else encoding, compressed=compressed) as w:
        w.write_tf(S, [("base_link", "cam", make_T(np.eye(3), [0.1, 0, 1.0]))], static=True)
        for k in range(len(images) * 4):  # odometry at 4x the image rate
            w.write_tf(S + k * S // 4, [("odom", "base_link", make_T(np.eye(3), [k * 0.25, 0, 0]))])
        for k, img in enumerate(images):
            w.write_image(S + k * S, img, DEMO_CAMERA, "cam")
            w.write_pose(S + k * S + 500_000, poses[k])  # 0.5 ms off: still the image's pose
    with BagReader(path) as r:
        assert r.compressed == bool(compressed)
        frames = list(r.frames(strict=True))
    assert [f.stamp_ns for f in frames] == [S + k * S for k in range(len(images))]
    for f, img, T in zip(frames, images, poses):
        exp = _expected(img, "bgr8" if compressed else encoding)
        assert f.image.shape == exp.shape and f.image.dtype == exp.dtype
        if encoding == "jpeg":
            assert np.abs(f.image.astype(int) - exp).mean() < 4
        else:
            assert np.array_equal(f.image, exp)
        assert f.camera == DEMO_CAMERA
        assert np.allclose(f.T_map_camera, T)
        assert np.allclose(f.T_odom_base[:3, 3], [f.index, 0, 0])
        assert np.allclose(f.T_base_camera[:3, 3], [0.1, 0, 1.0])
    # every topic is offered reliable, so `ros2 bag play` reaches default (reliable) subscribers
    from rosbags.rosbag2 import Reader
    from rosbags.interfaces import QosReliability

    with Reader(path) as raw:
        assert raw.connections and all(q.reliability == QosReliability.RELIABLE
                                       for c in raw.connections for q in c.ext.offered_qos_profiles)


@pytest.mark.parametrize("model", sorted(CAMERAS))
def test_camera_models_round_trip_and_project(tmp_path, images, model):
    cam = CAMERAS[model]
    with BagWriter(tmp_path / "b", compressed="png") as w:
        w.write_image(S, images[0], cam, "cam")
    with BagReader(tmp_path / "b") as r:
        (f,) = list(r.frames(strict=True))
    assert f.camera == cam
    # project -> normalize is the identity on normalized coordinates
    pts = np.random.default_rng(0).uniform([-0.6, -0.45, 1.0], [0.6, 0.45, 1.0], (50, 3))
    uv, front = cam.project(pts * 3.0)
    assert front.all()
    assert np.allclose(cam.normalize(uv), pts[:, :2], atol=1e-6)
    assert cam.to_pycolmap().model.name in {"OPENCV", "FULL_OPENCV", "OPENCV_FISHEYE"}


@pytest.mark.parametrize("model", sorted(CAMERAS))
def test_projection_is_opencvs(model):
    """Camera.project (numpy) gives OpenCV's projectPoints pixels, points behind the camera left out."""
    import cv2

    cam = CAMERAS[model]
    pts = np.random.default_rng(1).uniform([-4.0, -3.0, -1.0], [4.0, 3.0, 6.0], (2000, 3))
    uv, front = cam.project(pts)
    assert np.array_equal(front, pts[:, 2] > 1e-6) and np.isnan(uv[~front]).all()
    obj, zero = pts[front].reshape(-1, 1, 3), np.zeros(3)
    fisheye = model == "equidistant"
    ref, _ = (cv2.fisheye if fisheye else cv2).projectPoints(obj, zero, zero, cam.K, np.array(cam.D))
    assert np.allclose(uv[front], ref.reshape(-1, 2), rtol=1e-9, atol=1e-6)  # (points near z = 0 land far out)


def test_missing_topic_error_names_available_topics(tmp_path, images):
    with BagWriter(tmp_path / "b") as w:
        w.write_image(S, images[0], DEMO_CAMERA, "cam")
    with pytest.raises(BagError) as e:
        BagReader(tmp_path / "b", BagTopics(camera_info="/other/camera_info"))
    msg = str(e.value)
    assert "/other/camera_info" in msg and "/camera/image_raw [sensor_msgs/msg/Image]" in msg
    assert "/camera/camera_info [sensor_msgs/msg/CameraInfo]" in msg
    with pytest.raises(BagError, match="neither.*its topics: /camera/camera_info"):
        BagReader(tmp_path / "b", BagTopics(image="/x", compressed="/y"))
    with pytest.raises(BagError, match="not found"):
        BagReader(tmp_path / "nothing")


def test_bad_image_is_skipped_or_raised(tmp_path, images):
    from pram_ros.core.bag import COMPRESSED_T, TYPESTORE, _header

    with BagWriter(tmp_path / "b", compressed="jpeg") as w:
        w.write_image(S, images[0], DEMO_CAMERA, "cam")
        bad = TYPESTORE.types[COMPRESSED_T](header=_header(2 * S, "cam"), format="jpeg",
                                            data=np.frombuffer(b"\xff\xd8 not a jpeg", np.uint8))
        w.write_msg("/camera/image_raw/compressed", COMPRESSED_T, bad, 2 * S)
        w.write_image(3 * S, images[1], DEMO_CAMERA, "cam")
    with BagReader(tmp_path / "b") as r:
        assert [f.stamp_ns for f in r.frames()] == [S, 3 * S]
        with pytest.raises(ImageError, match="corrupt"):
            list(r.frames(strict=True))


class _Msg:
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_decode_rejects_inconsistent_messages():
    ok = encode_image(np.zeros((4, 6, 3), np.uint8), "bgr8")
    assert decode_image(_Msg(**ok)).shape == (4, 6, 3)
    for change, match in [(dict(encoding="yuv422"), "unsupported encoding"),
                          (dict(step=10), "step"),
                          (dict(data=ok["data"][:-5]), "data has"),
                          (dict(height=0), "zero-size"),
                          (dict(height=100000, width=100000), "exceeds")]:
        with pytest.raises(ImageError, match=match):
            decode_image(_Msg(**{**ok, **change}))
    with pytest.raises(ImageError, match="unsupported compressed"):
        decode_compressed(_Msg(format="bmp", data=b"xx"))
    with pytest.raises(ImageError, match="empty"):
        decode_compressed(_Msg(format="png", data=b""))


def test_decode_padded_rows_and_big_endian():
    img = np.arange(4 * 5, dtype=np.uint16).reshape(4, 5) * 1000
    rows = np.zeros((4, 12), np.uint8)  # step 12 > 10 bytes of pixels
    rows[:, :10] = img.astype(">u2").view(np.uint8).reshape(4, 10)
    msg = _Msg(encoding="mono16", height=4, width=5, step=12, is_bigendian=1, data=rows.tobytes())
    assert np.array_equal(decode_image(msg), img)


def test_camera_refuses_absurd_models():
    with pytest.raises(CameraError, match="uncalibrated"):
        Camera(640, 480, 0.0, 0.0, 320, 240)
    with pytest.raises(CameraError, match="unknown distortion"):
        Camera(640, 480, 400, 400, 320, 240, "fancy")
    with pytest.raises(CameraError, match="non-finite"):
        Camera(640, 480, float("nan"), 400, 320, 240)


def test_camera_for_rectified_binned_and_cropped_images():
    """image_rect: P, no distortion left; binning and a region of interest as image_geometry does."""
    from types import SimpleNamespace

    roi = SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0)
    msg = SimpleNamespace(width=640, height=480, distortion_model="plumb_bob", d=[-0.2, 0.05, 0.001, 0.0, 0.0],
                          k=[400, 0, 321, 0, 402, 239, 0, 0, 1], p=[380, 0, 318, 0, 0, 381, 242, 0, 0, 0, 1, 0],
                          binning_x=0, binning_y=0, roi=roi)
    raw = Camera.from_camera_info(msg)
    assert (raw.fx, raw.cx, raw.D[0]) == (400, 321, -0.2)
    rect = Camera.from_camera_info(msg, rectified=True)
    assert (rect.fx, rect.fy, rect.cx, rect.cy) == (380, 381, 318, 242) and not any(rect.D)
    msg.binning_x = msg.binning_y = 2
    msg.roi = SimpleNamespace(x_offset=100, y_offset=40, width=400, height=300)
    small = Camera.from_camera_info(msg, rectified=True)
    assert (small.width, small.height, small.fx, small.cx, small.cy) == (200, 150, 190, 109, 101)


@pytest.mark.parametrize("model", sorted(CAMERAS))
def test_no_keypoints_normalize_to_no_points(model):
    assert CAMERAS[model].normalize(np.zeros((0, 2))).shape == (0, 2)
