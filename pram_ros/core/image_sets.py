"""Posed image sets on disk -> contract bags: the way real photographs with known poses come in.

Two layouts are read:
- **NeRF** (instant-ngp's `transforms.json` beside the images, as the fox set): camera-to-world
  matrices in the OpenGL convention (x right, y up, z backwards); negating the y and z columns of
  the rotation gives the optical frame of ROS, OpenCV and COLMAP. Intrinsics carry OpenCV
  k1 k2 p1 p2 (plumb_bob).
- **COLMAP** (a sparse model, text or binary: `cameras`, `images`, `points3D`), the format most
  public localization sets and any COLMAP reconstruction ship in. Each image keeps its own camera;
  models a ROS distortion model expresses are accepted (`Camera.from_pycolmap`).

Images listed without a file, or without a pose, are skipped and counted. Poses from an SfM
reconstruction have its arbitrary scale.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from .bag import BagWriter
from .camera import Camera
from .geometry import invert

log = logging.getLogger(__name__)
NERF_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiplied: flips the y and z axes
COLMAP_MODEL_DIRS = (".", "sparse/0", "sparse")  # where a scene folder usually keeps its model
FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png"}  # stored as they are; others become PNG


class ImageSetError(ValueError):
    """A folder that is not a posed image set this module reads."""


@dataclass
class PosedImage:
    path: Path
    camera: Camera
    T_map_camera: np.ndarray


def load_nerf(root: str | Path) -> list[PosedImage]:
    """The present frames of a NeRF-style folder, in file-name (= capture) order."""
    meta_path = Path(root) / "transforms.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found")
    meta = json.loads(meta_path.read_text())
    camera = Camera(int(meta["w"]), int(meta["h"]), float(meta["fl_x"]), float(meta["fl_y"]),
                    float(meta["cx"]), float(meta["cy"]), "plumb_bob",
                    (meta.get("k1", 0.0), meta.get("k2", 0.0), meta.get("p1", 0.0), meta.get("p2", 0.0), 0.0))
    frames = []
    for f in meta["frames"]:
        path = Path(root) / f["file_path"]
        if not path.suffix:
            path = path.with_suffix(".jpg")
        if path.is_file():
            frames.append(PosedImage(path, camera, np.asarray(f["transform_matrix"], float) @ NERF_TO_OPTICAL))
    _skipped(len(meta["frames"]) - len(frames), "without an image file", meta_path)
    return sorted(frames, key=lambda fr: fr.path.name)


def find_colmap_model(root: str | Path) -> Path | None:
    """The folder of a COLMAP model in `root`, `root/sparse/0` or `root/sparse`, if there is one."""
    for sub in COLMAP_MODEL_DIRS:
        d = Path(root) / sub
        if any((d / f"cameras.{ext}").is_file() and (d / f"images.{ext}").is_file() for ext in ("bin", "txt")):
            return d
    return None


def load_colmap(model: str | Path, images: str | Path) -> list[PosedImage]:
    """The posed images of a COLMAP model whose files are in `images`, in name order."""
    import pycolmap

    from .sfm import rigid_matrix

    try:
        rec = pycolmap.Reconstruction(str(model))
    except Exception as exc:  # pycolmap raises its own error types for unreadable models
        raise ImageSetError(f"{model}: not a readable COLMAP model ({exc})") from exc
    cameras = {cid: Camera.from_pycolmap(c) for cid, c in rec.cameras.items()}
    frames, no_pose, no_file = [], 0, 0
    for img in sorted(rec.images.values(), key=lambda im: im.name):
        path = Path(images) / img.name
        if not img.has_pose:
            no_pose += 1
        elif not path.is_file():
            no_file += 1
        else:
            frames.append(PosedImage(path, cameras[img.camera_id], invert(rigid_matrix(img.cam_from_world()))))
    _skipped(no_pose, "without a pose", model)
    _skipped(no_file, f"without a file in {images}", model)
    return frames


def load_image_set(root: str | Path, model: str | Path | None = None,
                   images: str | Path | None = None) -> list[PosedImage]:
    """A NeRF folder (transforms.json), or a COLMAP model (`model`, else found in `root`) whose
    images are in `images` (default: root/images)."""
    root = Path(root)
    if model is None and (root / "transforms.json").is_file():
        frames = load_nerf(root)
    else:
        model = Path(model) if model is not None else find_colmap_model(root)
        if model is None:
            raise ImageSetError(f"{root} has neither transforms.json nor a COLMAP model (cameras and images "
                                f".bin/.txt in {', '.join(COLMAP_MODEL_DIRS)}); --model names one elsewhere")
        frames = load_colmap(model, images if images is not None else root / "images")
    if len(frames) < 2:
        raise ImageSetError(f"{root}: {len(frames)} posed image(s) with a file; a map and a query need more")
    return frames


def encoded(path: Path) -> tuple[bytes, str]:
    """The image's bytes and CompressedImage format: JPEG and PNG as they are, others as PNG."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt:
        return path.read_bytes(), fmt
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageSetError(f"{path}: not an image OpenCV can read")
    return cv2.imencode(".png", image)[1].tobytes(), "png"


def write_bags(frames: list[PosedImage], out_dir: str | Path, name: str, is_query: Callable[[int], bool],
               storage: str = "sqlite3", period_s: float = 0.5) -> dict[str, Path]:
    """out_dir/{name}_map and out_dir/{name}_query: frame i goes to the query bag when is_query(i),
    with its pose on the ground-truth topic and its camera on camera_info, `period_s` apart."""
    queries = sum(map(is_query, range(len(frames))))
    if not 0 < queries < len(frames):
        raise ImageSetError(f"{queries} of {len(frames)} images would be queries: the map and the query bag "
                            "each need at least one")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"map": out / f"{name}_map", "query": out / f"{name}_query"}
    with BagWriter(paths["map"], storage=storage, overwrite=True) as m, \
            BagWriter(paths["query"], storage=storage, overwrite=True) as q:
        for i, fr in enumerate(frames):
            ns = 1_000_000_000 + int(round(i * period_s * 1e9))
            bag = q if is_query(i) else m
            bag.write_compressed_bytes(ns, *encoded(fr.path), fr.camera, f"{name}_camera")
            bag.write_pose(ns, fr.T_map_camera)
    return paths


def image_set_to_bags(root: str | Path, out_dir: str | Path, query_every: int = 5, storage: str = "sqlite3",
                      query_phase: int = 0, model: str | Path | None = None, images: str | Path | None = None,
                      name: str | None = None) -> dict[str, Path]:
    """The set's map and query bags, `{name}_map` and `{name}_query` (name: the folder's), every
    query_every-th image a query (shifted by `query_phase`: phases 0 .. query_every - 1 make every
    image a query once)."""
    if query_every < 2:
        raise ValueError(f"query_every must be >= 2 (got {query_every}): the map needs images too")
    frames = load_image_set(root, model, images)
    return write_bags(frames, out_dir, name or Path(root).resolve().name or "images",
                      lambda i: (i + 1 + query_phase) % query_every == 0, storage)


def _skipped(n: int, why: str, where: Path) -> None:
    if n:
        log.warning("%s: %d image(s) %s skipped", where, n, why)
