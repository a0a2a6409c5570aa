"""Benchmark: PRAM relocalization and tracking against the exhaustive baseline, in one run.

    .venv/bin/python bench/localization.py [--map data/demo_map.pram] [--query data/demo_query]

Builds the demo data and map first when they are missing (as `make demo` does). Prints per-stage
median milliseconds, frames per second and recall for each method, the speed ratio, and how far
each goal is missed (goals: relocalization >= 3x faster than the baseline at equal or better
recall, >= 8 Hz relocalization and >= 15 Hz tracking on this CPU, rates from the mean time per
frame). Tracking runs twice: with optical flow between SIFT keyframes (the default) and on SIFT
alone.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from pram_ros.core.evaluation import evaluate
from pram_ros.core.fine import FineConfig
from pram_ros.core.flow import FlowConfig
from pram_ros.core.localizer import Localizer, LocalizerConfig


def ensure_demo(data: Path) -> tuple[Path, Path]:
    from pram_ros.core.build import build_map
    from pram_ros.core.synthetic import make_demo_data

    bags = {"map": data / "demo_map", "query": data / "demo_query"}
    if not all((p / "metadata.yaml").exists() for p in bags.values()):
        bags = make_demo_data(data)
    map_dir = data / "demo_map.pram"
    if not (map_dir / "manifest.json").exists():
        build_map(bags["map"], map_dir)
    return map_dir, bags["query"]


def mean_ms(report: dict) -> float:
    """Mean milliseconds per frame: the rate a stream is processed at (in tracking, flow frames and
    SIFT keyframes differ several-fold, and a median would hide the keyframes)."""
    return float(np.mean([f["timings_ms"]["total"] for f in report["frames"]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--map", type=Path)
    ap.add_argument("--query", type=Path)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    map_dir, query = (a.map, a.query) if a.map and a.query else ensure_demo(a.data)
    runs = {
        "pram relocalization": (LocalizerConfig(method="pram", device=a.device, tracking=False), False),
        "pram tracking": (LocalizerConfig(method="pram", device=a.device, tracking=True), True),
        "pram tracking, no flow": (LocalizerConfig(method="pram", device=a.device, tracking=True,
                                                   flow=FlowConfig(enabled=False)), True),
        "pram reloc, no fine": (LocalizerConfig(method="pram", device=a.device, tracking=False,
                                                fine=FineConfig(enabled=False)), False),
        "exhaustive baseline": (LocalizerConfig(method="exhaustive", device=a.device, tracking=False), False),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (conf, tracking) in runs.items():
            loc = Localizer(map_dir, conf)
            results[name] = evaluate(loc, query, Path(tmp) / name.replace(" ", "_"), tracking=tracking,
                                     progress=False)
            r = results[name]
            print(f"{name}: recall(0.25m,2deg) {r['recall']['0.25m_2deg']:.1%}, "
                  f"{1000 / mean_ms(r):.1f} Hz", flush=True)
    print(f"\nmap {map_dir}, query {query}, {results['pram relocalization']['num_frames']} images of 640x480, "
          f"torch threads {torch.get_num_threads()}, device {a.device}")
    stages = sorted({k for r in results.values() for k in r["timing_ms"] if k != "total"})
    head = f"{'method':<24}" + "".join(f"{s:>13}" for s in stages) + \
        f"{'total ms':>10}{'mean ms':>9}{'Hz':>7}{'recall':>8}{'med cm':>8}{'med deg':>8}"
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        t = r["timing_ms"]
        print(f"{name:<24}" + "".join(f"{t.get(s, 0):>13.1f}" for s in stages) +
              f"{t['total']:>10.1f}{mean_ms(r):>9.1f}{1000 / mean_ms(r):>7.1f}{r['recall']['0.25m_2deg']:>8.1%}"
              f"{100 * r['median_translation_m']:>8.2f}{r['median_rotation_deg']:>8.3f}")
    reloc, track, track_sift, _, base = (results[k] for k in runs)
    ratio = mean_ms(base) / mean_ms(reloc)
    print(f"\nspeed ratio baseline / pram relocalization: {ratio:.2f}x (goal >= 3x; reference 2.4x over hloc)")
    print(f"recall pram {reloc['recall']['0.25m_2deg']:.1%} vs baseline {base['recall']['0.25m_2deg']:.1%} "
          f"(goal: equal or better)")
    goals = [("relocalization >= 3x faster than baseline", ratio, 3.0, "x"),
             ("relocalization >= 8 Hz (frames per second of processing)", 1000 / mean_ms(reloc), 8.0, "Hz"),
             ("tracking >= 15 Hz (frames per second of processing)", 1000 / mean_ms(track), 15.0, "Hz")]
    for text, value, goal, unit in goals:
        state = "met" if value >= goal else f"MISSED by {goal - value:.2f} {unit} ({value / goal:.0%} of goal)"
        print(f"  {text}: {value:.2f} {unit} -> {state}")
    flow = mean_ms(track_sift) / mean_ms(track)
    print(f"  tracking with optical flow against SIFT alone: {flow:.2f}x faster (mean), median error "
          f"{track['median_translation_m'] / track_sift['median_translation_m']:.2f}x / "
          f"{track['median_rotation_deg'] / track_sift['median_rotation_deg']:.2f}x")
    rb = reloc["recall"]["0.25m_2deg"] - base["recall"]["0.25m_2deg"]
    print(f"  recall pram - baseline: {rb:+.1%} -> {'met' if rb >= 0 else 'MISSED'}")


if __name__ == "__main__":
    main()
