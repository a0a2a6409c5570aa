"""Build a map: from a bag (`bag_path:=...`), or live, recording until `~/build` is called.

`ros2 launch pram_ros build_map.launch.py out:=/path/to/map bag_path:=/path/to/bag`. Arguments left
empty keep the params file's value (config/map_builder.yaml).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import OpaqueFunction
from launch_ros.actions import Node

from pram_ros.ros.launching import TF_REMAPS, arguments, map_builder_overrides, resolved, shutdown_on_exit

SHARE = get_package_share_directory("pram_ros")
ARGS = [  # name, default, description
    ("namespace", "", "robot namespace"),
    ("params_file", os.path.join(SHARE, "config", "map_builder.yaml"), "node parameters (`/**:` section)"),
    ("out", "", "map directory to write"),
    ("bag_path", "", "build from this bag; empty: record live and build on ~/build"),
    ("record_dir", "", "where live recordings go"),
    ("features", "", "xfeat | sift | superpoint"),
    ("device", "", "auto | cpu | cuda | cuda:N"),
    ("steps", "", "recognizer training steps (0: 6 passes over the training views, at least 400)"),
    ("image_transport", "", "raw | compressed (live recording)"),
    ("image_topic", "camera/image_raw", "camera images (live recording)"),
    ("camera_info_topic", "camera/camera_info", "camera calibration (live recording)"),
    ("pose_topic", "ground_truth/camera_pose", "camera poses, if any (live recording)"),
    ("use_sim_time", "false", "use /clock"),
    ("log_level", "info", "debug | info | warn | error"),
]


def _setup(context):
    a = resolved(context, ARGS)
    image = a["image_topic"]
    node = Node(package="pram_ros", executable="map_builder", name="map_builder", namespace=a["namespace"].strip("/"),
                output="screen", arguments=["--ros-args", "--log-level", a["log_level"]],
                parameters=[a["params_file"], map_builder_overrides(a)],
                remappings=[("image", image), ("image/compressed", f"{image}/compressed"),
                            ("camera_info", a["camera_info_topic"]), ("pose", a["pose_topic"]), *TF_REMAPS])
    return [node, *shutdown_on_exit([node])]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([*arguments(ARGS), OpaqueFunction(function=_setup)])
