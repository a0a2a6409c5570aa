"""The launch files, params file and RViz config checked against the code (without the launch stack:
test_launch.py runs them for real where it is installed), and the node started from the venv with the
params file as a user would."""
import ast
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import rclpy
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor

from pram_ros.ros.launching import localizer_overrides, namespaced_rviz_config, params_file_values

ROOT = Path(__file__).resolve().parents[1]


def _entry_points() -> set[str]:
    text = (ROOT / "setup.py").read_text()
    return set(re.findall(r'"([\w-]+) = pram_ros[\w.]+:main"', text))


def _launch_nodes(path: Path) -> list[tuple[str, str]]:
    """(package, executable) of every Node/LifecycleNode a launch file creates."""
    out = []
    for call in ast.walk(ast.parse(path.read_text())):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") in ("Node", "LifecycleNode"):
            kw = {k.arg: k.value for k in call.keywords}
            out.append((kw["package"].value, kw["executable"].value))
    return out


def test_launch_files_start_entry_points():
    eps = _entry_points()
    assert {"pram-ros", "localizer", "map_builder"} <= eps
    for launch in sorted((ROOT / "launch").glob("*.launch.py")):
        nodes = _launch_nodes(launch)
        assert nodes, launch
        for package, executable in nodes:
            if package == "pram_ros":
                assert executable in eps, (launch.name, executable)
            else:  # other packages a real ROS 2 install provides
                assert (package, executable) in {("rviz2", "rviz2"), ("tf2_ros", "static_transform_publisher")}


def test_launch_arguments_override_only_what_is_given():
    yaml_path = ROOT / "config" / "localizer.yaml"
    assert params_file_values(str(yaml_path), "localizer")["base_frame"] == "base_link"
    args = {"base_frame": "base_footprint", "camera_frame": "", "use_sim_time": "true", "use_lifecycle_manager": "true",
            "autostart": "", "planar": "true", "min_inliers": "45"}
    assert localizer_overrides(args) == {"base_frame": "base_footprint", "use_sim_time": True, "autostart": False,
                                         "planar": True, "min_inliers": 45}
    assert localizer_overrides({"autostart": ""})["autostart"] is True  # no lifecycle manager: start by itself


def test_rviz_config_follows_the_namespace():
    path = str(ROOT / "config" / "pram.rviz")
    assert namespaced_rviz_config(path, "") == path
    cfg = yaml.safe_load(Path(namespaced_rviz_config(path, "/robot1")).read_text())
    topics = [d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"] if "Topic" in d]
    topics += [t["Topic"]["Value"] for t in cfg["Visualization Manager"]["Tools"] if "Topic" in t]
    assert topics and all(t.startswith("/robot1/") for t in topics), topics


def test_rviz_shows_topics_the_node_publishes():
    cfg = yaml.safe_load((ROOT / "config" / "pram.rviz").read_text())
    shown = {d["Topic"]["Value"] for d in cfg["Visualization Manager"]["Displays"] if "Topic" in d}
    published = {"/pose", "/landmarks", "/debug/image", "/pose_stamped"}
    assert shown and shown <= published, shown - published
    src = (ROOT / "pram_ros" / "ros" / "localizer_node.py").read_text()
    for topic in shown:
        assert f'"{topic.lstrip("/")}"' in src


def test_node_runs_from_the_venv_with_the_params_file(small_map, domain_id, tmp_path):
    exe = shutil.which("localizer", path=str(Path(sys.executable).parent))
    assert exe, "the localizer entry point is not installed in the venv"
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    cmd = [exe, "--ros-args", "--params-file", str(ROOT / "config" / "localizer.yaml"),
           "-p", f"map_path:={small_map.out}", "-p", "autostart:=true"]
    proc = subprocess.Popen(cmd, env=env, stdout=open(tmp_path / "log", "w"), stderr=subprocess.STDOUT)
    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    node = rclpy.create_node("pram_test_diag", context=ctx)
    seen = []
    node.create_subscription(DiagnosticArray, "/diagnostics", seen.append, 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(node)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 60 and not any(s.message.startswith("stale") for d in seen for s in d.status):
            ex.spin_once(timeout_sec=0.1)
            assert proc.poll() is None, (tmp_path / "log").read_text()
        assert any(s.message.startswith("stale") for d in seen for s in d.status), (tmp_path / "log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        ex.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_package_xml_lists_what_the_code_uses_and_nothing_else():
    deps = set(re.findall(r"<exec_depend>([\w-]+)</exec_depend>", (ROOT / "package.xml").read_text()))
    imported = set()
    for path in [*ROOT.glob("pram_ros/**/*.py"), *ROOT.glob("launch/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    ros = {m for m in imported if m.endswith(("_msgs", "_srvs", "_interfaces")) or
           m in ("rclpy", "launch", "launch_ros", "ament_index_python", "bondpy")}
    assert ros <= deps, ros - deps
    started = {pkg for launch in (ROOT / "launch").glob("*.launch.py") for pkg, _ in _launch_nodes(launch)}
    ros_deps = {d for d in deps if not d.startswith("python3-")}
    assert ros_deps <= ros | started, ros_deps - ros - started  # nothing listed that nothing uses
