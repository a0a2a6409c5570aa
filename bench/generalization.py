"""Benchmark: PRAM on real images unlike its map's, against the classic SIFT reference (fox).

    .venv/bin/python bench/generalization.py [--fox ../shared/data/fox] [--folds 5] [--sparse 3 4 5]

Two ways a user's queries differ from the images their map was built from:
- **another camera**: fox's queries (every image once, over `--folds` folds, against the maps of
  `bench/precision.py`) resized to half and a third, cropped to a 3:4 sensor and shrunk to 480x640,
  or darkened with noise and JPEG quality 60; the camera info changes with the image.
- **a sparser map**: only every k-th fox image builds the map (wider baselines between the query
  and its nearest map image), every other image queries.

PRAM runs with the defaults (`--method auto`: exhaustive on maps of at most 10 images) and, on the
sparse maps, also forced to recognition (`pram`). The reference is `bench/precision.py`'s (RootSIFT
at full resolution, exhaustive matching, one PnP). Prints the share posed, the median errors
(fox's units), and PRAM's median errors over the reference's on the frames both posed.
"""
from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import cv2
import numpy as np

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
from pram_ros.core.bag import BagReader, BagWriter
from pram_ros.core.camera import Camera
from pram_ros.core.evaluation import evaluate
from pram_ros.core.image_sets import load_nerf, write_bags
from pram_ros.core.localizer import Localizer, LocalizerConfig
from precision import METHODS, fox_folds, map_for

PRAM, REFERENCE = "pram (xfeat 640 + fine layer)", "reference (sift full-res, exhaustive)"


def other_camera(variant: str, image: np.ndarray, camera: Camera) -> tuple[np.ndarray, Camera, int]:
    """The image and camera as another camera would give them, and the JPEG quality to store it at."""
    def resized(img: np.ndarray, cam: Camera, s: float) -> tuple[np.ndarray, Camera]:
        c = cam.scaled(s)
        return cv2.resize(img, (c.width, c.height), interpolation=cv2.INTER_AREA), c

    if variant == "half":
        return *resized(image, camera, 0.5), 92
    if variant == "third":
        return *resized(image, camera, 1 / 3), 92
    if variant == "crop 3:4, 480x640":
        h = camera.width * 4 // 3
        y0 = (camera.height - h) // 2
        crop = Camera(camera.width, h, camera.fx, camera.fy, camera.cx, camera.cy - y0, camera.model, camera.D)
        return *resized(image[y0:y0 + h], crop, 480 / camera.width), 92
    if variant == "dark, noisy, jpeg 60":
        f = 0.35 * np.power(image.astype(np.float32) / 255, 1.4) + 0.03
        f += np.random.default_rng(0).normal(0, 0.01, f.shape).astype(np.float32)
        return np.clip(f * 255, 0, 255).astype(np.uint8), camera, 60
    raise ValueError(variant)


VARIANTS = ("half", "third", "crop 3:4, 480x640", "dark, noisy, jpeg 60")


def write_variant(query_bag: Path, out: Path, variant: str) -> Path:
    if not (out / "metadata.yaml").exists():
        with BagReader(query_bag) as r, BagWriter(out, overwrite=True) as w:
            for fr in r.frames():
                img, cam, quality = other_camera(variant, fr.image, fr.camera)
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
                w.write_compressed_bytes(fr.stamp_ns, buf.tobytes(), "jpeg", cam, fr.camera_frame)
                w.write_pose(fr.stamp_ns, fr.T_map_camera)
    return out


def write_sparse(fox: Path, out: Path, every: int) -> tuple[Path, Path]:
    """Every `every`-th fox image maps, the others query."""
    paths = out / "fox_map", out / "fox_query"
    if not (paths[1] / "metadata.yaml").exists():
        write_bags(load_nerf(fox), out, "fox", lambda i: i % every != 0)
    return paths


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def errors_by_frame(map_dir: Path, query_bag: Path, out: Path, method: str) -> tuple[dict, int]:
    """{frame: (translation, rotation deg)} of the posed frames, and the number of frames."""
    loc = Localizer(map_dir, LocalizerConfig(method=method, device="cpu", tracking=False))
    rep = evaluate(loc, query_bag, out, progress=False)
    return ({f["index"]: (f["translation_error_m"], f["rotation_error_deg"]) for f in rep["frames"] if f["localized"]},
            rep["num_frames"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--fox", type=Path, default=Path("../shared/data/fox"))
    ap.add_argument("--out", type=Path, default=Path("data/generalization"))
    ap.add_argument("--precision-out", type=Path, default=Path("data/precision"),
                    help="where bench/precision.py keeps its fox maps (built here when missing)")
    ap.add_argument("--folds", type=int, default=5, choices=range(0, 6), help="fox folds queried through other cameras")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--sparse", type=int, nargs="*", default=[3, 4, 5], help="map from every k-th fox image")
    a = ap.parse_args()
    if not (a.fox / "transforms.json").exists():
        raise SystemExit(f"no fox data at {a.fox}")
    rows = []  # (case, method, frames, errors)
    folds = list(fox_folds(a.data, a.fox, a.folds).items())
    for variant in a.variants:
        for method in (PRAM, REFERENCE):
            t0, errs, frames = time.monotonic(), {}, 0
            for k, (place, (map_bag, query_bag)) in enumerate(folds):
                q = write_variant(query_bag, a.out / f"{place}_{slug(variant)}", variant)
                e, n = errors_by_frame(map_for(map_bag, a.precision_out / place, *METHODS[method][:2]), q,
                                       a.out / "reports" / f"{place}_{slug(variant)}_{method.split()[0]}",
                                       METHODS[method][1])
                errs |= {(k, i): v for i, v in e.items()}
                frames += n
            rows.append((f"camera: {variant}", method, frames, errs))
            print(f"{variant}, {method}: {len(errs)}/{frames} posed ({time.monotonic() - t0:.0f} s)", flush=True)
    for every in a.sparse:
        map_bag, query_bag = write_sparse(a.fox, a.out / f"sparse{every}", every)
        with BagReader(map_bag) as r:
            images = len(r)
        for method, loc_method in ((PRAM, "auto"), (PRAM, "pram"), (REFERENCE, "exhaustive")):
            t0 = time.monotonic()
            map_dir = map_for(map_bag, a.out / f"sparse{every}" / "fox", *METHODS[method][:2])
            errs, frames = errors_by_frame(map_dir, query_bag, a.out / "reports" / f"sparse{every}_{loc_method}",
                                           loc_method)
            rows.append((f"map: every {every}-th image ({images})", f"{method.split()[0]} --method {loc_method}",
                         frames, errs))
            print(f"sparse {every}, {loc_method}: {len(errs)}/{frames} posed ({time.monotonic() - t0:.0f} s)", flush=True)

    print(f"\n{'case':30} {'method':40} {'posed':>9} {'med t':>8} {'med r deg':>9} {'ratio t / r (both posed)':>26}")
    for case, method, frames, errs in rows:
        ref = next(e for c, m, _, e in rows if c == case and m.startswith("reference"))
        med = np.median(list(errs.values()), 0) if errs else (np.nan, np.nan)
        both = sorted(errs.keys() & ref.keys())
        (pt, pr), (rt, rr) = (np.median([e[i] for i in both], 0) for e in (errs, ref)) if both else ((1, 1), (1, 1))
        print(f"{case:30} {method:40} {len(errs):4d}/{frames:<4d} {med[0]:8.4f} {med[1]:9.4f} "
              f"{pt / rt:12.2f}x / {pr / rr:.2f}x")


if __name__ == "__main__":
    main()
