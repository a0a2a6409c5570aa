"""Profile of the landmark recognizer's forward pass on this CPU (issue: real time on 2 cores).

    .venv/bin/python bench/recognizer_profile.py [--keypoints 512 1024 2048] [--classes 55]

A recognizer of the default size (random weights: speed does not depend on them) runs on N
keypoints with 64-d descriptors, as at localization time (one image, inference mode). Prints the
median milliseconds per forward for each N and thread count, and torch.profiler's table of the
operators that take the time at 1024 keypoints.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pram_ros.core.recognition import Recognizer, RecognizerConfig


def time_forward(model: Recognizer, n: int, repeats: int = 15) -> float:
    g = torch.Generator().manual_seed(0)
    desc = torch.nn.functional.normalize(torch.randn(1, n, model.conf.descriptor_dim, generator=g), dim=-1)
    kpts = torch.rand(1, n, 2, generator=g) * 2 - 1
    with torch.inference_mode():
        model(desc, kpts)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model(desc, kpts)
            times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keypoints", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--classes", type=int, default=55, help="1 + K (the demo map has K = 54)")
    a = ap.parse_args()
    conf = RecognizerConfig(num_classes=a.classes)
    model = Recognizer(conf).eval()
    params = sum(p.numel() for p in model.parameters())
    dtypes = {p.dtype for p in model.parameters()}
    print(f"recognizer {conf}: {params / 1e6:.2f} M parameters, dtypes {dtypes}")
    threads = sorted({1, torch.get_num_threads()})
    print(f"{'keypoints':>10}" + "".join(f"{f'{t} thread(s) ms':>18}" for t in threads))
    default_threads = torch.get_num_threads()
    for n in a.keypoints:
        row = []
        for t in threads:
            torch.set_num_threads(t)
            row.append(time_forward(model, n))
        print(f"{n:>10}" + "".join(f"{x:>18.1f}" for x in row))
    torch.set_num_threads(default_threads)

    from torch.profiler import ProfilerActivity, profile

    desc = torch.nn.functional.normalize(torch.randn(1, 1024, conf.descriptor_dim), dim=-1)
    kpts = torch.rand(1, 1024, 2) * 2 - 1
    with torch.inference_mode():
        model(desc, kpts)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(5):
                model(desc, kpts)
    print(f"\ntorch.profiler, 1024 keypoints, 5 forwards, {default_threads} threads:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
