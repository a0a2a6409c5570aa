"""Benchmark: pose precision of PRAM against the classic SIFT reference, on the demo and on fox.

    .venv/bin/python bench/precision.py [--data data] [--fox ../shared/data/fox]

The reference is what a classic pipeline does: RootSIFT at full resolution, matched against every
map image, one PnP (`--method exhaustive --features sift --resize-max 0`, no fine layer). PRAM runs with the
default settings (XFeat at 640 px, recognition, landmark-wise PnP, refinement, the fine layer's
re-fit), and without its fine layer (the coarse pose), to show what the fine layer gives. Both localize each
query from scratch (no tracking). Prints, per place and method: median translation and rotation
error, recall at (5 cm, 5 deg) and (25 cm, 2 deg), the time per frame, and the ratio of PRAM's
median errors to the reference's (the goal: <= 1.1x). `--matchers lighterglue imp` adds PRAM's
rows with those registration matchers (`imp` needs `--matcher-path`), beside the default `nn`.
fox's scale is arbitrary (COLMAP units), so its translation errors are also given relative to
the scene's size, and its 5 cm recall is in those units. fox has 10 queries; `--fox-folds 5`
queries each of its 50 images once, against a map of the other 40, and compares the pooled
errors (ten frames cannot tell a 0.95x ratio from 1.15x), with a 90% bootstrap interval of the
pooled ratios.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
from pram_ros.core.build import BuildConfig, build_map
from pram_ros.core.evaluation import evaluate
from pram_ros.core.features import FeatureConfig
from pram_ros.core.fine import FineBuildConfig, FineConfig
from pram_ros.core.localizer import Localizer, LocalizerConfig

METHODS = {  # name: (map features, localizer method, fine layer)
    "pram (xfeat 640 + fine layer)": (FeatureConfig(), "pram", True),
    "pram, coarse only (xfeat 640)": (FeatureConfig(), "pram", False),
    "reference (sift full-res, exhaustive)": (FeatureConfig(name="sift", max_keypoints=4096, resize_max=0),
                                              "exhaustive", False),
}


def fox_folds(data: Path, fox: Path, folds: int) -> dict[str, tuple[Path, Path]]:
    """(map bag, query bag) of fox's folds, made when missing: fold k (fox, fox1, ... fox4) queries
    every fifth image from the (k + 1)-th on and maps the rest."""
    from pram_ros.core.image_sets import image_set_to_bags

    out = {}
    for k in range(folds):
        d = data / ("fox" if k == 0 else f"fox_phase{k}")
        if not (d / "fox_map").exists():
            image_set_to_bags(fox, d, query_phase=k, name="fox")
        out["fox" if k == 0 else f"fox{k}"] = (d / "fox_map", d / "fox_query")
    return out


def map_for(map_bag: Path, prefix: Path, features: FeatureConfig, method: str) -> Path:
    """The map of `method`'s features, `{prefix}_{features}_{resize}.pram`, built from `map_bag` when
    missing (with the fine layer for pram; coarse-only runs use the same map)."""
    map_dir = prefix.parent / f"{prefix.name}_{features.name}_{features.resize_max}.pram"
    if not (map_dir / "manifest.json").exists():
        build_map(map_bag, map_dir, BuildConfig(features=features, fine=FineBuildConfig(enabled=method == "pram")),
                  progress=False)
    return map_dir


def places(data: Path, fox: Path, folds: int = 1) -> dict[str, tuple[Path, Path]]:
    """(map bag, query bag) of each place, made when missing: the demo, and fox's folds."""
    from pram_ros.core.synthetic import make_demo_data

    if not (data / "demo_map" / "metadata.yaml").exists():
        make_demo_data(data)
    out = {"demo": (data / "demo_map", data / "demo_query")}
    return out | (fox_folds(data, fox, folds) if (fox / "transforms.json").exists() else {})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--fox", type=Path, default=Path("../shared/data/fox"))
    ap.add_argument("--out", type=Path, default=Path("data/precision"))
    ap.add_argument("--stride", type=int, default=1, help="every n-th query image (the reference takes seconds each)")
    ap.add_argument("--places", nargs="+", default=["demo", "fox"], choices=["demo", "fox"])
    ap.add_argument("--fox-folds", type=int, default=1, choices=range(1, 6),
                    help="fox: also query the other images, every fifth from the 2nd, 3rd ... on, each fold "
                         "against a map of the rest (5: every image once), and pool the folds' errors")
    ap.add_argument("--matchers", nargs="*", default=[], choices=["lighterglue", "imp"],
                    help="also run PRAM with these registration matchers")
    ap.add_argument("--matcher-path", default="", help="matcher.pt for --matchers imp (pram-ros train-matcher)")
    a = ap.parse_args()
    runs = {name: (*spec, "nn") for name, spec in METHODS.items()}
    for matcher in a.matchers:
        runs |= {f"{name}, matcher {matcher}": (*spec, matcher) for name, spec in METHODS.items() if spec[1] == "pram"}
    rows = []
    for place, (map_bag, query_bag) in places(a.data, a.fox, a.fox_folds).items():
        if place.rstrip("0123456789") not in a.places:  # fox1 .. fox4: fox's folds
            continue
        for name, (features, method, fine, matcher) in runs.items():
            t0 = time.monotonic()
            if place == "demo" and features == FeatureConfig() and (a.data / "demo_map.pram" / "fine.npz").exists():
                map_dir = a.data / "demo_map.pram"  # `make demo`'s map: the same default settings
            else:
                map_dir = map_for(map_bag, a.out / place, features, method)
            built = time.monotonic() - t0
            loc = Localizer(map_dir, LocalizerConfig(method=method, device="cpu", tracking=False,
                                                     fine=FineConfig(enabled=fine), matcher=matcher,
                                                     matcher_path=a.matcher_path if matcher == "imp" else ""))
            tag = f"{place}_{method}_{features.name}{'_fine' if fine else ''}_{matcher}"
            rep = evaluate(loc, query_bag, a.out / tag, progress=False, stride=a.stride)
            rows.append(dict(place=place, method=name, frames=rep["num_frames"],
                             t=rep["median_translation_m"], r=rep["median_rotation_deg"],
                             t_rel=rep["median_translation_relative"], r5=rep["recall"]["0.05m_5deg"],
                             r25=rep["recall"]["0.25m_2deg"], build_s=built,
                             ms=rep["timing_ms"].get("total")))
            print(json.dumps(rows[-1]), flush=True)
            rows[-1]["errors"] = {f["index"]: (f["translation_error_m"], f["rotation_error_deg"])
                                  for f in rep["frames"] if f["localized"]}
    print(f"\n{'place':6} {'method':56} {'frames':>6} {'med t':>9} {'med t/scene':>11} {'med r deg':>9} "
          f"{'5cm,5deg':>8} {'25cm,2deg':>9} {'ms':>6}")
    for x in rows:
        def f(v, p):
            return "-" if v is None else f"{v:.{p}f}"
        print(f"{x['place']:6} {x['method']:56} {x['frames']:6d} {f(x['t'], 4):>9} {f(x['t_rel'], 4):>11} "
              f"{f(x['r'], 3):>9} {x['r5']:8.1%} {x['r25']:9.1%} {f(x['ms'], 0):>6}")
    for place in sorted({x["place"] for x in rows}):
        p, _, ref = [x for x in rows if x["place"] == place][:3]
        if p["t"] and ref["t"]:
            print(f"{place}: PRAM / reference median error: translation {p['t'] / ref['t']:.2f}x, "
                  f"rotation {p['r'] / ref['r']:.2f}x (goal <= 1.1x)")
        both = sorted(p["errors"].keys() & ref["errors"].keys())
        if both:  # the reference localizes fewer frames: compare on the frames both localized too
            (pt, pr), (rt, rr) = (np.median([x["errors"][i] for i in both], 0) for x in (p, ref))
            print(f"{place}: on the {len(both)} frames both localized: PRAM {pt:.4f} / {pr:.3f} deg, "
                  f"reference {rt:.4f} / {rr:.3f} deg; ratio translation {pt / rt:.2f}x, rotation {pr / rr:.2f}x")
    if a.fox_folds > 1:
        pooled(rows)


def pooled(rows: list[dict]) -> None:
    """PRAM against the reference over the frames of every fox fold that both localized."""
    folds = [[x for x in rows if x["place"] == place][:3] for place in sorted({x["place"] for x in rows})
             if place.startswith("fox")]
    pairs = np.array([(p["errors"][i], ref["errors"][i]) for p, _, ref in folds
                      for i in sorted(p["errors"].keys() & ref["errors"].keys())])  # (n, 2 methods, t / r)
    if not len(pairs):
        return
    (pt, pr), (rt, rr) = np.median(pairs, 0)
    better = (pairs[:, 0, 1] < pairs[:, 1, 1]).sum()
    (t_lo, r_lo), (t_hi, r_hi) = ratio_interval(pairs)
    print(f"fox, {len(folds)} folds pooled, {len(pairs)} frames both localized: PRAM {pt:.4f} / {pr:.4f} deg, "
          f"reference {rt:.4f} / {rr:.4f} deg; ratio translation {pt / rt:.2f}x (90% interval {t_lo:.2f}-{t_hi:.2f}), "
          f"rotation {pr / rr:.2f}x ({r_lo:.2f}-{r_hi:.2f}) (goal <= 1.1x); PRAM's rotation error lower on "
          f"{better} of {len(pairs)} frames")


def ratio_interval(pairs: np.ndarray, draws: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """90% bootstrap interval of PRAM's / the reference's median errors (translation, rotation),
    frames resampled in pairs: how far the pooled ratio can be trusted on this many frames."""
    rng = np.random.default_rng(0)
    med = np.stack([np.median(pairs[rng.integers(0, len(pairs), len(pairs))], 0) for _ in range(draws)])
    ratios = med[:, 0] / med[:, 1]  # (draws, t / r)
    return np.percentile(ratios, 5, axis=0), np.percentile(ratios, 95, axis=0)


if __name__ == "__main__":
    main()
