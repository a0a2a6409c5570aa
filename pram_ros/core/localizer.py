"""Localization of one image against a PRAM map (PRAM section 3), plus the exhaustive baseline.

pram:       features -> recognizer -> keypoint pre-filter -> landmarks ranked by votes ->
            per landmark: match its keypoints to the landmark's VRF points, PnP, accept or try the
            next -> refine with the points of covisible VRFs; a weakly confirmed pose competes with
            the other landmarks' confirmed poses elsewhere through the fine layer.
tracking:   from the previous pose (moved by odometry, or a prior): the last SIFT keyframe's keypoints
            followed by optical flow (flow.py), else SIFT matched near the fine points' projections,
            else XFeat matched near the map points' projections; PnP; fall back to relocalization.
exhaustive: match against the keypoints of every map image (hloc without global descriptors), one
            PnP on all 2D-3D matches: the same features and PnP, so differences come from
            recognition alone.
auto:       exhaustive on maps small enough that it is the cheaper route, else pram (on maps of up to 50
            images, followed by exhaustive where recognition found no pose).
A pose found from the map points in view (refinement, tracking) ends re-fitted to the matches near
its projection (`polish_radius_px`), then, when the map has a fine layer, to full-resolution SIFT
points (fine.py): the coarse features find the pose, the fine ones make it precise.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .camera import Camera
from .features import FeatureConfig, Features, make_extractor
from .fine import FineConfig, FineFit, FineRegistration, FineView
from .flow import FlowConfig, FlowTracker
from .geometry import extrapolate, invert
from .images import to_gray
from .map import MapError, PramMap, has_baseline, load_baseline, load_map, read_manifest
from .matching import (KeypointSet, MatchConfig, PairMatcher, learned_pair_matcher, lighterglue_pair_matcher,
                       mutual_nn)
from .params import DEVICE_PATTERN, setting, validate
from .recognition import Recognizer, RecognizerConfig, normalize_keypoints
from .registration import (PoseEstimate, RegistrationConfig, covariance, refine_pose, register,
                           reprojection_errors)
from .two_view import projection_guide
from .visibility import PointsInView

log = logging.getLogger(__name__)
CUDA_ERRORS = (torch.cuda.OutOfMemoryError, torch.AcceleratorError)
METHODS = ("pram", "exhaustive", "auto")
MATCHERS = ("nn", "lighterglue", "imp")
MAX_EXTRAPOLATION = 3.0  # without odometry, the last motion predicts at most this many times its own
# length ahead (frames dropped in between); past that the last pose is the better guess
AUTO_EXHAUSTIVE_MAX_IMAGES = 10  # `auto` matches exhaustively against maps this small. bench/map_size.py:
# matching a query against one map image costs about 4 ms on 2 CPU cores, PRAM's recognition,
# registration and refinement 40-70 ms together, whatever the map's size
AUTO_FALLBACK_MAX_IMAGES = 50  # ...and, on maps up to this size, matches the images recognition could not
# pose (about 200 ms at 50 images): a small or sparse map trains a weaker recognizer (bench/RESULTS.md,
# 2026-12-07: 7-9 more of 131 demo queries posed on maps of 30 and 50 images)


@dataclass(frozen=True)
class LocalizerConfig:
    method: str = setting("auto", "pram (recognition, then landmark-wise PnP) | exhaustive (match every map image) | "
                          "auto (exhaustive on maps of at most 10 images, where it is cheaper; else pram, and on maps of up "
                          "to 50 images exhaustive for the images recognition cannot pose)",
                          choices=METHODS)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", pattern=DEVICE_PATTERN)
    half: bool = setting(False, "fp16 autocast for the networks on CUDA (no effect on the CPU)")
    match: MatchConfig = MatchConfig(ratio=0.9, min_similarity=0.5)
    matcher: str = setting("nn", "landmark-wise registration's matcher: nn (mutual nearest neighbours to the "
                           "landmarks' points) | lighterglue (XFeat's, against each landmark's first VRF) | imp "
                           "(pram-ros train-matcher's, iterative, against the first VRF; needs matcher_path)",
                           choices=MATCHERS)
    matcher_path: str = setting("", "matcher: imp: the matcher.pt that pram-ros train-matcher wrote")
    registration: RegistrationConfig = RegistrationConfig()
    recognition_keypoints: int = setting(512, "the recognizer sees the strongest this many keypoints (0: all)",
                                         range=(16, 16384), zero_off=True)
    # as many as it was trained on (TrainConfig.keypoints_per_sample); 768 cost 7% more time a relocalized
    # demo frame for no more poses or precision, on the demo or on fox (bench/RESULTS.md, 2026-12-07)
    # the rest count as background when ranking landmarks, and every keypoint is matched in refinement
    no_landmark_prob: float = setting(0.95, "drop keypoints this sure to be background...", range=(0.5, 1.0))
    max_prefilter_drop: float = 0.6  # ...unless that removes more than this share
    max_landmarks: int = setting(24, "landmark candidates tried in rank order", range=(1, 512))
    landmarks_per_attempt: int = 3  # ...this many at a time (their points matched jointly)
    weak_confirmation: float = 2.0  # a pose confirmed by fewer than this many times min_inliers is weak:
    # the remaining landmark groups' poses are found too, and those elsewhere that are also confirmed
    # compete with it through the fine layer, whose full-resolution points tell a repeated poster's
    # copies apart where the coarse ones may favour the wrong copy; with no fine fit to decide, the image
    # is refused as ambiguous (bench/RESULTS.md, 2026-12-07). 0: off
    min_labelled: int = 40  # fewer keypoints voting for a landmark: match all keypoints instead
    refine_radii_px: tuple[float, ...] = (24.0, 8.0)  # refinement passes, coarse to fine
    polish_radius_px: float = 3.0  # then the pose is re-fit, without RANSAC, to every match whose point
    # projects within this many detector pixels of its keypoint (0: off); XFeat's keypoints are good to
    # about 1 px, so 3 px keeps the true matches and leaves out the outliers RANSAC's 8 px let in
    tracking: bool = setting(True, "track between frames; fall back to recognition")
    track_radius_px: float = 60.0  # first tracking pass: how far from its projection from the last pose a
    # point may be seen (the node processes a few frames a second on a CPU: the image moves tens of px)...
    track_radius_odometry_px: float = 24.0  # ...and from the last pose moved by odometry, when there is odometry
    fine: FineConfig = FineConfig()
    flow: FlowConfig = FlowConfig()

    def __post_init__(self) -> None:
        validate(self)
        if self.matcher == "imp" and not self.matcher_path:
            raise ValueError("matcher=imp needs matcher_path: the matcher.pt that pram-ros train-matcher wrote")


@dataclass
class LocalizationResult:
    success: bool
    mode: str  # recognition | tracking | exhaustive
    reason: str = ""
    T_camera_map: np.ndarray | None = None
    covariance: np.ndarray | None = None  # of the camera (or body) pose in the map frame
    num_inliers: int = 0
    num_keypoints: int = 0
    keypoints: np.ndarray | None = None  # (N, 2) query keypoints
    keypoint_landmarks: np.ndarray | None = None  # (N,) recognized label per keypoint (0: none)
    inlier_keypoints: np.ndarray | None = None  # indices into keypoints (the coarse pose's inliers)
    inlier_uv: np.ndarray | None = None  # the inlier 2D-3D correspondences of the final pose
    inlier_xyz: np.ndarray | None = None
    fine: bool = False  # the final pose was re-fit to the map's fine layer...
    fine_reason: str = ""  # ...or why not
    fine_points: np.ndarray | None = None  # the fine points of the inliers, when fine
    flow: bool = False  # the pose was fit to the keyframe's keypoints followed by optical flow (flow.py)
    landmarks: list[int] = field(default_factory=list)  # ranked candidates
    rivals: list["LocalizationResult"] = field(default_factory=list)  # confirmed poses elsewhere that
    # competed with this one (LocalizerConfig.weak_confirmation)
    tried: list[int] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)

    @property
    def T_map_camera(self) -> np.ndarray | None:
        return None if self.T_camera_map is None else invert(self.T_camera_map)


def auto_route(images: int, has_baseline: bool) -> tuple[str, bool]:
    """What `auto` does on a map of `images` images (0: unknown, a map from before the count), with or
    without the images' keypoints (baseline.npz): (the route from scratch, whether the images that
    recognition cannot pose are matched against every map image)."""
    matchable = has_baseline and 0 < images <= AUTO_FALLBACK_MAX_IMAGES
    if matchable and images <= AUTO_EXHAUSTIVE_MAX_IMAGES:
        return "exhaustive", False
    return "pram", matchable


class Localizer:
    """Loads a map once, then localizes images (stateful when tracking)."""

    def __init__(self, map_or_path: PramMap | str | Path, conf: LocalizerConfig = LocalizerConfig(),
                 features: FeatureConfig | None = None) -> None:
        m = map_or_path if isinstance(map_or_path, PramMap) else \
            load_map(map_or_path, with_baseline=conf.method == "exhaustive")
        self.method = conf.method  # the route relocalization takes: pram or exhaustive
        self.exhaustive_fallback = False  # auto on a small map: exhaustive matching after recognition fails
        if conf.method == "auto":
            small = 0 < m.images <= AUTO_FALLBACK_MAX_IMAGES  # 0: a map from before the count
            if small and m.baseline is None and not isinstance(map_or_path, PramMap):
                manifest = read_manifest(map_or_path)
                if has_baseline(manifest):
                    m.baseline = load_baseline(map_or_path, manifest)
            self.method, self.exhaustive_fallback = auto_route(m.images, m.baseline is not None)
        if self.method == "exhaustive" and m.baseline is None:
            raise MapError("the exhaustive baseline needs the map's baseline.npz")
        feat = features or FeatureConfig(**m.features, device=conf.device)
        if feat.identity() != m.features:
            raise MapError(f"features mismatch: the map was built with {m.features}, the localizer is set to "
                           f"{feat.identity()}; rebuild the map or change the feature settings")
        self.map, self.conf, self.feature_conf = m, conf, feat
        self.device_warning = ""  # set when a CUDA error moved the networks to the CPU
        self._place_networks(conf.device)
        self.points = m.points.astype(np.float64)
        self.in_view = PointsInView.of_map(m)
        self.fine = FineRegistration(m, conf.fine, conf.registration) if conf.fine.enabled and m.fine is not None else None
        self._sift_thread = ThreadPoolExecutor(1, thread_name_prefix="pram-sift") if self.fine is not None else None
        self.flow = FlowTracker(conf.flow) if self.fine is not None and conf.flow.enabled else None
        k = m.num_landmarks
        self.vrfs_of = [np.flatnonzero(m.vrf_landmark == lm) for lm in range(k + 1)]
        self.landmark_points = [np.unique(np.concatenate([m.vrf_point_ids(v) for v in vs])) if len(vs) else
                                np.zeros(0, np.int64) for vs in self.vrfs_of]
        self.first_vrfs = [self._vrf_keypoints(vs[0]) if len(vs) and conf.matcher != "nn" else None
                           for vs in self.vrfs_of]
        self.last_T_camera_map: np.ndarray | None = None
        self.last_T_odom_camera: np.ndarray | None = None  # odometry at the last pose, to predict the next
        self.last_stamp_ns: int | None = None  # the last pose's image stamp...
        self.prev_pose: tuple[int, np.ndarray] | None = None  # ...and the pose before it (stamp, T_camera_map),
        # for a constant-velocity prediction where there is no odometry
        self.last_fine_points: np.ndarray | None = None  # the fine points the last pose was fit to
        self.prior_T_map_camera: np.ndarray | None = None
        self.prior_position_cov: np.ndarray | None = None
        self.vrf_centers = m.frame_T[m.vrf_frame][:, :3, 3]  # where each VRF's landmark was seen from

    def _place_networks(self, device: str) -> None:
        """Build the extractor and recognizer, and put the map's descriptors, on `device`."""
        m = self.map
        self.extractor = make_extractor(replace(self.feature_conf, device=device, half=self.conf.half))
        self.device = self.extractor.device
        self.recognizer = Recognizer(RecognizerConfig(**m.recognizer_config)).to(self.device).eval()
        self.recognizer.load_state_dict(m.recognizer_state)
        self.point_desc = torch.from_numpy(m.descriptors.astype(np.float32)).to(self.device)
        self.pair_matcher = self._pair_matcher()
        if m.baseline is not None:
            self.base_desc = torch.from_numpy(m.baseline.descriptors.astype(np.float32)).to(self.device)

    def _pair_matcher(self) -> PairMatcher | None:
        """The learned matcher of registration (None: mutual nearest neighbours)."""
        if self.conf.matcher == "lighterglue":
            return lighterglue_pair_matcher()
        if self.conf.matcher == "imp":
            from .matcher_training import load_matcher

            path = Path(self.conf.matcher_path)
            if not path.is_file():
                raise FileNotFoundError(f"matcher_path {path}: no such file (pram-ros train-matcher writes "
                                        "matcher.pt)")
            return learned_pair_matcher(load_matcher(path, self.device), iterative=True)
        return None

    def _vrf_keypoints(self, v: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        """A VRF as a learned matcher sees it: its points (ids) and their projections into its image
        (the reference's "VRF keypoints"; those that fall outside it are left out), with that
        image's size."""
        m = self.map
        pts = m.vrf_point_ids(v)
        cam = m.cameras[m.frame_camera[m.vrf_frame[v]]]
        T = invert(m.frame_T[m.vrf_frame[v]])
        uv, front = cam.project(self.points[pts] @ T[:3, :3].T + T[:3, 3])
        ok = front & cam.contains(uv)
        return pts[ok], uv[ok], (cam.width, cam.height)

    def _voters(self, keep: np.ndarray, top2: np.ndarray, landmarks: list[int]) -> np.ndarray:
        """The kept keypoints whose first or second choice is one of `landmarks`; all kept ones when
        fewer than `min_labelled` are."""
        sel = keep[np.isin(top2[keep], landmarks).any(1)]
        return sel if len(sel) >= self.conf.min_labelled else keep

    def _match_landmarks(self, feats: Features, kp: np.ndarray, keep: np.ndarray, top2: np.ndarray,
                         group: list[int], camera: Camera) -> tuple[np.ndarray, np.ndarray]:
        """(query keypoints, map points) matched for a group of landmarks: the keypoints voting for
        any of them matched by mutual nearest neighbours to all their points, or those voting for
        each one matched by the learned matcher to its first VRF, as the reference does (one point
        per keypoint: the first landmark's in rank order)."""
        if self.pair_matcher is None:
            sel = self._voters(keep, top2, group)
            pts = np.concatenate([self.landmark_points[lm] for lm in group])
            m = mutual_nn(feats.descriptors[sel], self.point_desc[pts], self.conf.match).cpu().numpy()
            return sel[m[:, 0]], pts[m[:, 1]]
        qs, ps = [], []
        for lm in group:
            if self.first_vrfs[lm] is None:
                continue
            sel = self._voters(keep, top2, [lm])
            pts, uv, size = self.first_vrfs[lm]
            guide = projection_guide(kp[sel], self.points[pts], camera, self.conf.registration)
            m = self.pair_matcher(KeypointSet(kp[sel], feats.descriptors[sel], (camera.width, camera.height)),
                                  KeypointSet(uv, self.point_desc[pts], size), guide)
            qs.append(sel[m[:, 0]])
            ps.append(pts[m[:, 1]])
        q, p = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (qs, ps))
        _, first = np.unique(q, return_index=True)
        return q[np.sort(first)], p[np.sort(first)]

    # -- public API ------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget the track: the next image is recognized from scratch."""
        self.last_T_camera_map = self.last_fine_points = self.last_stamp_ns = self.prev_pose = None
        self.prior_T_map_camera = self.prior_position_cov = None
        if self.flow is not None:
            self.flow.reset()

    def set_prior(self, T_map_camera: np.ndarray | None, position_cov: np.ndarray | None = None) -> None:
        """An external initial pose (e.g. /initialpose) for the next frame only: tracking starts from
        it, and recognition tries first the landmarks seen from it or from anywhere within 3 sigma
        of its position (`position_cov`, 3x3 in the map frame), then the others."""
        self.prior_T_map_camera = T_map_camera
        self.prior_position_cov = position_cov
        self.last_T_camera_map = self.last_fine_points = self.last_stamp_ns = self.prev_pose = None

    def warm_up(self, camera: Camera) -> None:
        """Run the networks once so the first real frame is not slow."""
        img = np.random.default_rng(0).integers(0, 255, (camera.height, camera.width), dtype=np.uint8)
        self.localize(img, camera, use_tracking=False)
        self.reset()

    def localize(self, image: np.ndarray, camera: Camera, use_tracking: bool | None = None,
                 T_camera_body: np.ndarray | None = None, T_odom_camera: np.ndarray | None = None,
                 stamp_ns: int | None = None) -> LocalizationResult:
        """Pose of the camera for one image (decoded BGR or mono), or an explicit failure.

        `T_odom_camera` (odometry at the image's stamp, any drifting frame) moves the last pose to
        where tracking looks first: the image may have moved far since the last processed frame.
        Without odometry, the image's `stamp_ns` lets the last two poses' motion predict it
        (constant velocity).

        A CUDA error (out of memory, a failed kernel) moves the networks to the CPU for good, with a
        warning in the log and in `device_warning`, and the image is tried again there."""
        try:
            return self._localize(image, camera, use_tracking, T_camera_body, T_odom_camera, stamp_ns)
        except CUDA_ERRORS as exc:
            self.device_warning = f"{type(exc).__name__} on {self.device}: running on the CPU from now on ({exc})"
            log.warning(self.device_warning)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._place_networks("cpu")
            return self._localize(image, camera, use_tracking, T_camera_body, T_odom_camera, stamp_ns)

    def _localize(self, image: np.ndarray, camera: Camera, use_tracking: bool | None,
                  T_camera_body: np.ndarray | None, T_odom_camera: np.ndarray | None,
                  stamp_ns: int | None) -> LocalizationResult:
        times: dict[str, float] = {}
        track = self.conf.tracking if use_tracking is None else use_tracking
        res, sift = None, None
        start, radius = self._track_start(track, T_odom_camera, stamp_ns)
        gray = to_gray(image) if self.flow is not None else None
        if start is not None and self.fine is not None:  # optical flow, else SIFT, while the fine track holds
            with self._timer(times, "tracking"):
                if self.flow is not None and self.flow.ready(gray):
                    res = self._flow_track(gray, camera, start)
                if res is None or not res.success:
                    sift = self.fine.extract(image, tracking=True)
                    res = self._fine_track(sift, camera, start, radius)
        if res is None or not res.success:
            # The query's SIFT for the fine fit, on its own thread while the coarse pose is found (OpenCV
            # runs without the GIL), when the last frame got a pose: this one likely will too. It is
            # waited for even when no pose comes, so that frames never pile up; after a failure, SIFT
            # waits for a coarse pose instead (a lost camera would pay for SIFT on every frame).
            overlap = self.fine is not None and sift is None and self.last_T_camera_map is not None
            pending = self._sift_thread.submit(self.fine.extract, image) if overlap else None
            try:
                with self._timer(times, "features"):
                    feats = self.extractor(image)
                kp, _ = feats.numpy()
                if start is not None:
                    with self._timer(times, "tracking"):
                        res = self._refine(feats, kp, camera, start, "tracking", (radius,))
                if res is None or not res.success:
                    res = self._relocalize(feats, kp, camera, times)
                if res.success and self.fine is not None:
                    with self._timer(times, "fine"):
                        hyps = [res, *res.rivals]
                        views = [self.fine.view(h.T_camera_map, camera) for h in hyps]  # while SIFT may still run
                        # after a failed fine track, its 1024 keypoints serve the re-fit too: that frame
                        # already paid for XFeat and recognition, and the next one tracks again
                        if sift is None:
                            sift = pending.result() if pending is not None else self.fine.extract(image)
                        for h, view in zip(hyps, views):
                            self._fine(h, sift, camera, feats, view)
                if res.rivals:
                    res = self._resolve(res)
                res.num_keypoints = len(kp)
                res.keypoints = kp
            finally:
                if pending is not None:
                    pending.result()
        self.prior_T_map_camera = self.prior_position_cov = None  # a prior is used for one frame: a wrong
        # one cannot hold the node
        if res.success:
            res.covariance = covariance(res.T_map_camera, res.inlier_uv, res.inlier_xyz, camera, T_camera_body)
            known = self.last_T_camera_map is not None and self.last_stamp_ns is not None
            self.prev_pose = (self.last_stamp_ns, self.last_T_camera_map) if known and stamp_ns is not None else None
            self.last_T_camera_map, self.last_T_odom_camera = res.T_camera_map, T_odom_camera
            self.last_fine_points, self.last_stamp_ns = res.fine_points, stamp_ns
        else:
            self.last_T_camera_map = self.last_T_odom_camera = self.last_fine_points = None
            self.last_stamp_ns = self.prev_pose = None
        if self.flow is not None:
            self._update_keyframe(res, gray, track)
        times["total"] = sum(times.values())
        res.timings_ms = times
        return res

    def _track_start(self, track: bool, T_odom_camera: np.ndarray | None,
                     stamp_ns: int | None) -> tuple[np.ndarray | None, float]:
        """Where tracking starts (T_camera_map, or None: recognize) and its first search radius: the
        last pose moved by the odometry since then, else by the last two poses' motion, else the last
        pose, else an external prior."""
        last, last_odom = self.last_T_camera_map, self.last_T_odom_camera
        if track and last is not None and last_odom is not None and T_odom_camera is not None:
            return invert(T_odom_camera) @ last_odom @ last, self.conf.track_radius_odometry_px
        if track and last is not None:
            moved = self._constant_velocity(stamp_ns)
            return (last if moved is None else moved), self.conf.track_radius_px
        if self.prior_T_map_camera is not None:
            return invert(self.prior_T_map_camera), self.conf.track_radius_px
        return None, 0.0

    def _constant_velocity(self, stamp_ns: int | None) -> np.ndarray | None:
        """T_camera_map at `stamp_ns` if the camera kept the motion of its last two poses (None when
        they, or the stamps, do not allow it)."""
        if stamp_ns is None or self.prev_pose is None or self.last_stamp_ns is None:
            return None
        t_prev, T_prev = self.prev_pose
        if not t_prev < self.last_stamp_ns < stamp_ns:
            return None
        s = (stamp_ns - self.last_stamp_ns) / (self.last_stamp_ns - t_prev)
        if s > MAX_EXTRAPOLATION:
            return None
        return invert(extrapolate(invert(T_prev), invert(self.last_T_camera_map), s))

    # -- stages ----------------------------------------------------------------------------------

    @contextmanager
    def _timer(self, times: dict[str, float], name: str):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        times[name] = times.get(name, 0.0) + (time.perf_counter() - t) * 1e3

    @torch.inference_mode()
    def recognize(self, feats: Features) -> torch.Tensor:
        """Class probabilities (N, 1 + K) of the keypoints. Only the strongest
        `recognition_keypoints` go through the transformer (its cost grows with the square of
        their number); the others get class 0 (no landmark)."""
        probs = torch.zeros((len(feats), self.map.num_landmarks + 1), device=self.device)
        probs[:, 0] = 1.0
        n = self.conf.recognition_keypoints
        idx = torch.argsort(feats.scores, descending=True)[:n] if n and len(feats) > n else \
            torch.arange(len(feats), device=self.device)
        if len(idx) == 0:
            return probs
        kpn = normalize_keypoints(feats.keypoints[idx], feats.image_size)
        with torch.autocast("cuda", torch.float16, enabled=self.conf.half and self.device.type == "cuda"):
            logits = self.recognizer(feats.descriptors[idx][None], kpn[None])[0]
        probs[idx] = logits.float().softmax(-1)
        return probs

    def rank_landmarks(self, probs: torch.Tensor) -> tuple[np.ndarray, list[int], np.ndarray]:
        """(kept keypoint indices, landmarks by votes, top-2 labels per keypoint)."""
        p0 = probs[:, 0]
        keep = torch.nonzero(p0 < self.conf.no_landmark_prob).flatten()
        if len(keep) < (1 - self.conf.max_prefilter_drop) * len(probs):
            keep = torch.argsort(p0)[: int(np.ceil((1 - self.conf.max_prefilter_drop) * len(probs)))]
        top2 = probs[:, 1:].topk(min(2, probs.shape[1] - 1), dim=1).indices + 1  # labels 1..K
        # soft votes: each kept keypoint's probability mass per landmark (the reference counts first
        # choices, then second choices)
        score = np.concatenate([[0.0], probs[keep, 1:].sum(0).cpu().numpy()])
        order = [int(lm) for lm in np.argsort(-score) if lm > 0 and score[lm] > 0]
        return keep.cpu().numpy(), order, top2.cpu().numpy()

    def _near_prior(self, camera: Camera) -> set[int]:
        """Landmarks in view from the prior pose, and those whose VRFs were taken from within its
        3-sigma position ellipse."""
        T = self.prior_T_map_camera
        near = set(np.unique(self.map.labels[self.in_view(invert(T), camera)]).tolist())
        cov = self.prior_position_cov
        if cov is not None and np.all(np.isfinite(cov)) and np.trace(cov) > 0:
            d = self.vrf_centers - T[:3, 3]
            m2 = np.einsum("ni,ij,nj->n", d, np.linalg.pinv(cov), d)
            near |= set(self.map.vrf_landmark[m2 <= 9.0].tolist())
        return near

    def _recognize_and_register(self, feats: Features, kp: np.ndarray, camera: Camera,
                                times: dict[str, float]) -> LocalizationResult:
        with self._timer(times, "recognition"):
            probs = self.recognize(feats)
            keep, ranked, top2 = self.rank_landmarks(probs)
        labels = np.zeros(len(kp), np.int64)
        labels[keep] = top2[keep, 0]
        if self.prior_T_map_camera is not None:
            near = self._near_prior(camera)
            ranked = [lm for lm in ranked if lm in near] + [lm for lm in ranked if lm not in near]
        res = LocalizationResult(False, "recognition", "no landmark recognized", keypoint_landmarks=labels,
                                 landmarks=ranked[: self.conf.max_landmarks])
        best_reason = res.reason
        found: list[LocalizationResult] = []
        g = self.conf.landmarks_per_attempt
        for k in range(0, len(res.landmarks), g):
            group = res.landmarks[k:k + g]
            res.tried.extend(group)
            with self._timer(times, "registration"):
                q, p = self._match_landmarks(feats, kp, keep, top2, group, camera)
                est, reason = register(kp[q], self.points[p], camera, self.conf.registration, final=False)
            if reason:
                best_reason = f"landmarks {group}: {reason}"
                continue
            if any(self._inlier_shift(h, est.T_camera_map, camera) < self.conf.refine_radii_px[0] for h in found):
                continue  # the same place as a pose already found
            # Refine with the map points in view of this pose (the covisible VRFs' points, found by
            # projection); a pose they do not confirm is rejected: a repeated poster or a
            # self-similar wall can fit one landmark's matches.
            with self._timer(times, "refinement"):
                refined = self._refine(feats, kp, camera, est.T_camera_map, "recognition")
            if not refined.success:
                best_reason = f"landmarks {group}: refinement did not confirm the pose ({refined.reason})"
                continue
            if any(self._inlier_shift(h, refined.T_camera_map, camera) < self.conf.refine_radii_px[-1] for h in found):
                continue
            refined.keypoint_landmarks, refined.landmarks, refined.tried = labels, res.landmarks, res.tried
            found.append(refined)
            if found[0].num_inliers >= self.conf.weak_confirmation * self.conf.registration.min_inliers:
                break
        if not found:
            res.reason = best_reason
            return res
        found[0].rivals = found[1:]
        return found[0]

    def _relocalize(self, feats: Features, kp: np.ndarray, camera: Camera, times: dict[str, float]) -> LocalizationResult:
        """The pose from scratch by the map's route; with `exhaustive_fallback`, an image that
        recognition could not pose is matched against every map image. (Confirming that pose by
        the map points in its view, as a recognized one is, lost more right poses than wrong ones
        on sparse maps: bench/RESULTS.md, 2026-12-07.)"""
        if self.method == "exhaustive":
            return self._exhaustive(feats, kp, camera, times)
        res = self._recognize_and_register(feats, kp, camera, times)
        if res.success or not self.exhaustive_fallback:
            return res
        ex = self._exhaustive(feats, kp, camera, times)
        if ex.success:
            return ex
        res.reason += f"; matched against every map image: {ex.reason}"
        return res

    @staticmethod
    def _resolve(res: LocalizationResult) -> LocalizationResult:
        """A weak pose and its rivals (LocalizerConfig.weak_confirmation): the one the fine layer confirms
        with the most inliers, or none when no fine fit tells them apart (the map has no fine layer,
        or no fit held): the coarse evidence may favour a repeated poster's wrong copy."""
        hyps = [res, *res.rivals]
        fine = [h for h in hyps if h.fine]
        if not fine:
            counts = " / ".join(str(h.num_inliers) for h in hyps)
            return LocalizationResult(False, res.mode, f"ambiguous: {len(hyps)} places confirmed by {counts} inliers, "
                                      "and no fine fit to tell them apart", keypoint_landmarks=res.keypoint_landmarks,
                                      landmarks=res.landmarks, tried=res.tried, rivals=hyps)
        best = max(fine, key=lambda h: h.num_inliers)
        best.rivals = [h for h in hyps if h is not best]
        return best

    @staticmethod
    def _inlier_shift(res: LocalizationResult, T_camera_map: np.ndarray, camera: Camera) -> float:
        """How far `T_camera_map` moves `res`'s inliers from their keypoints: the median reprojection error [px]."""
        return float(np.median(reprojection_errors(T_camera_map, res.inlier_uv, res.inlier_xyz, camera)))

    def _accept(self, res: LocalizationResult, est: PoseEstimate, uv: np.ndarray, xyz: np.ndarray,
                q: np.ndarray) -> LocalizationResult:
        res.success, res.reason = True, ""
        res.T_camera_map = est.T_camera_map
        res.num_inliers = est.num_inliers
        res.inlier_keypoints = q[est.inliers]
        res.inlier_uv, res.inlier_xyz = uv[est.inliers], xyz[est.inliers]
        return res

    def _refine(self, feats: Features, kp: np.ndarray, camera: Camera, T_camera_map: np.ndarray, mode: str,
                radii: tuple[float, ...] | None = None) -> LocalizationResult:
        """Projection-guided registration: mutual nearest neighbours between the keypoints and the
        map points in view of the pose, kept where the point projects within the radius of its
        keypoint, then PnP; repeated from the new pose with the next, smaller radius (the matches
        are computed once: the points in view hardly change between passes)."""
        res = LocalizationResult(False, mode, "too few projected matches")
        radii = radii or self.conf.refine_radii_px
        need = self.conf.registration.min_inliers
        T = T_camera_map
        cand = self.in_view(T, camera, radii[0])
        if len(kp) == 0 or len(cand) < need:
            return res
        m = mutual_nn(feats.descriptors, self.point_desc[cand], self.conf.match).cpu().numpy()
        q_all, xyz_all = m[:, 0], self.points[cand[m[:, 1]]]
        for radius in radii:
            uv, front = camera.project(xyz_all @ T[:3, :3].T + T[:3, 3])
            near = front & (np.linalg.norm(kp[q_all] - uv, axis=1) < radius)
            q, xyz = q_all[near], xyz_all[near]
            if len(q) < need:
                return LocalizationResult(False, mode, "too few projected matches")
            est, reason = register(kp[q], xyz, camera, self.conf.registration)
            if reason:
                return LocalizationResult(False, mode, reason)
            res = self._accept(LocalizationResult(False, mode), est, kp[q], xyz, q)
            T = res.T_camera_map
        return self._polish(res, feats, kp, camera, q_all, xyz_all)

    def _polish(self, res: LocalizationResult, feats: Features, kp: np.ndarray, camera: Camera, q_all: np.ndarray,
                xyz_all: np.ndarray) -> LocalizationResult:
        """The accepted pose re-fit to every match within `polish_radius_px` of its projection (twice:
        the set is chosen again from the re-fitted pose). A set too small to trust keeps the pose."""
        if not self.conf.polish_radius_px:
            return res
        r = self.conf.polish_radius_px * self.feature_conf.pixels_per_detector_pixel(*feats.image_size)
        T = res.T_camera_map
        for _ in range(2):
            near = reprojection_errors(T, kp[q_all], xyz_all, camera) < r
            if near.sum() < self.conf.registration.min_inliers:
                break
            refit = refine_pose(T, kp[q_all[near]], xyz_all[near], camera)
            if refit is None:
                break
            T = refit
            res = self._accept(LocalizationResult(False, res.mode), PoseEstimate(T, near),
                               kp[q_all], xyz_all, q_all)
        return res

    def _fine(self, res: LocalizationResult, sift: tuple[np.ndarray, np.ndarray], camera: Camera,
              feats: Features, view: FineView) -> None:
        """The coarse pose re-fit to the fine layer (`view`: its points in view of the coarse pose)
        when that fit holds and keeps the coarse inliers on their keypoints (a fit to the wrong points
        moves them all); else it stays as it is."""
        px = self.feature_conf.pixels_per_detector_pixel(*feats.image_size)
        fit, res.fine_reason = self.fine.fit(sift, camera, res.T_camera_map, px, view=view)
        if fit is not None:
            shift = self._inlier_shift(res, fit.T_camera_map, camera) / px
            if shift > self.conf.fine.max_coarse_shift_px:
                res.fine_reason = f"the fine fit moved the coarse inliers {shift:.1f} px from their keypoints"
                return
            self._take_fit(res, fit)

    def _fine_track(self, sift: tuple[np.ndarray, np.ndarray], camera: Camera, T_camera_map: np.ndarray,
                    radius: float) -> LocalizationResult:
        """Tracking on the fine layer alone: the query's SIFT keypoints matched near the fine points'
        projections from the predicted pose (`radius` detector px; the last frame's inliers first),
        then every point in view near the pose that gives."""
        px = self.feature_conf.pixels_per_detector_pixel(camera.width, camera.height)
        fit, reason = self.fine.fit(sift, camera, T_camera_map, px, first_px=radius * px,
                                    first_points=self.last_fine_points)
        return self._tracked(fit, reason, sift[0])

    def _flow_track(self, gray: np.ndarray, camera: Camera, T_camera_map: np.ndarray) -> LocalizationResult:
        """Tracking without new keypoints: the keyframe's fine inliers followed by optical flow from
        where the predicted pose projects them, and the pose fit to where they are found."""
        key = self.flow.key
        xyz = self.fine.points[key.point_ids]
        predicted, _ = camera.project(xyz @ T_camera_map[:3, :3].T + T_camera_map[:3, 3])
        idx, uv = self.flow.track(gray, predicted)
        fit, reason = self.fine.fit_tracks(uv, key.point_ids[idx], camera)
        res = self._tracked(fit, reason, uv)
        res.flow = True
        return res

    def _update_keyframe(self, res: LocalizationResult, gray: np.ndarray, track: bool) -> None:
        """A pose fit to new SIFT keypoints makes its frame the keyframe; a flow fit keeps the keyframe
        while enough of its points hold; anything else leaves none (the next track extracts SIFT)."""
        if not (track and res.success and res.fine):
            self.flow.reset()
        elif not res.flow:
            self.flow.set_keyframe(gray, res.inlier_uv, res.fine_points)
        elif res.num_inliers < self.conf.flow.min_kept * len(self.flow.key.uv):
            self.flow.reset()

    def _tracked(self, fit: FineFit | None, reason: str, kp: np.ndarray) -> LocalizationResult:
        """The tracking result of a fine fit to keypoints `kp`, or its failure."""
        res = LocalizationResult(False, "tracking", reason, num_keypoints=len(kp), keypoints=kp, fine_reason=reason)
        if fit is None:
            return res
        res.success = True
        res.inlier_keypoints = fit.keypoints[fit.inliers]
        self._take_fit(res, fit)
        return res

    @staticmethod
    def _take_fit(res: LocalizationResult, fit: FineFit) -> None:
        """`res` takes the fine fit's pose and inliers."""
        res.fine, res.fine_points = True, fit.point_ids[fit.inliers]
        res.T_camera_map, res.num_inliers = fit.T_camera_map, int(fit.inliers.sum())
        res.inlier_uv, res.inlier_xyz = fit.uv[fit.inliers], fit.xyz[fit.inliers]

    def _exhaustive(self, feats: Features, kp: np.ndarray, camera: Camera, times: dict[str, float]) -> LocalizationResult:
        b = self.map.baseline
        assert b is not None
        with self._timer(times, "matching"):
            q_all, p_all = [], []
            for i in range(len(b.ptr) - 1):
                lo, hi = int(b.ptr[i]), int(b.ptr[i + 1])
                m = mutual_nn(feats.descriptors, self.base_desc[lo:hi], self.conf.match).cpu().numpy()
                pid = b.point_ids[lo + m[:, 1]]
                q_all.append(m[pid >= 0, 0])
                p_all.append(pid[pid >= 0])
            q, p = np.concatenate(q_all), np.concatenate(p_all)
            # one 3D point per keypoint: keep the most frequent vote
            if len(q):
                pairs, counts = np.unique(np.stack([q, p], 1), axis=0, return_counts=True)
                order = np.lexsort((-counts, pairs[:, 0]))
                pairs = pairs[order]
                first = np.concatenate([[True], pairs[1:, 0] != pairs[:-1, 0]])
                q, p = pairs[first, 0], pairs[first, 1]
        with self._timer(times, "registration"):
            est, reason = register(kp[q], self.points[p], camera, self.conf.registration)
        res = LocalizationResult(False, "exhaustive", reason)
        return res if reason else self._accept(res, est, kp[q], self.points[p], q)
