"""Benchmark: map building and localization as the site grows, and what a 10,000-image site would cost.

    .venv/bin/python bench/scale.py [--blocks 1 5 16] [--data data/scale]

For each size, renders a synthetic site of that many blocks of three rooms (about 190 map keyframes
a block; `pram-ros make-demo-data --blocks N`), builds its map with the default settings and
prints per stage the seconds and the peak memory of the process, then the map's size (MB, and as
a share of the hloc-style map of the same reconstruction), its landmarks and VRFs, the recognizer's
held-out accuracy, and the relocalization recall (0.25 m, 2 deg) and median time per frame on the
site's query run. From the measured sizes it fits each stage's growth (time ~ images^b) and
extrapolates to 10,000 images. Writes scale.json and scale.png (seconds per stage against images)
beside the data. Run it with nothing else busy.

    .venv/bin/python bench/scale.py --blocks 1 5 10 --per-frame

compares the built sites' per-frame time in one process on the same images: the smallest site's
query frames, each localized against every site's map in turn, so that the machine's drift falls
on all sizes alike. (Time only: the first block of a larger site has a door where the one-block
site has a wall, so these images are not that site's queries; its recall is in the main table.)
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
from pram_ros.core.build import BuildConfig, build_map
from pram_ros.core.evaluation import evaluate
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.synthetic import make_demo_data

STAGES = ("frames", "features", "sfm", "landmarks", "training", "write")


class PeakMemory:
    """The process's peak resident memory between two `lap()` calls, sampled every 50 ms."""

    def __init__(self) -> None:
        self.peak, self._stop = 0, False
        threading.Thread(target=self._sample, daemon=True).start()

    @staticmethod
    def rss() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while not self._stop:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.05)

    def lap(self) -> int:
        peak, self.peak = max(self.peak, self.rss()), self.rss()
        return peak


def measure(blocks: int, data: Path) -> dict:
    site = data / f"blocks_{blocks}"
    bags = {"map": site / "demo_map", "query": site / "demo_query"}
    if not all((b / "metadata.yaml").exists() for b in bags.values()):
        t = time.monotonic()
        bags = make_demo_data(site, blocks=blocks)
        print(f"rendered {blocks} blocks in {time.monotonic() - t:.0f} s", flush=True)
    mem, peaks = PeakMemory(), {}
    mem.lap()
    summary = build_map(bags["map"], site / "map.pram", BuildConfig(), on_stage=lambda s, _: peaks.__setitem__(
        s, mem.lap()), work_dir=site / "work", from_stage="frames")
    report = evaluate(Localizer(summary.out, LocalizerConfig(tracking=False, device="cpu")), bags["query"],
                      site / "eval", progress=True)
    row = {"blocks": blocks, "images": summary.images, "points": summary.points, "landmarks": summary.landmarks,
           "vrfs": summary.vrfs, "seconds": summary.stage_seconds, "peak_mb": {s: v / 1e6 for s, v in peaks.items()},
           "map_mb": summary.sizes["map_data"] / 1e6, "weights_mb": summary.sizes["weights"] / 1e6,
           "hloc_mb": summary.sizes["hloc_style"] / 1e6,
           "accuracy": summary.recognition.get("val_landmark_accuracy"), "query_frames": report["num_frames"],
           "recall": report["recall"]["0.25m_2deg"], "ms_per_frame": report["timing_ms"].get("total")}
    print(json.dumps(row), flush=True)
    return row


def per_frame(blocks: list[int], data: Path) -> None:
    """Relocalization time per map size on the same frames, interleaved (see the docstring)."""
    from pram_ros.core.bag import BagReader

    locs = {b: Localizer(data / f"blocks_{b}" / "map.pram", LocalizerConfig(tracking=False, device="cpu"))
            for b in blocks}
    times: dict[int, list[dict[str, float]]] = {b: [] for b in blocks}
    with BagReader(data / f"blocks_{min(blocks)}" / "demo_query") as r:
        frames = list(r.frames())
    for loc in locs.values():
        loc.warm_up(frames[0].camera)
    for f in frames:
        for b, loc in locs.items():
            res = loc.localize(f.image, f.camera, use_tracking=False)
            times[b].append(res.timings_ms)
    def median(b: int, stage: str) -> float:
        return float(np.median([t.get(stage, 0.0) for t in times[b]]))

    stages = ("features", "recognition", "registration", "refinement")
    base = median(min(blocks), "total")
    print(f"\nper-frame relocalization, the same {len(frames)} frames against each map (one process, interleaved):")
    print(f"{'images':>7} {'ms median':>10} {'ratio':>6}   " + " ".join(f"{s:>12}" for s in stages))
    for b, loc in locs.items():
        t = median(b, "total")
        print(f"{loc.map.images:7d} {t:10.1f} {t / base:6.2f}   "
              + " ".join(f"{median(b, s):12.1f}" for s in stages))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, nargs="+", default=[1, 5, 16])
    ap.add_argument("--data", type=Path, default=Path("data/scale"))
    ap.add_argument("--per-frame", action="store_true", help="only compare the built sites' per-frame time")
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    if a.per_frame:
        per_frame(a.blocks, a.data)
        return
    rows = [measure(b, a.data) for b in a.blocks]
    print(f"\n{'images':>7} {'points':>8} {'K':>4} {'VRFs':>6} " + " ".join(f"{s:>10}" for s in STAGES)
          + f" {'peak MB':>8} {'map MB':>7} {'/hloc':>6} {'acc':>5} {'recall':>7} {'ms':>6}")
    for r in rows:
        print(f"{r['images']:7d} {r['points']:8d} {r['landmarks']:4d} {r['vrfs']:6d} "
              + " ".join(f"{r['seconds'].get(s, 0):9.1f}s" for s in STAGES)
              + f" {max(r['peak_mb'].values()):8.0f} {r['map_mb']:7.2f} {r['map_mb'] / r['hloc_mb']:6.1%} "
              f"{r['accuracy']:5.3f} {r['recall']:7.1%} {r['ms_per_frame']:6.1f}")
    if len(rows) >= 2:
        n = np.array([r["images"] for r in rows], float)
        print("\ngrowth (time ~ images^b, fitted on the sizes above) and the estimate at 10,000 images:")
        estimate = {}
        for key, series in [*((s, [r["seconds"].get(s, 0) for r in rows]) for s in STAGES),
                            ("peak MB", [max(r["peak_mb"].values()) for r in rows]),
                            ("map MB", [r["map_mb"] for r in rows]), ("ms per frame", [r["ms_per_frame"] for r in rows])]:
            y = np.maximum(np.array(series, float), 1e-3)
            b, c = np.polyfit(np.log(n), np.log(y), 1)
            estimate[key] = float(np.exp(c) * 10_000 ** b)
            print(f"  {key:>12}: b = {b:4.2f}, at 10,000 images {estimate[key]:10.1f}")
        total = sum(estimate[s] for s in STAGES)
        print(f"  build at 10,000 images: about {total / 3600:.1f} h on this machine")
    a.data.mkdir(parents=True, exist_ok=True)
    (a.data / "scale.json").write_text(json.dumps(rows, indent=1))
    _plot(rows, a.data / "scale.png")


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [r["images"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for s in STAGES:
        ax.plot(n, [max(r["seconds"].get(s, 0), 1e-2) for r in rows], "o-", label=s)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("map images")
    ax.set_ylabel("seconds")
    ax.set_title("map building, seconds per stage (2 CPU cores)")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
