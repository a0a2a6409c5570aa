"""The fine layer: full-resolution SIFT points of the map images, for the final pose.

XFeat at 640 px finds and recognizes landmarks fast, but its keypoints are good to about 0.8 px
and the points triangulated from them to a few centimetres; a classic SIFT pipeline at full
resolution is 3-4x more precise (bench/RESULTS.md). The fine layer gives PRAM that precision
without a classic pipeline's search:
- **build**: RootSIFT on the map images at full resolution, triangulated at the poses SfM already
  found for them (no new reconstruction; poses from a SLAM run are first refined by bundle
  adjustment over the SIFT tracks), points seen in at least three images kept with one
  medoid descriptor each;
- **query**: once the coarse pose is known, SIFT keypoints of the query are matched only to the
  fine points that project within a few pixels of them; the coarse pose is re-fit to those
  matches (they were chosen by their agreement with it: RANSAC over them would only find it
  again), then to the matches within three times the keypoint noise its inliers show. A fit
  that does not hold (too few matches, bunched, or one that moves the coarse inliers off their
  keypoints) leaves the coarse pose as it was.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
from scipy.spatial import cKDTree

from .camera import Camera
from .features import FeatureConfig, SiftExtractor
from .geometry import invert
from .landmarks import medoid_descriptors, well_observed
from .map import FineLayer, PramMap
from .params import setting, validate
from .registration import PoseEstimate, RegistrationConfig, check, estimate_pose, refine_pose, reprojection_errors
from .sfm import SfmConfig, SfmInput, run_sfm
from .visibility import PointsInView

log = logging.getLogger(__name__)
DESCRIPTOR_SCALE = 255.0  # RootSIFT components lie in [0, 1]: stored as uint8
RAYLEIGH_MEDIAN = 1.1774  # median pixel error / per-axis sigma of 2D Gaussian noise


@dataclass(frozen=True)
class FineBuildConfig:
    """How the fine layer is built (the localizer extracts the same SIFT)."""

    enabled: bool = setting(True, "build the fine layer: full-resolution SIFT points for the final pose")
    max_keypoints: int = setting(4096, "SIFT keypoints per map image", range=(64, 16384))  # as the classic
    # pipeline's; 2048 halves the layer (the demo's: 36k points, 5.1 MB against 9.5) but left fox's
    # poses about 1.2x the reference's errors against 1.0x (bench/RESULTS.md, 2026-12-03)
    max_side: int = 3200  # longest image side for SIFT, map and query alike: larger photographs are
    # shrunk to it (COLMAP's default for its SIFT): on a 20-megapixel image SIFT took 7.4 s and 4.6 GB,
    # shrunk to 3200 px 0.9-1.7 s
    min_track: int = 3  # points seen in fewer images are not kept (2 and 4 gave larger errors on fox,
    # bench/RESULTS.md, 2026-12-07)
    sfm: SfmConfig = SfmConfig(prior_ba_rounds=1)  # its pixel thresholds apply at full resolution; one
    # adjustment of a SLAM run's poses, not two: as precise on the demo's (1.44 against 1.45 cm), 29 s less

    def __post_init__(self) -> None:
        validate(self)

    def features(self) -> FeatureConfig:
        return FeatureConfig(name="sift", max_keypoints=self.max_keypoints, resize_max=0, device="cpu",
                             max_side=self.max_side)


@dataclass(frozen=True)
class FineConfig:
    """How the localizer uses the fine layer."""

    enabled: bool = setting(True, "re-fit the final pose to full-resolution SIFT points when the map has them")
    max_keypoints: int = setting(4096, "SIFT keypoints of the query for the fine fit", range=(64, 16384))
    # (the strongest, as many as the classic pipeline's: on fox 1024 left the poses 1.3x the reference's
    # errors, 4096 about 1.0x)
    track_keypoints: int = setting(1024, "SIFT keypoints of the query for the fine fit while tracking",
                                   range=(64, 16384))  # fewer: tracking is the frame-rate path and the
    # last pose's inliers guide it (4096 halved its rate on the demo, bench/RESULTS.md, 2026-12-03)
    search_px: float = 4.0  # in the coarse detector's pixels: how far from its projection under the
    # coarse pose a fine point's keypoint may lie (the coarse pose is good to about its keypoints' noise)
    ransac_px: float = setting(4.0, "inlier threshold of the fine fit (its re-fit and RANSAC passes) [image px]",
                               range=(0.5, 50.0))
    # as a classic pipeline's RANSAC threshold: a few times real keypoint noise
    # (fox's SIFT residuals: about 1.5 px; rendered images': 0.4), so no good match is left out. A fixed
    # 1.5 px last pass truncated real images' noise and held the pose near its start; the last pass's
    # threshold now follows the noise the inliers show (bench/RESULTS.md, 2026-12-03)
    min_final_px: float = 1.0  # ...3 sigma of it, never below this
    ratio: float = 0.9  # best against second-best descriptor distance, among a point's candidate keypoints
    # and among a keypoint's candidate points
    min_similarity: float = 0.7  # RootSIFT cosine
    max_coarse_shift_px: float = 3.0  # in coarse detector pixels: the coarse inliers' median reprojection
    # error under the fine pose may not exceed this (a fit to the wrong points moves them all)

    def __post_init__(self) -> None:
        validate(self)


def build_fine_layer(images: list[np.ndarray], cameras: list[Camera], T_cw: list[np.ndarray],
                     conf: FineBuildConfig = FineBuildConfig(), progress: bool = True,
                     covisible: set[tuple[int, int]] | None = None, prior_sigma_m: float = 0.0) -> FineLayer:
    """SIFT points of the map images triangulated at their poses T_cw (camera from map), matched
    in run_sfm's pairs, or only those of them that share a point of the coarse map (`covisible`,
    see covisible_pairs): matching 4096 keypoints costs 46 ms a pair, and 80% of a 50-image map's
    1225 pairs saw nothing in common (57 of the layer's 62 s).

    `prior_sigma_m` > 0: T_cw are approximate (a SLAM run's, after the coarse SfM's bundle
    adjustment), and a bundle adjustment over the SIFT tracks, the same position priors held,
    refines them before the points are triangulated: the coarse features' 640-px keypoints left a
    SLAM-run demo map's cameras 1.8 cm from the truth, and the final poses 2.4 cm off against 1.5
    cm with this adjustment (bench/RESULTS.md, 2026-12-07)."""
    from tqdm import tqdm

    sift = SiftExtractor(conf.features())
    feats = [sift(img).numpy() for img in tqdm(images, desc="fine features", unit="img", disable=not progress)]
    inputs = [SfmInput(f"{i:05d}", cam, k, d, invert(T)) for i, (cam, (k, d), T) in enumerate(zip(cameras, feats, T_cw))]
    r = run_sfm(inputs, conf.sfm, among=covisible, prior_sigma_m=prior_sigma_m)
    points, obs = well_observed(r, conf.min_track)
    desc = medoid_descriptors(obs, [d for _, d in feats], len(points))
    centres = np.array([invert(T)[:3, 3] for T in T_cw])
    rays = points[obs.point] - centres[obs.image]
    seen_along = np.zeros_like(points)
    np.add.at(seen_along, obs.point, rays / np.maximum(np.linalg.norm(rays, axis=1, keepdims=True), 1e-12))
    seen_along /= np.maximum(np.linalg.norm(seen_along, axis=1, keepdims=True), 1e-12)
    log.info("fine layer: %d points seen in >= %d of %d images", len(points), conf.min_track, len(images))
    return FineLayer(points.astype(np.float32), np.round(desc * DESCRIPTOR_SCALE).clip(0, 255).astype(np.uint8),
                     seen_along.astype(np.float16), conf.features().identity())


@dataclass
class FineView:
    """The fine points in view of a pose and where they project: the part of a fine fit that needs
    no query keypoints, so the localizer computes it while the query's SIFT is still running."""

    points: np.ndarray  # (P,) the points in front of the camera
    tree: cKDTree  # over their projections


@dataclass
class FineFit:
    """A pose fit to the fine layer, with the matches it was fit to."""

    T_camera_map: np.ndarray
    keypoints: np.ndarray  # (M,) indices into the query's SIFT keypoints
    point_ids: np.ndarray  # (M,) their fine points
    uv: np.ndarray  # (M, 2) those keypoints
    xyz: np.ndarray  # (M, 3) their fine points
    inliers: np.ndarray  # bool (M,): the matches the final pose was fit to (RANSAC's, or the last pass's)


class FineRegistration:
    """Poses from the query's SIFT keypoints matched to the fine points projecting near them: the
    localizer's last step after a coarse pose, and its tracking step from the last pose."""

    def __init__(self, m: PramMap, conf: FineConfig = FineConfig(),
                 registration: RegistrationConfig = RegistrationConfig()) -> None:
        """`registration`: the acceptance rules, the localizer's own."""
        assert m.fine is not None
        f = m.fine
        self.conf, self.registration = conf, registration
        self.points = f.points.astype(np.float64)
        self.descriptors = f.descriptors.astype(np.float32) / DESCRIPTOR_SCALE
        self.descriptors /= np.maximum(np.linalg.norm(self.descriptors, axis=1, keepdims=True), 1e-12)
        # grouped by the landmark of the nearest map point, for the same culling as the map's points
        labels = m.labels[cKDTree(m.points).query(f.points)[1]] if len(m.points) else np.zeros(len(f.points), int)
        self.in_view = PointsInView(self.points, labels, f.seen_along.astype(np.float64),
                                    PointsInView.viewing_depth(m))
        self.extractors = {n: SiftExtractor(FeatureConfig(**f.features | {"max_keypoints": n}, device="cpu"))
                           for n in {conf.max_keypoints, conf.track_keypoints}}

    def extract(self, image: np.ndarray, tracking: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The query's SIFT keypoints and RootSIFT descriptors, as the fine layer's were made
        (`track_keypoints` of them while tracking, else `max_keypoints`)."""
        n = self.conf.track_keypoints if tracking else self.conf.max_keypoints
        return self.extractors[n](image).numpy()

    def view(self, T_camera_map: np.ndarray, camera: Camera, points: np.ndarray | None = None) -> FineView:
        """The fine points in view of `T_camera_map` (or those of `points` in front of it) and their projections."""
        T = T_camera_map
        cand = self.in_view(T, camera) if points is None else points
        uv, front = camera.project(self.points[cand] @ T[:3, :3].T + T[:3, 3])
        return FineView(cand[front], cKDTree(uv[front]))

    def fit(self, sift: tuple[np.ndarray, np.ndarray], camera: Camera, T_camera_map: np.ndarray,
            coarse_px: float, first_px: float = 0.0, first_points: np.ndarray | None = None,
            view: FineView | None = None) -> tuple[FineFit | None, str]:
        """(the pose fit from `T_camera_map`, "") or (None, why not): the keypoints matched to the
        points in view within `search_px` coarse detector pixels (`coarse_px` image pixels each) of
        their projections, and the pose re-fit to those matches from `T_camera_map` (a confirmed
        coarse pose). With `first_px` (tracking: the predicted pose may be far off), a RANSAC pass
        over `first_points` (the last frame's inliers; default: every point in view) matched within
        `first_px` comes first, and the pose is found by RANSAC over the matches of its pose too: a
        re-fit from that looser pose left flow tracking 1.15x less precise than SIFT tracking
        instead of 1.07x (bench/RESULTS.md, 2026-12-06). `view`: this pose's `view`, when already
        computed (only without a first pass, which moves the pose)."""
        radius = self.conf.search_px * coarse_px
        if not first_px:
            return self._finish(self._refit(sift, camera, view or self.view(T_camera_map, camera), radius,
                                            T_camera_map), camera)
        if view is not None:
            raise ValueError("a view of the starting pose does not hold after a first pass")
        first = self._ransac(sift, camera, self.view(T_camera_map, camera, first_points), first_px, first_px / 2)
        if isinstance(first, str):
            return None, first
        return self._finish(self._ransac(sift, camera, self.view(first.T_camera_map, camera), radius,
                                         self.conf.ransac_px), camera)

    def _finish(self, fit: FineFit | str, camera: Camera) -> tuple[FineFit | None, str]:
        """The fit tightened and held to the acceptance rules."""
        if isinstance(fit, str):
            return None, fit
        fit = self._tighten(fit, camera)
        reason = check(PoseEstimate(fit.T_camera_map, fit.inliers), fit.uv, camera, self.registration)
        return (None, f"fine fit: {reason}") if reason else (fit, "")

    def _matches(self, sift: tuple[np.ndarray, np.ndarray], view: FineView, radius: float,
                 both_sides: bool = False) -> tuple[np.ndarray, np.ndarray] | str:
        """(keypoints, fine points) of `_match`, or why there are too few to fit a pose."""
        kp, desc = sift
        need = self.registration.min_inliers
        if len(kp) < need or len(view.points) < need:
            return f"{len(kp)} SIFT keypoints, {len(view.points)} fine points in view"
        q, p = self._match(kp, desc, view, radius, both_sides)
        return (q, p) if len(q) >= need else f"{len(q)} fine matches within {radius:.1f} px"

    def _ransac(self, sift: tuple[np.ndarray, np.ndarray], camera: Camera, view: FineView, radius: float,
                thresh_px: float) -> FineFit | str:
        """A pose by RANSAC at `thresh_px` from the matches of the points in `view` within `radius` of
        their projections, or why there is none."""
        m = self._matches(sift, view, radius)
        return m if isinstance(m, str) else self._pose(*m, sift[0][m[0]], camera, thresh_px)

    def _refit(self, sift: tuple[np.ndarray, np.ndarray], camera: Camera, view: FineView, radius: float,
               T_camera_map: np.ndarray) -> FineFit | str:
        """The pose `view` was made from, re-fit to its matches within `radius` of their projections
        (Cauchy loss), then to those within `ransac_px` of the result, or why there is none. The
        matches were chosen by their agreement with that pose, so RANSAC over them only finds it again:
        the re-fit gives the same poses at half the cost (bench/RESULTS.md, 2026-12-06)."""
        m = self._matches(sift, view, radius, both_sides=True)
        if isinstance(m, str):
            return m
        q, p = m
        uv, xyz, loss = sift[0][q], self.points[p], self.conf.ransac_px / 2
        T = refine_pose(T_camera_map, uv, xyz, camera, loss_scale_px=loss)  # every match lies within radius
        if T is None:
            return "fine re-fit did not converge"
        near = reprojection_errors(T, uv, xyz, camera) < self.conf.ransac_px
        if near.sum() < self.registration.min_inliers:
            return f"fine re-fit: {near.sum()} matches within {self.conf.ransac_px:.1f} px"
        T = refine_pose(T, uv[near], xyz[near], camera, loss_scale_px=loss)
        if T is None:
            return "fine re-fit did not converge"
        return FineFit(T, q, p, uv, xyz, reprojection_errors(T, uv, xyz, camera) < self.conf.ransac_px)

    def _pose(self, q: np.ndarray, p: np.ndarray, uv: np.ndarray, camera: Camera, thresh_px: float) -> FineFit | str:
        """The pose by RANSAC at `thresh_px` over keypoints `q` at `uv` matched to fine points `p`."""
        need = self.registration.min_inliers
        xyz = self.points[p]
        est = estimate_pose(uv, xyz, camera, replace(self.registration, ransac_thresh_px=thresh_px))
        if est is None or est.num_inliers < need:
            return f"fine RANSAC: {0 if est is None else est.num_inliers} inliers < {need}"
        return FineFit(est.T_camera_map, q, p, uv, xyz, est.inliers)

    def fit_tracks(self, uv: np.ndarray, point_ids: np.ndarray, camera: Camera) -> tuple[FineFit | None, str]:
        """(the pose fit to fine points found at `uv` by optical flow, "") or (None, why not): RANSAC,
        then the same last pass and acceptance rules as `fit`."""
        if len(uv) < self.registration.min_inliers:
            return None, f"{len(uv)} fine points tracked"
        fit = self._pose(np.arange(len(uv)), np.asarray(point_ids), uv, camera, self.conf.ransac_px)
        return self._finish(fit, camera)

    def _tighten(self, fit: FineFit, camera: Camera) -> FineFit:
        """The RANSAC pose re-fit to the matches within 3 sigma of it, sigma the keypoints' own noise
        as the inliers' residuals show it (their median / 1.18, a 2D Gaussian's), so the last pass
        is as tight as these images allow: rendered images' SIFT is good to 0.4 px, photographs'
        to 1-1.5; RANSAC's threshold has to allow for the worst."""
        err = reprojection_errors(fit.T_camera_map, fit.uv, fit.xyz, camera)
        sigma = float(np.median(err[fit.inliers])) / RAYLEIGH_MEDIAN
        thresh = float(np.clip(3 * sigma, self.conf.min_final_px, self.conf.ransac_px))
        near = err < thresh
        if near.sum() < self.registration.min_inliers:
            return fit
        T = refine_pose(fit.T_camera_map, fit.uv[near], fit.xyz[near], camera, loss_scale_px=thresh / 2)
        if T is None:
            return fit
        return replace(fit, T_camera_map=T, inliers=reprojection_errors(T, fit.uv, fit.xyz, camera) < thresh)

    def _match(self, kp: np.ndarray, desc: np.ndarray, view: FineView, radius: float,
               both_sides: bool) -> tuple[np.ndarray, np.ndarray]:
        """(keypoint, point) pairs: a fine point of `view` and a keypoint within `radius` px of its
        projection that are each other's most similar descriptor among the pairs the radius allows,
        with the ratio test among the point's candidate keypoints and, `both_sides`, among the
        keypoint's candidate points too, as a classic pipeline's mutual nearest neighbours: a keypoint
        between two look-alike points (a repeated texture) is then left out, not given the likelier
        one. Relocalization's fit tests both sides (the demo's poses 6% more precise, fox's 4%);
        tracking's does not, because its inliers become the keyframe points optical flow follows,
        and the fewer points left flow tracking 1.11x less precise (bench/RESULTS.md, 2026-12-06)."""
        c = self.conf
        pts = view.points
        near = view.tree.sparse_distance_matrix(cKDTree(kp), radius, output_type="coo_matrix")
        i, k = near.row, near.col  # index into pts, keypoint
        if len(i) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        sim = np.einsum("ij,ij->i", self.descriptors[pts[i]], desc[k])
        ok = (sim >= c.min_similarity) & _best_and_distinct(i, sim, c.ratio) & \
            _best_and_distinct(k, sim, c.ratio if both_sides else 1.0)  # 1.0: the keypoint's best only
        return k[ok].astype(np.int64), pts[i[ok]]


def _best_and_distinct(group: np.ndarray, sim: np.ndarray, ratio: float) -> np.ndarray:
    """Whether each pair is its group's most similar one and passes the ratio test against the group's
    second (descriptor distances of unit vectors; a group of one passes)."""
    order = np.lexsort((-sim, group))  # by group, best first
    g, s = group[order], sim[order]
    start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    has_second = np.r_[start[1:], len(g)] - start > 1
    second = np.where(has_second, s[np.minimum(start + 1, len(g) - 1)], -1.0)
    d1, d2 = (np.sqrt(np.maximum(2 - 2 * x, 0)) for x in (s[start], second))
    out = np.zeros(len(group), bool)
    out[order[start]] = ~has_second | (d1 < ratio * d2)
    return out
