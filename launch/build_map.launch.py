"""Build a map: from a bag (bag_path:=...) or live, recording until ~/build is called."""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    cfg = LaunchConfiguration
    args = [
        DeclareLaunchArgument("bag_path", default_value="", description="build from this bag; empty: record live"),
        DeclareLaunchArgument("out", description="map directory to write"),
        DeclareLaunchArgument("features", default_value="xfeat"),
        DeclareLaunchArgument("device", default_value="auto"),
        DeclareLaunchArgument("image_topic", default_value="/camera/image_raw"),
        DeclareLaunchArgument("camera_info_topic", default_value="/camera/camera_info"),
        DeclareLaunchArgument("pose_topic", default_value="/ground_truth/camera_pose"),
        DeclareLaunchArgument("use_sim_time", default_value="false"),
    ]
    node = Node(package="pram_ros", executable="map_builder", name="map_builder", output="screen",
                parameters=[{"bag_path": cfg("bag_path"), "out": cfg("out"), "features": cfg("features"),
                             "device": cfg("device"), "use_sim_time": cfg("use_sim_time")}],
                remappings=[("image", cfg("image_topic")), ("camera_info", cfg("camera_info_topic")),
                            ("pose", cfg("pose_topic"))])
    return LaunchDescription([*args, node])
