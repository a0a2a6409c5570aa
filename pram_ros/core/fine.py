"""The fine layer: full-resolution SIFT points of the map images, for the final pose.

XFeat at 640 px finds and recognizes landmarks fast, but its keypoints are good to about 0.8 px
and the points triangulated from them to a few centimetres; a classic SIFT pipeline at full
resolution is 3-4x more precise (bench/RESULTS.md). The fine layer gives PRAM that precision
without a classic pipeline's search:
- **build**: RootSIFT on the map images at full resolution, triangulated at the poses SfM already
  found for them (no new reconstruction), points seen in at least three images kept with one
  medoid descriptor each;
- **query**: once the coarse pose is known, SIFT keypoints of the query are matched only to the
  fine points that project within a few pixels of them, and the pose is re-fit to those matches
  with a tightening radius. A fit that does not hold (too few matches, bunched, or one that moves
  the coarse inliers off their keypoints) leaves the coarse pose as it was.
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


@dataclass(frozen=True)
class FineBuildConfig:
    """How the fine layer is built (the localizer extracts the same SIFT)."""

    enabled: bool = setting(True, "build the fine layer: full-resolution SIFT points for the final pose")
    max_keypoints: int = setting(2048, "SIFT keypoints per map image", range=(64, 16384))  # 4096 made the
    # demo's layer twice the size (68k points, 9.9 MB) and its fine step 20 ms slower, for the same precision
    min_track: int = 3  # points seen in fewer images are not kept
    sfm: SfmConfig = SfmConfig()  # its pixel thresholds apply at full resolution

    def __post_init__(self) -> None:
        validate(self)

    def features(self) -> FeatureConfig:
        return FeatureConfig(name="sift", max_keypoints=self.max_keypoints, resize_max=0, device="cpu")


@dataclass(frozen=True)
class FineConfig:
    """How the localizer uses the fine layer."""

    enabled: bool = setting(True, "re-fit the final pose to full-resolution SIFT points when the map has them")
    max_keypoints: int = setting(1024, "SIFT keypoints of the query for the fine fit", range=(64, 16384))
    # (the strongest; SIFT's descriptors cost 10 ms per 1024 at 640 x 480 on 2 cores, its detection 33)
    radii_px: tuple[float, ...] = (4.0,)  # search radii in the coarse detector's pixels (the coarse
    # pose is good to about its keypoints' noise), then...
    final_px: float = 1.5  # ...one in image pixels: SIFT's keypoints at full resolution are good to ~0.3 px
    ratio: float = 0.9  # best against second-best descriptor distance among a point's candidates
    min_similarity: float = 0.7  # RootSIFT cosine
    max_coarse_shift_px: float = 3.0  # in coarse detector pixels: the coarse inliers' median reprojection
    # error under the fine pose may not exceed this (a fit to the wrong points moves them all)

    def __post_init__(self) -> None:
        validate(self)


def build_fine_layer(images: list[np.ndarray], cameras: list[Camera], T_cw: list[np.ndarray],
                     conf: FineBuildConfig = FineBuildConfig(), progress: bool = True) -> FineLayer:
    """SIFT points of the map images triangulated at their (fixed) poses T_cw (camera from map)."""
    from tqdm import tqdm

    sift = SiftExtractor(conf.features())
    feats = [sift(img).numpy() for img in tqdm(images, desc="fine features", unit="img", disable=not progress)]
    inputs = [SfmInput(f"{i:05d}", cam, k, d, invert(T)) for i, (cam, (k, d), T) in enumerate(zip(cameras, feats, T_cw))]
    r = run_sfm(inputs, conf.sfm)
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
class FineFit:
    """A pose fit to the fine layer, with the matches it was fit to."""

    T_camera_map: np.ndarray
    keypoints: np.ndarray  # (M,) indices into the query's SIFT keypoints
    point_ids: np.ndarray  # (M,) their fine points
    uv: np.ndarray  # (M, 2) those keypoints
    xyz: np.ndarray  # (M, 3) their fine points
    inliers: np.ndarray  # bool (M,): within the last radius of the final pose


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
        self.extractor = SiftExtractor(FeatureConfig(**f.features | {"max_keypoints": conf.max_keypoints},
                                                     device="cpu"))

    def extract(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The query's SIFT keypoints and RootSIFT descriptors, as the fine layer's were made."""
        return self.extractor(image).numpy()

    def radii(self, coarse_px: float, first_px: float = 0.0) -> list[float]:
        """The search radii in image pixels: `first_px` (if any), the configured ones in coarse
        detector pixels (`coarse_px` image pixels each), then the final one."""
        return ([first_px] if first_px else []) + [r * coarse_px for r in self.conf.radii_px] + [self.conf.final_px]

    def fit(self, sift: tuple[np.ndarray, np.ndarray], camera: Camera, T_camera_map: np.ndarray,
            radii: list[float], robust_first: bool = False,
            first_points: np.ndarray | None = None) -> tuple[FineFit | None, str]:
        """(the pose fit from `T_camera_map`, "") or (None, why not). With `robust_first` (a pose
        predicted from the last frame may be far off) the first radius is a RANSAC pass over
        `first_points` (the last frame's inliers; default: every point in view). Then the keypoints
        are matched once to the points in view within the next radius, and, radius by radius, the
        pose is re-fit to the matches within it."""
        kp, desc = sift
        need = self.registration.min_inliers
        T = T_camera_map
        if robust_first:
            T, reason = self._ransac(kp, desc, camera, T, radii[0], first_points)
            if T is None:
                return None, reason
            radii = radii[1:]
        cand = self.in_view(T, camera)
        if len(kp) < need or len(cand) < need:
            return None, f"{len(kp)} SIFT keypoints, {len(cand)} fine points in view"
        q, p = self._match(kp, desc, cand, T, camera, radii[0])
        uv, xyz = kp[q], self.points[p]
        for radius in radii:
            near = reprojection_errors(T, uv, xyz, camera) < radius
            if near.sum() < need:
                return None, f"{near.sum()} fine matches within {radius:.1f} px"
            T_new = refine_pose(T, uv[near], xyz[near], camera, loss_scale_px=radius / 2)
            if T_new is None:
                return None, "fine refinement failed"
            T = T_new
        near = reprojection_errors(T, uv, xyz, camera) < radii[-1]
        reason = check(PoseEstimate(T, near), uv, camera, self.registration)
        return (None, f"fine fit: {reason}") if reason else (FineFit(T, q, p, uv, xyz, near), "")

    def _ransac(self, kp: np.ndarray, desc: np.ndarray, camera: Camera, T: np.ndarray, radius: float,
                points: np.ndarray | None) -> tuple[np.ndarray | None, str]:
        """A pose by RANSAC from the matches of `points` (default: all in view) within `radius` of T."""
        cand = self.in_view(T, camera) if points is None else points
        q, p = self._match(kp, desc, cand, T, camera, radius)
        need = self.registration.min_inliers
        if len(q) < need:
            return None, f"{len(q)} fine matches within {radius:.1f} px"
        est = estimate_pose(kp[q], self.points[p], camera, replace(self.registration, ransac_thresh_px=radius / 2))
        if est is None or est.num_inliers < need:
            return None, f"fine RANSAC: {0 if est is None else est.num_inliers} inliers < {need}"
        return est.T_camera_map, ""

    def _match(self, kp: np.ndarray, desc: np.ndarray, cand: np.ndarray, T: np.ndarray, camera: Camera,
               radius: float) -> tuple[np.ndarray, np.ndarray]:
        """(keypoint, point) pairs: for each fine point projecting in the image, the keypoint within
        `radius` px whose descriptor is nearest (ratio test among them), one point per keypoint."""
        c = self.conf
        uv, front = camera.project(self.points[cand] @ T[:3, :3].T + T[:3, 3])
        pts = cand[front]
        near = cKDTree(uv[front]).sparse_distance_matrix(cKDTree(kp), radius, output_type="coo_matrix")
        i, k = near.row, near.col  # index into pts, keypoint
        if len(i) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        sim = np.einsum("ij,ij->i", self.descriptors[pts[i]], desc[k])
        order = np.lexsort((-sim, i))  # by point, best first
        i, k, sim = i[order], k[order], sim[order]
        best = np.flatnonzero(np.r_[True, i[1:] != i[:-1]])
        has_second = np.r_[best[1:], len(i)] - best > 1
        second_sim = np.where(has_second, sim[np.minimum(best + 1, len(i) - 1)], -1.0)
        d1 = np.sqrt(np.maximum(2 - 2 * sim[best], 0))
        d2 = np.sqrt(np.maximum(2 - 2 * second_sim, 0))
        ok = (sim[best] >= c.min_similarity) & (~has_second | (d1 < c.ratio * d2))
        bi, bk, bs = i[best][ok], k[best][ok], sim[best][ok]
        if len(bk) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        order = np.lexsort((-bs, bk))  # one point per keypoint: the most similar
        bi, bk = bi[order], bk[order]
        first = np.r_[True, bk[1:] != bk[:-1]]
        return bk[first], pts[bi[first]]
