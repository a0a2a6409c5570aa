"""Reading and writing bags of the project's contract (docs: bag contract) with `rosbags`.

A bag is read as time-ordered `Frame`s: the decoded image, its camera model, and when the bag
has them the ground-truth camera pose, the odometry pose and the camera extrinsic.
"""
from __future__ import annotations

import bisect
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from .camera import Camera
from .geometry import T_from_pose, pose_from_T
from .images import ImageError, decode_compressed, decode_image, encode_compressed, encode_image
from .tf import TfBuffer, TfError

log = logging.getLogger(__name__)
TYPESTORE = get_typestore(Stores.ROS2_KILTED)
STAMP_TOLERANCE_NS = 1_000_000  # a pose belongs to an image when their stamps agree within 1 ms

IMAGE_T = "sensor_msgs/msg/Image"
COMPRESSED_T = "sensor_msgs/msg/CompressedImage"
INFO_T = "sensor_msgs/msg/CameraInfo"
POSE_T = "geometry_msgs/msg/PoseStamped"
TF_T = "tf2_msgs/msg/TFMessage"


class BagError(ValueError):
    """A bag that does not fit the contract (missing topics, wrong types, no images)."""


@dataclass(frozen=True)
class BagTopics:
    """Topic names of the contract; every tool takes them as options."""

    image: str = "/camera/image_raw"
    compressed: str = "/camera/image_raw/compressed"
    camera_info: str = "/camera/camera_info"
    pose: str = "/ground_truth/camera_pose"
    tf: str = "/tf"
    tf_static: str = "/tf_static"


@dataclass(frozen=True)
class Frames:
    """Frame names used to read odometry and the extrinsic from /tf and /tf_static."""

    map: str = "map"
    odom: str = "odom"
    base: str = "base_link"


@dataclass
class Frame:
    """One image of a bag with everything known about it at its stamp."""

    index: int
    stamp_ns: int
    image: np.ndarray
    camera: Camera
    camera_frame: str
    T_map_camera: np.ndarray | None = None  # ground truth
    T_odom_base: np.ndarray | None = None  # odometry at the image stamp
    T_base_camera: np.ndarray | None = None  # static extrinsic
    T_global_base: np.ndarray | None = None  # the TF chain map -> ... -> base (a SLAM system's pose)

    @property
    def T_odom_camera(self) -> np.ndarray | None:
        """The camera's odometry pose at the image stamp, when both odometry and extrinsic are known."""
        if self.T_odom_base is None or self.T_base_camera is None:
            return None
        return self.T_odom_base @ self.T_base_camera

    @property
    def T_global_camera(self) -> np.ndarray | None:
        """The camera's pose in the global frame through TF (a SLAM system's), when TF and extrinsic have it."""
        if self.T_global_base is None or self.T_base_camera is None:
            return None
        return self.T_global_base @ self.T_base_camera


def stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def transform_to_T(tr: Any) -> np.ndarray:
    t, q = tr.translation, tr.rotation
    return T_from_pose(np.array([t.x, t.y, t.z]), np.array([q.x, q.y, q.z, q.w]))


def pose_to_T(p: Any) -> np.ndarray:
    t, q = p.position, p.orientation
    return T_from_pose(np.array([t.x, t.y, t.z]), np.array([q.x, q.y, q.z, q.w]))


class BagReader:
    """Reads a contract bag (sqlite3 or MCAP). Use as a context manager or call close()."""

    def __init__(self, path: str | Path, topics: BagTopics = BagTopics(), frames: Frames = Frames(),
                 image_transport: str = "auto") -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag not found: {self.path}")
        self.topics, self.frame_names = topics, frames
        try:
            self._reader = AnyReader([self.path], default_typestore=TYPESTORE)
            self._reader.open()
        except Exception as exc:  # rosbags raises several types for damaged bags
            raise BagError(f"cannot open bag {self.path}: {exc}") from exc
        self.available = {c.topic: c.msgtype for c in self._reader.connections}
        self.image_topic, self.compressed = self._pick_image_topic(image_transport)
        self._require(topics.camera_info, INFO_T)
        self._tf: TfBuffer | None = None

    def _describe(self) -> str:
        return ", ".join(f"{t} [{ty}]" for t, ty in sorted(self.available.items())) or "none"

    def _require(self, topic: str, msgtype: str) -> None:
        if topic not in self.available:
            raise BagError(f"bag {self.path} has no topic {topic!r} ({msgtype}); "
                           f"its topics: {self._describe()}")
        if self.available[topic] != msgtype:
            raise BagError(f"topic {topic!r} in {self.path} is {self.available[topic]}, expected {msgtype}")

    def _pick_image_topic(self, transport: str) -> tuple[str, bool]:
        raw, comp = self.topics.image, self.topics.compressed
        if transport not in ("auto", "raw", "compressed"):
            raise ValueError(f"image_transport must be auto, raw or compressed, not {transport!r}")
        if transport == "raw" or (transport == "auto" and raw in self.available):
            self._require(raw, IMAGE_T)
            return raw, False
        if transport == "compressed" or comp in self.available:
            self._require(comp, COMPRESSED_T)
            return comp, True
        raise BagError(f"bag {self.path} has neither {raw!r} ({IMAGE_T}) nor {comp!r} "
                       f"({COMPRESSED_T}); its topics: {self._describe()}")

    def __enter__(self) -> "BagReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._reader.close()

    def _messages(self, topic: str) -> Iterator[tuple[Any, Any]]:
        conns = [c for c in self._reader.connections if c.topic == topic]
        for conn, _, raw in self._reader.messages(connections=conns):
            yield conn, self._reader.deserialize(raw, conn.msgtype)

    def raw_messages(self, topics: list[str]) -> Iterator[tuple[str, str, int, bytes]]:
        """(topic, type, bag time ns, CDR bytes) of the given topics, in time order."""
        conns = [c for c in self._reader.connections if c.topic in topics]
        for conn, t, raw in self._reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, t, bytes(raw)

    def counts(self) -> dict[str, int]:
        """Message count per topic."""
        c: Counter[str] = Counter()
        for conn in self._reader.connections:
            c[conn.topic] += conn.msgcount
        return dict(c)

    def __len__(self) -> int:
        return self.counts().get(self.image_topic, 0)

    @property
    def has_poses(self) -> bool:
        return self.available.get(self.topics.pose) == POSE_T and self.counts().get(self.topics.pose, 0) > 0

    @property
    def has_global_poses(self) -> bool:
        """Whether TF links the global frame (a SLAM system's `map`) to the base frame at all."""
        fn, known = self.frame_names, self.tf_buffer().frames()
        return fn.map != fn.odom and fn.map in known and fn.base in known

    def tf_buffer(self) -> TfBuffer:
        """All of the bag's /tf and /tf_static in one buffer."""
        if self._tf is None:
            buf = TfBuffer(cache_ns=2**62)
            for topic, static in ((self.topics.tf, False), (self.topics.tf_static, True)):
                if self.available.get(topic) != TF_T:
                    continue
                for _, msg in self._messages(topic):
                    for tr in msg.transforms:
                        try:
                            buf.set_transform(tr.header.frame_id, tr.child_frame_id, stamp_ns(tr.header),
                                              transform_to_T(tr.transform), static)
                        except TfError as exc:
                            log.warning("skipping transform in %s: %s", topic, exc)
            self._tf = buf
        return self._tf

    def poses(self) -> tuple[list[int], list[np.ndarray]]:
        """Ground-truth T_map_camera, sorted by stamp."""
        items = sorted((stamp_ns(m.header), pose_to_T(m.pose)) for _, m in self._messages(self.topics.pose)) \
            if self.has_poses else []
        return [s for s, _ in items], [T for _, T in items]

    def cameras(self) -> dict[Camera, int]:
        """The distinct cameras on camera_info, in order of first appearance, with their message counts
        (a bag from several cameras, or one whose calibration changed)."""
        counts: dict[Camera, int] = {}
        for _, m in self._messages(self.topics.camera_info):
            c = Camera.from_camera_info(m)
            counts[c] = counts.get(c, 0) + 1
        return counts

    def frames(self, strict: bool = False) -> Iterator[Frame]:
        """Time-ordered frames; an undecodable image is skipped with a warning (raised if strict)."""
        infos = sorted((stamp_ns(m.header), m) for _, m in self._messages(self.topics.camera_info))
        if not infos:
            raise BagError(f"bag {self.path} has no message on {self.topics.camera_info!r}")
        info_stamps = [s for s, _ in infos]
        cameras: dict[int, Camera] = {}
        pose_stamps, pose_Ts = self.poses()
        tf = self.tf_buffer()
        fn = self.frame_names
        global_poses = self.has_global_poses
        index = 0
        for _, msg in self._messages(self.image_topic):
            t = stamp_ns(msg.header)
            try:
                image = decode_compressed(msg) if self.compressed else decode_image(msg)
                k = max(0, bisect.bisect_right(info_stamps, t) - 1)
                if k not in cameras:
                    cameras[k] = Camera.from_camera_info(infos[k][1])
                camera = cameras[k]
                if image.shape[:2] != (camera.height, camera.width):
                    raise ImageError(f"image {image.shape[1]}x{image.shape[0]} does not match camera info "
                                     f"{camera.width}x{camera.height}")
            except (ImageError, ValueError) as exc:
                if strict:
                    raise
                log.warning("skipping image at %.3f s: %s", t * 1e-9, exc)
                continue
            cam_frame = msg.header.frame_id.lstrip("/")
            frame = Frame(index, t, image, camera, cam_frame)
            j = bisect.bisect_left(pose_stamps, t - STAMP_TOLERANCE_NS)
            if j < len(pose_stamps) and abs(pose_stamps[j] - t) <= STAMP_TOLERANCE_NS:
                frame.T_map_camera = pose_Ts[j]
            frame.T_odom_base = tf.lookup_or_none(fn.odom, fn.base, t)
            if global_poses:
                frame.T_global_base = tf.lookup_or_none(fn.map, fn.base, t)
            if cam_frame:
                frame.T_base_camera = tf.lookup_or_none(fn.base, cam_frame, t)
            index += 1
            yield frame


def _time(ns: int) -> Any:
    return TYPESTORE.types["builtin_interfaces/msg/Time"](sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def _header(ns: int, frame_id: str) -> Any:
    return TYPESTORE.types["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame_id)


def _transform_stamped(ns: int, parent: str, child: str, T: np.ndarray) -> Any:
    ty = TYPESTORE.types
    p, q = pose_from_T(T)
    return ty["geometry_msgs/msg/TransformStamped"](
        header=_header(ns, parent), child_frame_id=child,
        transform=ty["geometry_msgs/msg/Transform"](
            translation=ty["geometry_msgs/msg/Vector3"](x=p[0], y=p[1], z=p[2]),
            rotation=ty["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3])))


def _qos(reliable: bool, transient_local: bool) -> list[Qos]:
    zero = QosTime(0, 0)
    return [Qos(QosHistory.KEEP_LAST, 1 if transient_local else 10,
                QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
                QosDurability.TRANSIENT_LOCAL if transient_local else QosDurability.VOLATILE,
                zero, zero, QosLiveliness.AUTOMATIC, zero, False)]


class BagWriter:
    """Writes contract bags. `compressed` is None (raw Image in `encoding`), 'jpeg' or 'png'."""

    def __init__(self, path: str | Path, storage: str = "sqlite3", topics: BagTopics = BagTopics(),
                 encoding: str = "bgr8", compressed: str | None = None, overwrite: bool = False) -> None:
        self.path = Path(path)
        if storage not in ("sqlite3", "mcap"):
            raise ValueError(f"storage must be sqlite3 or mcap, not {storage!r}")
        if self.path.exists():
            if not overwrite:
                raise FileExistsError(f"{self.path} exists (pass overwrite to replace it)")
            shutil.rmtree(self.path)
        self.topics, self.encoding, self.compressed = topics, encoding, compressed
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._writer.open()
        self._conns: dict[str, Any] = {}

    def _conn(self, topic: str, msgtype: str, reliable: bool = True, transient_local: bool = False) -> Any:
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=_qos(reliable, transient_local))
        return self._conns[topic]

    def write_msg(self, topic: str, msgtype: str, msg: Any, ns: int, **qos: bool) -> None:
        self.write_cdr(topic, msgtype, TYPESTORE.serialize_cdr(msg, msgtype), ns, **qos)

    def write_cdr(self, topic: str, msgtype: str, data: bytes, ns: int, **qos: bool) -> None:
        """An already serialized (CDR) message, e.g. from rclpy.serialization."""
        self._writer.write(self._conn(topic, msgtype, **qos), ns, data)

    def write_image(self, ns: int, image: np.ndarray, camera: Camera, frame_id: str) -> None:
        """The image (raw or compressed) and its camera info at stamp ns."""
        ty = TYPESTORE.types
        if self.compressed:
            msg = ty[COMPRESSED_T](header=_header(ns, frame_id), **encode_compressed(image, self.compressed))
            self.write_msg(self.topics.compressed, COMPRESSED_T, msg, ns)
        else:
            msg = ty[IMAGE_T](header=_header(ns, frame_id), **encode_image(image, self.encoding))
            self.write_msg(self.topics.image, IMAGE_T, msg, ns)
        self.write_camera_info(ns, camera, frame_id)

    def write_compressed_bytes(self, ns: int, data: bytes, fmt: str, camera: Camera, frame_id: str) -> None:
        """Already-encoded jpeg/png bytes (no re-encoding) and the camera info."""
        msg = TYPESTORE.types[COMPRESSED_T](header=_header(ns, frame_id), format=fmt,
                                            data=np.frombuffer(data, dtype=np.uint8))
        self.write_msg(self.topics.compressed, COMPRESSED_T, msg, ns)
        self.write_camera_info(ns, camera, frame_id)

    def write_camera_info(self, ns: int, camera: Camera, frame_id: str) -> None:
        ty = TYPESTORE.types
        f = camera.camera_info_fields()
        roi = ty["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = ty[INFO_T](header=_header(ns, frame_id), height=f["height"], width=f["width"],
                         distortion_model=f["distortion_model"], d=f["d"], k=f["k"], r=f["r"], p=f["p"],
                         binning_x=0, binning_y=0, roi=roi)
        self.write_msg(self.topics.camera_info, INFO_T, msg, ns)

    def write_pose(self, ns: int, T_map_camera: np.ndarray, map_frame: str = "map") -> None:
        ty = TYPESTORE.types
        p, q = pose_from_T(T_map_camera)
        pose = ty["geometry_msgs/msg/Pose"](
            position=ty["geometry_msgs/msg/Point"](x=p[0], y=p[1], z=p[2]),
            orientation=ty["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]))
        self.write_msg(self.topics.pose, POSE_T, ty[POSE_T](header=_header(ns, map_frame), pose=pose), ns)

    def write_tf(self, ns: int, transforms: Sequence[tuple[str, str, np.ndarray]], static: bool = False) -> None:
        """(parent, child, T_parent_child) transforms on /tf, or /tf_static when static."""
        msg = TYPESTORE.types[TF_T](transforms=[_transform_stamped(ns, p, c, T) for p, c, T in transforms])
        topic = self.topics.tf_static if static else self.topics.tf
        self.write_msg(topic, TF_T, msg, ns, transient_local=static)

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> "BagWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
