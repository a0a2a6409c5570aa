"""Start the pram_ros localizer: `ros2 launch pram_ros localize.launch.py map_path:=/path/to/map`.

In place of AMCL in Nav2: `use_lifecycle_manager:=true pose_topic:=amcl_pose`, and add `localizer`
to the lifecycle manager's node_names (README, "Nav2"). Arguments left empty keep the params file's
value. If any node started here exits, the whole launch shuts down: nothing is left orphaned.
"""
import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import OpaqueFunction
from launch_ros.actions import LifecycleNode, Node

from pram_ros.ros.launching import (TF_REMAPS, arguments, effective, localizer_overrides, namespaced_rviz_config,
                                    resolved, shutdown_on_exit, truthy)
from pram_ros.ros.params import LOCALIZER_PARAMETERS

SHARE = get_package_share_directory("pram_ros")
EXTRINSIC = ("x", "y", "z", "qx", "qy", "qz", "qw")
ARGS = [  # name, default, description
    ("namespace", "", "robot namespace: topics, TF and the params file follow it"),
    ("params_file", os.path.join(SHARE, "config", "localizer.yaml"), "node parameters (`/**:` section)"),
    ("map_path", "", "map directory (pram-ros build-map)"),
    ("use_sim_time", "false", "use /clock (bag replay, simulation)"),
    ("use_lifecycle_manager", "false", "a lifecycle manager (Nav2's) configures and activates the node"),
    ("autostart", "", "configure and activate at start-up; empty: unless use_lifecycle_manager"),
    ("log_level", "info", "debug | info | warn | error"),
    ("image_topic", "camera/image_raw", "camera images (the compressed transport adds /compressed)"),
    ("camera_info_topic", "camera/camera_info", "camera calibration"),
    ("image_transport", "", "raw | compressed"),
    ("pose_topic", "pose", "PoseWithCovarianceStamped output; amcl_pose where Nav2 expects AMCL's"),
    ("map_frame", "", "global frame"),
    ("odom_frame", "", "odometry frame"),
    ("base_frame", "", "robot body frame, e.g. base_footprint"),
    ("camera_frame", "", "camera optical frame; empty: the image header's frame_id"),
    ("planar", "", "ground robot: x, y, yaw only"),
    ("rviz", "false", "start RViz with the package's view"),
    ("publish_extrinsic", "false", "publish the static base_frame -> camera_frame transform below"),
    *[(f"camera_{k}", v, f"base_frame -> camera_frame {k}")
      for k, v in zip(EXTRINSIC, ("0.0", "0.0", "0.0", "-0.5", "0.5", "-0.5", "0.5"))],
]


def _require(package: str, argument: str) -> None:
    """Fail before any node starts when an argument asks for a package that is not installed."""
    try:
        get_package_share_directory(package)
    except PackageNotFoundError:
        raise RuntimeError(f"{argument} needs the ROS package {package!r}, which is not installed") from None


def _setup(context):
    a = resolved(context, ARGS)
    ns = a["namespace"].strip("/")
    sim = {"use_sim_time": truthy(a["use_sim_time"])}
    base = effective("base_frame", a, a["params_file"], "localizer", LOCALIZER_PARAMETERS)
    camera = effective("camera_frame", a, a["params_file"], "localizer", LOCALIZER_PARAMETERS)
    if truthy(a["publish_extrinsic"]):
        _require("tf2_ros", "publish_extrinsic:=true")
        if not camera:
            raise RuntimeError("publish_extrinsic:=true needs camera_frame (the launch argument or the params file)")
    if truthy(a["rviz"]):
        _require("rviz2", "rviz:=true")
    image = a["image_topic"]
    nodes = [LifecycleNode(
        package="pram_ros", executable="localizer", name="localizer", namespace=ns, output="screen",
        arguments=["--ros-args", "--log-level", a["log_level"]],
        parameters=[a["params_file"], localizer_overrides(a)],
        remappings=[("image", image), ("image/compressed", f"{image}/compressed"),
                    ("camera_info", a["camera_info_topic"]), ("pose", a["pose_topic"]), *TF_REMAPS])]
    if truthy(a["publish_extrinsic"]):
        nodes.append(Node(
            package="tf2_ros", executable="static_transform_publisher", name="camera_extrinsic", namespace=ns,
            arguments=[*[x for k in EXTRINSIC for x in (f"--{k}", a[f"camera_{k}"])],
                       "--frame-id", base, "--child-frame-id", camera],
            parameters=[sim], remappings=TF_REMAPS))
    if truthy(a["rviz"]):
        nodes.append(Node(
            package="rviz2", executable="rviz2", name="rviz2", namespace=ns,
            arguments=["-d", namespaced_rviz_config(os.path.join(SHARE, "config", "pram.rviz"), ns)],
            parameters=[sim], remappings=TF_REMAPS))
    return [*nodes, *shutdown_on_exit(nodes)]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*arguments(ARGS), OpaqueFunction(function=_setup)])
