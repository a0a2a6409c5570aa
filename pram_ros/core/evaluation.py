"""Offline evaluation: localize every image of a contract bag and compare with its ground truth.

Writes report.json (recall at the field's thresholds over all query images, median errors,
localized share, median per-stage times), TUM trajectories for evo, and a PNG of positions and
errors. Recall counts failures as misses.
"""
from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .geometry import pose_from_T, rotation_error_deg, umeyama

THRESHOLDS = {"0.25m_2deg": (0.25, 2.0), "0.5m_5deg": (0.5, 5.0), "5m_10deg": (5.0, 10.0), "0.05m_5deg": (0.05, 5.0)}


@dataclass
class FrameRow:
    index: int
    stamp_ns: int
    localized: bool
    mode: str
    reason: str
    num_inliers: int
    num_keypoints: int
    translation_error_m: float | None
    rotation_error_deg: float | None
    timings_ms: dict[str, float]
    T_map_camera: list[list[float]] | None
    T_map_camera_gt: list[list[float]] | None


def errors(T_est: np.ndarray, T_gt: np.ndarray) -> tuple[float, float]:
    """(camera-centre distance, rotation angle in degrees) between two T_map_camera."""
    return float(np.linalg.norm(T_est[:3, 3] - T_gt[:3, 3])), rotation_error_deg(T_est[:3, :3], T_gt[:3, :3])


def summarize(rows: list[FrameRow], method: str, aligned: bool = False, scene_scale: float | None = None) -> dict[str, Any]:
    """The report's figures from per-frame rows."""
    n = len(rows)
    ok = [r for r in rows if r.localized and r.translation_error_m is not None]
    te = np.array([r.translation_error_m for r in ok])
    re = np.array([r.rotation_error_deg for r in ok])
    recall = {k: float(np.sum((te <= t) & (re <= a)) / n) if n else 0.0 for k, (t, a) in THRESHOLDS.items()}
    stages = sorted({k for r in rows for k in r.timings_ms})
    timing = {k: float(np.median([r.timings_ms[k] for r in rows if k in r.timings_ms])) for k in stages}
    report = {
        "method": method, "num_frames": n, "recall": recall,
        "median_translation_m": float(np.median(te)) if len(te) else None,
        "median_rotation_deg": float(np.median(re)) if len(re) else None,
        "localized_fraction": sum(r.localized for r in rows) / n if n else 0.0,
        "timing_ms": timing, "aligned_sim3": aligned,
    }
    if scene_scale:
        report["scene_scale"] = scene_scale
        report["median_translation_relative"] = float(np.median(te) / scene_scale) if len(te) else None
    report["frames"] = [asdict(r) for r in rows]
    return report


def scene_scale(T_gt: Iterable[np.ndarray]) -> float:
    """Median distance of the camera centres from their centroid (a unit for scale-free maps)."""
    c = np.array([T[:3, 3] for T in T_gt])
    return float(np.median(np.linalg.norm(c - c.mean(0), axis=1))) if len(c) else 0.0


def align_rows(rows: list[FrameRow]) -> None:
    """Sim(3)-align estimated poses to ground truth in place (for maps without metric scale)."""
    ok = [r for r in rows if r.localized and r.T_map_camera_gt is not None]
    if len(ok) < 3:
        return
    src = np.array([np.array(r.T_map_camera)[:3, 3] for r in ok])
    dst = np.array([np.array(r.T_map_camera_gt)[:3, 3] for r in ok])
    s, R, t = umeyama(src, dst)
    for r in rows:
        if r.localized and r.T_map_camera is not None:
            T = np.array(r.T_map_camera)
            T[:3, :3] = R @ T[:3, :3]
            T[:3, 3] = s * R @ T[:3, 3] + t
            r.T_map_camera = T.tolist()
            if r.T_map_camera_gt is not None:
                r.translation_error_m, r.rotation_error_deg = errors(T, np.array(r.T_map_camera_gt))


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=1))


def write_tum(path: Path, rows: list[tuple[int, np.ndarray]]) -> None:
    """TUM trajectory: 'stamp tx ty tz qx qy qz qw' per line (evo reads it)."""
    lines = []
    for ns, T in rows:
        p, q = pose_from_T(T)
        lines.append(f"{ns * 1e-9:.9f} " + " ".join(f"{v:.9f}" for v in (*p, *q)))
    write_atomic(path, "\n".join(lines) + "\n")


def plot_report(path: Path, rows: list[FrameRow], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gt = np.array([np.array(r.T_map_camera_gt)[:3, 3] for r in rows if r.T_map_camera_gt is not None])
    est = np.array([np.array(r.T_map_camera)[:3, 3] for r in rows if r.localized])
    fig, (a, b) = plt.subplots(2, 1, figsize=(8, 9), dpi=100, gridspec_kw={"height_ratios": [2, 1]})
    from .landmarks import ground_plane_coords

    # view from above, in the plane the cameras move in (the map's x-y when it is z-up)
    ref = gt if len(gt) >= 3 else est
    if len(gt):
        g = ground_plane_coords(gt, ref)
        a.plot(g[:, 0], g[:, 1], "-", c="0.6", lw=1, label="ground truth")
    if len(est):
        e = ground_plane_coords(est, ref)
        a.scatter(e[:, 0], e[:, 1], s=8, c="tab:blue", label="estimated", zorder=3)
    a.set_aspect("equal")
    a.legend()
    a.set_title(title)
    idx = np.array([r.index for r in rows])
    te = np.array([r.translation_error_m if r.localized and r.translation_error_m is not None else np.nan for r in rows])
    re = np.array([r.rotation_error_deg if r.localized and r.rotation_error_deg is not None else np.nan for r in rows])
    b.semilogy(idx, te, ".", label="translation error")
    b.semilogy(idx, re, ".", label="rotation error (deg)")
    fails = idx[[not r.localized for r in rows]]
    for f in fails:
        b.axvline(f, c="r", alpha=0.15, lw=1)
    b.set_xlabel("frame (red: not localized)")
    b.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    write_atomic(path, buf.getvalue())


def evaluate(localizer, bag: str | Path, out_dir: str | Path, tracking: bool = False, topics=None,
             progress: bool = True, max_frames: int = 0, stride: int = 1) -> dict[str, Any]:
    """Localize each frame of `bag` (every `stride`-th) and write the report into out_dir; returns
    the report. Tracking uses the bag's odometry, as the node does, where the bag has it."""
    from tqdm import tqdm

    from .bag import BagReader, BagTopics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[FrameRow] = []
    with BagReader(bag, topics or BagTopics()) as reader:
        if not reader.has_poses:
            raise ValueError(f"{bag} has no ground-truth poses on {reader.topics.pose!r}: nothing to evaluate against")
        n = -(-len(reader) // stride)  # frames evaluated
        n = min(max_frames, n) if max_frames else n
        first = True
        for f in tqdm(reader.frames(), total=n, desc=f"evaluate {localizer.conf.method}", unit="img",
                      disable=not progress):
            if max_frames and len(rows) >= max_frames:
                break
            if f.index % stride:
                continue
            if first:
                localizer.warm_up(f.camera)
                first = False
            res = localizer.localize(f.image, f.camera, use_tracking=tracking, T_odom_camera=f.T_odom_camera,
                                     stamp_ns=f.stamp_ns)
            te = ra = None
            if res.success and f.T_map_camera is not None:
                te, ra = errors(res.T_map_camera, f.T_map_camera)
            rows.append(FrameRow(f.index, f.stamp_ns, res.success, res.mode, res.reason, res.num_inliers,
                                 res.num_keypoints, te, ra, res.timings_ms,
                                 res.T_map_camera.tolist() if res.success else None,
                                 f.T_map_camera.tolist() if f.T_map_camera is not None else None))
    aligned = not localizer.map.metric
    if aligned:
        align_rows(rows)
    scale = scene_scale(np.array(r.T_map_camera_gt) for r in rows if r.T_map_camera_gt is not None)
    report = summarize(rows, localizer.conf.method + ("+tracking" if tracking else ""), aligned, scale)
    write_json_atomic(out / "report.json", report)
    write_tum(out / "estimated.tum", [(r.stamp_ns, np.array(r.T_map_camera)) for r in rows if r.localized])
    write_tum(out / "groundtruth.tum", [(r.stamp_ns, np.array(r.T_map_camera_gt)) for r in rows
                                        if r.T_map_camera_gt is not None])
    plot_report(out / "trajectory.png", rows, f"{report['method']}: recall(0.25m,2deg) "
                f"{report['recall']['0.25m_2deg']:.0%}, localized {report['localized_fraction']:.0%}")
    return report


def report_table(report: dict[str, Any]) -> str:
    r = report["recall"]
    rows = [("method", report["method"]), ("frames", str(report["num_frames"])),
            ("localized", f"{report['localized_fraction']:.1%}")]
    rows += [(f"recall {k}", f"{v:.1%}") for k, v in r.items()]
    mt, mr = report["median_translation_m"], report["median_rotation_deg"]
    rows += [("median translation error", "-" if mt is None else f"{mt:.4f}"),
             ("median rotation error", "-" if mr is None else f"{mr:.3f} deg")]
    if report.get("median_translation_relative") is not None:
        rows.append(("median translation / scene scale", f"{report['median_translation_relative']:.2%}"))
    if report.get("aligned_sim3"):
        rows.append(("note", "map without metric scale: errors after a Sim(3) alignment"))
    rows += [(f"time {k}", f"{v:.1f} ms") for k, v in report["timing_ms"].items()]
    for key in ("latency_ms", "dropped_fraction"):
        if key in report:
            rows.append((key, str(report[key])))
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)
