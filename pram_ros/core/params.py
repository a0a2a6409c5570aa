"""One declaration per setting.

A config dataclass field made with `setting()` carries its default, a description and its valid
values. Validation (`validate`), the nodes' ROS parameters, the YAML parameter files and the CLI
options are all derived from it, so they cannot drift apart.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any


DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"  # the `device` settings


@dataclass(frozen=True)
class Spec:
    """What one setting is and which values it takes."""

    name: str
    default: Any
    description: str
    range: tuple[float, float] | None = None  # inclusive bounds
    zero_off: bool = False  # 0 is also valid: "off", "all" or "none" (the description says which)
    choices: tuple[str, ...] = ()
    pattern: str = ""  # a regular expression the whole string must match
    lengths: tuple[int, ...] = ()  # allowed list lengths

    def problem(self, value: Any) -> str:
        """Why `value` is not valid for this setting; "" when it is."""
        d = self.default
        if isinstance(d, bool) and not isinstance(value, bool):
            return f"{self.name}={value!r} is not true or false"
        if isinstance(d, (int, float)) and not isinstance(d, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (isinstance(d, int) and not isinstance(value, int)):
                return f"{self.name}={value!r} is not {'an integer' if isinstance(d, int) else 'a number'}"
            if value != value:
                return f"{self.name} is NaN"
            if self.range and not (self.zero_off and value == 0) and not self.range[0] <= value <= self.range[1]:
                return f"{self.name}={value} outside [{self.range[0]}, {self.range[1]}]" + \
                    (" (or 0)" if self.zero_off else "")
        if self.choices and value not in self.choices:
            return f"{self.name}={value!r} not one of {', '.join(self.choices)}"
        if self.pattern and not re.fullmatch(self.pattern, str(value)):
            return f"{self.name}={value!r}: expected {self.description}"
        if self.lengths and len(value) not in self.lengths:
            return f"{self.name} needs {' or '.join(map(str, self.lengths))} numbers, got {len(value)}"
        return ""

    def renamed(self, name: str) -> Spec:
        return replace(self, name=name)

    def constraint_text(self) -> str:
        """The valid values, for help texts and YAML comments."""
        if self.range:
            return f"[{self.range[0]}, {self.range[1]}]" + (" or 0" if self.zero_off else "")
        if self.choices:
            return " | ".join(self.choices)
        return ""


def setting(default: Any, description: str, *, range: tuple[float, float] | None = None, zero_off: bool = False,
            choices: tuple[str, ...] = (), pattern: str = "", lengths: tuple[int, ...] = ()) -> Any:
    """A dataclass field that declares a user-facing setting (see `Spec`)."""
    meta = dict(description=description, range=range, zero_off=zero_off, choices=tuple(choices), pattern=pattern,
                lengths=tuple(lengths))
    return field(default=default, metadata={"setting": meta})


def specs(cls_or_obj: Any) -> dict[str, Spec]:
    """The declared settings of a config dataclass, by field name, in declaration order."""
    return {f.name: Spec(f.name, f.default, **f.metadata["setting"])
            for f in fields(cls_or_obj) if "setting" in f.metadata}


def problems(table: dict[str, Spec], values: dict[str, Any]) -> list[str]:
    """What is wrong with `values` (names not in `table` are not checked)."""
    return [p for name, v in values.items() if name in table and (p := table[name].problem(v))]


def validate(obj: Any) -> None:
    """Raise ValueError naming every invalid setting of a config dataclass (for __post_init__)."""
    found = problems(specs(obj), {name: getattr(obj, name) for name in specs(obj)})
    if found:
        raise ValueError("; ".join(found))


def add_options(parser: argparse.ArgumentParser | Any, table: dict[str, Spec]) -> None:
    """One `--name` option per setting, with its default, type, choices and description."""
    for name, s in table.items():
        flag = f"--{name.replace('_', '-')}"
        help_text = f"{s.description} (default: {s.default})"
        if isinstance(s.default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=s.default,
                                help=s.description)
        else:
            parser.add_argument(flag, dest=name, type=type(s.default), default=s.default,
                                choices=s.choices or None, help=help_text)


def options(a: argparse.Namespace, table: dict[str, Spec]) -> dict[str, Any]:
    """The values of `add_options` options, validated."""
    values = {name: getattr(a, name) for name in table}
    found = problems(table, values)
    if found:
        raise ValueError("; ".join(found))
    return values


def yaml_text(node_name: str, table: dict[str, Spec], title: str) -> str:
    """A ROS parameter file with every setting at its default, commented with its description."""
    def literal(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(literal(x) for x in v) + "]"
        if isinstance(v, str):
            return f'"{v}"' if v == "" or re.search(r"[:#{}\[\],&*!|>'\"%@`]|^\s|\s$", v) or \
                v.lower() in ("true", "false", "yes", "no", "on", "off", "null", "~") else v
        return repr(v)

    lines = [f"# {title}", f"# Generated from the config dataclasses: python -m pram_ros.ros.params --write",
             f"# `/**` applies under any namespace and node name; the node is named {node_name!r} by default.",
             "/**:", "  ros__parameters:"]
    for name, s in table.items():
        text = s.description + (f" (valid: {c})" if (c := s.constraint_text()) and c not in s.description else "")
        lines.append(f"    {name}: {literal(s.default)}  # {text}")
    return "\n".join(lines) + "\n"
