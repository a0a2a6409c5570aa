"""Structure from motion with pycolmap on the project's own features.

With known poses (ground truth, or odometry plus extrinsic), matches are verified against the
epipolar geometry of those poses and pycolmap triangulates with the poses fixed, so the map is
metric and in the map frame. With approximate poses (a SLAM system's, good to centimetres), the
matches are verified from the images alone, pycolmap triangulates from those poses, and bundle
adjustment then refines poses and points with the poses' positions as priors, so the map stays in
their frame and scale; the points are triangulated again from the refined poses. Without poses,
pycolmap verifies the matches and runs incremental mapping; the result is then aligned
(similarity) to whatever positions exist, or left in an arbitrary frame and scale, which the
caller is told.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pycolmap
import torch

from .camera import Camera
from .geometry import essential, invert, make_T, rotation_error_deg, sampson_px
from .matching import MatchConfig, mutual_nn

log = logging.getLogger(__name__)
RANDOM_SEED = 0  # pycolmap's RANSAC (verification, triangulation) otherwise seeds itself: the same bag, another map


@dataclass(frozen=True)
class SfmConfig:
    temporal_neighbours: int = 4  # pairs with the next N images in time
    pose_neighbours: int = 6  # plus the N nearest cameras with a similar view direction (known poses)
    exhaustive_below: int = 50  # all pairs when there are fewer images
    min_matches: int = 15
    # pixel thresholds are in detector pixels (see run_sfm's pixel_scale): learned keypoints are good
    # to about 1 px there, and looser thresholds let wrong matches along the epipolar lines in as
    # points tens of centimetres off (the demo map's median point error: 5.1 cm at 3 / 4 px, 3.9 cm
    # at 1.5 / 2 px, against the scene's true geometry)
    epipolar_px: float = 1.5  # Sampson threshold against known poses
    min_tri_angle_deg: float = 1.5
    max_reproj_px: float = 2.0
    match: MatchConfig = MatchConfig(ratio=0.95, min_similarity=0.5)
    prior_ba_rounds: int = 2  # approximate poses: triangulate and bundle-adjust this many times


@dataclass
class SfmInput:
    """One map image: its camera, its features (numpy) and, if known, T_map_camera."""

    name: str
    camera: Camera
    keypoints: np.ndarray
    descriptors: np.ndarray
    T_map_camera: np.ndarray | None = None


@dataclass
class PoseAdjustment:
    """How far bundle adjustment moved the cameras from their prior poses."""

    median_m: float
    max_m: float
    median_deg: float
    max_deg: float

    def __str__(self) -> str:
        return (f"median {self.median_m:.3f} m / {self.median_deg:.2f} deg, "
                f"max {self.max_m:.3f} m / {self.max_deg:.2f} deg")


@dataclass
class SfmResult:
    """A reconstruction as plain arrays (pycolmap stays inside this module)."""

    points: np.ndarray  # (P, 3) in the map frame
    track_point: np.ndarray  # (M,) observations: point index,
    track_image: np.ndarray  # (M,) input image index,
    track_keypoint: np.ndarray  # (M,) and keypoint index in that image
    T_cw: np.ndarray  # (N, 4, 4) camera-from-map of each input image; NaN where it is not registered
    metric: bool  # True when the frame and scale are the given poses'
    model_bytes: int  # the reconstruction as a COLMAP binary model: what an hloc map keeps beside the features
    warnings: list[str] = field(default_factory=list)
    adjustment: PoseAdjustment | None = None  # with approximate poses: how far BA moved the cameras

    @property
    def registered(self) -> np.ndarray:
        return np.isfinite(self.T_cw[:, 0, 0])

    def track_lengths(self) -> np.ndarray:
        return np.bincount(self.track_point, minlength=len(self.points))

    def transform(self, scale: float, R: np.ndarray, t: np.ndarray) -> None:
        """Apply the similarity x -> scale R x + t to the points and cameras."""
        self.points = scale * self.points @ R.T + t
        for i in np.flatnonzero(self.registered):
            T_wc = invert(self.T_cw[i])
            self.T_cw[i] = invert(make_T(R @ T_wc[:3, :3], scale * R @ T_wc[:3, 3] + t))


def make_pairs(inputs: list[SfmInput], conf: SfmConfig) -> list[tuple[int, int]]:
    """Temporal neighbours plus pose neighbours, or every pair for small sets."""
    n = len(inputs)
    if n <= conf.exhaustive_below:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    pairs = {(i, j) for i in range(n) for j in range(i + 1, min(n, i + 1 + conf.temporal_neighbours))}
    if all(x.T_map_camera is not None for x in inputs):
        c = np.array([x.T_map_camera[:3, 3] for x in inputs])
        z = np.array([x.T_map_camera[:3, 2] for x in inputs])
        dist = np.linalg.norm(c[:, None] - c[None], axis=2)
        dist[z @ z.T < np.cos(np.radians(60))] = np.inf  # views too different to share points
        np.fill_diagonal(dist, np.inf)
        for i in range(n):
            for j in np.argsort(dist[i])[: conf.pose_neighbours]:
                if np.isfinite(dist[i, j]):
                    pairs.add((min(i, j), max(i, j)))
    return sorted(pairs)


def covisible_pairs(point: np.ndarray, image: np.ndarray, n: int) -> list[tuple[int, int]]:
    """The pairs of n images that share a point, from a reconstruction's observations (point index,
    image index): the pairs worth matching again, e.g. with other features, once a map says which
    images see the same scene."""
    from scipy.sparse import csr_matrix, triu

    seen = csr_matrix((np.ones(len(point)), (image, point)), shape=(n, int(point.max(initial=-1)) + 1))
    i, j = triu(seen @ seen.T, k=1).nonzero()  # sparse: large sites have thousands of images
    return sorted(zip(i.tolist(), j.tolist()))


def _essential(T_c1_map: np.ndarray, T_c2_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    T21 = T_c2_map @ invert(T_c1_map)
    return essential(T21[:3, :3], T21[:3, 3]), T21


def rigid3d(T: np.ndarray) -> pycolmap.Rigid3d:
    return pycolmap.Rigid3d(pycolmap.Rotation3d(T[:3, :3]), T[:3, 3])


def _write_database(path: Path, inputs: list[SfmInput]) -> tuple[list[Camera], list[int]]:
    """Cameras (one rig each), images, frames and keypoints; returns cameras and each image's camera index."""
    cams: list[Camera] = []
    cam_of: list[int] = []
    for x in inputs:
        if x.camera not in cams:
            cams.append(x.camera)
        cam_of.append(cams.index(x.camera))
    with pycolmap.Database.open(path) as db:
        sensors = []
        for k, cam in enumerate(cams):
            pc = cam.to_pycolmap()
            pc.camera_id = db.write_camera(pc)
            rig = pycolmap.Rig()
            rig.add_ref_sensor(pc.sensor_id)
            assert db.write_rig(rig) == pc.camera_id == k + 1
            sensors.append(pc.sensor_id)
        for i, x in enumerate(inputs):
            iid = db.write_image(pycolmap.Image(name=x.name, camera_id=cam_of[i] + 1))
            frame = pycolmap.Frame()
            frame.rig_id = cam_of[i] + 1
            frame.add_data_id(pycolmap.data_t(sensors[cam_of[i]], iid))
            assert db.write_frame(frame) == iid == i + 1
            db.write_keypoints(iid, x.keypoints.astype(np.float32) + 0.5)  # COLMAP pixel centres
    return cams, cam_of


def match_all(inputs: list[SfmInput], pairs: list[tuple[int, int]], conf: SfmConfig,
              progress=None) -> dict[tuple[int, int], np.ndarray]:
    """Mutual-NN matches of every pair with at least min_matches."""
    desc = [torch.from_numpy(x.descriptors).float() for x in inputs]
    out = {}
    for i, j in pairs:
        m = mutual_nn(desc[i], desc[j], conf.match).numpy()
        if len(m) >= conf.min_matches:
            out[(i, j)] = m
        if progress:
            progress()
    return out


def run_sfm(inputs: list[SfmInput], conf: SfmConfig = SfmConfig(), workdir: Path | None = None,
            progress=None, pixel_scale: float = 1.0, prior_sigma_m: float = 0.0,
            among: set[tuple[int, int]] | None = None) -> SfmResult:
    """Triangulate with known poses when every input has one, else incremental mapping.
    `among`: match only those of make_pairs's image pairs (i < j) that are also in this set.
    `pixel_scale` is image pixels per detector pixel (the detector may see a resized image).
    `prior_sigma_m` > 0: the poses are approximate, good to about that many metres; bundle
    adjustment refines them (see the module's docstring)."""
    conf = replace(conf, epipolar_px=conf.epipolar_px * pixel_scale, max_reproj_px=conf.max_reproj_px * pixel_scale)
    if len(inputs) < 2:
        raise ValueError(f"SfM needs at least 2 images, got {len(inputs)}")
    known = all(x.T_map_camera is not None for x in inputs)
    pycolmap.logging.minloglevel = max(pycolmap.logging.minloglevel, 2)  # no per-image glog lines
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        db_path = tmp / "database.db"
        cams, cam_of = _write_database(db_path, inputs)
        pairs = [p for p in make_pairs(inputs, conf) if among is None or p in among]
        matches = match_all(inputs, pairs, conf, progress)
        log.info("%d pairs, %d with >= %d matches", len(pairs), len(matches), conf.min_matches)
        if not known:
            return _incremental(tmp, db_path, inputs, matches, conf)
        T_cw = [invert(x.T_map_camera) for x in inputs]
        if not prior_sigma_m:
            _verify_by_poses(db_path, inputs, cams, cam_of, T_cw, matches, conf)
            rec = _triangulate(tmp / "fixed", db_path, inputs, cams, cam_of, T_cw, conf)
            return _result(rec, len(inputs), True, tmp)
        _verify_by_images(tmp, db_path, inputs, matches)
        T_refined = T_cw
        for k in range(conf.prior_ba_rounds):  # each round triangulates again from the refined poses
            rec = _triangulate(tmp / f"round{k}", db_path, inputs, cams, cam_of, T_refined, conf)
            _bundle_adjust_with_priors(rec, inputs, prior_sigma_m, conf)
            T_refined = [rigid_matrix(rec.image(i + 1).cam_from_world()) for i in range(len(inputs))]
        rec = _triangulate(tmp / "refined", db_path, inputs, cams, cam_of, T_refined, conf)
        return _result(rec, len(inputs), True, tmp, adjustment=_moved(T_cw, T_refined))


def _verify_by_poses(db_path: Path, inputs: list[SfmInput], cams: list[Camera], cam_of: list[int],
                     T_cw: list[np.ndarray], matches: dict[tuple[int, int], np.ndarray], conf: SfmConfig) -> None:
    """Keep the matches of each pair that agree with the epipolar geometry of the known poses."""
    norm = [cams[cam_of[i]].normalize(x.keypoints) for i, x in enumerate(inputs)]
    with pycolmap.Database.open(db_path) as db:
        for (i, j), m in matches.items():
            E, T21 = _essential(T_cw[i], T_cw[j])
            f = 0.5 * (cams[cam_of[i]].fx + cams[cam_of[j]].fx)
            ok = sampson_px(norm[i][m[:, 0]], norm[j][m[:, 1]], E, f) < conf.epipolar_px
            db.write_matches(i + 1, j + 1, m.astype(np.uint32))
            if ok.sum() >= conf.min_matches:
                tvg = pycolmap.TwoViewGeometry()
                tvg.config = pycolmap.TwoViewGeometryConfiguration.CALIBRATED
                tvg.E = E
                tvg.cam2_from_cam1 = rigid3d(T21)
                tvg.inlier_matches = m[ok].astype(np.uint32)
                db.write_two_view_geometry(i + 1, j + 1, tvg)


def _verify_by_images(tmp: Path, db_path: Path, inputs: list[SfmInput],
                      matches: dict[tuple[int, int], np.ndarray]) -> None:
    """Keep the matches of each pair that agree with a two-view geometry estimated from the matches
    themselves (pycolmap's verification): poses that are only approximate would reject good matches."""
    with pycolmap.Database.open(db_path) as db:
        for (i, j), m in matches.items():
            db.write_matches(i + 1, j + 1, m.astype(np.uint32))
    pairs_txt = tmp / "pairs.txt"
    pairs_txt.write_text("".join(f"{inputs[i].name} {inputs[j].name}\n" for i, j in matches))
    opts = pycolmap.TwoViewGeometryOptions()
    opts.ransac.random_seed = RANDOM_SEED
    pycolmap.verify_matches(db_path, pairs_txt, options=opts)


def _triangulate(out: Path, db_path: Path, inputs: list[SfmInput], cams: list[Camera], cam_of: list[int],
                 T_cw: list[np.ndarray], conf: SfmConfig) -> pycolmap.Reconstruction:
    """Points triangulated from the verified matches with the cameras held at T_cw."""
    rec = pycolmap.Reconstruction()
    for k, cam in enumerate(cams):
        pc = cam.to_pycolmap()
        pc.camera_id = k + 1
        rec.add_camera_with_trivial_rig(pc)
    for i, x in enumerate(inputs):
        img = pycolmap.Image(name=x.name, keypoints=x.keypoints.astype(np.float64) + 0.5,
                             camera_id=cam_of[i] + 1, image_id=i + 1)
        rec.add_image_with_trivial_frame(img, rigid3d(T_cw[i]))
    opts = pycolmap.IncrementalPipelineOptions()
    opts.extract_colors = False
    opts.random_seed = RANDOM_SEED
    opts.triangulation.min_angle = conf.min_tri_angle_deg
    (out / "images").mkdir(parents=True)
    (out / "out").mkdir()
    rec = pycolmap.triangulate_points(rec, db_path, out / "images", out / "out", options=opts)
    _filter(rec, conf)
    return rec


def _bundle_adjust_with_priors(rec: pycolmap.Reconstruction, inputs: list[SfmInput], sigma_m: float,
                               conf: SfmConfig) -> None:
    """Refine poses and points (intrinsics fixed) with a Cauchy loss on the reprojections and each
    camera's prior position, sigma_m in every axis: the priors hold the frame and the scale."""
    opts = pycolmap.BundleAdjustmentOptions()
    opts.refine_focal_length = opts.refine_principal_point = opts.refine_extra_params = False
    opts.print_summary = False
    opts.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY
    opts.ceres.loss_function_scale = conf.max_reproj_px
    config = pycolmap.BundleAdjustmentConfig()
    priors = []
    for i, x in enumerate(inputs):
        img = rec.image(i + 1)
        config.add_image(img.image_id)
        config.set_constant_cam_intrinsics(img.camera_id)
        priors.append(pycolmap.PosePrior(corr_data_id=img.data_id, position=x.T_map_camera[:3, 3],
                                         position_covariance=np.eye(3) * sigma_m ** 2,
                                         coordinate_system=pycolmap.PosePriorCoordinateSystem.CARTESIAN))
    prior_opts = pycolmap.PosePriorBundleAdjustmentOptions()
    prior_opts.prior_position_fallback_stddev = sigma_m
    pycolmap.create_pose_prior_bundle_adjuster(opts, prior_opts, config, priors, rec).solve()


def rigid_matrix(rigid: pycolmap.Rigid3d) -> np.ndarray:
    """The 4x4 matrix of a pycolmap Rigid3d."""
    T = np.eye(4)
    T[:3, :] = rigid.matrix()
    return T


def _moved(T_cw_before: list[np.ndarray], T_cw_after: list[np.ndarray]) -> PoseAdjustment:
    t = [np.linalg.norm(invert(a)[:3, 3] - invert(b)[:3, 3]) for a, b in zip(T_cw_before, T_cw_after)]
    r = [rotation_error_deg(a[:3, :3], b[:3, :3]) for a, b in zip(T_cw_before, T_cw_after)]
    return PoseAdjustment(float(np.median(t)), float(np.max(t)), float(np.median(r)), float(np.max(r)))


def _incremental(tmp: Path, db_path: Path, inputs: list[SfmInput], matches: dict[tuple[int, int], np.ndarray],
                 conf: SfmConfig) -> SfmResult:
    _verify_by_images(tmp, db_path, inputs, matches)
    opts = pycolmap.IncrementalPipelineOptions()
    opts.extract_colors = False
    opts.random_seed = RANDOM_SEED
    opts.num_threads = 2
    (tmp / "images").mkdir()
    (tmp / "out").mkdir()
    models = pycolmap.incremental_mapping(db_path, tmp / "images", tmp / "out", options=opts)
    if not models:
        raise RuntimeError("incremental mapping registered no images: too few matches between the images")
    rec = max(models.values(), key=lambda r: r.num_reg_images())
    _filter(rec, conf)
    result = _result(rec, len(inputs), False, tmp)
    n = int(result.registered.sum())
    if n < len(inputs):
        result.warnings.append(f"SfM registered {n} of {len(inputs)} images")
    return result


def _result(rec: pycolmap.Reconstruction, n: int, metric: bool, tmp: Path,
            adjustment: PoseAdjustment | None = None) -> SfmResult:
    """The reconstruction of n input images (image ids 1..n) as plain arrays."""
    T_cw = np.full((n, 4, 4), np.nan)
    for i in range(n):
        if rec.exists_image(i + 1) and rec.image(i + 1).has_pose:
            T_cw[i] = rigid_matrix(rec.image(i + 1).cam_from_world())
    points, tp, ti, tk = [], [], [], []
    for k, (_, pt) in enumerate(rec.points3D.items()):
        points.append(pt.xyz)
        for el in pt.track.elements:
            tp.append(k)
            ti.append(el.image_id - 1)
            tk.append(el.point2D_idx)
    model = tmp / "model"
    model.mkdir()
    rec.write_binary(model)
    return SfmResult(np.array(points, np.float64).reshape(-1, 3), np.array(tp, np.int64), np.array(ti, np.int64),
                     np.array(tk, np.int64), T_cw, metric, sum(f.stat().st_size for f in model.iterdir()),
                     adjustment=adjustment)


def _filter(rec: pycolmap.Reconstruction, conf: SfmConfig) -> None:
    """Drop points with a large reprojection error (pycolmap keeps what its triangulator accepted)."""
    rec.update_point_3d_errors()
    for pid in list(rec.point3D_ids()):
        if rec.point3D(pid).error > conf.max_reproj_px:
            rec.delete_point3D(pid)
