"""What a ROS user does: `colcon build` the package in a workspace, `ros2 launch` it under a
namespace, play images at it, ask `ros2 lifecycle` and `ros2 param`, and stop it with Ctrl-C:
nothing may be left running. Needs launch, ros2cli and colcon (../shared/ros2 here; make setup)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from pram_ros.core.bag import BagReader
from pram_ros.core.geometry import invert, make_T
from pram_ros.ros.conversions import camera_info_msg, image_to_msg, ns_to_time, transform_msg
from pram_ros.ros.localizer_node import LATCHED, TF_STATIC

from conftest import needs

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
OPTICAL = make_T(np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]), [0.1, 0.0, 0.3])  # base -> camera


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    """The package built by colcon in a fresh workspace, and the environment a sourced one gives."""
    for module, what in (("launch_ros", "launch_ros"), ("ros2cli", "ros2cli"), ("colcon_core", "colcon")):
        needs(module, what)
    ws = tmp_path_factory.mktemp("ws")
    src = ws / "src" / "pram_ros"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "data", "build", "install", "log", "*.egg-info", "__pycache__", ".pytest_cache"))
    (src / "maps" / "office.pram").mkdir()  # a map directory a user put into maps/, as maps/README.md says
    (src / "maps" / "office.pram" / "manifest.json").write_text("{}")
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ['PATH']}")
    run = subprocess.run([str(VENV_BIN / "colcon"), "build", "--packages-select", "pram_ros"], cwd=ws, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    prefix = ws / "install" / "pram_ros"
    site = prefix / Path(sysconfig.get_path("purelib")).relative_to(sysconfig.get_path("data"))
    assert (prefix / "lib" / "pram_ros" / "localizer").is_file() and (prefix / "share" / "pram_ros" / "launch").is_dir()
    assert (site / "pram_ros" / "ros" / "localizer_node.py").is_file()
    assert (prefix / "share" / "pram_ros" / "maps" / "office.pram" / "manifest.json").is_file()
    env.update(AMENT_PREFIX_PATH=f"{prefix}:{VENV_BIN.parent}", PYTHONPATH=f"{site}:{os.environ.get('PYTHONPATH', '')}",
               ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return {"ws": ws, "env": env}


class Peer:
    """A test node in the launch's DDS domain: plays frames on sim time and watches outputs."""

    def __init__(self, domain_id: int, ns: str):
        self.ctx = Context()
        rclpy.init(context=self.ctx, domain_id=domain_id)
        self.node = rclpy.create_node("pram_launch_test", context=self.ctx)
        self.ex = SingleThreadedExecutor(context=self.ctx)
        self.ex.add_node(self.node)
        self.poses, self.map_tf, self.diags = [], [], []
        n, ns = self.node, f"/{ns}" if ns else ""
        n.create_subscription(PoseWithCovarianceStamped, f"{ns}/pose", self.poses.append, LATCHED)
        n.create_subscription(TFMessage, f"{ns}/tf", lambda m: self.map_tf.extend(
            (time.monotonic(), t.child_frame_id) for t in m.transforms if t.header.frame_id == "map"), 100)
        n.create_subscription(DiagnosticArray, "/diagnostics", lambda m: self.diags.extend(m.status), 10)
        self.clock = n.create_publisher(Clock, "/clock", 10)
        self.image = n.create_publisher(Image, f"{ns}/camera/image_raw", QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE))
        self.info = n.create_publisher(CameraInfo, f"{ns}/camera/camera_info", 10)
        self.tf = n.create_publisher(TFMessage, f"{ns}/tf", 100)
        self.tf_static = n.create_publisher(TFMessage, f"{ns}/tf_static", TF_STATIC)
        self.t = 1_000_000_000

    def spin(self, cond, timeout: float, tick_clock: bool = True) -> bool:
        end = time.monotonic() + timeout
        while not cond() and time.monotonic() < end:
            if tick_clock:  # sim time moves on (the node's timers run on it)
                self.t += 50_000_000
                self.clock.publish(Clock(clock=ns_to_time(self.t)))
            self.ex.spin_once(timeout_sec=0.05)
        return bool(cond())

    def answered(self, stamp: int) -> bool:
        """The node answered the image stamped `stamp`: a pose, or a diagnostic naming it."""
        return any(p.header.stamp.sec * 10**9 + p.header.stamp.nanosec == stamp for p in self.poses) or any(
            kv.key == "answered_stamp_ns" and int(kv.value) >= stamp for s in self.diags for kv in s.values)

    def status(self, name: str) -> str:
        st = [s for s in self.diags if name in s.name]
        return st[-1].message if st else ""

    def close(self) -> None:
        self.ex.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.ctx)


def ros2(env: dict, *args: str) -> str:
    run = subprocess.run([str(VENV_BIN / "ros2"), *args], env=env, capture_output=True, text=True, timeout=60)
    return run.stdout + run.stderr


def launch(env: dict, tmp_path: Path, *args: str) -> subprocess.Popen:
    """`ros2 launch` as from a terminal. Ctrl-C must reach it: a job started in the background by a
    non-interactive shell (`cmd &`, as a CI runner may) inherits SIGINT ignored, and launch keeps it
    so, so the child gets the default handling back."""
    return subprocess.Popen([str(VENV_BIN / "ros2"), "launch", "pram_ros", *args], env=env,
                            stdout=open(tmp_path / "launch.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def our_processes(domain_id: int) -> list[str]:
    """Command lines of live processes in this test's DDS domain (the launch and what it started)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"ROS_DOMAIN_ID={domain_id}".encode() in environ and int(pid) != os.getpid():
            out.append(f"{pid}: {cmd}")
    return out


@contextmanager
def launched(env: dict, tmp_path: Path, *args: str, peer: Peer | None = None):
    """A `ros2 launch` process (see launch) for the `with` block, killed with all it started
    afterwards, whatever the test did; `peer` is closed then too."""
    proc = launch(env, tmp_path, *args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if peer:
            peer.close()


def stop(proc: subprocess.Popen, domain_id: int, tmp_path: Path) -> None:
    """Ctrl-C, as a user stops a launch: it must end, with nothing it started left behind."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    end = time.monotonic() + 10
    while our_processes(domain_id) and time.monotonic() < end:
        time.sleep(0.2)
    assert not our_processes(domain_id), (our_processes(domain_id), (tmp_path / "launch.log").read_text()[-3000:])


def test_localize_launch_under_a_namespace(workspace, small_map, small_bag, domain_id, tmp_path):
    env = dict(workspace["env"], ROS_DOMAIN_ID=str(domain_id))
    with BagReader(small_bag) as r:
        frames = list(r.frames())
    # the package's params file with one change, as a user writes theirs: under `/**`, it applies in
    # the namespace; reliable images, so that no frame is lost between two busy processes
    params = (ROOT / "config" / "localizer.yaml").read_text().replace("image_reliability: best_effort",
                                                                      "image_reliability: reliable")
    (tmp_path / "params.yaml").write_text(params)
    peer = Peer(domain_id, "robot1")
    with launched(env, tmp_path, "localize.launch.py", f"map_path:={small_map.out}", "namespace:=robot1",
                  "base_frame:=base_footprint", "use_sim_time:=true", f"params_file:={tmp_path / 'params.yaml'}",
                  peer=peer) as proc:
        log = lambda: (tmp_path / "launch.log").read_text()[-3000:]  # noqa: E731
        assert peer.spin(lambda: peer.status("localizer").startswith(("stale", "localized")) and
                         peer.image.get_subscription_count() > 0, 120), log()
        assert "active" in ros2(env, "lifecycle", "get", "/robot1/localizer", "--no-daemon", "--spin-time", "5")
        f0 = frames[0]
        peer.tf_static.publish(TFMessage(transforms=[transform_msg("base_footprint", f0.camera_frame, OPTICAL, 0)]))
        for f in frames[:6]:
            peer.t += 200_000_000
            stamp = peer.t
            peer.clock.publish(Clock(clock=ns_to_time(stamp)))
            T_odom_base = f.T_map_camera @ invert(OPTICAL)  # odometry that happens to agree with the map
            peer.tf.publish(TFMessage(transforms=[transform_msg("odom", "base_footprint", T_odom_base, stamp)]))
            peer.spin(lambda: False, 0.1, tick_clock=False)  # odometry runs ahead of the camera, as on a robot
            peer.info.publish(camera_info_msg(f.camera, stamp, f.camera_frame))
            peer.image.publish(image_to_msg(f.image, "bgr8", stamp, f.camera_frame))
            assert peer.spin(lambda: peer.answered(stamp), 20, tick_clock=False), log()
        assert peer.spin(lambda: peer.poses and any(c == "odom" for _, c in peer.map_tf), 20), \
            (log(), len(peer.poses), [(kv.key, kv.value) for kv in peer.diags[-1].values] if peer.diags else None)
        assert peer.poses[-1].header.frame_id == "map"
        # a runtime parameter, set as a user does, with its effect: no more map -> odom re-sends
        assert peer.spin(lambda: len([t for t, _ in peer.map_tf if t > time.monotonic() - 1.0]) > 5, 5)
        out = ros2(env, "param", "set", "/robot1/localizer", "publish_tf", "false", "--no-daemon", "--spin-time", "5")
        assert "successful" in out, out
        peer.spin(lambda: False, 0.5)
        n = len(peer.map_tf)
        peer.spin(lambda: False, 1.5)
        assert len(peer.map_tf) == n
        out = ros2(env, "param", "set", "/robot1/localizer", "base_frame", "base_link", "--no-daemon", "--spin-time", "5")
        assert "successful" not in out, out  # read-only
        stop(proc, domain_id, tmp_path)


def test_build_map_launch(workspace, small_bag, domain_id, tmp_path):
    env = dict(workspace["env"], ROS_DOMAIN_ID=str(domain_id))
    out = tmp_path / "map"
    # the package's params file without the fine layer (what the build tests check, not the launch)
    params = (ROOT / "config" / "map_builder.yaml").read_text().replace("fine: true", "fine: false")
    (tmp_path / "params.yaml").write_text(params)
    peer = Peer(domain_id, "robot1")
    with launched(env, tmp_path, "build_map.launch.py", f"out:={out}", f"bag_path:={small_bag}", "steps:=20",
                  "namespace:=robot1", f"params_file:={tmp_path / 'params.yaml'}", peer=peer) as proc:
        assert peer.spin(lambda: peer.status("map_builder").startswith(("done", "failed")), 300, tick_clock=False), \
            (tmp_path / "launch.log").read_text()[-3000:]
        assert peer.status("map_builder").startswith("done"), peer.status("map_builder")
        assert (out / "manifest.json").is_file() and not (out / "fine.npz").exists()  # the params file applied
        stop(proc, domain_id, tmp_path)


def test_launch_asking_for_a_missing_package_starts_nothing(workspace, small_map, domain_id, tmp_path):
    env = dict(workspace["env"], ROS_DOMAIN_ID=str(domain_id))
    if any((Path(p) / "share" / "ament_index" / "resource_index" / "packages" / "rviz2").exists()
           for p in env["AMENT_PREFIX_PATH"].split(":")):
        pytest.skip("rviz2 is installed here: no missing package to ask for")
    with launched(env, tmp_path, "localize.launch.py", f"map_path:={small_map.out}", "rviz:=true") as proc:
        assert proc.wait(60) != 0
    assert "needs the ROS package 'rviz2'" in (tmp_path / "launch.log").read_text()
    assert not our_processes(domain_id)


def test_a_process_that_exits_ends_the_launch():
    """The launch files' shutdown_on_exit: when one process ends (a crash), the others are stopped
    rather than left running; without it, launch keeps the survivors going."""
    needs("launch", "launch")
    from launch import LaunchDescription, LaunchService
    from launch.actions import ExecuteProcess

    from pram_ros.ros.launching import shutdown_on_exit

    crashing = ExecuteProcess(cmd=[sys.executable, "-c", "import sys, time; time.sleep(1); sys.exit(3)"])
    survivor = ExecuteProcess(cmd=[sys.executable, "-c", "import time; time.sleep(120)"])
    service = LaunchService()
    service.include_launch_description(LaunchDescription([crashing, survivor, *shutdown_on_exit([crashing, survivor])]))
    t0 = time.monotonic()
    service.run()
    assert time.monotonic() - t0 < 30  # the survivor was stopped, not waited for
