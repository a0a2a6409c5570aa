"""Benchmark: build the fox map bag on this machine; time per stage and map size vs hloc.

    .venv/bin/python bench/build_map.py [--fox ../shared/data/fox]

Goals: total under 10 minutes on 2 CPU cores; map data 10% or less of an hloc-style map of the
same reconstruction; the recognizer's weights reported beside it.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pram_ros.core.build import build_map
from pram_ros.core.fox import fox_to_bags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fox", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "fox")
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    with tempfile.TemporaryDirectory() as tmp:
        bags = fox_to_bags(a.fox, tmp)
        t0 = time.monotonic()
        s = build_map(bags["map"], Path(tmp) / "fox.pram")
        total = time.monotonic() - t0
    print(f"\nfox map bag, {s.images} images, torch threads {torch.get_num_threads()}")
    print(s.table())
    print(f"  total                            {total:.1f} s  (goal < 600 s: {'met' if total < 600 else 'MISSED'})")
    frac = s.sizes["map_data"] / s.sizes["hloc_style"]
    print(f"  map data / hloc-style: {frac:.1%} (goal <= 10%: {'met' if frac <= 0.10 else 'MISSED'}); "
          f"with weights {(s.sizes['map_data'] + s.sizes['weights']) / s.sizes['hloc_style']:.1%}; "
          f"weights {s.sizes['weights'] / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
