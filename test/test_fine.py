"""The fine layer (fine.py): full-resolution SIFT points that make the final pose precise."""
import shutil
from dataclasses import replace

import numpy as np
import pytest
from scipy.spatial import cKDTree

from pram_ros.core.evaluation import errors
from pram_ros.core.features import SiftExtractor
from pram_ros.core.fine import FineBuildConfig, FineConfig, FineRegistration, FineView
from pram_ros.core.flow import FlowConfig
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.map import MapError, load_map, save_map
from pram_ros.core.sfm import covisible_pairs
from pram_ros.core.synthetic import build_scene


def median_errors(loc: Localizer, frames, tracking: bool = False) -> tuple[float, float, list]:
    results = [loc.localize(f.image, f.camera, use_tracking=tracking, T_odom_camera=f.T_odom_camera) for f in frames]
    e = np.array([errors(r.T_map_camera, f.T_map_camera) for r, f in zip(results, frames) if r.success])
    return float(np.median(e[:, 0])), float(np.median(e[:, 1])), results


def test_fine_layer_points_lie_on_the_scenes_surfaces(demo_map):
    """Each fine point against the rendered scene's true surface along its mean viewing ray: SIFT at
    full resolution puts them within 1.5 cm (median); the XFeat points are at 3.9 cm."""
    m, scene = load_map(demo_map.out), build_scene()
    assert m.fine is not None and len(m.fine.points) > 1.5 * len(m.points)
    P = m.fine.points.astype(np.float64)
    ray = m.fine.seen_along.astype(np.float64)
    ray /= np.linalg.norm(ray, axis=1, keepdims=True)
    s, _, _ = scene.raycast(P - 0.5 * ray, ray)  # one origin per ray (the arithmetic broadcasts)
    err = np.abs(s[np.isfinite(s)] - 0.5)
    assert len(err) > 0.9 * len(s)
    assert np.median(err) < 0.015, np.median(err)


def test_fine_sift_shrinks_only_photographs_above_its_limit():
    """A 2048-px photograph under a 512-px limit is detected at 512 px, keypoints in its own pixels;
    an image within the limit is not enlarged."""
    import cv2
    from skimage import data

    photo = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2GRAY)  # 512 x 512
    big = cv2.resize(photo, (2048, 2048), interpolation=cv2.INTER_CUBIC)
    conf = replace(FineBuildConfig(), max_side=512, max_keypoints=1024).features()
    assert conf.identity()["max_side"] == 512 and conf.pixels_per_detector_pixel(2048, 2048) == 4.0
    small_kp = SiftExtractor(replace(conf, max_side=0))(photo).keypoints.numpy()
    big_kp = SiftExtractor(conf)(big).keypoints.numpy()
    assert np.array_equal(SiftExtractor(conf)(photo).keypoints.numpy(), small_kp)  # not enlarged
    d, _ = cKDTree((small_kp + 0.5) * 4 - 0.5).query(big_kp)  # the same places, in the big image's pixels
    assert np.mean(d < 1.0) > 0.8, np.mean(d < 1.0)  # a quarter of a pixel of the 512-px image


def test_the_fine_layer_matches_the_images_that_share_coarse_points():
    """Images 0-1 share two points, 1-2 one, 2-3 three, and image 4 none: exactly those pairs."""
    obs = {0: (0, 1), 1: (0, 1), 2: (1, 2), 3: (2, 3), 4: (2, 3), 5: (2, 3), 6: (4,)}  # point: images
    point = np.array([p for p, ims in obs.items() for _ in ims])
    image = np.array([i for ims in obs.values() for i in ims])
    assert covisible_pairs(point, image, 5) == [(0, 1), (1, 2), (2, 3)]


def test_a_keypoint_between_two_look_alike_points_is_matched_only_without_the_keypoint_side_ratio_test():
    """Points 0 and 1 project 2 px apart and look alike; keypoint 0 lies between them. Point 2 and
    keypoint 1 are a clean pair. Both sides tested (relocalization): only the clean pair. The
    point's side alone (tracking): keypoint 0 also goes to the more similar look-alike, point 0."""
    base, v, w, other = np.eye(128)[:4]  # orthonormal
    # point 0 lies 0.1 from keypoint 0's descriptor, point 1 0.105: distance ratio 0.95 > 0.9
    points_desc = np.stack([base + 0.1 * v, base + 0.105 * w, other])
    points_desc /= np.linalg.norm(points_desc, axis=1, keepdims=True)
    kp = np.array([[11.0, 10.0], [50.0, 51.0]])
    kp_desc = np.stack([base, other])
    fine = FineRegistration.__new__(FineRegistration)  # _match needs only the settings and the descriptors
    fine.conf, fine.descriptors = FineConfig(), points_desc
    view = FineView(np.array([0, 1, 2]), cKDTree(np.array([[10.0, 10.0], [12.0, 10.0], [50.0, 50.0]])))
    q, p = fine._match(kp, kp_desc, view, 4.0, both_sides=True)
    assert (q.tolist(), p.tolist()) == ([1], [2])
    q, p = fine._match(kp, kp_desc, view, 4.0, both_sides=False)
    assert sorted(zip(q.tolist(), p.tolist())) == [(0, 0), (1, 2)]


def test_fine_layer_makes_the_demo_poses_several_times_more_precise(demo_map, demo_query_frames):
    """40 demo queries relocalized from scratch, with and without the fine re-fit: the fine poses'
    median errors are under half the coarse ones, on as many frames, and nearly every pose is fine."""
    frames = demo_query_frames[::3][:40]
    t, r, res = median_errors(Localizer(demo_map.out, LocalizerConfig(tracking=False)), frames)
    t0, r0, res0 = median_errors(Localizer(demo_map.out, LocalizerConfig(tracking=False,
                                                                          fine=FineConfig(enabled=False))), frames)
    ok = [x for x in res if x.success]
    assert len(ok) >= sum(x.success for x in res0) >= 36
    assert sum(x.fine for x in ok) >= 0.9 * len(ok), [x.fine_reason for x in ok if not x.fine]
    assert t < 0.5 * t0 and r < 0.6 * r0, ((t, r), (t0, r0))
    assert not any(x.fine for x in res0)


def test_the_refit_from_the_coarse_pose_is_as_precise_as_ransac(demo_map, demo_query_frames):
    """The fine fit re-fits the coarse pose to matches chosen near its projections instead of running
    RANSAC over them: on 20 demo frames it is as precise as RANSAC over the same matches, from the
    coarse pose and from one turned 0.2 degrees off (about 2 px at the image's edge)."""
    from pram_ros.core.geometry import make_T
    from scipy.spatial.transform import Rotation

    loc = Localizer(demo_map.out, LocalizerConfig(tracking=False, fine=FineConfig(enabled=False)))
    fine = Localizer(demo_map.out, LocalizerConfig(tracking=False)).fine
    turn = make_T(Rotation.from_euler("y", 0.2, degrees=True).as_matrix(), np.zeros(3))
    e: dict[tuple[str, str], list] = {}
    for f in demo_query_frames[::6][:20]:
        coarse = loc.localize(f.image, f.camera)
        if not coarse.success:
            continue
        sift = fine.extract(f.image)
        px = loc.feature_conf.pixels_per_detector_pixel(f.camera.width, f.camera.height)
        for start, T in (("coarse", coarse.T_camera_map), ("turned", turn @ coarse.T_camera_map)):
            view = fine.view(T, f.camera)
            q, p = fine._matches(sift, view, fine.conf.search_px * px, both_sides=True)  # the re-fit's matches
            fits = {"refit": fine.fit(sift, f.camera, T, px, view=view)[0],
                    "ransac": fine._finish(fine._pose(q, p, sift[0][q], f.camera, fine.conf.ransac_px), f.camera)[0]}
            for how, fit in fits.items():
                assert fit is not None, (start, how)
                e.setdefault((start, how), []).append(errors(np.linalg.inv(fit.T_camera_map), f.T_map_camera))
    assert len(e["coarse", "refit"]) >= 15
    med = {k: np.median(np.array(v), axis=0) for k, v in e.items()}
    for start in ("coarse", "turned"):
        assert np.all(med[start, "refit"] < 1.1 * med[start, "ransac"]), med


def test_tracking_on_the_fine_layer_alone(demo_map, demo_query_frames):
    """60 consecutive frames with odometry, tracked on SIFT alone (optical flow off): after the first,
    the track holds without XFeat or recognition and stays as precise as fine relocalization."""
    frames = demo_query_frames[:60]
    loc = Localizer(demo_map.out, LocalizerConfig(tracking=True, flow=FlowConfig(enabled=False)))
    t, r, res = median_errors(loc, frames, tracking=True)
    fine_tracked = [x for x in res[1:] if x.mode == "tracking" and x.fine and "features" not in x.timings_ms]
    assert len(fine_tracked) >= 50, [x.fine_reason for x in res]
    assert sum(x.success for x in res) >= 57
    assert not any(x.flow for x in res)
    assert t < 0.006 and r < 0.08, (t, r)


def test_tracking_by_optical_flow_is_as_precise_as_on_sift(demo_map, demo_query_frames):
    """The same 60 frames with optical flow on (the default): a good share of the frames track by
    flow from the last SIFT keyframe, as many frames localize, and the median errors stay within
    1.25x of SIFT tracking's (the demo moves 30 cm and 5 degrees between frames: a hard case for
    flow)."""
    frames = demo_query_frames[:60]
    t0, r0, res0 = median_errors(Localizer(demo_map.out, LocalizerConfig(tracking=True, flow=FlowConfig(enabled=False))),
                                 frames, tracking=True)
    t, r, res = median_errors(Localizer(demo_map.out, LocalizerConfig(tracking=True)), frames, tracking=True)
    flowed = [x for x in res if x.flow and x.success]
    assert len(flowed) >= 20, [x.fine_reason for x in res]
    assert all(x.fine and x.mode == "tracking" and "features" not in x.timings_ms for x in flowed)
    assert sum(x.success for x in res) >= sum(x.success for x in res0)
    assert t < 1.25 * t0 and r < 1.25 * r0, ((t, r), (t0, r0))


def test_tracking_without_odometry_predicts_by_constant_velocity(demo_map, demo_query_frames):
    """Every second demo frame (60 cm and 10 degrees apart) with no odometry: searching from the last
    pose finds repeated textures (the place repeats its posters) where the camera has turned away; the
    last two poses' motion, from the images' stamps, predicts the frame and halves the wrong poses."""
    frames = demo_query_frames[::2]

    def wrong_poses(stamps: bool) -> int:
        loc = Localizer(demo_map.out, LocalizerConfig(tracking=True))
        res = [loc.localize(f.image, f.camera, use_tracking=True, stamp_ns=f.stamp_ns if stamps else None)
               for f in frames]
        e = np.array([errors(r.T_map_camera, f.T_map_camera) for r, f in zip(res, frames) if r.success])
        assert len(e) >= 0.95 * len(frames)
        return int(np.sum((e[:, 0] > 0.25) | (e[:, 1] > 2.0)))

    last_pose, constant_velocity = wrong_poses(False), wrong_poses(True)
    assert constant_velocity <= last_pose / 2, (constant_velocity, last_pose)


def test_a_map_without_a_fine_layer_localizes_with_the_coarse_pose(small_map, demo_bags, tmp_path):
    """Maps from before the fine layer (or built with --no-fine) load and localize as they did."""
    from pram_ros.core.bag import BagReader

    m = load_map(small_map.out)
    assert m.fine is not None
    m.fine = None
    out = save_map(m, tmp_path / "coarse")
    loc = Localizer(out, LocalizerConfig(tracking=False))
    assert loc.fine is None
    with BagReader(demo_bags["map"]) as r:
        f = list(r.frames())[3]
    res = loc.localize(f.image, f.camera)
    assert res.success and not res.fine and res.fine_reason == ""


def test_a_damaged_fine_layer_is_refused_with_a_clear_error(small_map, tmp_path):
    """A fine.npz whose arrays do not fit each other, or that the manifest does not describe."""
    import json

    m = load_map(small_map.out)
    m.fine.seen_along = m.fine.seen_along[:-1]
    with pytest.raises(MapError, match="fine layer arrays differ"):
        save_map(m, tmp_path / "bad")
    good = tmp_path / "good"
    shutil.copytree(small_map.out, good)
    manifest = json.loads((good / "manifest.json").read_text())
    del manifest["fine"]
    (good / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(MapError, match="does not describe its fine.npz"):
        load_map(good)
