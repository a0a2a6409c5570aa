"""Benchmark: recognizer training settings judged by held-out accuracy and by relocalization.

    .venv/bin/python bench/training_recipes.py --images 50 default batch_size=2,steps=1000 seed=1

Builds the demo map (cut to `--images` keyframes; 0: all) once per setting, without the fine
layer, the stages before training shared through one work directory; then relocalizes every demo
query from scratch (coarse pose only). A setting is `default` or comma-separated TrainConfig
fields. Prints, per setting: training seconds, final loss, held-out accuracies, relocalization
recall (0.25 m, 2 deg) and the share of queries localized by the first landmark group tried.
The held-out split of a small map is a few images; the query run is the steadier judge.
"""
from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
from pram_ros.core.bag import BagReader
from pram_ros.core.build import BuildConfig, build_map
from pram_ros.core.evaluation import THRESHOLDS, errors
from pram_ros.core.fine import FineBuildConfig, FineConfig
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.training import TrainConfig


def train_config(spec: str) -> TrainConfig:
    """`default` or `field=value,...` over TrainConfig (without the time cap)."""
    base = TrainConfig(max_minutes=0)
    kw = {} if spec == "default" else dict(kv.split("=") for kv in spec.split(","))
    return replace(base, **{k: type(getattr(base, k))(v) for k, v in kw.items()})


def relocalize(map_dir: Path, query: Path, group: int) -> tuple[float, float]:
    """(recall at 0.25 m / 2 deg, share localized by the first `group` landmarks tried)."""
    loc = Localizer(map_dir, LocalizerConfig(tracking=False, fine=FineConfig(enabled=False)))
    max_t, max_r = THRESHOLDS["0.25m_2deg"]
    ok, first = [], []
    with BagReader(query) as reader:
        for f in reader.frames():
            res = loc.localize(f.image, f.camera, use_tracking=False)
            t, r = errors(res.T_map_camera, f.T_map_camera) if res.success else (np.inf, np.inf)
            ok.append(t <= max_t and r <= max_r)  # as evaluation.summarize counts recall
            first.append(ok[-1] and len(res.tried) <= group)
    return float(np.mean(ok)), float(np.mean(first))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="+", help="`default` or TrainConfig fields, e.g. batch_size=2,steps=1000")
    ap.add_argument("--images", type=int, default=50, help="keyframes of the demo mapping run (0: all)")
    ap.add_argument("--data", type=Path, default=Path("data"), help="where the demo bags are (made when missing)")
    a = ap.parse_args()
    import pycolmap
    from localization import ensure_demo

    pycolmap.logging.minloglevel = 2
    _, query = ensure_demo(a.data)
    head = f"{'setting':<36}{'steps':>7}{'train s':>9}{'loss':>7}{'val lm':>8}{'val all':>8}{'recall':>8}{'first':>7}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in a.settings:
            times: dict[str, float] = {}
            conf = BuildConfig(max_images=a.images, train=train_config(spec), fine=FineBuildConfig(enabled=False))
            out = Path(tmp) / "map.pram"
            s = build_map(a.data / "demo_map", out, conf, progress=False, work_dir=Path(tmp) / "work",
                          on_stage=times.__setitem__)
            r = s.recognition
            recall, first = relocalize(out, query, LocalizerConfig().landmarks_per_attempt)
            rows.append(f"{spec:<36}{r['steps']:>7}{times['training']:>9.1f}{r['final_loss']:>7.3f}"
                        f"{r['val_landmark_accuracy']:>8.3f}{r['val_overall_accuracy']:>8.3f}{recall:>8.3f}{first:>7.3f}")
            print(rows[-1], flush=True)
    print(f"\ndemo map, {s.images} images; {len(a.settings)} settings\n{head}\n{'-' * len(head)}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
