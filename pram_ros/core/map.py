"""The PRAM map directory: a versioned manifest, arrays in .npz, recognizer weights in safetensors.

The map holds 3D points with a landmark label and one float16 descriptor each, the virtual
reference frames (VRFs) with their poses, the cameras, and the recognizer: no per-image feature
files and no global descriptors. `baseline.npz` (optional) holds the hloc-style per-image
features that only the exhaustive baseline uses; it is not part of the PRAM map's size.
`fine.npz` (optional) holds the fine layer: full-resolution SIFT points for the final pose (fine.py).

Writing is atomic (a temporary directory renamed into place); loading checks the format,
version, every file's sha256, and never unpickles.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .camera import Camera

log = logging.getLogger(__name__)

FORMAT = "pram_ros.map"
VERSION = 1
MAP_ARRAYS = {"points": np.float32, "labels": np.int32, "descriptors": np.float16, "frame_T": np.float64,
              "frame_camera": np.int32, "vrf_frame": np.int32, "vrf_landmark": np.int32, "vrf_ptr": np.int64,
              "vrf_points": np.int32}


FINE_ARRAYS = {"points": np.float32, "descriptors": np.uint8, "seen_along": np.float16}


class MapError(ValueError):
    """A map directory that is missing, damaged, foreign, of another version, or inconsistent."""


@dataclass
class Baseline:
    """hloc-style per-image features of the map images (for the exhaustive baseline only)."""

    ptr: np.ndarray  # (F+1,) offsets into the arrays below, per image
    keypoints: np.ndarray  # (M, 2) float32
    descriptors: np.ndarray  # (M, D) float16
    point_ids: np.ndarray  # (M,) int32 index into PramMap.points, -1 when not a map point
    T_map_camera: np.ndarray  # (F, 4, 4)
    camera: np.ndarray  # (F,) int32


@dataclass
class FineLayer:
    """Full-resolution SIFT points of the map images, triangulated at the map's camera poses."""

    points: np.ndarray  # (P, 3) float32
    descriptors: np.ndarray  # (P, 128) uint8: RootSIFT x 255 (unit length once divided)
    seen_along: np.ndarray  # (P, 3) float16 mean unit viewing ray of the images that saw the point
    features: dict[str, Any]  # the SIFT settings: the localizer extracts the same

    def problems(self) -> list[str]:
        n = len(self.points)
        if self.points.shape != (n, 3) or self.seen_along.shape != (n, 3) or self.descriptors.shape[0] != n:
            return ["fine layer arrays differ in length"]
        return []


@dataclass
class PramMap:
    features: dict[str, Any]
    cameras: list[Camera]
    points: np.ndarray
    labels: np.ndarray
    descriptors: np.ndarray
    frame_T: np.ndarray  # T_map_camera of each VRF image
    frame_camera: np.ndarray
    vrf_frame: np.ndarray
    vrf_landmark: np.ndarray
    vrf_ptr: np.ndarray
    vrf_points: np.ndarray
    recognizer_config: dict[str, Any]
    recognizer_state: dict[str, Any]  # name -> torch tensor
    frame: str = "map"  # the frame it was built in: map (ground truth), the SLAM's global frame, odom, arbitrary
    metric: bool = True
    info: dict[str, Any] = field(default_factory=dict)
    baseline: Baseline | None = None
    fine: FineLayer | None = None
    images: int = 0  # map images the map was built from (frame_T holds only those with VRFs); 0: unknown

    @property
    def num_landmarks(self) -> int:
        return int(self.recognizer_config["num_classes"]) - 1

    def vrf_point_ids(self, v: int) -> np.ndarray:
        return self.vrf_points[self.vrf_ptr[v]:self.vrf_ptr[v + 1]]

    def check(self) -> None:
        """Raise MapError when the arrays contradict each other."""
        n, v = len(self.points), len(self.vrf_frame)
        problems = []
        if self.points.shape != (n, 3) or self.labels.shape != (n,) or len(self.descriptors) != n:
            problems.append("points, labels and descriptors differ in length")
        if n and (self.labels.min() < 1 or self.labels.max() > self.num_landmarks):
            problems.append("landmark labels outside 1..K")
        if len(self.vrf_landmark) != v or len(self.vrf_ptr) != v + 1 or self.vrf_ptr[-1] != len(self.vrf_points):
            problems.append("VRF tables are inconsistent")
        if len(self.vrf_points) and (self.vrf_points.min() < 0 or self.vrf_points.max() >= n):
            problems.append("VRF points outside the point table")
        if v and (self.vrf_frame.min() < 0 or self.vrf_frame.max() >= len(self.frame_T)):
            problems.append("VRF frames outside the frame table")
        if len(self.frame_camera) and (self.frame_camera.min() < 0 or self.frame_camera.max() >= len(self.cameras)):
            problems.append("frame cameras outside the camera table")
        if self.descriptors.ndim != 2 or self.descriptors.shape[1] != self.recognizer_config.get("descriptor_dim"):
            problems.append("descriptor size differs from the recognizer's")
        if self.fine is not None:
            problems += self.fine.problems()
        if problems:
            raise MapError("inconsistent map: " + "; ".join(problems))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def replace_dir_atomically(tmp: Path, out: Path) -> None:
    """Move a finished directory into place: the old one stays intact until the new one is complete."""
    out = Path(out)
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(tmp, out)
    if old.exists():
        shutil.rmtree(old)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(out: str | Path) -> list[str]:
    """Tidy what a killed writer of `out` left behind (returns what was done): half-written
    `.out.tmp-PID` directories are deleted; a previous map moved aside as `.out.old-PID` is put
    back when no `out` replaced it, else deleted. Writers still alive are left alone."""
    out, done = Path(out), []
    for p in sorted(out.parent.glob(f".{out.name}.*-*")):
        kind, _, pid = p.name[len(out.name) + 2:].partition("-")
        if kind not in ("tmp", "old") or not pid.isdigit() or _pid_alive(int(pid)):
            continue
        if kind == "old" and not out.exists():
            os.rename(p, out)
            done.append(f"restored the previous map from {p.name}")
        else:
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}, left by an interrupted write")
    for d in done:
        log.warning("%s: %s", out, d)
    return done


def frame_problem(m: PramMap, map_frame: str) -> str:
    """Why poses from map `m` must not be published as `map_frame` poses ("" when they may): a map
    built in another frame, or in an arbitrary frame and scale (SfM without poses), would put the
    robot somewhere else than Nav2's map says."""
    if m.frame == "arbitrary" or not m.metric:
        return (f"the map's frame is arbitrary (built without poses: its origin, orientation and scale are "
                f"SfM's), not the metric frame {map_frame!r}")
    if m.frame != map_frame:
        return f"the map was built in frame {m.frame!r}, the node's map_frame is {map_frame!r}"
    return ""


def save_map(m: PramMap, out: str | Path, extra_files: dict[str, bytes] | None = None) -> Path:
    """Write the map directory atomically; returns its path."""
    from safetensors.torch import save

    m.check()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    arrays = {k: np.ascontiguousarray(getattr(m, k), dtype=t) for k, t in MAP_ARRAYS.items()}
    _fsync_write(tmp / "map.npz", lambda f: np.savez(f, **arrays))
    state = {k: v.detach().cpu().half().contiguous() for k, v in m.recognizer_state.items()}
    _fsync_write(tmp / "recognizer.safetensors", lambda f: f.write(save(state)))
    if m.baseline is not None:
        b = m.baseline
        _fsync_write(tmp / "baseline.npz", lambda f: np.savez(
            f, ptr=b.ptr.astype(np.int64), keypoints=b.keypoints.astype(np.float32),
            descriptors=b.descriptors.astype(np.float16), point_ids=b.point_ids.astype(np.int32),
            T_map_camera=b.T_map_camera.astype(np.float64), camera=b.camera.astype(np.int32)))
    if m.fine is not None:
        fine = {k: np.ascontiguousarray(getattr(m.fine, k), dtype=t) for k, t in FINE_ARRAYS.items()}
        _fsync_write(tmp / "fine.npz", lambda f: np.savez(f, **fine))
    for name, data in (extra_files or {}).items():
        _fsync_write(tmp / name, lambda f, d=data: f.write(d))
    files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
    manifest = {
        "format": FORMAT, "version": VERSION, "features": m.features,
        "cameras": [c.to_dict() for c in m.cameras],
        "recognizer": m.recognizer_config, "frame": m.frame, "metric": m.metric,
        "counts": {"points": int(len(m.points)), "landmarks": m.num_landmarks, "vrfs": int(len(m.vrf_frame)),
                   "frames": int(len(m.frame_T)), "images": int(m.images)},
        "files": files, "info": m.info,
        **({"fine": {"features": m.fine.features, "points": int(len(m.fine.points))}} if m.fine is not None else {}),
    }
    _fsync_write(tmp / "manifest.json", lambda f: f.write(json.dumps(manifest, indent=1).encode()))
    replace_dir_atomically(tmp, out)
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The checked manifest of a map directory (format, version, file list)."""
    path = Path(path)
    mf = path / "manifest.json"
    if not path.is_dir():
        raise MapError(f"map directory not found: {path}")
    if not mf.is_file():
        raise MapError(f"{path} is not a pram_ros map: no manifest.json")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MapError(f"{mf} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MapError(f"{path} is not a pram_ros map (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("version") != VERSION:
        raise MapError(f"{path} has map format version {manifest.get('version')!r}; this pram_ros reads version "
                       f"{VERSION}: rebuild the map")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise MapError(f"{mf} lists no files")
    for name, meta in files.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise MapError(f"{mf} names a file outside its directory: {name!r}")
        p = path / name
        if p.is_symlink():
            raise MapError(f"{path}: {name} is a symbolic link; a map holds its own files")
        if not p.is_file():
            raise MapError(f"{path} is damaged: {name} is missing")
        if not isinstance(meta, dict) or _sha256(p) != meta.get("sha256"):
            raise MapError(f"{path} is damaged: checksum of {name} does not match the manifest")
    for required in ("map.npz", "recognizer.safetensors"):
        if required not in files:
            raise MapError(f"{mf} does not list {required}")
    return manifest


def _npz(path: Path, expected: dict[str, Any] | None = None) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:  # zip or format errors
        raise MapError(f"cannot read {path}: {exc}") from exc
    if expected:
        missing = set(expected) - set(data)
        if missing:
            raise MapError(f"{path} lacks arrays {sorted(missing)}")
        for k, t in expected.items():
            if data[k].dtype != np.dtype(t):
                raise MapError(f"{path}:{k} has dtype {data[k].dtype}, expected {np.dtype(t)}")
    return data


def _check_recognizer(m: PramMap, path: Path) -> None:
    """The weights must fit the recognizer the manifest describes (names and shapes)."""
    from .recognition import Recognizer, RecognizerConfig

    try:
        Recognizer(RecognizerConfig(**m.recognizer_config)).load_state_dict(m.recognizer_state)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise MapError(f"{path}: recognizer weights do not fit the recognizer in the manifest: "
                       f"{str(exc).splitlines()[0]}") from exc


def load_map(path: str | Path, with_baseline: bool = False) -> PramMap:
    """Load and verify a map directory (MapError with the reason when it cannot be used)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    manifest = read_manifest(path)
    a = _npz(path / "map.npz", MAP_ARRAYS)
    try:
        state = load_file(str(path / "recognizer.safetensors"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MapError(f"cannot read recognizer weights of {path}: {exc}") from exc
    try:
        cameras = [Camera.from_dict(c) for c in manifest["cameras"]]
        m = PramMap(features=manifest["features"], cameras=cameras, recognizer_config=manifest["recognizer"],
                    recognizer_state={k: v.float() for k, v in state.items()}, frame=manifest.get("frame", "map"),
                    metric=bool(manifest.get("metric", True)), info=manifest.get("info", {}),
                    images=int(manifest.get("counts", {}).get("images", 0)),
                    **{k: a[k] for k in MAP_ARRAYS})
    except (KeyError, TypeError, ValueError) as exc:
        raise MapError(f"{path}/manifest.json is malformed: {exc}") from exc
    if "fine.npz" in manifest["files"]:
        f = _npz(path / "fine.npz", FINE_ARRAYS)
        features = manifest.get("fine", {}).get("features") if isinstance(manifest.get("fine"), dict) else None
        if not isinstance(features, dict):
            raise MapError(f"{path}/manifest.json does not describe its fine.npz")
        m.fine = FineLayer(**{k: f[k] for k in FINE_ARRAYS}, features=features)
    m.check()
    _check_recognizer(m, path)
    if with_baseline:
        m.baseline = load_baseline(path, manifest)
    return m


def has_baseline(manifest: dict[str, Any]) -> bool:
    return "baseline.npz" in manifest["files"]


def load_baseline(path: str | Path, manifest: dict[str, Any] | None = None) -> Baseline:
    """The map's hloc-style per-image features (MapError when it has none). `manifest`: the map's,
    when already read (reading it checks every file's checksum)."""
    path = Path(path)
    if not has_baseline(manifest if manifest is not None else read_manifest(path)):
        raise MapError(f"{path} has no baseline.npz (the exhaustive baseline needs it; rebuild with it)")
    b = _npz(path / "baseline.npz")
    return Baseline(**{k: b[k] for k in ("ptr", "keypoints", "descriptors", "point_ids", "T_map_camera", "camera")})
