"""Benchmark: how PRAM's per-query cost grows with the map, against the exhaustive baseline.

    .venv/bin/python bench/map_size.py [--sizes 15,50,0] [--fox ../shared/data/fox]

Builds the demo map cut to each size (keyframes spread evenly over the mapping run; 0: all of
them) and, when the fox set is there, the fox map (real images, 1080x1920). Each query is then
localized from scratch with PRAM and with the exhaustive baseline (the same features and PnP), and
the script prints per map: PRAM's recognition + registration + refinement, the baseline's matching
+ registration, their ratio (goal: at most 1/3 for maps of 50 images or more), the totals, recall
at (0.25 m, 2 deg), and the route `method: auto` takes for that map (goal: the cheaper of the two
measured; auto's own time is printed too, and differs from its route's by the run-to-run spread).
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from localization import ensure_demo

from pram_ros.core.build import BuildConfig, build_map
from pram_ros.core.evaluation import evaluate
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.map import load_baseline

PRAM_STAGES = ("recognition", "registration", "refinement")
BASELINE_STAGES = ("matching", "registration")


def maps(data: Path, sizes: list[int], fox: Path) -> dict[str, tuple[Path, Path]]:
    """(map, query bag) per row of the table, built when missing."""
    from pram_ros.core.image_sets import image_set_to_bags

    full_map, query = ensure_demo(data)
    out = {}
    for n in sizes:
        path = full_map if n == 0 else data / "map_size" / f"demo_{n}.pram"
        if not (path / "manifest.json").exists():
            build_map(data / "demo_map", path, BuildConfig(max_images=n))
        out[f"demo, {n or 'all'}"] = (path, query)
    if (fox / "transforms.json").exists():
        bags = {"map": data / "fox" / "fox_map", "query": data / "fox" / "fox_query"}
        if not all((p / "metadata.yaml").exists() for p in bags.values()):
            bags = image_set_to_bags(fox, data / "fox", name="fox")
        path = data / "map_size" / "fox.pram"
        if not (path / "manifest.json").exists():
            build_map(bags["map"], path, BuildConfig())
        out["fox"] = (path, bags["query"])
    return out


def stage_sum(report: dict, stages: tuple[str, ...]) -> float:
    """Mean per query of the stages' summed time (a median per stage would not add up)."""
    frames = report["frames"]
    return sum(f["timings_ms"].get(s, 0.0) for f in frames for s in stages) / len(frames)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--sizes", default="15,50,0", help="demo map sizes in images (0: the whole map)")
    ap.add_argument("--fox", type=Path, default=Path("../shared/data/fox"))
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (map_dir, query) in maps(a.data, [int(s) for s in a.sizes.split(",")], a.fox).items():
            rep = {}
            for method in ("pram", "exhaustive", "auto"):
                loc = Localizer(map_dir, LocalizerConfig(method=method, device="cpu", tracking=False))
                rep[method] = evaluate(loc, query, Path(tmp) / f"{name}_{method}", progress=False)
                rep[method]["route"] = loc.method
            p, b = stage_sum(rep["pram"], PRAM_STAGES), stage_sum(rep["exhaustive"], BASELINE_STAGES)
            rows.append(dict(name=name, images=len(load_baseline(map_dir).ptr) - 1, pram=p, base=b,
                             pram_total=stage_sum(rep["pram"], ("total",)),
                             base_total=stage_sum(rep["exhaustive"], ("total",)),
                             auto_total=stage_sum(rep["auto"], ("total",)), route=rep["auto"]["route"],
                             pram_recall=rep["pram"]["recall"]["0.25m_2deg"],
                             base_recall=rep["exhaustive"]["recall"]["0.25m_2deg"],
                             auto_recall=rep["auto"]["recall"]["0.25m_2deg"]))
            print(rows[-1], flush=True)
    print(f"\nmean ms per query, torch threads {torch.get_num_threads()}, each query localized from scratch")
    print("| map | images | PRAM recognition+registration+refinement | baseline matching+registration | ratio | "
          "PRAM total | baseline total | recall PRAM / baseline | auto: route, total, recall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['name']} | {r['images']} | {r['pram']:.1f} | {r['base']:.1f} | {r['pram'] / r['base']:.2f} | "
              f"{r['pram_total']:.1f} | {r['base_total']:.1f} | {r['pram_recall']:.1%} / {r['base_recall']:.1%} | "
              f"{r['route']}, {r['auto_total']:.1f}, {r['auto_recall']:.1%} |")
    for r in rows:
        ratio = r["pram"] / r["base"]
        if r["images"] >= 50:
            state = "met" if ratio <= 1 / 3 else f"MISSED by {ratio - 1 / 3:.2f}"
            print(f"  {r['name']}: PRAM stages / baseline stages {ratio:.2f} (goal <= 0.33) -> {state}")
        cheaper = "pram" if r["pram_total"] <= r["base_total"] else "exhaustive"
        state = "met" if r["route"] == cheaper else f"MISSED: {cheaper} was the cheaper route"
        print(f"  {r['name']}: auto takes {r['route']} (PRAM {r['pram_total']:.1f} ms, baseline "
              f"{r['base_total']:.1f} ms) -> {state}")


if __name__ == "__main__":
    main()
