"""Map building: from a contract bag to a PRAM map directory. One function per stage.

frames -> features -> SfM (pycolmap) -> landmarks -> recognizer training -> write -> summary.
"""
from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .bag import BagReader, BagTopics, Frame
from .camera import Camera
from .features import Extractor, FeatureConfig, make_extractor, resolve_device
from .geometry import invert, rotation_error_deg
from .landmarks import (LandmarkConfig, Observations, choose_k, cluster, greedy_vrfs, medoid_descriptors,
                        vrf_points)
from .map import Baseline, PramMap, recover_interrupted, save_map
from .params import Spec, setting, specs, validate
from .recognition import RecognizerConfig, Sample, TrainConfig, train
from .sfm import SfmConfig, SfmInput, SfmResult, run_sfm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildConfig:
    features: FeatureConfig = FeatureConfig()
    sfm: SfmConfig = SfmConfig()
    landmarks: LandmarkConfig = LandmarkConfig()
    recognizer: RecognizerConfig = RecognizerConfig()  # descriptor_dim and num_classes are set by the build
    train: TrainConfig = TrainConfig()
    pose_source: str = setting("auto", "camera poses for SfM: auto | ground_truth | odometry | none",
                               choices=("auto", "ground_truth", "odometry", "none"))
    keyframe_min_translation: float = 0.15  # map units; with poses
    keyframe_min_rotation_deg: float = 5.0
    keyframe_min_interval_s: float = 0.0  # without poses
    max_images: int = setting(0, "use at most this many keyframes (0: all)", range=(2, 1_000_000), zero_off=True)
    augmentations: int = setting(2, "photometric/scale variants per map image for training", range=(0, 10))
    val_every: int = 10  # every N-th keyframe is held out to measure recognition accuracy

    def __post_init__(self) -> None:
        validate(self)


def build_settings() -> dict[str, Spec]:
    """The build settings a user sets (CLI options, map_builder parameters), flat, by their names there."""
    f, t, lm, b = specs(FeatureConfig), specs(TrainConfig), specs(LandmarkConfig), specs(BuildConfig)
    return {"features": f["name"].renamed("features"), **{k: f[k] for k in ("max_keypoints", "resize_max", "device",
                                                                             "weights")},
            "pose_source": b["pose_source"], "landmarks": lm["num_landmarks"].renamed("landmarks"),
            "steps": t["steps"], "max_minutes": t["max_minutes"], "max_images": b["max_images"]}


def build_config(values: dict[str, Any]) -> BuildConfig:
    """A BuildConfig from `build_settings()` values (missing ones keep their defaults)."""
    v = {name: s.default for name, s in build_settings().items()} | values
    return BuildConfig(
        features=FeatureConfig(v["features"], v["max_keypoints"], v["resize_max"], v["device"], v["weights"]),
        landmarks=LandmarkConfig(num_landmarks=v["landmarks"]),
        train=TrainConfig(steps=v["steps"], max_minutes=v["max_minutes"]),
        pose_source=v["pose_source"], max_images=v["max_images"])


@dataclass
class Keyframe:
    name: str
    stamp_ns: int
    image: np.ndarray
    camera: Camera
    T_map_camera: np.ndarray | None  # the pose used for triangulation (ground truth or odometry)
    T_odom_camera: np.ndarray | None  # from odometry, for aligning a pose-less reconstruction


@dataclass
class BuildSummary:
    out: Path
    images: int
    points: int
    landmarks: int
    vrfs: int
    frame: str
    metric: bool
    recognition: dict[str, Any]
    stage_seconds: dict[str, float]
    sizes: dict[str, int]
    warnings: list[str] = field(default_factory=list)

    def table(self) -> str:
        mb = 1e6
        rows = [("images used", f"{self.images}"), ("3D points", f"{self.points}"),
                ("landmarks (K)", f"{self.landmarks}"), ("VRFs", f"{self.vrfs}"),
                ("frame / metric", f"{self.frame} / {'yes' if self.metric else 'no (scale arbitrary)'}"),
                ("training steps", f"{self.recognition.get('steps')} of {self.recognition.get('steps_planned')}"
                 + (" (WARN: stopped by the time cap)" if self.recognition.get("stopped_by_time_cap") else "")),
                ("recognition accuracy (held out)",
                 f"{self.recognition.get('val_landmark_accuracy', float('nan')):.3f} "
                 f"(chance {self.recognition.get('chance', float('nan')):.3f})"),
                ("map data", f"{self.sizes['map_data'] / mb:.2f} MB"),
                ("recognizer weights (fp16)", f"{self.sizes['weights'] / mb:.2f} MB"),
                ("hloc-style map", f"{self.sizes['hloc_style'] / mb:.2f} MB"),
                ("map data / hloc-style", f"{self.sizes['map_data'] / max(self.sizes['hloc_style'], 1):.1%}")]
        rows += [(f"time: {k}", f"{v:.1f} s") for k, v in self.stage_seconds.items()]
        w = max(len(r[0]) for r in rows)
        return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)


def select_keyframes(reader: BagReader, conf: BuildConfig) -> tuple[list[Keyframe], str]:
    """Keyframes (near-duplicates skipped) with the poses to build from; also the pose source used."""
    source = conf.pose_source
    if source == "auto":
        source = "ground_truth" if reader.has_poses else "odometry"
    kfs: list[Keyframe] = []
    last: Keyframe | None = None
    saw_odometry = False
    for f in reader.frames():
        T_odom_cam = f.T_odom_camera
        saw_odometry |= T_odom_cam is not None
        T = {"ground_truth": f.T_map_camera, "odometry": T_odom_cam}.get(source)
        if source == "ground_truth" and T is None:
            continue  # an image without its pose cannot be triangulated with known poses
        if last is not None and _near_duplicate(last, f, T, conf):
            continue
        kf = Keyframe(f"{len(kfs):05d}", f.stamp_ns, f.image, f.camera, T, T_odom_cam)
        kfs.append(kf)
        last = kf
    if source == "odometry" and (not kfs or any(k.T_map_camera is None for k in kfs)):
        source = "none"
        for k in kfs:
            k.T_map_camera = None
    if conf.max_images and len(kfs) > conf.max_images:
        idx = np.linspace(0, len(kfs) - 1, conf.max_images).round().astype(int)
        kfs = [kfs[i] for i in idx]
    return kfs, source


def _near_duplicate(last: Keyframe, f: Frame, T: np.ndarray | None, conf: BuildConfig) -> bool:
    if T is not None and last.T_map_camera is not None:
        moved = np.linalg.norm(T[:3, 3] - last.T_map_camera[:3, 3])
        turned = rotation_error_deg(T[:3, :3], last.T_map_camera[:3, :3])
        return moved < conf.keyframe_min_translation and turned < conf.keyframe_min_rotation_deg
    return (f.stamp_ns - last.stamp_ns) * 1e-9 < conf.keyframe_min_interval_s


def extract_features(kfs: list[Keyframe], extractor: Extractor, progress: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    from tqdm import tqdm

    return [extractor(k.image).numpy() for k in tqdm(kfs, desc="features", unit="img", disable=not progress)]


def align_to_odometry(result: SfmResult, kfs: list[Keyframe]) -> str:
    """Similarity-align a pose-less reconstruction to odometry camera centres; the frame it ends in."""
    import pycolmap

    rec = result.reconstruction
    src, tgt = [], []
    for k, iid in zip(kfs, result.image_ids):
        if iid > 0 and k.T_odom_camera is not None:
            src.append(rec.image(iid).projection_center())
            tgt.append(k.T_odom_camera[:3, 3])
    if len(src) < 3 or np.linalg.matrix_rank(np.array(tgt) - np.mean(tgt, 0)) < 1:
        return "arbitrary"
    sim = pycolmap.estimate_sim3d(np.array(src), np.array(tgt))
    if sim is None:
        return "arbitrary"
    rec.transform(sim)
    return "odom"


def make_landmarks(result: SfmResult, feats: list[tuple[np.ndarray, np.ndarray]], conf: LandmarkConfig):
    """Points with track >= min_track, their labels, medoid descriptors, VRFs and VRF point sets."""
    rec = result.reconstruction
    img_index = {iid: i for i, iid in enumerate(result.image_ids) if iid > 0}
    pids = [pid for pid, p in rec.points3D.items() if p.track.length() >= conf.min_track]
    if len(pids) < 10:
        raise RuntimeError(f"only {len(pids)} points are seen in >= {conf.min_track} images: too little overlap "
                           f"between the map images to build a map")
    xyz = np.array([rec.points3D[p].xyz for p in pids])
    pi, ii, ki = [], [], []
    for n, pid in enumerate(pids):
        for el in rec.points3D[pid].track.elements:
            pi.append(n)
            ii.append(img_index[el.image_id])
            ki.append(el.point2D_idx)
    obs = Observations(np.array(pi), np.array(ii), np.array(ki))
    reg = sorted(img_index.values())
    T_cw = {i: invert(_T_map_camera(rec, result.image_ids[i])) for i in reg}
    centres = np.array([invert(T_cw[i])[:3, 3] for i in reg])
    k = choose_k(len(pids), conf)
    labels = cluster(xyz, centres, k)
    desc = medoid_descriptors(obs, [f[1] for f in feats], len(pids))
    vrfs = greedy_vrfs(labels, obs, conf)
    cams = {i: rec.image(result.image_ids[i]).camera for i in reg}

    def project(i: int, X: np.ndarray) -> np.ndarray:
        p = X @ T_cw[i][:3, :3].T + T_cw[i][:3, 3]
        uv = np.full((len(p), 2), np.nan)
        front = p[:, 2] > 1e-6
        if front.any():
            uv[front] = cams[i].img_from_cam(p[front]) - 0.5
        return uv

    vpts = vrf_points(vrfs, labels, obs, xyz, project, conf)
    return pids, xyz, labels, desc, obs, vrfs, vpts, T_cw


def _T_map_camera(rec, iid: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :] = rec.image(iid).cam_from_world().matrix()
    return invert(T)


def augment(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A photometric and geometric variant of a map image, and the homography that maps it.

    Brightness, contrast, colour cast, vignetting and noise stand in for other lighting; a random
    perspective warp with a scale change stands in for another viewpoint.
    """
    h, w = image.shape[:2]
    img = image.astype(np.float32)
    if img.ndim == 2:
        img = img[..., None]
    img = img * rng.uniform(0.6, 1.3) * rng.uniform(0.85, 1.15, img.shape[2]) + rng.uniform(-30, 30)
    img = (img - img.mean()) * rng.uniform(0.7, 1.3) + img.mean()
    yy, xx = np.mgrid[0:h, 0:w]
    r2 = ((xx - w / 2) ** 2 + (yy - h / 2) ** 2) / ((w / 2) ** 2 + (h / 2) ** 2)
    img *= (1 - rng.uniform(0, 0.3) * r2)[..., None]
    img += rng.normal(0, rng.uniform(1, 6), img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8).squeeze()
    s = rng.uniform(0.7, 1.15)
    src = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    dst = (src + rng.uniform(-0.12, 0.12, (4, 2)).astype(np.float32) * [w, h]) * s
    dst -= dst.min(0)
    H = cv2.getPerspectiveTransform(src, dst.astype(np.float32))
    size = (int(np.ceil(dst[:, 0].max())), int(np.ceil(dst[:, 1].max())))
    return cv2.warpPerspective(img, H, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT), H


def training_samples(kfs: list[Keyframe], feats, keypoint_labels: list[np.ndarray], extractor: Extractor,
                     conf: BuildConfig, progress: bool = True) -> tuple[list[Sample], list[Sample]]:
    """Original views plus augmented ones (features recomputed on the warped image, labels carried
    over from the original keypoints landing within 3 px). Held-out views go to validation."""
    from scipy.spatial import cKDTree
    from tqdm import tqdm

    rng = np.random.default_rng(conf.train.seed)
    train_s, val_s = [], []
    for i in tqdm(range(len(kfs)), desc="training views", unit="img", disable=not progress):
        kp, d = feats[i]
        lab = keypoint_labels[i]
        h, w = kfs[i].image.shape[:2]
        views = [Sample(kp, d, lab, (w, h))]
        held_out = conf.val_every and i % conf.val_every == conf.val_every // 2
        for _ in range(0 if held_out else conf.augmentations):
            img, H = augment(kfs[i].image, rng)
            akp, ad = extractor(img).numpy()
            alab = np.zeros(len(akp), np.int64)
            if len(akp) and len(kp):
                warped = cv2.perspectiveTransform(kp[None].astype(np.float64), H)[0]
                dist, j = cKDTree(warped).query(akp)
                near = dist < 3.0
                alab[near] = lab[j[near]]
            views.append(Sample(akp, ad, alab, (img.shape[1], img.shape[0])))
        (val_s if held_out else train_s).extend(views)
    return train_s, val_s


def hloc_style_bytes(result: SfmResult, feats) -> int:
    """Bytes an hloc map of this reconstruction needs: every image's keypoints (float32), scores
    and float16 descriptors, plus the SfM model in COLMAP binary form."""
    per_image = sum(len(k) * (2 * 4 + 4) + d.size * 2 for k, d in feats)
    with tempfile.TemporaryDirectory() as tmp:
        result.reconstruction.write_binary(tmp)
        model = sum(p.stat().st_size for p in Path(tmp).iterdir())
    return per_image + model


def build_map(bag: str | Path, out: str | Path, conf: BuildConfig = BuildConfig(), topics: BagTopics = BagTopics(),
              progress: bool = True, on_stage: Callable[[str, float], None] | None = None) -> BuildSummary:
    """Build a PRAM map from a contract bag into `out` (written atomically).

    `on_stage(stage, seconds)` is called after each stage (the map_builder node puts it on /diagnostics).
    """
    times: dict[str, float] = {}
    warnings: list[str] = []
    recover_interrupted(out)  # a build killed before: its half-written output goes, a moved-aside map returns
    t = time.monotonic()

    def lap(name: str) -> None:
        nonlocal t
        times[name] = time.monotonic() - t
        t = time.monotonic()
        log.info("stage %s done in %.1f s", name, times[name])
        if on_stage:
            on_stage(name, times[name])

    with BagReader(bag, topics) as reader:
        kfs, source = select_keyframes(reader, conf)
    if len(kfs) < 3:
        raise RuntimeError(f"{bag}: only {len(kfs)} usable keyframes; a map needs at least 3")
    log.info("%d keyframes, poses from %s", len(kfs), source)
    lap("frames")

    extractor = make_extractor(conf.features)
    feats = extract_features(kfs, extractor, progress)
    lap("features")

    inputs = [SfmInput(k.name, k.camera, f[0], f[1], k.T_map_camera) for k, f in zip(kfs, feats)]
    result = run_sfm(inputs, conf.sfm, pixel_scale=max(conf.features.pixels_per_detector_pixel(k.camera.width,
                                                                                             k.camera.height)
                                                        for k in kfs))
    warnings += result.warnings
    frame = {"ground_truth": "map", "odometry": "odom"}.get(source, "arbitrary")
    if source == "none":
        frame = align_to_odometry(result, kfs)
        if frame == "arbitrary":
            warnings.append("no poses and no odometry: the map's scale and frame are arbitrary")
        else:
            warnings.append("no poses: the map was aligned to odometry (frame odom, scale from odometry)")
    lap("sfm")

    pids, xyz, labels, desc, obs, vrfs, vpts, T_cw = make_landmarks(result, feats, conf.landmarks)
    lap("landmarks")

    # Per-keypoint training labels: landmark + 1 space is 1..K already (0 = no landmark).
    kp_labels = [np.zeros(len(f[0]), np.int64) for f in feats]
    kp_point = [np.full(len(f[0]), -1, np.int64) for f in feats]
    for n in range(len(obs.point)):
        kp_labels[obs.image[n]][obs.keypoint[n]] = labels[obs.point[n]]
        kp_point[obs.image[n]][obs.keypoint[n]] = obs.point[n]
    rconf = replace(conf.recognizer, descriptor_dim=extractor.dim, num_classes=int(labels.max()) + 1)
    train_s, val_s = training_samples(kfs, feats, kp_labels, extractor, conf, progress)
    model, report = train(train_s, val_s, rconf, conf.train, resolve_device(conf.features.device), progress)
    if report["stopped_by_time_cap"]:
        warnings.append(f"recognizer training stopped by its {conf.train.max_minutes:g} min safety cap after "
                        f"{report['steps']} of {report['steps_planned']} steps: this map is less trained than "
                        f"asked (a busy machine?); rebuild it, or raise the cap")
        log.warning(warnings[-1])
    counts = np.bincount(np.concatenate([s.labels[s.labels > 0] for s in val_s]) if val_s else [0])
    report["chance"] = float(counts.max() / max(counts.sum(), 1)) if counts.sum() else 0.0
    lap("training")

    frames_used = sorted({img for _, img in vrfs})
    frame_of = {img: n for n, img in enumerate(frames_used)}
    cams = list(dict.fromkeys(k.camera for k in kfs))
    m = PramMap(
        features=conf.features.identity(), cameras=cams, points=xyz.astype(np.float32), labels=labels,
        descriptors=desc.astype(np.float16), frame_T=np.array([invert(T_cw[i]) for i in frames_used]),
        frame_camera=np.array([cams.index(kfs[i].camera) for i in frames_used], np.int32),
        vrf_frame=np.array([frame_of[img] for _, img in vrfs], np.int32),
        vrf_landmark=np.array([lm for lm, _ in vrfs], np.int32),
        vrf_ptr=np.concatenate([[0], np.cumsum([len(p) for p in vpts])]).astype(np.int64),
        vrf_points=np.concatenate(vpts).astype(np.int32) if vpts else np.zeros(0, np.int32),
        recognizer_config=rconf.to_dict(), recognizer_state=model.state_dict(), frame=frame, images=len(kfs),
        metric=frame != "arbitrary", info={"bag": str(bag), "pose_source": source, "recognition": {
            k: v for k, v in report.items() if k != "loss"}, "warnings": warnings},
        baseline=Baseline(
            ptr=np.concatenate([[0], np.cumsum([len(f[0]) for f in feats])]),
            keypoints=np.concatenate([f[0] for f in feats]), descriptors=np.concatenate([f[1] for f in feats]),
            point_ids=np.concatenate(kp_point),
            T_map_camera=np.array([invert(T_cw[i]) if i in T_cw else np.full((4, 4), np.nan)
                                   for i in range(len(kfs))]),
            camera=np.array([cams.index(k.camera) for k in kfs], np.int32)))
    out = Path(out)
    plot = landmarks_png(m)
    save_map(m, out, {"landmarks.png": plot})
    lap("write")

    files = {p.name: p.stat().st_size for p in out.iterdir()}
    sizes = {"map_data": files["map.npz"], "weights": files["recognizer.safetensors"],
             "baseline": files.get("baseline.npz", 0), "hloc_style": hloc_style_bytes(result, feats)}
    return BuildSummary(out, len(kfs), len(xyz), m.num_landmarks, len(vrfs), frame, m.metric, report, times,
                        sizes, warnings)


def landmarks_png(m: PramMap) -> bytes:
    """The map's points seen from above, coloured by landmark, with the VRF cameras."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .landmarks import ground_plane_coords

    centres = m.frame_T[:, :3, 3]
    xy = ground_plane_coords(m.points, centres if len(centres) >= 3 else m.points)
    cxy = ground_plane_coords(centres, centres) if len(centres) >= 3 else centres[:, :2]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    ax.scatter(xy[:, 0], xy[:, 1], c=m.labels % 20, cmap="tab20", s=1.5, linewidths=0)
    ax.scatter(cxy[:, 0], cxy[:, 1], marker="^", c="k", s=14, label="VRF cameras")
    ax.set_aspect("equal")
    ax.set_title(f"{len(m.points)} points, {m.num_landmarks} landmarks (frame: {m.frame})")
    ax.legend(loc="upper right", fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
