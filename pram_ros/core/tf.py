"""A small TF buffer with time interpolation: stands in for tf2_ros, which PyPI does not carry.

Each frame has one parent (REP-105). Dynamic edges keep a bounded, time-sorted history;
static edges hold one transform. Stamps are integer nanoseconds.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from .geometry import interpolate, invert


class TfError(LookupError):
    """A transform that cannot be looked up (unknown frame, no path, time out of range, cycle)."""


@dataclass
class _Edge:
    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    transforms: list[np.ndarray] = field(default_factory=list)


class TfBuffer:
    """Holds T_parent_child edges and answers T_target_source at a time."""

    def __init__(self, cache_ns: int = 10_000_000_000, max_extrapolation_ns: int = 0) -> None:
        self.cache_ns = cache_ns
        self.max_extrapolation_ns = max_extrapolation_ns
        self._edges: dict[str, _Edge] = {}  # keyed by child frame

    def set_transform(self, parent: str, child: str, stamp_ns: int, T_parent_child: np.ndarray,
                      static: bool = False) -> None:
        """Add one transform; a frame's parent may change (the latest wins)."""
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise TfError(f"invalid transform {parent!r} -> {child!r}")
        T = np.asarray(T_parent_child, dtype=float)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise TfError(f"non-finite or malformed transform {parent!r} -> {child!r}")
        edge = self._edges.get(child)
        if edge is None or edge.parent != parent or edge.static != static:
            edge = self._edges[child] = _Edge(parent, static)
        if static:
            edge.stamps, edge.transforms = [0], [T]
            return
        i = bisect.bisect_left(edge.stamps, stamp_ns)
        if i < len(edge.stamps) and edge.stamps[i] == stamp_ns:
            edge.transforms[i] = T
        else:
            edge.stamps.insert(i, stamp_ns)
            edge.transforms.insert(i, T)
        cut = bisect.bisect_left(edge.stamps, edge.stamps[-1] - self.cache_ns)
        if cut:
            del edge.stamps[:cut], edge.transforms[:cut]

    def frames(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def latest_stamp(self, child: str) -> int | None:
        """Newest stamp of the edge into ``child`` (None when unknown; 0 when static)."""
        edge = self._edges.get(child)
        return edge.stamps[-1] if edge else None

    def _edge_at(self, child: str, stamp_ns: int) -> np.ndarray:
        edge = self._edges[child]
        if edge.static:
            return edge.transforms[0]
        st = edge.stamps
        i = bisect.bisect_left(st, stamp_ns)
        if i < len(st) and st[i] == stamp_ns:
            return edge.transforms[i]
        if i == 0 or i == len(st):
            j = 0 if i == 0 else len(st) - 1
            if abs(st[j] - stamp_ns) <= self.max_extrapolation_ns:
                return edge.transforms[j]
            raise TfError(
                f"{edge.parent} -> {child} at {stamp_ns * 1e-9:.3f} s is outside "
                f"[{st[0] * 1e-9:.3f}, {st[-1] * 1e-9:.3f}] s")
        a = (stamp_ns - st[i - 1]) / (st[i] - st[i - 1])
        return interpolate(edge.transforms[i - 1], edge.transforms[i], a)

    def _chain(self, frame: str) -> list[str]:
        """Frames from ``frame`` up to its root."""
        chain = [frame]
        while chain[-1] in self._edges:
            parent = self._edges[chain[-1]].parent
            if parent in chain:
                raise TfError(f"TF cycle through {parent!r}: {' -> '.join(chain + [parent])}")
            chain.append(parent)
        return chain

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """T_target_source at stamp_ns (interpolated), or TfError saying why not."""
        target, source = target.lstrip("/"), source.lstrip("/")
        known = self.frames()
        for f in (target, source):
            if f not in known:
                raise TfError(f"unknown frame {f!r}; known frames: {sorted(known)}")
        up_s, up_t = self._chain(source), self._chain(target)
        common = next((f for f in up_s if f in up_t), None)
        if common is None:
            raise TfError(f"no path between {target!r} and {source!r} (roots {up_t[-1]!r}, {up_s[-1]!r})")
        T_common_source = np.eye(4)
        for f in up_s[: up_s.index(common)]:
            T_common_source = self._edge_at(f, stamp_ns) @ T_common_source
        T_common_target = np.eye(4)
        for f in up_t[: up_t.index(common)]:
            T_common_target = self._edge_at(f, stamp_ns) @ T_common_target
        return invert(T_common_target) @ T_common_source

    def can_transform(self, target: str, source: str, stamp_ns: int) -> bool:
        return self.lookup_or_none(target, source, stamp_ns) is not None

    def lookup_or_none(self, target: str, source: str, stamp_ns: int) -> np.ndarray | None:
        """T_target_source at stamp_ns, or None when it cannot be looked up."""
        try:
            return self.lookup(target, source, stamp_ns)
        except TfError:
            return None
