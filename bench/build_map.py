"""Benchmark: build a map on this machine; time per stage and map size vs hloc.

    .venv/bin/python bench/build_map.py [--fox ../shared/data/fox]
    .venv/bin/python bench/build_map.py --demo-images 50 [--compare-keypoints 512]

Goals (fox map bag): total under 10 minutes on 2 CPU cores; map data 10% or less of an hloc-style
map of the same reconstruction; the recognizer's weights reported beside it.
Goal (demo mapping run cut to 50 images, keyframes spread over it): under 2 minutes on 2 cores.
`--compare-keypoints N` builds the same map again with N keypoints per training sample (the
default is 512), to compare training time and held-out accuracy.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
from pram_ros.core.build import BuildConfig, BuildSummary, build_map
from pram_ros.core.image_sets import image_set_to_bags
from pram_ros.core.training import TrainConfig


def timed_build(bag: Path, out: Path, conf: BuildConfig) -> tuple[BuildSummary, float]:
    t0 = time.monotonic()
    s = build_map(bag, out, conf)
    return s, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fox", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "fox")
    ap.add_argument("--demo-images", type=int, default=0, help="build the demo map cut to this many images instead")
    ap.add_argument("--data", type=Path, default=Path("data"), help="where the demo bags are (made when missing)")
    ap.add_argument("--compare-keypoints", type=int, default=0, help="also build with this many keypoints per sample")
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        if a.demo_images:
            from localization import ensure_demo

            ensure_demo(a.data)
            bag, name, goal_s = a.data / "demo_map", f"demo map bag cut to {a.demo_images} images", 120
            conf = BuildConfig(max_images=a.demo_images)
        else:
            bag, name, goal_s, conf = image_set_to_bags(a.fox, tmp)["map"], "fox map bag", 600, BuildConfig()
        s, total = timed_build(bag, Path(tmp) / "map.pram", conf)
        print(f"\n{name}, {s.images} images, torch threads {torch.get_num_threads()}")
        print(s.table())
        print(f"  total                            {total:.1f} s  (goal < {goal_s} s: "
              f"{'met' if total < goal_s else f'MISSED by {total - goal_s:.1f} s'})")
        frac = s.sizes["map_data"] / s.sizes["hloc_style"]
        print(f"  map data / hloc-style: {frac:.1%} (goal <= 10%: {'met' if frac <= 0.10 else 'MISSED'}); "
              f"with weights {(s.sizes['map_data'] + s.sizes['weights']) / s.sizes['hloc_style']:.1%}; "
              f"weights {s.sizes['weights'] / 1e6:.2f} MB")
        if a.compare_keypoints:
            other = replace(conf, train=TrainConfig(keypoints_per_sample=a.compare_keypoints))
            s2, total2 = timed_build(bag, Path(tmp) / "compare.pram", other)
            k = TrainConfig().keypoints_per_sample
            print(f"\nkeypoints per training sample    {k:>8} {a.compare_keypoints:>8}")
            print(f"  build total (s)                {total:8.1f} {total2:8.1f}")
            t1, t2 = s.stage_seconds["training"], s2.stage_seconds["training"]
            print(f"  training (s)                   {t1:8.1f} {t2:8.1f}")
            for key in ("val_landmark_accuracy", "val_overall_accuracy"):
                print(f"  held-out {key[4:]:<21} {s.recognition[key]:8.3f} {s2.recognition[key]:8.3f}")
            gain = s2.recognition["val_landmark_accuracy"] - s.recognition["val_landmark_accuracy"]
            print(f"  held-out recognition accuracy with {a.compare_keypoints} no lower than with {k}: "
                  f"{'met' if gain >= 0 else f'MISSED by {-gain:.3f}'}")


if __name__ == "__main__":
    main()
