"""Benchmark: a map built from a SLAM run's poses against the map built from ground truth (demo).

    .venv/bin/python bench/slam_map.py [--data data] [--sigma-m 0.02] [--sigma-deg 0.3]

Writes the demo mapping run as a 2D SLAM records it (`write_slam_run`: x, y and yaw off by
`--sigma-m` and `--sigma-deg`, correlated over 2 s; no pose in its first 3 s), builds the map with
the defaults (`--pose-source auto` finds the TF poses), and prints:
- how far the keyframes' poses are from the truth: the SLAM's, and after the build's bundle
  adjustment (also after the best rigid alignment to the truth, which leaves only the error of the
  adjusted geometry itself);
- relocalization of every demo query from scratch on the SLAM-run map and on the ground-truth map:
  posed, median and 90th-percentile errors, within 5 cm, recall at (0.25 m, 2 deg).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from localization import ensure_demo

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
from pram_ros.core.bag import BagReader
from pram_ros.core.build import BuildConfig, build_map, select_keyframes
from pram_ros.core.evaluation import errors
from pram_ros.core.geometry import invert
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.synthetic import write_slam_run


def rigid_residuals(C: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Distances between centres C and G after the rigid transform that best maps C onto G."""
    mc, mg = C.mean(0), G.mean(0)
    U, _, Vt = np.linalg.svd((G - mg).T @ (C - mc))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    return np.linalg.norm((C - mc) @ (U @ D @ Vt).T + mg - G, axis=1)


def row(name: str, e: np.ndarray) -> str:
    ok = np.isfinite(e[:, 0])
    t, r = e[ok, 0] * 100, e[ok, 1]
    return (f"{name:<34} {ok.sum():>4}/{len(e):<4} {np.median(t):>8.2f} {np.median(r):>8.3f} "
            f"{np.percentile(t, 90):>8.2f} {np.mean(e[:, 0] < 0.05):>8.1%} "
            f"{np.mean((e[:, 0] < 0.25) & (e[:, 1] < 2)):>8.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="data")
    ap.add_argument("--sigma-m", type=float, default=0.02)
    ap.add_argument("--sigma-deg", type=float, default=0.3)
    a = ap.parse_args()
    data = Path(a.data)
    gt_map, query = ensure_demo(data)
    bag, out = data / "slam_map", data / "slam_map.pram"
    write_slam_run(data / "demo_map", bag, sigma_xy_m=a.sigma_m, sigma_yaw_deg=a.sigma_deg, start_delay_s=3.0)
    t0 = time.monotonic()
    summary = build_map(bag, out, BuildConfig(), work_dir=data / "slam_map.work")
    print(summary.table(), f"\n  build {time.monotonic() - t0:.0f} s")

    with BagReader(data / "demo_map") as r:
        truth = {f.stamp_ns: f.T_map_camera for f in r.frames()}
    conf = BuildConfig()
    with BagReader(bag, frames=conf.frames()) as r:
        kfs = select_keyframes(r, conf).keyframes
    T_cw = np.load(data / "slam_map.work" / "sfm.npz")["T_cw"]
    slam = np.array([errors(k.T_map_camera, truth[k.stamp_ns]) for k in kfs])
    adjusted = np.array([errors(invert(T), truth[k.stamp_ns]) for T, k in zip(T_cw, kfs)])
    rigid = rigid_residuals(np.array([invert(T)[:3, 3] for T in T_cw]), np.array([truth[k.stamp_ns][:3, 3] for k in kfs]))
    print(f"\nkeyframe poses against the truth ({len(kfs)}): median cm / deg, 90th percentile cm / deg")
    for name, e in (("the SLAM's", slam), ("after the coarse bundle adjustment", adjusted)):
        print(f"  {name:<42} {np.median(e[:, 0]) * 100:6.2f} {np.median(e[:, 1]):6.3f}   "
              f"{np.percentile(e[:, 0], 90) * 100:6.2f} {np.percentile(e[:, 1], 90):6.3f}")
    print(f"  {'the same, rigidly aligned to the truth':<42} {np.median(rigid) * 100:6.2f}          "
          f"{np.percentile(rigid, 90) * 100:6.2f}")

    with BagReader(query) as r:
        frames = list(r.frames())
    print(f"\nrelocalization from scratch ({len(frames)} queries)\n{'map':<34} {'posed':>9} {'med cm':>8} "
          f"{'med deg':>8} {'p90 cm':>8} {'< 5 cm':>8} {'recall':>8}")
    for name, path in (("SLAM run (tf poses)", out), ("ground truth", gt_map)):
        loc = Localizer(path, LocalizerConfig(tracking=False))
        e = []
        for f in frames:
            x = loc.localize(f.image, f.camera, use_tracking=False)
            e.append(errors(x.T_map_camera, f.T_map_camera) if x.success else (np.inf, np.inf))
        print(row(name, np.array(e)))


if __name__ == "__main__":
    main()
