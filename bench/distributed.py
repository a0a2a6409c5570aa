"""Benchmark: map building on 1 and on 2 processes (torchrun, DistributedDataParallel), in one run.

    .venv/bin/python bench/distributed.py [--data data] [--procs 2]

Builds the demo map (rendering the demo bags first when they are missing) once per process count,
each time redoing every stage from `features` on (`--from-stage features`; the frames stage comes
from the work directory), and prints each stage's seconds and the speed-up of N processes over one.
Features and recognizer training split between the processes; SfM and landmarks run on rank 0.
Run it with nothing else busy: on a 2-core machine two processes share the cores.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

STAGES = ("features", "sfm", "landmarks", "training")


def build(bag: Path, out: Path, work: Path, procs: int, extra: list[str]) -> tuple[float, dict[str, float]]:
    """Wall seconds of one build and each stage's seconds from its work directory."""
    cli = ["-m", "pram_ros.cli", "build-map", str(bag), "--out", str(out), "--work-dir", str(work), *extra]
    cmd = [sys.executable, *cli] if procs == 1 else \
        [str(Path(sys.executable).with_name("torchrun")), "--standalone", f"--nproc-per-node={procs}", *cli]
    t = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.monotonic() - t
    return wall, {s: json.loads((work / f"{s}.json").read_text())["seconds"] for s in STAGES}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from pram_ros.core.synthetic import make_demo_data

    bag = a.data / "demo_map"
    if not (bag / "metadata.yaml").exists():
        bag = make_demo_data(a.data)["map"]
    out, work = a.data / "distributed" / "map.pram", a.data / "distributed" / "map.work"
    common = ["--device", a.device]
    build(bag, out, work, 1, common)  # every stage once, so that the runs below share the frames stage
    runs = {n: build(bag, out, work, n, common + ["--from-stage", "features"]) for n in (1, a.procs)}
    print(f"\ndemo map ({bag}), device {a.device}; seconds per stage, redone from features")
    print(f"{'processes':>10} " + " ".join(f"{s:>10}" for s in STAGES) + f" {'build':>10}")
    for n, (wall, st) in runs.items():
        print(f"{n:>10} " + " ".join(f"{st[s]:10.1f}" for s in STAGES) + f" {wall:10.1f}")
    (w1, s1), (wn, sn) = runs[1], runs[a.procs]
    print(f"speed-up of {a.procs} processes: " + ", ".join(f"{s} {s1[s] / sn[s]:.2f}x" for s in STAGES)
          + f", whole build {w1 / wn:.2f}x")


if __name__ == "__main__":
    main()
