"""What the launch files decide, as plain functions (testable without the launch stack).

Launch arguments left empty fall back to the params file, and that to the node's defaults, so a
value set on the command line wins and nothing is overridden by an argument nobody gave.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from .params import LOCALIZER_PARAMETERS, MAP_BUILDER_PARAMETERS

# Nav2's convention for namespaced robots: TF follows the namespace.
TF_REMAPS = [("/tf", "tf"), ("/tf_static", "tf_static")]


def truthy(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")


def params_file_values(path: str, node_name: str) -> dict:
    """The ros__parameters a params file gives a node (its `/**` section, then its own name's)."""
    if not path:
        return {}
    doc = yaml.safe_load(Path(path).read_text()) or {}
    out: dict = {}
    for key in ("/**", node_name, f"/{node_name}", f"/**/{node_name}"):
        out.update((doc.get(key) or {}).get("ros__parameters") or {})
    return out


def _typed(name: str, text: str, table: dict) -> object:
    """A launch argument (text) as the parameter's type."""
    default = table[name].default
    if isinstance(default, bool):
        return truthy(text)
    if isinstance(default, (int, float)):
        return type(default)(text)
    return text


def overrides(args: dict[str, str], table: dict) -> dict:
    """Node parameters from launch arguments: those given (non-empty), typed; use_sim_time always."""
    out = {name: _typed(name, text, table) for name, text in args.items() if name in table and text != ""}
    out["use_sim_time"] = truthy(args.get("use_sim_time", "false"))
    return out


def localizer_overrides(args: dict[str, str]) -> dict:
    """The localizer's parameters from its launch arguments. `autostart` left empty means: on,
    unless a lifecycle manager (Nav2's) is to configure and activate the node."""
    out = overrides(args, LOCALIZER_PARAMETERS)
    if args.get("autostart", "") == "":
        out["autostart"] = not truthy(args.get("use_lifecycle_manager", "false"))
    return out


def map_builder_overrides(args: dict[str, str]) -> dict:
    return overrides(args, MAP_BUILDER_PARAMETERS)


def effective(name: str, args: dict[str, str], params_file: str, node_name: str, table: dict) -> object:
    """The value a parameter will have: the launch argument, else the params file, else the default."""
    if args.get(name, "") != "":
        return _typed(name, args[name], table)
    return params_file_values(params_file, node_name).get(name, table[name].default)


def namespaced(topic: str, namespace: str) -> str:
    """An absolute topic moved under `namespace` ("/pose", "robot1" -> "/robot1/pose")."""
    ns = namespace.strip("/")
    return f"/{ns}{topic}" if ns and topic.startswith("/") else topic


def namespaced_rviz_config(path: str, namespace: str) -> str:
    """The RViz config with its topics under `namespace` (a temporary copy), or `path` itself."""
    if not namespace.strip("/"):
        return path
    cfg = yaml.safe_load(Path(path).read_text())

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "Topic" and isinstance(v, dict) and isinstance(v.get("Value"), str):
                    v["Value"] = namespaced(v["Value"], namespace)
                else:
                    walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)
    out = Path(tempfile.mkdtemp(prefix="pram_rviz_")) / Path(path).name
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out)


def arguments(args: list[tuple[str, str, str]]) -> list:
    """DeclareLaunchArgument for each (name, default, description)."""
    from launch.actions import DeclareLaunchArgument

    return [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in args]


def resolved(context, args: list[tuple[str, str, str]]) -> dict[str, str]:
    """The launch arguments' values, as text."""
    from launch.substitutions import LaunchConfiguration

    return {name: LaunchConfiguration(name).perform(context) for name, _, _ in args}


def shutdown_on_exit(nodes: list) -> list:
    """When one of these processes exits (a crash, a missing executable), stop the whole launch:
    nothing it started is left orphaned."""
    from launch.actions import EmitEvent, RegisterEventHandler
    from launch.event_handlers import OnProcessExit
    from launch.events import Shutdown

    def on_exit(event, context):
        if not context.is_shutdown:  # not when the launch is already stopping (Ctrl-C)
            return [EmitEvent(event=Shutdown(reason=f"{event.action.name} exited"))]

    return [RegisterEventHandler(OnProcessExit(target_action=n, on_exit=on_exit)) for n in nodes]
