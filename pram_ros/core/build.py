"""Map building: from a contract bag to a PRAM map directory. One function per stage.

frames -> features -> SfM (pycolmap) -> landmarks -> recognizer training -> fine layer -> write -> summary.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import distributed
from .bag import BagReader, BagTopics, Frame, Frames
from .camera import Camera
from .features import Extractor, FeatureConfig, make_extractor, resolve_device
from .fine import FineBuildConfig, build_fine_layer
from .geometry import T_from_pose, invert, rotation_error_deg, umeyama
from .landmarks import (LandmarkConfig, Observations, choose_k, cluster, greedy_vrfs, landmark_views,
                        medoid_descriptors, vrf_points, well_observed)
from .map import Baseline, FineLayer, PramMap, recover_interrupted, save_map
from .params import Spec, setting, specs, validate
from .recognition import RecognizerConfig
from .training import TrainConfig, train, training_samples
from .sfm import PoseAdjustment, SfmConfig, SfmInput, SfmResult, covisible_pairs, run_sfm
from .workdir import WorkDir, path_identity, stage_key

log = logging.getLogger(__name__)
POSE_SOURCES = ("auto", "ground_truth", "tf", "odometry", "none")
EXTRINSIC_PATTERN = r"^$|^\s*([-+0-9.eE]+[\s,]+){6}[-+0-9.eE]+\s*$"


@dataclass(frozen=True)
class BuildConfig:
    features: FeatureConfig = FeatureConfig()
    sfm: SfmConfig = SfmConfig()
    landmarks: LandmarkConfig = LandmarkConfig()
    recognizer: RecognizerConfig = RecognizerConfig()  # descriptor_dim and num_classes are set by the build
    train: TrainConfig = TrainConfig()
    fine: FineBuildConfig = FineBuildConfig()
    pose_source: str = setting("auto", "camera poses for SfM: auto (the first there of ground_truth, tf, "
                                       "odometry) | ground_truth | tf (a SLAM system's global_frame -> "
                                       "base_frame) | odometry | none", choices=POSE_SOURCES)
    global_frame: str = setting("map", "tf poses: the SLAM system's fixed frame; the map is written in it")
    base_frame: str = setting("base_link", "the robot body frame on /tf (odometry and tf poses)")
    camera_extrinsic: str = setting("", "static base_frame -> camera 'x y z qx qy qz qw' for bags without it "
                                        "on /tf_static (empty: from /tf_static)", pattern=EXTRINSIC_PATTERN)
    prior_sigma_m: float = setting(0.05, "tf poses: their uncertainty [m], the weight of the position priors "
                                         "in bundle adjustment", range=(0.001, 10.0))
    keyframe_min_translation: float = 0.15  # map units; with poses
    keyframe_min_rotation_deg: float = 5.0
    keyframe_min_interval_s: float = 0.0  # without poses
    max_images: int = setting(0, "use at most this many keyframes (0: all)", range=(2, 1_000_000), zero_off=True)

    def __post_init__(self) -> None:
        validate(self)

    def frames(self) -> Frames:
        return Frames(map=self.global_frame, base=self.base_frame)

    def extrinsic(self) -> np.ndarray | None:
        """T_base_camera from `camera_extrinsic`; None when it is empty."""
        if not self.camera_extrinsic.strip():
            return None
        v = [float(x) for x in self.camera_extrinsic.replace(",", " ").split()]
        return T_from_pose(np.array(v[:3]), np.array(v[3:]))


def build_settings() -> dict[str, Spec]:
    """The build settings a user sets (CLI options, map_builder parameters), flat, by their names there."""
    f, t, lm, b = specs(FeatureConfig), specs(TrainConfig), specs(LandmarkConfig), specs(BuildConfig)
    return {"features": f["name"].renamed("features"), **{k: f[k] for k in ("max_keypoints", "resize_max", "device",
                                                                             "weights")},
            **{k: b[k] for k in ("pose_source", "global_frame", "base_frame", "camera_extrinsic", "prior_sigma_m")},
            "landmarks": lm["num_landmarks"].renamed("landmarks"),
            **{k: t[k] for k in ("steps", "epochs", "max_minutes")}, "max_images": b["max_images"],
            "fine": specs(FineBuildConfig)["enabled"].renamed("fine")}


def build_config(values: dict[str, Any]) -> BuildConfig:
    """A BuildConfig from `build_settings()` values (missing ones keep their defaults)."""
    v = {name: s.default for name, s in build_settings().items()} | values
    return BuildConfig(
        features=FeatureConfig(v["features"], v["max_keypoints"], v["resize_max"], v["device"], v["weights"]),
        landmarks=LandmarkConfig(num_landmarks=v["landmarks"]),
        train=TrainConfig(steps=v["steps"], epochs=v["epochs"], max_minutes=v["max_minutes"]),
        fine=FineBuildConfig(enabled=v["fine"]),
        pose_source=v["pose_source"], global_frame=v["global_frame"], base_frame=v["base_frame"],
        camera_extrinsic=v["camera_extrinsic"], prior_sigma_m=v["prior_sigma_m"], max_images=v["max_images"])


@dataclass
class Keyframe:
    name: str
    stamp_ns: int
    image: np.ndarray | None  # None until read (a resumed build reads the bag again only when it must)
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
    pose_source: str = ""
    skipped_no_pose: int = 0
    adjustment: PoseAdjustment | None = None  # how far bundle adjustment moved the cameras (tf poses)
    resumed: list[str] = field(default_factory=list)  # stages taken from the work directory
    work_dir: Path | None = None
    fine_points: int = 0

    def table(self) -> str:
        mb = 1e6
        rows = map_rows(self.pose_source + (f" ({self.skipped_no_pose} images without a pose skipped)"
                                            if self.skipped_no_pose else ""),
                        self.images, self.points, self.landmarks, self.vrfs, self.frame, self.metric,
                        self.adjustment, self.recognition)
        rows += [("map data", f"{self.sizes['map_data'] / mb:.2f} MB"),
                 *([("fine layer", f"{self.sizes['fine'] / mb:.2f} MB ({self.fine_points} points)")]
                   if self.sizes.get("fine") else []),
                 ("recognizer weights (fp16)", f"{self.sizes['weights'] / mb:.2f} MB"),
                 ("hloc-style map", f"{self.sizes['hloc_style'] / mb:.2f} MB"),
                 ("map data / hloc-style", f"{self.sizes['map_data'] / max(self.sizes['hloc_style'], 1):.1%}")]
        rows += [(f"time: {k}", f"{v:.1f} s" + (" (resumed from the work directory)" if k in self.resumed else ""))
                 for k, v in self.stage_seconds.items()]
        if self.work_dir is not None:
            rows.append(("work directory", f"{self.work_dir} (delete it to reclaim the space)"))
        return format_rows(rows)


def map_rows(pose_source: str, images: int, points: int, landmarks: int, vrfs: int, frame: str, metric: bool,
             adjustment: PoseAdjustment | None, recognition: dict[str, Any]) -> list[tuple[str, str]]:
    """What a map is, as the build's summary and `pram-ros info` show it: (name, value) rows."""
    nan = float("nan")
    return [("pose source", pose_source), ("images used", f"{images}"), ("3D points", f"{points}"),
            ("landmarks (K)", f"{landmarks}"), ("VRFs", f"{vrfs}"),
            ("frame / metric", f"{frame} / {'yes' if metric else 'no (scale arbitrary)'}"),
            *([("bundle adjustment moved cameras", str(adjustment))] if adjustment else []),
            ("training steps", f"{recognition.get('steps')} of {recognition.get('steps_planned')}"
             + (" (WARN: stopped by the time cap)" if recognition.get("stopped_by_time_cap") else "")),
            ("recognition accuracy (held out)",
             f"{recognition.get('val_landmark_accuracy', nan):.3f} (chance {recognition.get('chance', nan):.3f})")]


def format_rows(rows: list[tuple[str, str]]) -> str:
    """(name, value) rows as an aligned two-column table."""
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"  {a:<{w}}  {b}" for a, b in rows)


@dataclass
class Selection:
    """The keyframes and where their poses came from."""

    keyframes: list[Keyframe]
    source: str  # ground_truth | tf | odometry | none
    skipped_no_pose: int = 0  # images without a pose at their stamp (ground_truth, tf)


def pose_source(reader: BagReader, conf: BuildConfig) -> str:
    """`conf.pose_source`, with auto resolved: ground truth, else a TF chain from the global frame to
    the base frame (a SLAM system's), else odometry (resolved to none later when there is none)."""
    if conf.pose_source != "auto":
        return conf.pose_source
    if reader.has_poses:
        return "ground_truth"
    if reader.has_global_poses:
        return "tf"
    return "odometry"


def select_keyframes(reader: BagReader, conf: BuildConfig) -> Selection:
    """Keyframes (near-duplicates skipped) with the poses to build from."""
    source = pose_source(reader, conf)
    kfs: list[Keyframe] = []
    last: Keyframe | None = None
    skipped = 0
    extrinsic = conf.extrinsic()
    for f in reader.frames():
        if f.T_base_camera is None:
            f.T_base_camera = extrinsic
        T_odom_cam = f.T_odom_camera
        T = {"ground_truth": f.T_map_camera, "odometry": T_odom_cam, "tf": f.T_global_camera}.get(source)
        if source in ("ground_truth", "tf") and T is None:
            skipped += 1  # an image without its pose cannot be triangulated with known poses
            continue
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
    return Selection(kfs, source, skipped)


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
    src, tgt = [], []
    for k, T_cw, ok in zip(kfs, result.T_cw, result.registered):
        if ok and k.T_odom_camera is not None:
            src.append(invert(T_cw)[:3, 3])
            tgt.append(k.T_odom_camera[:3, 3])
    if len(src) < 3 or np.linalg.matrix_rank(np.array(tgt) - np.mean(tgt, 0)) < 1:
        return "arbitrary"
    scale, R, t = umeyama(np.array(src), np.array(tgt))
    if not scale > 0:
        return "arbitrary"
    result.transform(scale, R, t)
    return "odom"


@dataclass
class Landmarks:
    """The landmark stage's result: the map's points, their landmarks and descriptors, and the VRFs."""

    xyz: np.ndarray  # (P, 3) points seen in at least min_track images
    labels: np.ndarray  # (P,) landmark of each point, 1..K
    descriptors: np.ndarray  # (P, D) medoid descriptor of each point
    observations: Observations  # which keypoint of which map image sees each point
    vrfs: list[tuple[int, int]]  # (landmark, map image) pairs
    vrf_points: list[np.ndarray]  # the points of each VRF
    T_cw: dict[int, np.ndarray]  # camera-from-map of each registered map image


def make_landmarks(result: SfmResult, kfs: list[Keyframe], feats: list[tuple[np.ndarray, np.ndarray]],
                   conf: LandmarkConfig) -> Landmarks:
    """Points with track >= min_track, their labels, medoid descriptors, VRFs and VRF point sets."""
    xyz, obs = well_observed(result, conf.min_track)
    if len(xyz) < 10:
        raise RuntimeError(f"only {len(xyz)} points are seen in >= {conf.min_track} images: too little overlap "
                           f"between the map images to build a map")
    T_cw = {int(i): result.T_cw[i] for i in np.flatnonzero(result.registered)}
    centres = np.array([invert(T)[:3, 3] for T in T_cw.values()])
    labels = cluster(xyz, centres, choose_k(len(xyz), conf))
    desc = medoid_descriptors(obs, [f[1] for f in feats], len(xyz))
    views = landmark_views(labels, obs)
    vrfs = greedy_vrfs(labels, views, conf)

    def project(i: int, X: np.ndarray) -> np.ndarray:  # NaN behind the camera
        return kfs[i].camera.project(X @ T_cw[i][:3, :3].T + T_cw[i][:3, 3])[0]

    return Landmarks(xyz, labels, desc, obs, vrfs, vrf_points(vrfs, views, xyz, project, conf), T_cw)


def hloc_style_bytes(result: SfmResult, feats) -> int:
    """Bytes an hloc map of this reconstruction needs: every image's keypoints (float32), scores
    and float16 descriptors, plus the SfM model in COLMAP binary form."""
    return sum(len(k) * (2 * 4 + 4) + d.size * 2 for k, d in feats) + result.model_bytes


def _bag_frames(bag: Path, topics: BagTopics, conf: BuildConfig, kfs: list[Keyframe]) -> None:
    """Read the keyframes' images again (a build resumed after the frames stage has none)."""
    by_stamp = {k.stamp_ns: k for k in kfs if k.image is None}
    if not by_stamp:
        return
    with BagReader(bag, topics, conf.frames()) as reader:
        for f in reader.frames():
            if f.stamp_ns in by_stamp:
                by_stamp.pop(f.stamp_ns).image = f.image
    if by_stamp:
        raise RuntimeError(f"{bag}: {len(by_stamp)} keyframe images are no longer in the bag; rebuild with "
                           f"--from-stage frames")


def _nan_if_none(Ts: list[np.ndarray | None]) -> np.ndarray:
    return np.array([np.full((4, 4), np.nan) if T is None else T for T in Ts]).reshape(-1, 4, 4)


def _none_if_nan(T: np.ndarray) -> np.ndarray | None:
    return None if np.isnan(T[0, 0]) else T


class Stages:
    """The build's stages, each loaded from the work directory when it finished there with the same
    inputs and settings, else run and stored (see workdir.py)."""

    def __init__(self, work: WorkDir, on_stage: Callable[[str, float], None] | None) -> None:
        self.work, self.on_stage = work, on_stage
        self.times: dict[str, float] = {}
        self.resumed: list[str] = []
        self.key = ""

    def run(self, stage: str, settings: Any, compute: Callable[[], tuple[dict, dict]],
            split: bool = False) -> tuple[dict, dict]:
        """(arrays, metadata) of the stage: stored, or computed by `compute` and stored.

        Under torchrun rank 0 decides and stores; a `split` stage is computed by every rank (its
        `compute` shares the work), another by rank 0 alone while the others wait and then load it."""
        self.key = stage_key(self.key, stage, settings)
        t = time.monotonic()
        stored = self.work.load(stage, self.key) if distributed.rank() == 0 else None
        if distributed.from_rank0(stored is not None):
            self.resumed.append(stage)
            log.info("stage %s resumed from %s", stage, self.work.path)
            arrays, meta = stored or self.work.load(stage, self.key)
        else:
            if split or distributed.rank() == 0:
                arrays, meta = compute()
            if distributed.rank() == 0:
                self.work.save(stage, self.key, arrays, meta, time.monotonic() - t)
            distributed.barrier()
            if not split and distributed.rank() != 0:  # what rank 0 just stored
                arrays, meta = self.work.load(stage, self.key, resume=False)
        self.done(stage, time.monotonic() - t)
        return arrays, meta

    def done(self, stage: str, seconds: float) -> None:
        self.times[stage] = seconds
        if distributed.rank() == 0:
            log.info("stage %s done in %.1f s", stage, seconds)
        if self.on_stage:
            self.on_stage(stage, seconds)


def build_map(bag: str | Path, out: str | Path, conf: BuildConfig = BuildConfig(), topics: BagTopics = BagTopics(),
              progress: bool = True, on_stage: Callable[[str, float], None] | None = None,
              work_dir: str | Path | None = None, from_stage: str | None = None) -> BuildSummary | None:
    """Build a PRAM map from a contract bag into `out` (written atomically).

    Each stage's result goes into `work_dir` (default: `<out>.work` beside it); a rerun with the
    same bag and settings resumes after the last finished stage, and changed settings redo the
    stages they affect. `from_stage` redoes that stage and those after it, whatever is stored.
    `on_stage(stage, seconds)` is called after each stage (the map_builder node puts it on /diagnostics).
    Under torchrun (see distributed.py) only rank 0 writes and returns the summary; the others return None.
    """
    bag, out = Path(bag), Path(out)
    progress = progress and distributed.rank() == 0
    if distributed.rank() == 0:
        recover_interrupted(out)  # a build killed before: its half-written output goes, a moved-aside map returns
    stages = Stages(WorkDir(work_dir or out.with_name(out.name + ".work"), from_stage), on_stage)
    warnings: list[str] = []

    def frames_stage() -> tuple[dict, dict]:
        with BagReader(bag, topics, conf.frames()) as reader:
            sel = select_keyframes(reader, conf)
        nonlocal images
        images = {k.stamp_ns: k.image for k in sel.keyframes}
        cams = list(dict.fromkeys(k.camera for k in sel.keyframes))
        return ({"stamps": np.array([k.stamp_ns for k in sel.keyframes], np.int64).reshape(-1),
                 "camera": np.array([cams.index(k.camera) for k in sel.keyframes], np.int32).reshape(-1),
                 "T_map_camera": _nan_if_none([k.T_map_camera for k in sel.keyframes]),
                 "T_odom_camera": _nan_if_none([k.T_odom_camera for k in sel.keyframes])},
                {"source": sel.source, "skipped_no_pose": sel.skipped_no_pose,
                 "cameras": [c.to_dict() for c in cams]})

    images: dict[int, np.ndarray] = {}
    a, meta = stages.run("frames", [path_identity(bag), asdict(topics), asdict(conf.frames()), conf.pose_source,
                                    conf.camera_extrinsic, conf.keyframe_min_translation,
                                    conf.keyframe_min_rotation_deg, conf.keyframe_min_interval_s, conf.max_images],
                         frames_stage)
    cams = [Camera.from_dict(c) for c in meta["cameras"]]
    kfs = [Keyframe(f"{i:05d}", int(t), images.get(int(t)), cams[c], _none_if_nan(Tm), _none_if_nan(To))
           for i, (t, c, Tm, To) in enumerate(zip(a["stamps"], a["camera"], a["T_map_camera"], a["T_odom_camera"]))]
    source, skipped = meta["source"], meta["skipped_no_pose"]
    if skipped:
        warnings.append(f"{skipped} images had no {source} pose at their stamp and were skipped"
                        + (f" (no {conf.global_frame} -> {conf.base_frame} on /tf then)" if source == "tf" else ""))
    if len(kfs) < 3:
        raise RuntimeError(f"{bag}: only {len(kfs)} usable keyframes with poses from {source}; a map needs at "
                           f"least 3" + (f" ({warnings[-1]})" if warnings else ""))
    log.info("%d keyframes, poses from %s", len(kfs), source)

    extractor = make_extractor(conf.features)

    def features_stage() -> tuple[dict, dict]:
        mine = [kfs[i] for i in distributed.shard(len(kfs))]
        _bag_frames(bag, topics, conf, mine)
        shares = distributed.gather(extract_features(mine, extractor, progress))
        f = [shares[i % len(shares)][i // len(shares)] for i in range(len(kfs))]  # back in keyframe order
        return {"ptr": np.cumsum([0] + [len(k) for k, _ in f]), "keypoints": np.concatenate([k for k, _ in f]),
                "descriptors": np.concatenate([d for _, d in f])}, {}

    a, _ = stages.run("features", conf.features.identity() | {"weights": conf.features.weights}, features_stage,
                      split=True)
    feats = [(a["keypoints"][lo:hi], a["descriptors"][lo:hi]) for lo, hi in zip(a["ptr"][:-1], a["ptr"][1:])]

    def sfm_stage() -> tuple[dict, dict]:
        inputs = [SfmInput(k.name, k.camera, f[0], f[1], k.T_map_camera) for k, f in zip(kfs, feats)]
        scale = max(conf.features.pixels_per_detector_pixel(k.camera.width, k.camera.height) for k in kfs)
        r = run_sfm(inputs, conf.sfm, pixel_scale=scale, prior_sigma_m=conf.prior_sigma_m if source == "tf" else 0.0)
        if r.adjustment is not None:
            log.info("bundle adjustment moved the cameras from their %s poses: %s", source, r.adjustment)
        frame = {"ground_truth": "map", "tf": conf.global_frame, "odometry": "odom"}.get(source, "arbitrary")
        if source == "none":
            frame = align_to_odometry(r, kfs)
            r.warnings.append("no poses and no odometry: the map's scale and frame are arbitrary" if frame == "arbitrary"
                              else "no poses: the map was aligned to odometry (frame odom, scale from odometry)")
        return ({k: getattr(r, k) for k in ("points", "track_point", "track_image", "track_keypoint", "T_cw")},
                {"metric": r.metric, "model_bytes": r.model_bytes, "warnings": r.warnings, "frame": frame,
                 "adjustment": asdict(r.adjustment) if r.adjustment else None})

    a, meta = stages.run("sfm", [asdict(conf.sfm), conf.prior_sigma_m], sfm_stage)
    result = SfmResult(**a, metric=meta["metric"], model_bytes=meta["model_bytes"], warnings=meta["warnings"],
                       adjustment=PoseAdjustment(**meta["adjustment"]) if meta["adjustment"] else None)
    frame = meta["frame"]
    warnings += result.warnings

    def landmarks_stage() -> tuple[dict, dict]:
        m = make_landmarks(result, kfs, feats, conf.landmarks)
        ids = sorted(m.T_cw)
        return ({"xyz": m.xyz, "labels": m.labels, "descriptors": m.descriptors, "obs_point": m.observations.point,
                 "obs_image": m.observations.image, "obs_keypoint": m.observations.keypoint,
                 "vrfs": np.array(m.vrfs, np.int64).reshape(-1, 2),
                 "vrf_ptr": np.cumsum([0] + [len(p) for p in m.vrf_points]),
                 "vrf_points": np.concatenate(m.vrf_points).astype(np.int64) if m.vrf_points else np.zeros(0, np.int64),
                 "T_cw_ids": np.array(ids, np.int64), "T_cw": np.array([m.T_cw[i] for i in ids]).reshape(-1, 4, 4)},
                {})

    a, _ = stages.run("landmarks", asdict(conf.landmarks), landmarks_stage)
    marks = Landmarks(a["xyz"], a["labels"], a["descriptors"],
                      Observations(a["obs_point"], a["obs_image"], a["obs_keypoint"]),
                      [(int(lm_), int(img)) for lm_, img in a["vrfs"]],
                      [a["vrf_points"][lo:hi] for lo, hi in zip(a["vrf_ptr"][:-1], a["vrf_ptr"][1:])],
                      {int(i): T for i, T in zip(a["T_cw_ids"], a["T_cw"])})
    obs, labels, vrfs, T_cw = marks.observations, marks.labels, marks.vrfs, marks.T_cw

    # Per-keypoint training labels: landmark + 1 space is 1..K already (0 = no landmark).
    kp_labels = [np.zeros(len(f[0]), np.int64) for f in feats]
    kp_point = [np.full(len(f[0]), -1, np.int64) for f in feats]
    for n in range(len(obs.point)):
        kp_labels[obs.image[n]][obs.keypoint[n]] = labels[obs.point[n]]
        kp_point[obs.image[n]][obs.keypoint[n]] = obs.point[n]
    rconf = replace(conf.recognizer, descriptor_dim=extractor.dim, num_classes=int(labels.max()) + 1)

    def training_stage() -> tuple[dict, dict]:
        mine = distributed.shard(len(kfs))
        _bag_frames(bag, topics, conf, [kfs[i] for i in mine])
        train_s, val_s = training_samples([k.image for k in kfs], feats, kp_labels, extractor, conf.train, progress,
                                          indices=mine)
        model, report = train(train_s, val_s, rconf, conf.train, resolve_device(conf.features.device), progress)
        counts = sum(distributed.gather(np.bincount(np.concatenate([s.labels[s.labels > 0] for s in val_s] + [[0]]),
                                                    minlength=rconf.num_classes)))
        report["chance"] = float(counts[1:].max() / max(counts[1:].sum(), 1))
        return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}, {"report": report}

    a, meta = stages.run("training", [rconf.to_dict(), asdict(conf.train)], training_stage, split=True)
    state, report = {k: torch.from_numpy(v) for k, v in a.items()}, meta["report"]

    def fine_stage() -> tuple[dict, dict]:
        ids = sorted(T_cw)
        _bag_frames(bag, topics, conf, [kfs[i] for i in ids])
        local = np.full(len(kfs), -1)
        local[ids] = np.arange(len(ids))
        seen = local[obs.image] >= 0
        covisible = set(covisible_pairs(obs.point[seen], local[obs.image[seen]], len(ids)))
        f = build_fine_layer([kfs[i].image for i in ids], [kfs[i].camera for i in ids], [T_cw[i] for i in ids],
                             conf.fine, progress, covisible, conf.prior_sigma_m if source == "tf" else 0.0)
        return {"points": f.points, "descriptors": f.descriptors, "seen_along": f.seen_along}, {"features": f.features}

    fine = None
    if conf.fine.enabled:
        a, meta = stages.run("fine", asdict(conf.fine), fine_stage)
        fine = FineLayer(a["points"], a["descriptors"], a["seen_along"], meta["features"])

    if distributed.rank() != 0:
        return None  # rank 0 writes the map
    if report["stopped_by_time_cap"]:
        warnings.append(f"recognizer training stopped by its {conf.train.max_minutes:g} min safety cap after "
                        f"{report['steps']} of {report['steps_planned']} steps: this map is less trained than "
                        f"asked (a busy machine?); rebuild it, or raise the cap")
        log.warning(warnings[-1])

    t = time.monotonic()
    frames_used = sorted({img for _, img in vrfs})
    frame_of = {img: n for n, img in enumerate(frames_used)}
    m = PramMap(
        features=conf.features.identity(), cameras=cams, points=marks.xyz.astype(np.float32), labels=labels,
        descriptors=marks.descriptors.astype(np.float16), frame_T=np.array([invert(T_cw[i]) for i in frames_used]),
        frame_camera=np.array([cams.index(kfs[i].camera) for i in frames_used], np.int32),
        vrf_frame=np.array([frame_of[img] for _, img in vrfs], np.int32),
        vrf_landmark=np.array([landmark for landmark, _ in vrfs], np.int32),
        vrf_ptr=np.concatenate([[0], np.cumsum([len(p) for p in marks.vrf_points])]).astype(np.int64),
        vrf_points=np.concatenate(marks.vrf_points).astype(np.int32) if marks.vrf_points else np.zeros(0, np.int32),
        recognizer_config=rconf.to_dict(), recognizer_state=state, frame=frame, images=len(kfs),
        metric=frame != "arbitrary",
        info={"bag": str(bag), "pose_source": source, "skipped_no_pose": skipped,
              "pose_adjustment": asdict(result.adjustment) if result.adjustment else None,
              "recognition": {k: v for k, v in report.items() if k != "loss"}, "warnings": warnings},
        fine=fine, baseline=Baseline(
            ptr=np.concatenate([[0], np.cumsum([len(f[0]) for f in feats])]),
            keypoints=np.concatenate([f[0] for f in feats]), descriptors=np.concatenate([f[1] for f in feats]),
            point_ids=np.concatenate(kp_point),
            T_map_camera=np.array([invert(T_cw[i]) if i in T_cw else np.full((4, 4), np.nan)
                                   for i in range(len(kfs))]),
            camera=np.array([cams.index(k.camera) for k in kfs], np.int32)))
    save_map(m, out, {"landmarks.png": landmarks_png(m)})
    stages.done("write", time.monotonic() - t)

    files = {p.name: p.stat().st_size for p in out.iterdir()}
    sizes = {"map_data": files["map.npz"], "weights": files["recognizer.safetensors"],
             "baseline": files.get("baseline.npz", 0), "fine": files.get("fine.npz", 0),
             "hloc_style": hloc_style_bytes(result, feats)}
    return BuildSummary(out, len(kfs), len(marks.xyz), m.num_landmarks, len(vrfs), frame, m.metric, report,
                        stages.times, sizes, warnings, source, skipped, result.adjustment, stages.resumed,
                        stages.work.path, len(fine.points) if fine is not None else 0)


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
