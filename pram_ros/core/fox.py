"""Convert the fox image set (instant-ngp's NeRF data: transforms.json + JPEGs) into contract bags.

transforms.json gives camera-to-world matrices in the NeRF/OpenGL convention (x right, y up,
z backwards); negating the y and z columns of the rotation gives the optical frame of ROS,
OpenCV and COLMAP. Intrinsics carry OpenCV k1 k2 p1 p2 (plumb_bob). Frames whose image file is
missing are skipped. Poses come from COLMAP and have an arbitrary scale.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .bag import BagWriter
from .camera import Camera

NERF_TO_OPTICAL = np.diag([1.0, -1.0, -1.0, 1.0])  # right-multiplied: flips the y and z axes
FOX_FRAME = "fox_camera"


@dataclass
class FoxFrame:
    path: Path
    T_map_camera: np.ndarray


def load_fox(root: str | Path) -> tuple[Camera, list[FoxFrame]]:
    """The camera and the present frames (in file-name = capture order) of a NeRF-style folder."""
    root = Path(root)
    meta_path = root / "transforms.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found")
    meta = json.loads(meta_path.read_text())
    camera = Camera(int(meta["w"]), int(meta["h"]), float(meta["fl_x"]), float(meta["fl_y"]),
                    float(meta["cx"]), float(meta["cy"]), "plumb_bob",
                    (meta.get("k1", 0.0), meta.get("k2", 0.0), meta.get("p1", 0.0), meta.get("p2", 0.0), 0.0))
    frames = []
    for f in meta["frames"]:
        path = root / f["file_path"]
        if not path.suffix:
            path = path.with_suffix(".jpg")
        if path.is_file():
            frames.append(FoxFrame(path, np.asarray(f["transform_matrix"], float) @ NERF_TO_OPTICAL))
    frames.sort(key=lambda fr: fr.path.name)
    return camera, frames


def fox_to_bags(root: str | Path, out_dir: str | Path, query_every: int = 5, storage: str = "sqlite3",
                period_s: float = 0.5, query_phase: int = 0) -> dict[str, Path]:
    """Write out_dir/fox_map and out_dir/fox_query; every query_every-th present image is a query
    (shifted by `query_phase` images: phases 0 .. query_every - 1 make every image a query once).

    Images travel as their original JPEG bytes on the compressed topic (no re-encoding).
    """
    camera, frames = load_fox(root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"map": out / "fox_map", "query": out / "fox_query"}
    with BagWriter(paths["map"], storage=storage, overwrite=True) as m, \
            BagWriter(paths["query"], storage=storage, overwrite=True) as q:
        for i, fr in enumerate(frames):
            ns = 1_000_000_000 + int(round(i * period_s * 1e9))
            bag = q if (i + 1 + query_phase) % query_every == 0 else m
            bag.write_compressed_bytes(ns, fr.path.read_bytes(), "jpeg", camera, FOX_FRAME)
            bag.write_pose(ns, fr.T_map_camera)
    return paths
