"""Benchmark: relocalization with the query's SIFT on its own thread (the default) against SIFT run
after the coarse pose, in one process on the same frames.

    .venv/bin/python bench/sift_overlap.py [--map data/demo_map.pram] [--query data/demo_query]

The fine fit needs the query's SIFT keypoints; OpenCV computes them without the GIL, so the
localizer starts them when the frame arrives and finds the coarse pose (XFeat, recognition,
registration) meanwhile. Prints the median and mean milliseconds per frame of each way, in
alternating rounds (the machine's speed drifts), the ratio, and whether the poses are the same.
"""
from __future__ import annotations

import argparse
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from pram_ros.core.bag import BagReader
from pram_ros.core.localizer import Localizer, LocalizerConfig

from localization import ensure_demo


class InCaller:
    """An executor that runs each task at once, in the caller's thread: SIFT after the coarse pose."""

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--map", type=Path)
    ap.add_argument("--query", type=Path)
    ap.add_argument("--stride", type=int, default=3, help="every n-th query image")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args()
    map_dir, query = (a.map, a.query) if a.map and a.query else ensure_demo(a.data)
    with BagReader(query) as r:
        frames = list(r.frames())[:: a.stride]
    loc = Localizer(map_dir, LocalizerConfig(tracking=False, device="cpu"))
    ways = {"sequential": InCaller(), "overlapped": loc._sift_thread}
    for f in frames[:3]:  # warm-up
        loc.localize(f.image, f.camera)
    ms: dict[str, list[float]] = {k: [] for k in ways}
    poses: dict[str, list] = {k: [] for k in ways}
    for rnd in range(a.rounds):
        for name, executor in ways.items():
            loc._sift_thread = executor
            for f in frames:
                t = time.perf_counter()
                res = loc.localize(f.image, f.camera)
                ms[name].append((time.perf_counter() - t) * 1e3)
                if rnd == 0:
                    poses[name].append(res.T_map_camera if res.success else None)
    for name, v in ms.items():
        print(f"{name:11} {np.median(v):7.1f} ms median {np.mean(v):7.1f} ms mean  "
              f"({len(frames)} frames x {a.rounds} rounds)")
    same = all((p is None and q is None) or (p is not None and q is not None and np.allclose(p, q, atol=1e-9))
               for p, q in zip(poses["sequential"], poses["overlapped"]))
    print(f"speed-up overlapped / sequential: {np.median(ms['sequential']) / np.median(ms['overlapped']):.2f}x "
          f"(median); the same poses: {same}")


if __name__ == "__main__":
    main()
