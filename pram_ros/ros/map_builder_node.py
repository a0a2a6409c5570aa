"""The `map_builder` node: builds a PRAM map from a bag, or from topics recorded live.

With `bag_path` set it builds from that bag at start-up. Otherwise it records the image, camera
info, pose and TF topics into a bag (in `record_dir`) and builds when `~/build` (Trigger) is
called: drive the route, call the service, get a map. Progress goes to /diagnostics and the log.
"""
from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import serialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_srvs.srv import Trigger
from tf2_msgs.msg import TFMessage

from ..core.bag import (COMPRESSED_T, IMAGE_T, INFO_T, POSE_T, TF_T, BagTopics, BagWriter)
from ..core.build import BuildConfig, build_config, build_map, build_settings
from ..core.params import problems
from . import run_node
from .conversions import time_to_ns
from .params import MAP_BUILDER_PARAMETERS, declare

LATCHED = QoSProfile(depth=10, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)


class MapBuilderNode(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("map_builder", **kwargs)
        declare(self, MAP_BUILDER_PARAMETERS)  # all read-only: a build takes them as it starts
        self.state, self.detail = "idle", ""
        self.recorded = 0
        self._lock = threading.Lock()
        self._writer: BagWriter | None = None
        self._thread: threading.Thread | None = None
        self.summary = None
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0, self._diagnostics)
        self.create_service(Trigger, "~/build", self._srv_build)
        out = self.get_parameter("out").value
        found = problems(MAP_BUILDER_PARAMETERS, {n: self.get_parameter(n).value for n in MAP_BUILDER_PARAMETERS})
        if not out:
            found.insert(0, "parameter 'out' (map directory) is empty")
        if found:
            self._fail("; ".join(found))
            return
        bag = self.get_parameter("bag_path").value
        if bag:
            self._start_build(Path(bag))
        else:
            self._start_recording()

    def _conf(self) -> BuildConfig:
        return build_config({n: self.get_parameter(n).value for n in build_settings()})

    # -- live recording -------------------------------------------------------------------------

    def _start_recording(self) -> None:
        rec_dir = self.get_parameter("record_dir").value or tempfile.mkdtemp(prefix="pram_record_")
        self.bag_path = Path(rec_dir) / f"recording_{time.strftime('%Y%m%d_%H%M%S')}"
        self._writer = BagWriter(self.bag_path)
        t = BagTopics()
        compressed = self.get_parameter("image_transport").value == "compressed"
        subs = [(CompressedImage, "image/compressed", t.compressed, COMPRESSED_T) if compressed else
                (Image, "image", t.image, IMAGE_T),
                (CameraInfo, "camera_info", t.camera_info, INFO_T), (PoseStamped, "pose", t.pose, POSE_T)]
        for ty, topic, bag_topic, msgtype in subs:
            self.create_subscription(ty, topic, self._recorder(bag_topic, msgtype), qos_profile_sensor_data)
        self.create_subscription(TFMessage, "/tf", self._recorder(t.tf, TF_T), 100)
        self.create_subscription(TFMessage, "/tf_static", self._recorder(t.tf_static, TF_T, True), LATCHED)
        self.state, self.detail = "recording", f"into {self.bag_path}; call ~/build when the route is done"
        self.get_logger().info(f"recording {self.detail}")

    def _recorder(self, bag_topic: str, msgtype: str, static: bool = False):
        def cb(msg) -> None:
            with self._lock:
                if self._writer is None:
                    return
                stamp = time_to_ns(msg.header.stamp) if hasattr(msg, "header") else \
                    self.get_clock().now().nanoseconds
                self._writer.write_cdr(bag_topic, msgtype, serialize_message(msg), stamp, transient_local=static)
                self.recorded += msgtype in (IMAGE_T, COMPRESSED_T)
        return cb

    def _srv_build(self, req, resp):
        if self.state != "recording":
            resp.success, resp.message = False, f"cannot build while {self.state}"
            return resp
        with self._lock:
            self._writer.close()
            self._writer = None
        self._start_build(self.bag_path)
        resp.success, resp.message = True, f"building from {self.recorded} recorded images; progress on /diagnostics"
        return resp

    # -- building -------------------------------------------------------------------------------

    def _start_build(self, bag: Path) -> None:
        self.state, self.detail = "building", f"from {bag}"
        self._thread = threading.Thread(target=self._build, args=(bag,), daemon=True)
        self._thread.start()

    def _build(self, bag: Path) -> None:
        out = self.get_parameter("out").value
        try:
            def report(stage: str, seconds: float) -> None:
                self.detail = f"stage {stage} done in {seconds:.1f} s"
                self.get_logger().info(self.detail)

            self.summary = build_map(bag, out, self._conf(), progress=False, on_stage=report)
        except Exception as exc:  # report, never crash the node
            self._fail(f"build failed: {type(exc).__name__}: {exc}")
            return
        self.state, self.detail = "done", f"map written to {out}"
        self.get_logger().info(f"{self.detail}\n{self.summary.table()}")
        for w in self.summary.warnings:
            self.get_logger().warning(w)

    def _fail(self, text: str) -> None:
        self.state, self.detail = "failed", text
        self.get_logger().error(text)

    def _diagnostics(self) -> None:
        level = {"failed": DiagnosticStatus.ERROR, "done": DiagnosticStatus.OK}.get(self.state, DiagnosticStatus.OK)
        st = DiagnosticStatus(level=level, name=f"{self.get_name()}: pram map builder",
                              message=f"{self.state}: {self.detail}")
        st.values = [KeyValue(key="state", value=self.state), KeyValue(key="recorded_images", value=str(self.recorded))]
        if self.summary is not None:
            st.values += [KeyValue(key=k, value=str(v)) for k, v in (
                ("points", self.summary.points), ("landmarks", self.summary.landmarks),
                ("images", self.summary.images))]
        arr = DiagnosticArray(status=[st])
        arr.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(arr)


def main(args: list[str] | None = None) -> None:
    run_node(MapBuilderNode, args)


if __name__ == "__main__":
    main()
