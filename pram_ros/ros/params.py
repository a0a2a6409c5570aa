"""The nodes' ROS parameters, derived from the config dataclasses (one declaration per setting).

Each localizer parameter is either applied at run time (`RUNTIME`) or declared read-only, so that
`ros2 param set` never reports success for a change that does nothing. The YAML files in
`config/` are generated from these tables: `python -m pram_ros.ros.params --write`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

from ..core.build import build_settings
from ..core.fine import FineConfig
from ..core.flow import FlowConfig
from ..core.localizer import LocalizerConfig
from ..core.params import Spec, setting, specs, yaml_text
from ..core.registration import RegistrationConfig

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@dataclass(frozen=True)
class LocalizerNodeConfig:
    """The localizer node's own settings: frames, topics, outputs, life cycle."""

    map_path: str = setting("", "map directory built by pram-ros build-map")
    map_frame: str = setting("map", "global frame of the map: the frame the map was built in")
    allow_any_map_frame: bool = setting(False, "serve a map built in another frame than map_frame, or in an "
                                               "arbitrary, non-metric one, as if it were map_frame")
    odom_frame: str = setting("odom", "odometry frame (REP-105)")
    base_frame: str = setting("base_link", "robot body frame")
    camera_frame: str = setting("", "camera optical frame; empty: the image header's frame_id")
    publish_tf: bool = setting(True, "publish map -> odom (or map -> base_frame)")
    tf_mode: str = setting("map_odom", "map_odom (REP-105, needs odometry) | map_base", choices=("map_odom", "map_base"))
    tf_publish_rate: float = setting(20.0, "re-send the latest map transform at this rate [Hz]", range=(0.1, 200.0))
    transform_tolerance: float = setting(0.5, "post-date published transforms by this much [s]", range=(0.0, 10.0))
    planar: bool = setting(False, "ground robot: publish x, y, yaw only; z, roll, pitch come from odometry")
    max_rate_hz: float = setting(0.0, "process at most this many frames per second (0: as many as it keeps up "
                                      "with, newest first)", range=(0.0, 100.0))
    image_transport: str = setting("raw", "raw | compressed", choices=("raw", "compressed"))
    image_reliability: str = setting("best_effort", "image QoS: best_effort (sensor data) | reliable (lossless "
                                                    "replays)", choices=("best_effort", "reliable"))
    rectified: str = setting("auto", "images already rectified (camera_info P, no undistortion): auto (when "
                                     "the image topic is an image_rect* one) | always | never",
                             choices=("auto", "always", "never"))
    require_extrinsic: bool = setting(True, "wait for base_frame -> camera on /tf_static (else the camera is "
                                            "the body)")
    camera_extrinsic: tuple[float, ...] = setting((0.0,), "static base_frame -> camera [x y z qx qy qz qw]; "
                                                          "[0.0]: from /tf_static", lengths=(1, 7))
    future_stamp_tolerance_s: float = setting(5.0, "drop images stamped further ahead of the node clock [s]",
                                              range=(0.0, 3600.0))
    stale_fix_s: float = setting(5.0, "diagnostics warn when the last fix is older than this [s]",
                                 range=(0.1, 3600.0))
    publish_debug_image: bool = setting(True, "publish debug/image (keypoints by landmark, inliers) when "
                                              "someone subscribes")
    bond_heartbeat_period: float = setting(0.1, "bond with Nav2's lifecycle manager: heartbeat period [s] "
                                                "(0: no bond)", range=(0.01, 10.0), zero_off=True)
    autostart: bool = setting(False, "configure and activate on start-up, without a lifecycle manager")


@dataclass(frozen=True)
class MapBuilderNodeConfig:
    """The map_builder node's own settings; the build settings come from the core's BuildConfig."""

    bag_path: str = setting("", "build from this bag at start-up; empty: record live, build on ~/build")
    out: str = setting("", "map directory to write (replaced atomically)")
    record_dir: str = setting("", "where live recordings go; empty: a new temporary folder")
    image_transport: str = setting("raw", "raw | compressed", choices=("raw", "compressed"))


def _localizer_table() -> dict[str, Spec]:
    node, loc, reg = specs(LocalizerNodeConfig), specs(LocalizerConfig), specs(RegistrationConfig)
    core = {"device": loc["device"], "fp16": loc["half"].renamed("fp16"),
            "use_tracking": loc["tracking"].renamed("use_tracking"),
            "use_fine": specs(FineConfig)["enabled"].renamed("use_fine"),
            "use_flow": specs(FlowConfig)["enabled"].renamed("use_flow"), "matcher": loc["matcher"],
            "matcher_path": loc["matcher_path"], **reg}
    first = ("map_path",)
    return {**{k: node[k] for k in first}, **core, **{k: v for k, v in node.items() if k not in first}}


LOCALIZER_PARAMETERS: dict[str, Spec] = _localizer_table()
MAP_BUILDER_PARAMETERS: dict[str, Spec] = {**specs(MapBuilderNodeConfig), **build_settings()}
# Localizer parameters that take effect as soon as they are set; the others are read-only.
RUNTIME = frozenset({"map_path", "device", "fp16", "use_tracking", "ransac_thresh_px", "min_inliers", "publish_tf",
                     "tf_publish_rate", "transform_tolerance", "max_rate_hz", "image_transport",
                     "image_reliability", "future_stamp_tolerance_s", "stale_fix_s", "publish_debug_image"})


def descriptor(spec: Spec, read_only: bool) -> ParameterDescriptor:
    """The ROS descriptor of a setting: description, range (when ROS can express it), read-only."""
    d = ParameterDescriptor(description=spec.description, read_only=read_only)
    if spec.range and not spec.zero_off:
        lo, hi = spec.range
        if isinstance(spec.default, float):
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi))]
        else:
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
    elif spec.constraint_text():
        d.additional_constraints = spec.constraint_text()
    return d


def declare(node, table: dict[str, Spec], runtime: frozenset[str] = frozenset()) -> None:
    """Declare every parameter of `table` on `node` (tuples become ROS arrays)."""
    for name, spec in table.items():
        default = list(spec.default) if isinstance(spec.default, tuple) else spec.default
        node.declare_parameter(name, default, descriptor(spec, read_only=name not in runtime))


YAML_FILES = {"localizer.yaml": ("localizer", LOCALIZER_PARAMETERS, "Parameters of the pram_ros localizer node."),
              "map_builder.yaml": ("map_builder", MAP_BUILDER_PARAMETERS, "Parameters of the pram_ros map_builder "
                                                                          "node.")}


def yaml_files() -> dict[str, str]:
    """The text of each generated parameter file, by file name."""
    return {fn: yaml_text(node, table, title) for fn, (node, table, title) in YAML_FILES.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description="print or write the nodes' parameter files")
    ap.add_argument("--write", action="store_true", help=f"write them into {CONFIG_DIR}")
    a = ap.parse_args()
    for name, text in yaml_files().items():
        if a.write:
            tmp = CONFIG_DIR / f".{name}.tmp"
            tmp.write_text(text)
            tmp.replace(CONFIG_DIR / name)  # atomic: a reader never sees half a file
            print(f"wrote {CONFIG_DIR / name}")
        else:
            print(f"--- {name}\n{text}")


if __name__ == "__main__":
    main()
