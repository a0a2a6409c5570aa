"""The `localizer` lifecycle node: camera images in, map-frame poses and TF out.

configure loads the map and warms up the networks; activate subscribes; deactivate stops
publishing; cleanup frees the map. Frames arrive into a one-slot mailbox: a worker thread always
processes the newest one and older ones are dropped, so latency and memory stay bounded.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Empty, SetBool, Trigger
from tf2_msgs.msg import TFMessage
from visualization_msgs.msg import Marker, MarkerArray

from ..core.camera import Camera, CameraError
from ..core.geometry import T_from_pose, invert, planar_covariance, planar_pose
from ..core.images import ImageError, decode_compressed, decode_image
from ..core.localizer import Localizer, LocalizerConfig
from ..core.map import MapError, frame_problem
from ..core.params import problems
from ..core.tf import TfBuffer, TfError
from . import run_node
from .conversions import image_to_msg, ns_to_time, pose_msgs, pose_to_T, time_to_ns, transform_msg, transform_to_T
from .params import LOCALIZER_PARAMETERS as PARAMETERS
from .params import RUNTIME, declare

LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
TF_STATIC = QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)

MAP_ERRORS = (MapError, ValueError, OSError, RuntimeError)  # what loading a map can raise
RELOAD = ("map_path", "device", "fp16")  # parameters that need the map and networks loaded again
BOND_TIMEOUT_S = 4.0  # Nav2's lifecycle manager default (bond_timeout)
CAMERA_INFO_WAIT_S = 0.5  # how long the first image waits for the first camera_info

@dataclass
class Stats:
    received: int = 0
    dropped: int = 0
    processed: int = 0
    localized: int = 0
    errors: int = 0
    stamp_rejected: int = 0  # duplicate, out-of-order or far-future image stamps
    without_odometry: int = 0  # frames that needed odometry at their stamp and had none in time
    answered: int = 0  # frames the worker took, whatever the outcome (received = answered + dropped)
    answered_stamp_ns: int = 0  # the last of them
    last_error: str = ""
    warning: str = ""  # a lasting degraded state of the TF output (odometry stopped); "" when none
    last_fix_ns: int | None = None
    last_stamp_ns: int | None = None
    last: dict = field(default_factory=dict)


class LocalizerNode(LifecycleNode):
    def __init__(self, node_name: str = "localizer", **kwargs) -> None:
        super().__init__(node_name, **kwargs)
        declare(self, PARAMETERS, RUNTIME)
        self._check_or_raise()
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        self.loc: Localizer | None = None
        self.tf = TfBuffer(cache_ns=30_000_000_000)
        self.tf_lock = threading.Lock()
        self.camera: Camera | None = None
        self._camera_info: CameraInfo | None = None
        self.stats = Stats()
        self.active = False
        self._slot: tuple | None = None
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._frame_issue: tuple[bytes, str] | None = None  # what stopped the worker's current frame
        self._stop = False
        self._latest_map_tf: tuple[str, np.ndarray] | None = None  # (child frame, T_map_child)
        self._image_sub = None
        self._tf_timer = None
        self._served: dict = {}  # the RELOAD parameters of the map being served
        self._reload: threading.Thread | None = None
        self._bond = None
        # Publishers and always-on inputs exist from construction: TF and camera info are needed
        # before activation, and diagnostics report an unconfigured node too.
        self.pub_pose = self.create_publisher(PoseWithCovarianceStamped, "pose", LATCHED)
        self.pub_pose_stamped = self.create_publisher(PoseStamped, "pose_stamped", 10)
        self.pub_tf = self.create_publisher(TFMessage, "/tf", 100)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.pub_debug = self.create_publisher(Image, "debug/image", 2)
        self.pub_landmarks = self.create_publisher(MarkerArray, "landmarks", LATCHED)
        self.create_subscription(TFMessage, "/tf", lambda m: self._on_tf(m, False), 100)
        self.create_subscription(TFMessage, "/tf_static", lambda m: self._on_tf(m, True), TF_STATIC)
        self.create_subscription(CameraInfo, "camera_info", self._on_camera_info, qos_profile_sensor_data)
        self.create_subscription(PoseWithCovarianceStamped, "initialpose", self._on_initialpose, 5)
        self.create_service(Trigger, "relocalize", self._srv_relocalize)
        self.create_service(Empty, "reinitialize_global_localization", self._srv_reinitialize)
        self.create_service(SetBool, "set_tracking", self._srv_set_tracking)
        self.create_timer(1.0, self._publish_diagnostics)
        if self.p("autostart"):
            self.create_timer(0.0, self._autostart_once)

    # -- parameters ---------------------------------------------------------------------------

    def p(self, name: str):
        return self.get_parameter(name).value

    def _check_or_raise(self) -> None:
        found = problems(PARAMETERS, {n: self.p(n) for n in PARAMETERS})
        if found:
            raise ValueError("invalid parameters: " + "; ".join(found))

    def _check_parameters(self, params) -> SetParametersResult:
        found = problems(PARAMETERS, {p.name: p.value for p in params})
        return SetParametersResult(successful=not found, reason="; ".join(found))

    def _apply_parameters(self, params) -> None:
        """Runtime parameters take effect here (the others are read-only, or read at each use)."""
        names = {p.name for p in params}
        if self.loc is not None and names & {"use_tracking", "ransac_thresh_px", "min_inliers"}:
            self.loc.conf = self._localizer_config(self.loc.conf)
        if self.loc is not None and names & set(RELOAD):
            self._start_reload()
        if self.active and names & {"image_transport", "image_reliability"}:
            self._subscribe_images()
        if self.active and "tf_publish_rate" in names:
            self._start_tf_timer()

    def _localizer_config(self, base: LocalizerConfig = LocalizerConfig()) -> LocalizerConfig:
        return replace(base, device=self.p("device"), half=self.p("fp16"), tracking=self.p("use_tracking"),
                       fine=replace(base.fine, enabled=self.p("use_fine")),
                       flow=replace(base.flow, enabled=self.p("use_flow")), matcher=self.p("matcher"),
                       matcher_path=self.p("matcher_path"),
                       registration=replace(base.registration, ransac_thresh_px=self.p("ransac_thresh_px"),
                                            min_inliers=self.p("min_inliers")))

    def _start_reload(self) -> None:
        """Load the map (and networks) the parameters now name, off the executor thread, so the
        map transform keeps being re-sent meanwhile; the old map serves until the new one is ready."""
        wanted = {n: self.p(n) for n in RELOAD}
        if wanted == self._served or (self._reload is not None and self._reload.is_alive()
                                      and wanted == self._reload.wanted):
            return
        self.wait_for_reload()
        self._reload = threading.Thread(target=self._do_reload, args=(wanted,), daemon=True)
        self._reload.wanted = wanted
        self._reload.start()

    def wait_for_reload(self, timeout: float | None = None) -> None:
        """Block until a map reload in progress has finished (tests, shutdown)."""
        if self._reload is not None:
            self._reload.join(timeout)

    def _do_reload(self, wanted: dict) -> None:
        try:
            loc = self._open_map(wanted["map_path"], self._localizer_config())
        except MAP_ERRORS as exc:
            self._error(f"map reload failed, still serving {self._served.get('map_path')}: {exc}")
            # the parameters name what is served again (this re-set starts no reload)
            self.set_parameters([rclpy.parameter.Parameter(n, value=v) for n, v in self._served.items()
                                 if self.p(n) != v])
            return
        self.loc, self._served = loc, wanted
        self._latest_map_tf = None
        self.get_logger().info(f"map reloaded: {wanted['map_path']}, {loc.map.num_landmarks} landmarks on "
                               f"{loc.device}")
        self.pub_landmarks.publish(self._landmark_markers())

    def _open_map(self, path: str, conf: LocalizerConfig) -> Localizer:
        """Load and verify the map (its frame included) and run the networks once, so the first
        frame is not slow."""
        if not path:
            raise MapError("parameter map_path is empty")
        if self.p("publish_tf") and self.p("tf_mode") == "map_odom" and self.p("map_frame") == self.p("odom_frame"):
            raise MapError(f"map_frame and odom_frame are both {self.p('map_frame')!r}: map -> odom would be a "
                           f"frame's transform to itself")
        loc = Localizer(path, conf)
        problem = frame_problem(loc.map, self.p("map_frame"))
        if problem and not self.p("allow_any_map_frame"):
            raise MapError(f"{problem}: rebuild the map in {self.p('map_frame')!r} (build-map --pose-source "
                           f"ground_truth or tf), set map_frame to the map's frame, or set allow_any_map_frame "
                           f"to serve it anyway")
        if problem:
            self.get_logger().warning(f"{problem}; serving it as {self.p('map_frame')!r} (allow_any_map_frame)")
        loc.warm_up(loc.map.cameras[0])
        return loc

    # -- life cycle ---------------------------------------------------------------------------

    def _autostart_once(self) -> None:
        for t in list(self.timers):
            if t.timer_period_ns == 0:
                self.destroy_timer(t)
        if self.trigger_configure() == TransitionCallbackReturn.SUCCESS:
            self.trigger_activate()

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        path = self.p("map_path")
        try:
            self.loc = self._open_map(path, self._localizer_config())
        except MAP_ERRORS as exc:
            self.get_logger().error(f"cannot load map {path!r}: {exc}")
            self.stats.last_error = f"map: {exc}"
            self.loc = None
            return TransitionCallbackReturn.FAILURE
        self._served = {n: self.p(n) for n in RELOAD}
        self.get_logger().info(f"map {path}: {len(self.loc.points)} points, {self.loc.map.num_landmarks} landmarks, "
                               f"features {self.loc.map.features['name']} on {self.loc.device}")
        self.pub_landmarks.publish(self._landmark_markers())
        self._stop = False
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._subscribe_images()
        self._start_tf_timer()
        self.active = True
        self._drop_bond()
        self._form_bond()
        return super().on_activate(state)

    def _subscribe_images(self) -> None:
        """(Re)subscribe to the images with the transport and reliability the parameters name."""
        if self._image_sub is not None:
            self.destroy_subscription(self._image_sub)
        qos = qos_profile_sensor_data if self.p("image_reliability") == "best_effort" else \
            QoSProfile(depth=2, reliability=ReliabilityPolicy.RELIABLE)
        if self.p("image_transport") == "compressed":
            self._image_sub = self.create_subscription(CompressedImage, "image/compressed", self._on_image, qos)
        else:
            self._image_sub = self.create_subscription(Image, "image", self._on_image, qos)

    def _start_tf_timer(self) -> None:
        if self._tf_timer is not None:
            self.destroy_timer(self._tf_timer)
        self._tf_timer = self.create_timer(1.0 / self.p("tf_publish_rate"), self._resend_tf)

    def _form_bond(self) -> None:
        """A bond with Nav2's lifecycle manager (topic `bond`, id = node name), as nav2_util nodes
        form one on activation; the manager aborts bring-up without it."""
        period = self.p("bond_heartbeat_period")
        if period <= 0 or self._bond is not None:
            return
        try:
            from bondpy.bondpy import Bond
        except ImportError:
            self.get_logger().info("bondpy is not installed: no bond with a lifecycle manager")
            return
        self._bond = Bond(self, "bond", self.get_name())
        self._bond.heartbeat_period = period
        self._bond.heartbeat_timeout = BOND_TIMEOUT_S
        self._bond.start()

    def _release_bond(self) -> None:
        """End the bond on purpose: the manager sees a deliberate end, not a crash."""
        if self._bond is not None and not self._bond.is_broken() and self.context.ok():
            self._bond.break_bond()

    def _drop_bond(self) -> None:
        """Remove a released bond's topic endpoints (kept until now so its last word got out).

        Not with Bond.shutdown(): bondpy 4.0 destroys its subscription behind the node's back, and
        the executor then fails on the dead handle. So: stop its thread and timers, and let the node
        destroy the endpoints."""
        b, self._bond = self._bond, None
        if b is None:
            return
        with b.lock:
            b.is_shutdown = True  # its publishing thread ends; its __del__ does nothing more
            b.condition.notify_all()
        for timer in (b.connect_timer, b.heartbeat_timer, b.disconnect_timer):
            timer.cancel()
        if getattr(b, "sub", None) is not None:
            self.destroy_subscription(b.sub)
        self.destroy_publisher(b.pub)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._release_bond()
        for attr, destroy in (("_image_sub", self.destroy_subscription), ("_tf_timer", self.destroy_timer)):
            if getattr(self, attr) is not None:
                destroy(getattr(self, attr))
                setattr(self, attr, None)
        with self._cv:
            self._slot = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._release_bond()
        self._drop_bond()
        self._stop_worker()
        self.wait_for_reload()
        self.loc = None
        self._served = {}
        self._latest_map_tf = None
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.active = False
        self._release_bond()
        self._drop_bond()
        self._stop_worker()
        self.wait_for_reload()
        return TransitionCallbackReturn.SUCCESS

    def _stop_worker(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._worker is not None:
            self._worker.join(timeout=10)
        self._worker = None

    # -- inputs -------------------------------------------------------------------------------

    def _on_tf(self, msg: TFMessage, static: bool) -> None:
        own = self.p("map_frame")
        with self.tf_lock:
            for tr in msg.transforms:
                if tr.header.frame_id.lstrip("/") == own:
                    continue  # our own map -> odom/base_link: feeding it back would re-parent the tree
                try:
                    self.tf.set_transform(tr.header.frame_id, tr.child_frame_id, time_to_ns(tr.header.stamp),
                                          transform_to_T(tr.transform), static)
                except (TfError, ValueError) as exc:
                    self._error(f"bad transform {tr.header.frame_id}->{tr.child_frame_id}: {exc}")

    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            self.camera = Camera.from_camera_info(msg, rectified=self._rectified())
        except (CameraError, ValueError) as exc:
            self._error(f"camera info rejected: {exc}")

    def _rectified(self) -> bool:
        """Whether images come rectified (image_rect, image_rect_color...): then camera_info's P
        is their camera, with no distortion left to remove."""
        mode = self.p("rectified")
        if mode != "auto":
            return mode == "always"
        topic = "image/compressed" if self.p("image_transport") == "compressed" else "image"
        return re.search(r"(^|/)image_rect", self.resolve_topic_name(topic)) is not None

    def _on_image(self, msg) -> None:
        self.stats.received += 1
        with self._cv:
            if self._slot is not None:
                self.stats.dropped += 1  # the worker was busy: the older frame is stale
            self._slot = (msg, time.monotonic())
            self._cv.notify()

    def _on_initialpose(self, msg: PoseWithCovarianceStamped) -> None:
        """A base pose guess (RViz's 2D Pose Estimate, a BT), in any frame TF connects to the map.
        Its position covariance widens the search: landmarks seen from within 3 sigma go first."""
        if self.loc is None:
            return
        frame = msg.header.frame_id.lstrip("/") or self.p("map_frame")
        T_map_frame = self._map_from(frame, time_to_ns(msg.header.stamp))
        if T_map_frame is None:
            self._error(f"initial pose in frame {frame!r} refused: no transform {self.p('map_frame')} -> {frame}",
                        level=DiagnosticStatus.WARN)
            return
        T_map_base = T_map_frame @ pose_to_T(msg.pose.pose)
        cov = np.array(msg.pose.covariance, float).reshape(6, 6)[:3, :3]
        cov = T_map_frame[:3, :3] @ cov @ T_map_frame[:3, :3].T
        T_base_cam = self._extrinsic(self.p("camera_frame") or self._last_camera_frame())
        self.loc.set_prior(T_map_base @ (T_base_cam if T_base_cam is not None else np.eye(4)), cov)
        self.get_logger().info(f"initial pose received in {frame!r}: the next frame starts from it")

    def _map_from(self, frame: str, stamp: int) -> np.ndarray | None:
        """T_map_frame: identity for the map itself, else through this node's own map -> odom
        (or map -> base) and the TF tree below it; None when they do not connect."""
        if frame == self.p("map_frame"):
            return np.eye(4)
        if self._latest_map_tf is None:
            return None
        child, T_map_child = self._latest_map_tf
        T_child_frame = np.eye(4) if frame == child else self._lookup(child, frame, stamp)
        return None if T_child_frame is None else T_map_child @ T_child_frame

    def _lookup(self, target: str, source: str, stamp: int) -> np.ndarray | None:
        """T_target_source at `stamp`, else at the newest time the source frame is known; None when
        TF does not connect them."""
        with self.tf_lock:
            for t in (stamp, self.tf.latest_stamp(source)):
                if t is not None:
                    try:
                        return self.tf.lookup(target, source, t)
                    except TfError:
                        pass
        return None

    def _srv_relocalize(self, req, resp):
        self._drop_track()
        resp.success, resp.message = self.loc is not None, "track dropped" if self.loc else "not configured"
        return resp

    def _srv_reinitialize(self, req, resp):
        """AMCL's global relocalization service (Nav2's behaviour trees call it)."""
        self._drop_track()
        return resp

    def _drop_track(self) -> None:
        if self.loc is not None:
            self.loc.reset()

    def _srv_set_tracking(self, req, resp):
        self.set_parameters([rclpy.parameter.Parameter("use_tracking", value=bool(req.data))])
        resp.success, resp.message = True, f"tracking {'on' if req.data else 'off'}"
        return resp

    # -- processing ---------------------------------------------------------------------------

    def _work(self) -> None:
        last_t = 0.0
        while True:
            with self._cv:
                while self._slot is None and not self._stop:
                    self._cv.wait(timeout=0.5)
                if self._stop:
                    return
                msg, _ = self._slot
                self._slot = None
            rate = self.p("max_rate_hz")
            if rate > 0 and time.monotonic() - last_t < 1.0 / rate:
                self.stats.dropped += 1
                continue
            last_t = time.monotonic()
            self._frame_issue = None
            posed = False
            try:
                posed = self._process(msg)
            except Exception as exc:  # the node must survive anything a frame can do
                self._error(f"frame failed: {type(exc).__name__}: {exc}")
            finally:
                # Every frame gets an answer: its pose, or a diagnostic saying why not (the one
                # that stopped it, else the usual status with the frame's reason).
                self.stats.answered += 1
                self.stats.answered_stamp_ns = time_to_ns(msg.header.stamp)
                issue, self._frame_issue = self._frame_issue, None
                if issue or not posed:
                    self._publish_diagnostics(*(issue or (None, "")))

    def _last_camera_frame(self) -> str:
        return self.stats.last.get("camera_frame", "")

    def _extrinsic(self, camera_frame: str) -> np.ndarray | None:
        """T_base_camera from the parameter or /tf_static; None when unknown."""
        ext = list(self.p("camera_extrinsic"))
        if len(ext) == 7:
            return T_from_pose(np.array(ext[:3]), np.array(ext[3:]))
        return self._lookup(self.p("base_frame"), camera_frame, 0) if camera_frame else None

    def _process(self, msg) -> bool:
        """Localize one frame and publish its pose; False when no pose came of it."""
        loc = self.loc  # a map reload swaps self.loc; this frame finishes with the map it started on
        if not self.active or loc is None:
            return False
        stamp = time_to_ns(msg.header.stamp)
        if not self._stamp_ok(stamp, loc):
            return False
        try:
            image = decode_compressed(msg) if isinstance(msg, CompressedImage) else decode_image(msg)
        except ImageError as exc:
            self._error(f"image rejected: {exc}")
            return False
        camera = self._camera_within(CAMERA_INFO_WAIT_S)
        if camera is None:
            self._error("no camera_info received yet: waiting", level=DiagnosticStatus.WARN)
            return False
        if image.shape[:2] != (camera.height, camera.width):
            self._error(f"image {image.shape[1]}x{image.shape[0]} does not match camera_info "
                        f"{camera.width}x{camera.height}")
            return False
        cam_frame = self.p("camera_frame") or msg.header.frame_id
        self.stats.last["camera_frame"] = cam_frame
        T_base_cam = self._extrinsic(cam_frame)
        if T_base_cam is None and self.p("require_extrinsic"):
            self._error(f"no transform {self.p('base_frame')} -> {cam_frame!r} yet (extrinsic): waiting",
                        level=DiagnosticStatus.WARN)
            return False
        body_is_camera = T_base_cam is None
        T_base_cam = np.eye(4) if body_is_camera else T_base_cam
        base = cam_frame if body_is_camera else self.p("base_frame")
        # odometry at the image stamp (which may wait briefly for it) only where something uses it:
        # tracking starts from the last pose moved by it, and map -> odom and planar mode need it
        needs_odometry = self.p("use_tracking") or self.p("planar") or \
            (self.p("publish_tf") and self.p("tf_mode") == "map_odom")
        T_odom_base = self._odometry_at(self.p("odom_frame"), base, stamp) \
            if needs_odometry and base == self.p("base_frame") else None
        self.stats.without_odometry += needs_odometry and base == self.p("base_frame") and T_odom_base is None
        t0 = time.perf_counter()
        self.stats.last_stamp_ns = stamp
        res = loc.localize(image, camera, T_camera_body=invert(T_base_cam),
                           T_odom_camera=None if T_odom_base is None else T_odom_base @ T_base_cam, stamp_ns=stamp)
        self.stats.processed += 1
        self.stats.last.update(mode=res.mode if res.success else "lost", keypoints=res.num_keypoints,
                               inliers=res.num_inliers, landmarks=len(res.landmarks), fine=res.fine,
                               optical_flow=res.flow,
                               processing_ms=(time.perf_counter() - t0) * 1e3, reason=res.reason)
        if self.p("publish_debug_image") and self.pub_debug.get_subscription_count() > 0:
            self.pub_debug.publish(image_to_msg(debug_image(image, res), "bgr8", stamp, cam_frame))
        if not res.success or not self.active:
            return False
        T_map_base, cov = res.T_map_camera @ invert(T_base_cam), res.covariance
        if self.p("planar"):
            T_map_base, cov = planar_pose(T_map_base, T_odom_base), planar_covariance(cov)
        pc, ps = pose_msgs(T_map_base, cov, stamp, self.p("map_frame"))
        self.pub_pose.publish(pc)
        self.pub_pose_stamped.publish(ps)
        self.stats.localized += 1
        self.stats.last_fix_ns = stamp
        self.stats.last["latency_ms"] = (self.get_clock().now().nanoseconds - stamp) * 1e-6
        if self.p("publish_tf"):
            self._set_map_tf(T_map_base, T_odom_base, base, stamp)
        return True

    def _camera_within(self, wait_s: float) -> Camera | None:
        """The camera, waiting briefly for a first camera_info: a driver sends it with each image,
        on its own topic, so the very first image can arrive a moment before it."""
        deadline = time.monotonic() + wait_s
        while self.camera is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.camera

    def _stamp_ok(self, stamp: int, loc: Localizer) -> bool:
        """Drop duplicate, slightly out-of-order and far-future stamps; a jump back of more than
        a second (a bag restarted, a clock reset) starts a new track instead."""
        last, now = self.stats.last_stamp_ns, self.get_clock().now().nanoseconds
        ahead = (stamp - now) * 1e-9
        problem = ""
        if now > 0 and ahead > self.p("future_stamp_tolerance_s"):
            problem = f"image stamp {ahead:.1f} s ahead of the clock: dropped"
        elif last is not None and stamp <= last:
            if last - stamp <= 1_000_000_000:
                problem = f"image stamp not after the last processed one ({(stamp - last) * 1e-9:+.3f} s): dropped"
            else:
                self._error(f"time jumped back {(last - stamp) * 1e-9:.1f} s: track reset", DiagnosticStatus.WARN)
                loc.reset()
        if problem:
            self.stats.stamp_rejected += 1
            self._error(problem, DiagnosticStatus.WARN)
        return not problem

    def _set_map_tf(self, T_map_base: np.ndarray, T_odom_base: np.ndarray | None, base: str, stamp: int) -> None:
        """map -> odom from odometry at the image stamp (REP-105). Without any odometry yet:
        map -> base. Odometry that stopped: no map transform (base already has a parent)."""
        odom = self.p("odom_frame")
        self.stats.warning = ""
        if self.p("tf_mode") == "map_odom" and base == self.p("base_frame"):
            if T_odom_base is not None:
                self._latest_map_tf = (odom, T_map_base @ invert(T_odom_base))
                self.stats.last["tf"] = f"{self.p('map_frame')} -> {odom}"
                self._resend_tf(stamp)
                return
            with self.tf_lock:
                seen = self.tf.latest_stamp(base)
            if seen is not None:
                self._latest_map_tf = None
                self.stats.last["tf"] = "none"
                self.stats.warning = (f"odometry stopped ({odom} -> {base} last at {seen * 1e-9:.2f} s, image at "
                                      f"{stamp * 1e-9:.2f} s): {self.p('map_frame')} -> {odom} not published; "
                                      f"poses still are")
                self.get_logger().warning(self.stats.warning, throttle_duration_sec=5.0)
                return
            self.stats.last["tf"] = f"no {odom} -> {base} yet: publishing {self.p('map_frame')} -> {base}"
        self._latest_map_tf = (base, T_map_base)
        self._resend_tf(stamp)

    def _odometry_at(self, odom: str, base: str, stamp: int, wait_s: float = 0.25) -> np.ndarray | None:
        """T_odom_base at the image stamp, waiting briefly for odometry that lags the image."""
        deadline = time.monotonic() + wait_s
        while True:
            with self.tf_lock:
                try:
                    return self.tf.lookup(odom, base, stamp)
                except TfError:
                    latest = self.tf.latest_stamp(base)
            if latest is None or latest >= stamp or time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def _resend_tf(self, stamp: int | None = None) -> None:
        if not self.active or self._latest_map_tf is None or not self.p("publish_tf"):
            return
        child, T = self._latest_map_tf
        now = stamp if stamp is not None else self.get_clock().now().nanoseconds
        t = now + int(self.p("transform_tolerance") * 1e9)
        self.pub_tf.publish(TFMessage(transforms=[transform_msg(self.p("map_frame"), child, T, t)]))

    # -- outputs ------------------------------------------------------------------------------

    def _error(self, text: str, level: bytes = DiagnosticStatus.ERROR) -> None:
        self.stats.errors += level == DiagnosticStatus.ERROR
        self.stats.last_error = text
        self.stats.last["error_level"] = level
        self.get_logger().warning(text, throttle_duration_sec=2.0)
        if threading.current_thread() is self._worker:
            self._frame_issue = (level, text)  # published once, as the frame's answer
        else:
            self._publish_diagnostics(level, text)

    def _publish_diagnostics(self, level: bytes | None = None, message: str = "") -> None:
        s, now = self.stats, self.get_clock().now().nanoseconds
        since = (now - s.last_fix_ns) * 1e-9 if s.last_fix_ns is not None else float("inf")
        if level is None:
            if self.loc is None:
                level, message = DiagnosticStatus.ERROR, s.last_error or "not configured: no map loaded"
            elif not self.active:
                level, message = DiagnosticStatus.WARN, "inactive"
            elif since > self.p("stale_fix_s"):
                level, message = DiagnosticStatus.WARN, f"stale fix: last {since:.1f} s ago"
            elif s.warning or self.loc.device_warning:
                level, message = DiagnosticStatus.WARN, s.warning or self.loc.device_warning
            else:
                level, message = DiagnosticStatus.OK, "localized"
        values = {"localized": str(s.last.get("mode", "lost") != "lost"), "mode": s.last.get("mode", "none"),
                  "keypoints": s.last.get("keypoints", 0), "landmarks": s.last.get("landmarks", 0),
                  "inliers": s.last.get("inliers", 0), "fine": s.last.get("fine", False),
                  "optical_flow": s.last.get("optical_flow", False),
                  "processing_ms": f"{s.last.get('processing_ms', 0):.1f}",
                  "latency_ms": f"{s.last.get('latency_ms', 0):.1f}", "time_since_fix_s": f"{since:.2f}",
                  "frames_received": s.received, "frames_dropped": s.dropped, "frames_processed": s.processed,
                  "frames_localized": s.localized, "stamps_rejected": s.stamp_rejected, "errors": s.errors,
                  "frames_without_odometry": s.without_odometry,
                  "frames_answered": s.answered, "answered_stamp_ns": s.answered_stamp_ns,
                  "last_error": s.last_error,
                  "tf": s.last.get("tf", ""), "reason": s.last.get("reason", ""),
                  "device": str(self.loc.device) if self.loc else "", "device_warning":
                      self.loc.device_warning if self.loc else ""}
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: pram localizer", message=message,
                              hardware_id="camera")
        st.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = ns_to_time(now)
        self.pub_diag.publish(arr)

    def _landmark_markers(self) -> MarkerArray:
        m = self.loc.map
        mk = Marker(ns="pram_landmarks", id=0, type=Marker.POINTS, action=Marker.ADD)
        mk.header.frame_id = self.p("map_frame")
        mk.scale.x = mk.scale.y = 0.03
        from geometry_msgs.msg import Point
        from std_msgs.msg import ColorRGBA

        colors = _palette(m.num_landmarks + 1)
        mk.points = [Point(x=float(x), y=float(y), z=float(z)) for x, y, z in m.points]
        mk.colors = [ColorRGBA(r=float(c[2]) / 255, g=float(c[1]) / 255, b=float(c[0]) / 255, a=1.0)
                     for c in colors[m.labels]]
        mk.pose.orientation.w = 1.0
        return MarkerArray(markers=[mk])


def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.integers(40, 255, (max(n, 1), 3)).astype(np.uint8)


def debug_image(image: np.ndarray, res) -> np.ndarray:
    """Keypoints coloured by recognized landmark (grey: none), inliers circled in green."""
    import cv2

    from ..core.images import to_gray

    out = cv2.cvtColor(to_gray(image), cv2.COLOR_GRAY2BGR)
    if res.keypoints is None:
        return out
    labels = res.keypoint_landmarks if res.keypoint_landmarks is not None else np.zeros(len(res.keypoints), int)
    colors = _palette(int(labels.max()) + 1 if len(labels) else 1)
    for (x, y), lab in zip(res.keypoints.astype(int), labels):
        c = (128, 128, 128) if lab == 0 else tuple(int(v) for v in colors[lab])
        cv2.circle(out, (int(x), int(y)), 2, c, -1)
    if res.inlier_keypoints is not None:
        for x, y in res.keypoints[res.inlier_keypoints].astype(int):
            cv2.circle(out, (int(x), int(y)), 5, (0, 255, 0), 1)
    text = f"{res.mode}: {res.num_inliers} inliers" if res.success else f"lost: {res.reason[:60]}"
    cv2.putText(out, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1)
    return out


def main(args: list[str] | None = None) -> None:
    run_node(LocalizerNode, args, on_exit=lambda n: n.on_shutdown(None))


if __name__ == "__main__":
    main()
