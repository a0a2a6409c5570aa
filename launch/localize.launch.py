"""Start the pram_ros localizer: `ros2 launch pram_ros localize.launch.py map_path:=/path/to/map`."""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

EXTRINSIC = ("x", "y", "z", "qx", "qy", "qz", "qw")


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("pram_ros")
    args = [
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "localizer.yaml")),
        DeclareLaunchArgument("map_path", default_value="", description="map directory (pram-ros build-map)"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
        DeclareLaunchArgument("autostart", default_value="true"),
        DeclareLaunchArgument("rviz", default_value="false"),
        DeclareLaunchArgument("log_level", default_value="info"),
        DeclareLaunchArgument("publish_extrinsic", default_value="false",
                              description="publish a static base_link -> camera transform (below)"),
        # base_link -> camera optical frame; the default rotation is the usual optical-frame one
        *[DeclareLaunchArgument(f"camera_{k}", default_value=v) for k, v in
          zip(EXTRINSIC, ("0.0", "0.0", "0.0", "-0.5", "0.5", "-0.5", "0.5"))],
        DeclareLaunchArgument("base_frame", default_value="base_link"),
        DeclareLaunchArgument("camera_frame", default_value="camera_optical_frame"),
    ]
    cfg = LaunchConfiguration
    localizer = LifecycleNode(
        package="pram_ros", executable="localizer", name="localizer", namespace=cfg("namespace"),
        output="screen", arguments=["--ros-args", "--log-level", cfg("log_level")],
        parameters=[cfg("params_file"), {"map_path": cfg("map_path"), "use_sim_time": cfg("use_sim_time"),
                                         "autostart": cfg("autostart")}],
        remappings=[("image", cfg("image_topic")), ("image/compressed", [cfg("image_topic"), "/compressed"]),
                    ("camera_info", cfg("camera_info_topic"))])
    extrinsic = Node(
        package="tf2_ros", executable="static_transform_publisher", name="camera_extrinsic",
        condition=IfCondition(cfg("publish_extrinsic")),
        arguments=[*[a for k in EXTRINSIC for a in (f"--{k}", cfg(f"camera_{k}"))],
                   "--frame-id", cfg("base_frame"), "--child-frame-id", cfg("camera_frame")])
    rviz = Node(package="rviz2", executable="rviz2", name="rviz2", condition=IfCondition(cfg("rviz")),
                arguments=["-d", os.path.join(share, "config", "pram.rviz")],
                parameters=[{"use_sim_time": cfg("use_sim_time")}])
    return LaunchDescription([*args, localizer, extrinsic, rviz])
