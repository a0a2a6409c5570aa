"""Training the learned matcher (matcher.py): pairs with known correspondences from three sources,
padded batches, the per-layer assignment loss, and a loop that checkpoints and resumes.

Pair sources (nothing is downloaded):
- `rendered_pairs`: two views of the synthetic place (synthetic.py) under random lighting, with a
  baseline and a turn between them; correspondences from the scene's exact depth, occlusion
  checked both ways.
- `homography_pairs`: a bundled natural photograph and a warped, re-lit copy of it
  (training.augment); correspondences through the homography.
- `map_pairs`: image pairs of a built map's work directory, correspondences from its SfM tracks.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from .camera import Camera
from .evaluation import write_atomic
from .features import Extractor
from .geometry import invert
from .matcher import Matcher, MatcherConfig
from .recognition import normalize_keypoints
from .two_view import epipolar_guide, homography_guide

log = logging.getLogger(__name__)
MATCH_PX = 3.0  # a keypoint within this of the true correspondence is its match
NO_MATCH_PX = 6.0  # none within this: the keypoint has no match; in between: unknown (not supervised)
UNKNOWN, NO_MATCH = -2, -1


@dataclass
class Pair:
    """Two keypoint sets and the truth between them: gt0[i] is the keypoint of image 1 matching
    keypoint i of image 0, NO_MATCH, or UNKNOWN (gt1 the same the other way; both None where
    only the relative pose is known)."""

    kp0: np.ndarray
    desc0: np.ndarray
    cam0: Camera
    kp1: np.ndarray
    desc1: np.ndarray
    cam1: Camera
    gt0: np.ndarray | None
    gt1: np.ndarray | None
    T_1_0: np.ndarray | None = None  # camera 0 -> camera 1, for pose pairs
    H: np.ndarray | None = None  # image 0 -> image 1, for homography pairs
    source: str = ""
    images: tuple[np.ndarray, np.ndarray] | None = None  # kept for a picture only

    def guide(self, s0: np.ndarray | slice = slice(None), s1: np.ndarray | slice = slice(None)):
        """The geometry solver of the matcher's iterative pose for this pair (or for the keypoints
        s0 and s1 of it)."""
        if self.H is not None:
            return homography_guide(self.kp0[s0], self.kp1[s1])
        return epipolar_guide(self.kp0[s0], self.kp1[s1], self.cam0, self.cam1)



def labels_from_transfer(uv01: np.ndarray, ok01: np.ndarray, kp1: np.ndarray, uv10: np.ndarray, ok10: np.ndarray,
                         kp0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gt0, gt1 from where each keypoint lands in the other image (uv, and whether it is visible
    there): mutual nearest within MATCH_PX is a match; visible with nothing within NO_MATCH_PX, or
    not visible, is NO_MATCH; the rest UNKNOWN."""
    def one_way(uv, ok, kp_other):
        gt = np.full(len(uv), NO_MATCH, np.int64)
        if not len(kp_other) or not ok.any():
            return gt, np.full(len(uv), np.inf)
        d, j = cKDTree(kp_other).query(np.where(ok[:, None], uv, 1e9))
        d = np.where(ok, d, np.inf)
        gt[(d > MATCH_PX) & (d <= NO_MATCH_PX)] = UNKNOWN
        gt[d <= MATCH_PX] = j[d <= MATCH_PX]
        return gt, d

    gt0, _ = one_way(uv01, ok01, kp1)
    gt1, _ = one_way(uv10, ok10, kp0)
    return mutual(gt0, gt1)


def mutual(gt0: np.ndarray, gt1: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The labels with every match that is not returned the other way made UNKNOWN."""
    gt0, gt1 = gt0.copy(), gt1.copy()
    i = np.flatnonzero(gt0 >= 0)
    gt0[i[gt1[gt0[i]] != i]] = UNKNOWN
    j = np.flatnonzero(gt1 >= 0)
    gt1[j[gt0[gt1[j]] != j]] = UNKNOWN
    return gt0, gt1


def rendered_pairs(n: int, extractor: Extractor, seed: int = 1, max_turn_deg: float = 30.0,
                   progress: bool = True, min_matches: int = 30) -> list[Pair]:
    """`n` pairs of views of the synthetic place built with `seed` (the demo's place is seed 0:
    keep it for evaluation), 0.2-3 m and up to `max_turn_deg` apart, each view under its own light;
    views that share fewer than `min_matches` true matches are drawn again."""
    from tqdm import tqdm

    from .synthetic import DEMO_CAMERA, MAP_RUN, T_BASE_CAMERA, Lighting, Renderer, build_scene, trajectory

    rng = np.random.default_rng(seed)
    scene = build_scene(seed=seed)
    renderer = Renderer(scene, DEMO_CAMERA)
    _, T_map_base = trajectory(MAP_RUN)
    out: list[Pair] = []
    bar = tqdm(total=n, desc="rendered pairs", unit="pair", disable=not progress)
    for _ in range(20 * n):
        if len(out) == n:
            break
        a = int(rng.integers(0, len(T_map_base)))
        b = int(np.clip(a + rng.integers(4, 60) * rng.choice([-1, 1]), 0, len(T_map_base) - 1))
        turn = np.radians(rng.uniform(-max_turn_deg, max_turn_deg))
        c, s = np.cos(turn), np.sin(turn)
        Rz = np.array([[c, -s, 0, 0], [s, c, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]])
        T0 = T_map_base[a] @ T_BASE_CAMERA
        T1 = T_map_base[b] @ Rz @ T_BASE_CAMERA
        views = []
        for T in (T0, T1):
            light = Lighting(gain=rng.uniform(0.6, 1.3), color=tuple(rng.uniform(0.85, 1.15, 3)),
                             light_dir=tuple(rng.normal(size=3)), ambient=rng.uniform(0.5, 0.9),
                             noise_sigma=rng.uniform(0, 5), vignette=rng.uniform(0, 0.3))
            kp, desc = extractor(renderer.render(T, light, rng)).numpy()
            views.append((kp, desc))
        (kp0, d0), (kp1, d1) = views
        uv01, ok01 = _transfer(scene, DEMO_CAMERA, kp0, T0, T1)
        uv10, ok10 = _transfer(scene, DEMO_CAMERA, kp1, T1, T0)
        gt0, gt1 = labels_from_transfer(uv01, ok01, kp1, uv10, ok10, kp0)
        if (gt0 >= 0).sum() >= min_matches:
            out.append(Pair(kp0, d0, DEMO_CAMERA, kp1, d1, DEMO_CAMERA, gt0, gt1, T_1_0=invert(T1) @ T0,
                            source="rendered"))
            bar.update()
    bar.close()
    return out


def _transfer(scene, cam: Camera, kp: np.ndarray, T_from: np.ndarray, T_to: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where keypoints of the view at T_from land in the view at T_to, through the scene's true
    surface, and whether the surface point is visible there (in the image, not occluded)."""
    rays = np.c_[cam.normalize(kp), np.ones(len(kp))] @ T_from[:3, :3].T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    eye = T_from[:3, 3]
    dist, _, _ = scene.raycast(eye, rays)
    X = eye + np.where(np.isfinite(dist), dist, 0)[:, None] * rays
    T = invert(T_to)
    uv, front = cam.project(X @ T[:3, :3].T + T[:3, 3])
    ok = np.isfinite(dist) & front & cam.contains(uv)
    if ok.any():  # occlusion: the ray from the other camera must hit the same point
        back = X[ok] - T_to[:3, 3]
        d_back = np.linalg.norm(back, axis=1)
        hit, _, _ = scene.raycast(T_to[:3, 3], back / d_back[:, None])
        ok[np.flatnonzero(ok)] = np.abs(hit - d_back) < 0.01 * d_back + 0.01
    return np.nan_to_num(uv, nan=-1e6), ok


def homography_pairs(n: int, extractor: Extractor, seed: int = 2, progress: bool = True) -> list[Pair]:
    """`n` pairs of a bundled photograph (resized to 640 px) and a warped, re-lit copy."""
    import cv2
    from tqdm import tqdm

    from .synthetic import _photos
    from .training import augment

    rng = np.random.default_rng(seed)
    photos = list(_photos().values())
    out = []
    for _ in tqdm(range(n), desc="homography pairs", unit="pair", disable=not progress):
        img = photos[int(rng.integers(len(photos)))]
        s = 640 / max(img.shape[:2])
        img = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)
        warped, H = augment(img, rng)
        kp0, d0 = extractor(img).numpy()
        kp1, d1 = extractor(warped).numpy()
        cam0, cam1 = (Camera(im.shape[1], im.shape[0], 500.0, 500.0, im.shape[1] / 2, im.shape[0] / 2)
                      for im in (img, warped))
        uv01 = cv2.perspectiveTransform(kp0[None].astype(np.float64), H)[0] if len(kp0) else np.zeros((0, 2))
        uv10 = cv2.perspectiveTransform(kp1[None].astype(np.float64), np.linalg.inv(H))[0] if len(kp1) else \
            np.zeros((0, 2))
        gt0, gt1 = labels_from_transfer(uv01, cam1.contains(uv01), kp1, uv10, cam0.contains(uv10), kp0)
        out.append(Pair(kp0, d0, cam0, kp1, d1, cam1, gt0, gt1, H=H, source="homography"))
    return out


def map_pairs(work_dir: str | Path, min_shared: int = 50, max_pairs: int = 500, seed: int = 0) -> list[Pair]:
    """Pairs of a built map's images that share at least `min_shared` SfM points (from its work
    directory: frames, features and sfm stages). Keypoints observing the same point match; one
    whose point projects outside the other image has no match; the rest are unknown."""
    w = Path(work_dir)

    def stage(name):
        with np.load(w / f"{name}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, json.loads((w / f"{name}.json").read_text())["meta"]

    frames, meta = stage("frames")
    feats, _ = stage("features")
    sfm, _ = stage("sfm")
    cams = [Camera.from_dict(c) for c in meta["cameras"]]
    cam_of = [cams[c] for c in frames["camera"]]
    ptr = feats["ptr"]
    kp = [feats["keypoints"][lo:hi] for lo, hi in zip(ptr[:-1], ptr[1:])]
    desc = [feats["descriptors"][lo:hi] for lo, hi in zip(ptr[:-1], ptr[1:])]
    T_cw = sfm["T_cw"]
    point_of = [np.full(len(k), -1, np.int64) for k in kp]  # the SfM point of each keypoint
    for p, i, k in zip(sfm["track_point"], sfm["track_image"], sfm["track_keypoint"]):
        point_of[i][k] = p
    registered = [i for i in range(len(kp)) if np.isfinite(T_cw[i]).all()]
    shared = {}
    for a_pos, a in enumerate(registered):
        pa = set(point_of[a][point_of[a] >= 0].tolist())
        for b in registered[a_pos + 1:]:
            n = len(pa & set(point_of[b][point_of[b] >= 0].tolist()))
            if n >= min_shared:
                shared[(a, b)] = n
    keys = sorted(shared)
    rng = np.random.default_rng(seed)
    if len(keys) > max_pairs:
        keys = [keys[i] for i in sorted(rng.choice(len(keys), max_pairs, replace=False))]
    out = []
    for a, b in keys:
        gt = []
        for src, dst in ((a, b), (b, a)):
            g = np.full(len(kp[src]), UNKNOWN, np.int64)
            where = {p: k for k, p in enumerate(point_of[dst]) if p >= 0}
            for k, p in enumerate(point_of[src]):
                if p >= 0 and p in where:
                    g[k] = where[p]
            has_point = point_of[src] >= 0
            X = sfm["points"][np.maximum(point_of[src], 0)]
            uv, front = cam_of[dst].project(X @ T_cw[dst][:3, :3].T + T_cw[dst][:3, 3])
            outside = ~front | ~cam_of[dst].contains(uv)
            g[has_point & outside & (g == UNKNOWN)] = NO_MATCH
            gt.append(g)
        gt0, gt1 = mutual(gt[0], gt[1])  # a point two keypoints of one image observe matches neither
        out.append(Pair(kp[a], desc[a], cam_of[a], kp[b], desc[b], cam_of[b], gt0, gt1,
                        T_1_0=T_cw[b] @ invert(T_cw[a]), source="map"))
    return out


def save_pairs(pairs: list[Pair], path: str | Path, key: str) -> None:
    """Pairs to `path` (.npz, written atomically; `key` names what made them)."""
    import io

    arrays: dict[str, np.ndarray] = {}
    for name in ("kp0", "desc0", "kp1", "desc1", "gt0", "gt1"):
        parts = [getattr(p, name) for p in pairs]
        arrays[name] = np.concatenate(parts) if parts else np.zeros(0)
        arrays[name + "_ptr"] = np.cumsum([0] + [len(x) for x in parts])
    arrays["T_1_0"] = np.array([p.T_1_0 if p.T_1_0 is not None else np.full((4, 4), np.nan) for p in pairs])
    arrays["H"] = np.array([p.H if p.H is not None else np.full((3, 3), np.nan) for p in pairs])
    meta = {"key": key, "cameras": [[p.cam0.to_dict(), p.cam1.to_dict()] for p in pairs],
            "sources": [p.source for p in pairs]}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    write_atomic(Path(path), buf.getvalue())


def load_pairs(path: str | Path, key: str) -> list[Pair] | None:
    """The pairs `save_pairs` wrote with this `key`, else None (no pickle)."""
    path = Path(path)
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        a = {k: z[k] for k in z.files}
    meta = json.loads(a["meta"].tobytes())
    if meta["key"] != key:
        return None

    def part(name, i):
        return a[name][a[name + "_ptr"][i]:a[name + "_ptr"][i + 1]]

    out = []
    for i, ((c0, c1), source) in enumerate(zip(meta["cameras"], meta["sources"])):
        T, H = a["T_1_0"][i], a["H"][i]
        out.append(Pair(part("kp0", i), part("desc0", i), Camera.from_dict(c0), part("kp1", i), part("desc1", i),
                        Camera.from_dict(c1), part("gt0", i), part("gt1", i), None if np.isnan(T).any() else T,
                        None if np.isnan(H).any() else H, source))
    return out


@dataclass(frozen=True)
class MatcherTrainConfig:
    steps: int = 3000
    batch_size: int = 4
    keypoints: int = 512  # per image in a batch (a random subset; padded when fewer)
    lr: float = 3e-4
    final_lr_ratio: float = 0.1
    guided_share: float = 0.5  # share of batches trained with the iterative pose (its solver is slow)
    checkpoint_every: int = 200
    seed: int = 0


@dataclass
class Batch:
    desc0: torch.Tensor
    kpts0: torch.Tensor
    mask0: torch.Tensor
    desc1: torch.Tensor
    kpts1: torch.Tensor
    mask1: torch.Tensor
    gt0: torch.Tensor  # (B, N0) index into side 1, NO_MATCH or UNKNOWN (also for padding)
    gt1: torch.Tensor
    guides: list = field(default_factory=list)


def make_batch(pairs: list[Pair], n: int, rng: np.random.Generator, device: torch.device,
               guided: bool) -> Batch:
    """A padded batch of at most `n` keypoints per image, the true matches kept preferentially."""
    b, dim = len(pairs), pairs[0].desc0.shape[1]
    arrays = {k: np.zeros(s, t) for k, s, t in (
        ("desc0", (b, n, dim), np.float32), ("desc1", (b, n, dim), np.float32), ("kpts0", (b, n, 2), np.float32),
        ("kpts1", (b, n, 2), np.float32), ("mask0", (b, n), bool), ("mask1", (b, n), bool))}
    gt0, gt1 = np.full((b, n), UNKNOWN, np.int64), np.full((b, n), UNKNOWN, np.int64)
    guides = []
    for i, p in enumerate(pairs):
        matched = np.flatnonzero(p.gt0 >= 0)
        rng.shuffle(matched)
        matched = matched[: n // 2]
        sel1 = p.gt0[matched]
        rest0 = rng.permutation(np.setdiff1d(np.arange(len(p.kp0)), matched))[: n - len(matched)]
        rest1 = rng.permutation(np.setdiff1d(np.arange(len(p.kp1)), sel1))[: n - len(sel1)]
        s0, s1 = np.r_[matched, rest0].astype(np.int64), np.r_[sel1, rest1].astype(np.int64)
        new1 = np.full(len(p.kp1), -1)
        new1[s1] = np.arange(len(s1))
        new0 = np.full(len(p.kp0), -1)
        new0[s0] = np.arange(len(s0))
        for side, s, kp, desc, cam, g, other_new in ((0, s0, p.kp0, p.desc0, p.cam0, p.gt0, new1),
                                                     (1, s1, p.kp1, p.desc1, p.cam1, p.gt1, new0)):
            m = len(s)
            arrays[f"desc{side}"][i, :m] = desc[s]
            arrays[f"kpts{side}"][i, :m] = normalize_keypoints(torch.from_numpy(kp[s]).float(),
                                                               (cam.width, cam.height)).numpy()
            arrays[f"mask{side}"][i, :m] = True
            lab = g[s]
            # a match whose partner was left out of the batch is unknown, not 'no match'
            mapped = np.where(lab >= 0, other_new[np.maximum(lab, 0)], lab)
            mapped[(lab >= 0) & (mapped < 0)] = UNKNOWN
            (gt0 if side == 0 else gt1)[i, :m] = mapped
        guides.append(p.guide(s0, s1) if guided else None)
    t = {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}
    return Batch(t["desc0"], t["kpts0"], t["mask0"], t["desc1"], t["kpts1"], t["mask1"],
                 torch.from_numpy(gt0).to(device), torch.from_numpy(gt1).to(device), guides if guided else [])


def assignment_loss(scores: torch.Tensor, gt0: torch.Tensor, gt1: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of the true assignment: matched pairs, and the dustbin for the
    keypoints with no match (half the weight, as LightGlue's); UNKNOWN is not supervised."""
    n0, n1 = scores.shape[1] - 1, scores.shape[2] - 1
    pos = gt0 >= 0
    bi, ii = torch.nonzero(pos, as_tuple=True)
    nll_pos = -scores[bi, ii, gt0[bi, ii]]
    neg0, neg1 = gt0 == NO_MATCH, gt1 == NO_MATCH
    nll_neg = torch.cat([-scores[:, :n0, -1][neg0], -scores[:, -1, :n1][neg1]])
    loss_pos = nll_pos.mean() if len(nll_pos) else scores.sum() * 0
    loss_neg = nll_neg.mean() if len(nll_neg) else scores.sum() * 0
    return loss_pos + 0.5 * loss_neg


def train_matcher(pairs: list[Pair], out: str | Path, conf: MatcherConfig = MatcherConfig(),
                  tc: MatcherTrainConfig = MatcherTrainConfig(), device: torch.device = torch.device("cpu"),
                  progress: bool = True) -> dict:
    """Train on `pairs`; every `checkpoint_every` steps and at the end, `out` gets the training
    state (checkpoint.pt, state.json) and the weights so far (matcher.pt), and a rerun with the
    same `out` resumes from the last checkpoint. Returns the report (loss history, steps, seconds)."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tc.seed)
    model = Matcher(conf).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=tc.final_lr_ratio ** (1 / tc.steps))
    report = {"loss": [], "steps": 0, "seconds": 0.0, "config": conf.to_dict(), "train": asdict(tc),
              "pairs": len(pairs)}
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        if state["config"] == json.dumps(conf.to_dict()):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            report = json.loads((out / "state.json").read_text())
            log.info("resuming matcher training at step %d", report["steps"])
    rng = np.random.default_rng([tc.seed, report["steps"]])
    model.train()
    t0 = time.monotonic() - report["seconds"]
    bar = tqdm(range(report["steps"], tc.steps), desc="train matcher", unit="step", disable=not progress,
               initial=report["steps"], total=tc.steps)
    for step in bar:
        idx = rng.choice(len(pairs), min(tc.batch_size, len(pairs)), replace=False)
        guided = rng.random() < tc.guided_share
        batch = make_batch([pairs[i] for i in idx], tc.keypoints, rng, device, guided)
        layers = model(batch.desc0, batch.kpts0, batch.desc1, batch.kpts1, batch.guides if guided else None,
                       batch.mask0, batch.mask1)
        loss = sum(assignment_loss(s, batch.gt0, batch.gt1) for s in layers) / len(layers)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        report["loss"].append(float(loss.detach()))
        report["steps"] = step + 1
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(report['loss'][-10:]):.3f}")
        if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
            report["seconds"] = time.monotonic() - t0
            _checkpoint(out, model, opt, sched, conf, report)
    model.eval()
    return report


def _checkpoint(out: Path, model, opt, sched, conf: MatcherConfig, report: dict) -> None:
    """The training state (to resume) and the weights so far (`matcher.pt`, usable at once), each
    written atomically."""
    import io

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    write_atomic(out / "checkpoint.pt", saved({"config": json.dumps(conf.to_dict()), "model": model.state_dict(),
                                               "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}))
    write_atomic(out / "matcher.pt", saved({"config": conf.to_dict(), "model": {
        k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}}))
    write_atomic(out / "state.json", json.dumps(report))


def load_matcher(path: str | Path, device: torch.device = torch.device("cpu")) -> Matcher:
    """A trained matcher from its `matcher.pt` (weights only: nothing is unpickled)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    conf = MatcherConfig(**{**state["config"], "pose_layers": tuple(state["config"]["pose_layers"])})
    model = Matcher(conf)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state["model"].items()})
    return model.to(device).eval()


def loss_of(model: Matcher, batch: Batch) -> float:
    """The assignment loss of a batch without training (for tests and validation)."""
    with torch.no_grad():
        layers = model(batch.desc0, batch.kpts0, batch.desc1, batch.kpts1, None, batch.mask0, batch.mask1)
        return float(sum(assignment_loss(s, batch.gt0, batch.gt1) for s in layers) / len(layers))
