"""Every GPU check and timing of issue 6 in one run (for a lent GPU machine; see bench/gpu_check.sh).

1. GPU vs CPU outputs of SuperPoint (random weights, fixed seed) and of the recognizer, and what
   fp16 autocast changes (SuperPoint keypoints/descriptors; localization recall with fp16).
2. Median times at 640x480 over `--frames` frames after warm-up, GPU and CPU in the same run:
   SuperPoint fp32 / fp16, XFeat, the recognizer at 512 / 1024 / 2048 keypoints, and end-to-end
   localization on the demo map (registration included).
3. The demo map built on the GPU, and recognizer training on a 50-image map on GPU vs CPU (the CPU
   over a few steps, scaled to the same number of steps).
4. A real CUDA out-of-memory error (memory capped) in the localizer falls back to the CPU.
5. A short table last.

Only the core package is needed (no ROS). Runs on a CPU-only machine too (GPU columns are then nan).
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import pram_ros  # noqa: F401  (loads zlib users before pycolmap; see README, known issues)
import numpy as np
import torch

from pram_ros.core.bag import BagReader, Frame
from pram_ros.core.build import BuildConfig, build_map
from pram_ros.core.evaluation import errors
from pram_ros.core.features import FeatureConfig, make_extractor
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.map import load_map
from pram_ros.core.recognition import Recognizer, RecognizerConfig
from pram_ros.core.training import Sample, TrainConfig, train
from pram_ros.core.superpoint import SuperPoint
from pram_ros.core.synthetic import make_demo_data

NAN = float("nan")
ROWS: list[tuple[str, float, float, str]] = []  # (check, cpu, gpu, unit)
FAILED: list[str] = []


@contextmanager
def section(name: str):
    """Run one part; a failure is printed and recorded, and the rest still runs."""
    print(f"\n== {name}", flush=True)
    t = time.monotonic()
    try:
        yield
    except Exception:  # noqa: BLE001 - one broken part must not lose the others' figures
        traceback.print_exc()
        FAILED.append(name)
    print(f"   ({time.monotonic() - t:.1f} s)", flush=True)


def median_ms(fn: Callable[[], object], n: int, dev: torch.device) -> float:
    for _ in range(10):
        fn()
    ts = []
    for _ in range(n):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        fn()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))


def localize_run(map_dir: Path, frames: list[Frame], conf: LocalizerConfig) -> dict[str, float]:
    """Median stage times (ms) and recall at (0.25 m, 2 deg) over the frames, after warm-up."""
    loc = Localizer(map_dir, conf)
    loc.warm_up(frames[0].camera)
    stage: dict[str, list[float]] = {}
    hits = ok = 0
    for f in frames:
        res = loc.localize(f.image, f.camera)
        ok += res.success
        if res.success and f.T_map_camera is not None:
            dt, dr = errors(res.T_map_camera, f.T_map_camera)
            hits += dt <= 0.25 and dr <= 2.0
        for k, v in res.timings_ms.items():
            stage.setdefault(k, []).append(v)
    out = {k: float(np.median(v)) for k, v in stage.items()}
    out["recall"], out["localized"] = hits / len(frames), ok / len(frames)
    return out


def map_samples(map_dir: Path, images: int) -> list[Sample]:
    """The map images' own keypoints with their landmark labels (0: none), as training views."""
    m = load_map(map_dir, with_baseline=True)
    b, cam = m.baseline, m.cameras[0]
    out = []
    for i in range(min(images, len(b.ptr) - 1)):
        lo, hi = b.ptr[i], b.ptr[i + 1]
        pid = b.point_ids[lo:hi]
        lab = np.where(pid >= 0, m.labels[np.maximum(pid, 0)], 0).astype(np.int64)
        out.append(Sample(b.keypoints[lo:hi], b.descriptors[lo:hi].astype(np.float32), lab, (cam.width, cam.height)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100, help="timed frames per case and device")
    ap.add_argument("--map-images", type=int, default=0, help="limit the demo map run (0: all 190)")
    ap.add_argument("--build-steps", type=int, default=TrainConfig().steps,
                    help="recognizer steps of the map build (0: the default rule)")
    ap.add_argument("--cpu-train-steps", type=int, default=20)
    a = ap.parse_args()
    import pycolmap

    pycolmap.logging.minloglevel = 2
    cuda = torch.cuda.is_available()
    cpu, gpu = torch.device("cpu"), torch.device("cuda") if cuda else None
    devices = [cpu] + ([gpu] if cuda else [])
    print(f"date {time.strftime('%Y-%m-%d %H:%M')}, python {platform.python_version()}, torch {torch.__version__}, "
          f"cuda {torch.version.cuda}, device {torch.cuda.get_device_name(0) if cuda else 'none'}, "
          f"cpu threads {torch.get_num_threads()}, pycolmap {pycolmap.__version__}", flush=True)
    tmp = Path(tempfile.mkdtemp())
    img = None
    with section("demo data (rendered)"):
        bags = make_demo_data(tmp, max_images=a.map_images or None, progress=False)
        with BagReader(bags["query"]) as r:
            frames = list(r.frames())
        img = frames[0].image
        print(f"{len(frames)} query frames, {img.shape[1]}x{img.shape[0]}")
    gray = torch.from_numpy(img.mean(-1) if img is not None and img.ndim == 3 else
                            np.random.default_rng(0).integers(0, 255, (480, 640))).float()[None, None] / 255

    def timed(name: str, make_fn: Callable[[torch.device], Callable[[], object]], devs=devices) -> dict:
        res = {d.type: median_ms(make_fn(d), a.frames, d) for d in devs}
        ROWS.append((name, res.get("cpu", NAN), res.get("cuda", NAN), "ms"))
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in res.items()), flush=True)
        return res

    with section("SuperPoint: GPU vs CPU, fp16 vs fp32 (random weights, seed 0, a rendered image)"):
        torch.manual_seed(0)
        sp = SuperPoint(max_keypoints=1024).eval()
        with torch.inference_mode():
            c = sp(gray)[0]
            if cuda:
                sp.to(gpu)
                g = sp(gray.to(gpu))[0]
                with torch.autocast("cuda", torch.float16):
                    h = sp(gray.to(gpu))[0]
                for name, ref, o in (("gpu fp32 vs cpu", c, g), ("gpu fp16 vs gpu fp32", g, h)):
                    kr, ko = ref["keypoints"].float().cpu(), o["keypoints"].float().cpu()
                    dist, j = torch.cdist(ko, kr).min(1)
                    near = dist < 1.0
                    cos = (o["descriptors"].float().cpu()[near] * ref["descriptors"].float().cpu()[j[near]]).sum(1)
                    print(f"superpoint {name}: {len(ko)} vs {len(kr)} keypoints, {near.float().mean():.1%} within 1 px, "
                          f"descriptor cosine min {cos.min():.4f} mean {cos.mean():.5f}")
        timed("superpoint fp32 640x480", lambda d: (lambda m, x: lambda: m(x))(
            SuperPoint(max_keypoints=1024).eval().to(d).requires_grad_(False), gray.to(d)))
        if cuda:
            def sp_half(d):
                m, x = SuperPoint(max_keypoints=1024).eval().to(d).requires_grad_(False), gray.to(d)

                def f():
                    with torch.inference_mode(), torch.autocast("cuda", torch.float16):
                        m(x)
                return f
            timed("superpoint fp16 640x480", sp_half, [gpu])

    with section("XFeat"):
        frame_img = img if img is not None else (gray[0, 0].numpy() * 255).astype(np.uint8)
        timed("xfeat 640x480", lambda d: (lambda ex: lambda: ex(frame_img))(make_extractor(FeatureConfig(device=d.type))))
        if cuda:
            timed("xfeat fp16 640x480", lambda d: (lambda ex: lambda: ex(frame_img))(
                make_extractor(FeatureConfig(device=d.type, half=True))), [gpu])

    with section("recognizer: GPU vs CPU outputs, times at 512/1024/2048 keypoints"):
        rc = RecognizerConfig(descriptor_dim=64, num_classes=55)
        torch.manual_seed(0)
        rec = Recognizer(rc).eval()
        d = torch.nn.functional.normalize(torch.randn(1, 1024, 64), dim=-1)
        k = torch.rand(1, 1024, 2) * 2 - 1
        with torch.inference_mode():
            lc = rec(d, k)
            if cuda:
                lg = rec.to(gpu)(d.to(gpu), k.to(gpu)).cpu()
                agree = (lc.argmax(-1) == lg.argmax(-1)).float().mean().item()
                print(f"recognizer gpu vs cpu: max logit diff {(lc - lg).abs().max().item():.2e}, argmax agree {agree:.1%}")
        for n in (512, 1024, 2048):
            def rec_fn(dev: torch.device, n: int = n):
                m = Recognizer(rc).eval().to(dev)
                dd = torch.nn.functional.normalize(torch.randn(1, n, 64, device=dev), dim=-1)
                kk = torch.rand(1, n, 2, device=dev) * 2 - 1

                def f():
                    with torch.inference_mode():
                        m(dd, kk)
                return f
            timed(f"recognizer {n} keypoints", rec_fn)

    map_dir = tmp / "map"
    with section(f"demo map built on the {'GPU' if cuda else 'CPU'} (features, SfM on the CPU, training)"):
        s = build_map(bags["map"], map_dir, BuildConfig(features=FeatureConfig(device="auto"),
                                                           train=TrainConfig(steps=a.build_steps)), progress=False)
        print(s.table())

        def on_build_device(value: float) -> tuple[float, float]:
            return (NAN, value) if cuda else (value, NAN)
        ROWS.append(("demo map build, total (s)", *on_build_device(sum(s.stage_seconds.values())), "s"))
        ROWS.append((f"demo map recognizer training, {s.recognition['steps']} steps (s)",
                     *on_build_device(s.recognition["train_seconds"]), "s"))

    with section("recognizer training, 50-image map: GPU vs CPU"):
        samples = map_samples(map_dir, 50)
        m = load_map(map_dir)
        rconf = RecognizerConfig(**m.recognizer_config)
        steps = TrainConfig().min_steps
        res = {}
        for dev in devices:
            n = steps if dev.type == "cuda" else a.cpu_train_steps
            _, rep = train(samples, samples[:4], rconf, TrainConfig(steps=n), dev, progress=False)
            res[dev.type] = rep["train_seconds"] * steps / n
            print(f"{dev}: {n} steps in {rep['train_seconds']:.1f} s -> {res[dev.type]:.1f} s for {steps} steps; "
                  f"accuracy on 4 training views {rep['val_landmark_accuracy']:.3f}")
        ROWS.append((f"recognizer training, 50 images, {steps} steps (s; cpu scaled)", res["cpu"],
                     res.get("cuda", NAN), "s"))

    with section("end to end on the demo map (relocalization on every frame, and tracking)"):
        runs = [("cpu", LocalizerConfig(device="cpu", tracking=False), frames[: a.frames])]
        if cuda:
            runs += [("cuda", LocalizerConfig(device="cuda", tracking=False), frames),
                     ("cuda fp16", LocalizerConfig(device="cuda", tracking=False, half=True), frames),
                     ("cuda tracking", LocalizerConfig(device="cuda", tracking=True), frames)]
        e2e = {}
        for name, conf, fr in runs:
            e2e[name] = r = localize_run(map_dir, fr, conf)
            print(f"{name} ({len(fr)} frames): " + ", ".join(f"{k} {v:.3g}" for k, v in r.items()), flush=True)
        g = e2e.get("cuda", {})
        for k in e2e["cpu"]:
            if k not in ("recall", "localized"):
                ROWS.append((f"end-to-end {k}", e2e["cpu"][k], g.get(k, NAN), "ms"))
        ROWS.append(("end-to-end rate (Hz)", 1e3 / e2e["cpu"]["total"], 1e3 / g["total"] if g else NAN, "Hz"))
        for name in ("cuda fp16", "cuda tracking"):
            if name in e2e:
                ROWS.append((f"{name}: total (ms)", NAN, e2e[name]["total"], "ms"))
        for name, r in e2e.items():
            print(f"recall(0.25 m, 2 deg) {name}: {r['recall']:.1%}, localized {r['localized']:.1%}")

    if cuda:
        with section("a real CUDA out-of-memory error in the localizer falls back to the CPU"):
            loc = Localizer(map_dir, LocalizerConfig(device="cuda", tracking=False))
            loc.warm_up(frames[0].camera)
            torch.cuda.empty_cache()
            torch.cuda.set_per_process_memory_fraction(1e-6)  # every new allocation now fails for real
            try:
                r = loc.localize(frames[0].image, frames[0].camera)
            finally:
                torch.cuda.set_per_process_memory_fraction(1.0)
            print(f"after a real OOM: device {loc.device}, success {r.success}, warning: {loc.device_warning[:160]!r}")
            assert loc.device.type == "cpu" and "OutOfMemoryError" in loc.device_warning

    print("\n| check | CPU | GPU | CPU/GPU |\n| --- | --- | --- | --- |")
    for name, c, g, unit in ROWS:
        ratio = c / g if unit != "Hz" else g / c
        print(f"| {name} | {c:.2f} | {g:.2f} | {ratio:.1f}x |")
    print("\nGoals on an H100: SuperPoint <= 2 ms/frame; end-to-end >= 100 Hz; 50-image map training < 1 min.")
    print(f"failed parts: {FAILED or 'none'}")


if __name__ == "__main__":
    main()
