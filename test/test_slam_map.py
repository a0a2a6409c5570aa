"""Maps from a SLAM run (poses from /tf: map -> odom -> base_link), and honest map frames in the node."""
import dataclasses

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn

from pram_ros.core.bag import BagReader, BagWriter
from pram_ros.core.build import BuildConfig, build_map, select_keyframes
from pram_ros.core.evaluation import errors, evaluate
from pram_ros.core.features import FeatureConfig, make_extractor
from pram_ros.core.fine import FineBuildConfig, build_fine_layer
from pram_ros.core.geometry import invert, pose_from_T
from pram_ros.core.localizer import Localizer, LocalizerConfig
from pram_ros.core.map import load_map, save_map
from pram_ros.core.sfm import SfmInput, run_sfm
from pram_ros.core.training import TrainConfig
from pram_ros.core.synthetic import T_BASE_CAMERA, build_scene, write_slam_run

from harness import Harness, diag_values

SLAM_SIGMA_M, SLAM_SIGMA_DEG, SLAM_DELAY_S = 0.02, 0.3, 3.0


def _truth(bag) -> dict[int, np.ndarray]:
    with BagReader(bag) as r:
        return {f.stamp_ns: f.T_map_camera for f in r.frames()}


def _without_tf_static(src, out):
    """The bag without its /tf_static: the camera extrinsic must come from a setting."""
    with BagReader(src) as r, BagWriter(out) as w:
        for topic, msgtype, t, data in r.raw_messages([x for x in r.available if x != r.topics.tf_static]):
            w.write_cdr(topic, msgtype, data, t)
    return out


def test_tf_poses_are_found_skipped_where_missing_and_take_a_configured_extrinsic(demo_bags, tmp_path):
    bag = tmp_path / "slam"
    write_slam_run(demo_bags["map"], bag, sigma_xy_m=SLAM_SIGMA_M, sigma_yaw_deg=SLAM_SIGMA_DEG,
                   start_delay_s=SLAM_DELAY_S)
    truth = _truth(demo_bags["map"])
    conf = BuildConfig()
    with BagReader(bag, frames=conf.frames()) as r:
        assert not r.has_poses  # only /tf: auto finds the SLAM's map frame
        sel = select_keyframes(r, conf)
    assert sel.source == "tf"
    assert sel.skipped_no_pose == int(SLAM_DELAY_S * 2)  # 2 images a second before the SLAM started
    err = np.array([errors(k.T_map_camera, truth[k.stamp_ns]) for k in sel.keyframes])
    assert len(sel.keyframes) >= 10
    assert 0 < np.median(err[:, 0]) < 3 * SLAM_SIGMA_M and err[:, 1].max() < 4 * SLAM_SIGMA_DEG  # the SLAM's poses

    # another global frame name: no such TF chain, so auto falls back to odometry; asked for, tf skips all
    with BagReader(bag, frames=BuildConfig(global_frame="world").frames()) as r:
        assert select_keyframes(r, BuildConfig(global_frame="world")).source == "odometry"
    with pytest.raises(RuntimeError, match="no tf pose"):
        build_map(bag, tmp_path / "never", BuildConfig(pose_source="tf", global_frame="world"), progress=False)
    assert not (tmp_path / "never").exists()

    # no extrinsic on /tf_static: no camera pose, unless the setting gives it
    bare = _without_tf_static(bag, tmp_path / "bare")
    with BagReader(bare, frames=conf.frames()) as r:
        assert select_keyframes(r, BuildConfig(pose_source="tf")).keyframes == []
    p, q = pose_from_T(T_BASE_CAMERA)
    with_ext = BuildConfig(pose_source="tf", camera_extrinsic=" ".join(f"{v:.12g}" for v in [*p, *q]))
    with BagReader(bare, frames=conf.frames()) as r:
        again = select_keyframes(r, with_ext)
    assert [k.stamp_ns for k in again.keyframes] == [k.stamp_ns for k in sel.keyframes]
    assert all(np.allclose(a.T_map_camera, b.T_map_camera, atol=1e-9) for a, b in zip(again.keyframes, sel.keyframes))
    with pytest.raises(ValueError, match="camera_extrinsic"):
        BuildConfig(camera_extrinsic="1 2 3")


@pytest.fixture(scope="module")
def slam_keyframes(demo_bags, tmp_path_factory):
    """(the keyframes of the short demo run as a SLAM records it, with its poses; their images by stamp)"""
    bag = tmp_path_factory.mktemp("slam_keyframes") / "slam"
    write_slam_run(demo_bags["map"], bag, sigma_xy_m=SLAM_SIGMA_M, sigma_yaw_deg=SLAM_SIGMA_DEG,
                   start_delay_s=SLAM_DELAY_S)
    conf = BuildConfig()
    with BagReader(bag, frames=conf.frames()) as r:
        return select_keyframes(r, conf).keyframes, {f.stamp_ns: f.image for f in r.frames()}


def test_the_fine_layer_of_a_slam_run_adjusts_its_poses_by_its_own_sift_tracks(slam_keyframes):
    """Fine points triangulated at a SLAM's poses (2 cm, 0.3 deg) as they are lie far from the rendered
    surfaces; a bundle adjustment over the SIFT tracks, the SLAM positions as priors, brings them
    several times closer (what the build does for a map from TF poses)."""
    kfs, image = slam_keyframes
    conf = BuildConfig()
    scene = build_scene()

    def surface_error(prior_sigma_m: float) -> float:
        f = build_fine_layer([image[k.stamp_ns] for k in kfs], [k.camera for k in kfs],
                             [invert(k.T_map_camera) for k in kfs], FineBuildConfig(max_keypoints=2048),
                             progress=False, prior_sigma_m=prior_sigma_m)
        ray = f.seen_along.astype(np.float64)
        ray /= np.linalg.norm(ray, axis=1, keepdims=True)
        s, _, _ = scene.raycast(f.points - 0.5 * ray, ray)
        return float(np.median(np.abs(s[np.isfinite(s)] - 0.5)))

    as_given, adjusted = surface_error(0.0), surface_error(conf.prior_sigma_m)
    print(f"fine points from the surfaces: {as_given:.3f} m at the SLAM's poses, {adjusted:.3f} m adjusted")
    assert adjusted < 0.5 * as_given and adjusted < 0.05


def test_the_same_slam_run_gives_the_same_adjusted_map(slam_keyframes):
    """pycolmap's RANSAC (match verification, triangulation) is seeded: bundle adjustment from the same
    bag lands on the same poses and points, run after run (unseeded, cameras moved by centimetres)."""
    kfs, image = slam_keyframes
    conf = BuildConfig()
    extractor = make_extractor(FeatureConfig(device="cpu"))
    inputs = [SfmInput(k.name, k.camera, *extractor(image[k.stamp_ns]).numpy(), k.T_map_camera) for k in kfs]
    first, again = (run_sfm(inputs, conf.sfm, prior_sigma_m=conf.prior_sigma_m) for _ in range(2))
    assert first.adjustment.median_m > 0.005  # the cameras moved
    assert np.array_equal(first.T_cw, again.T_cw) and np.array_equal(first.points, again.points)


@pytest.mark.slow
def test_map_from_a_slam_run_is_in_its_frame_and_localizes(demo_full, tmp_path):
    """The done-when of the SLAM recipe: a bag whose only poses are /tf (with the first seconds
    missing), built with the defaults, gives a map in the SLAM's `map` frame, reports how far
    bundle adjustment moved the cameras, and localizes the demo query against the truth."""
    bag = tmp_path / "slam"
    write_slam_run(demo_full["map"], bag, sigma_xy_m=SLAM_SIGMA_M, sigma_yaw_deg=SLAM_SIGMA_DEG,
                   start_delay_s=SLAM_DELAY_S)
    # fewer training steps than the default (tracking carries the query run: 0.97 at 80 steps on
    # 2026-12-06) and no fine layer (a
    # final-pose refinement, not what this checks), so the suite stays short
    conf = BuildConfig(train=TrainConfig(steps=80, max_minutes=0), fine=FineBuildConfig(enabled=False))
    summary = build_map(bag, tmp_path / "slam.pram", conf, progress=False)
    print(f"\n{summary.table()}")
    assert summary.pose_source == "tf" and summary.frame == "map" and summary.metric
    assert summary.skipped_no_pose == int(SLAM_DELAY_S * 2)
    assert any("no tf pose" in w for w in summary.warnings)
    ba = summary.adjustment
    # BA moves the cameras by about the SLAM's error: not nothing, and not away from the priors
    assert 0.2 * SLAM_SIGMA_M < ba.median_m < 3 * SLAM_SIGMA_M and ba.max_m < 0.25
    assert 0 < ba.median_deg < 2.0 and ba.max_deg < 5.0
    m = load_map(summary.out)
    assert m.frame == "map" and m.info["pose_source"] == "tf"
    assert m.info["pose_adjustment"]["median_m"] == pytest.approx(ba.median_m)

    report = evaluate(Localizer(summary.out, LocalizerConfig(tracking=True)), demo_full["query"], tmp_path / "eval",
                      tracking=True, progress=False)
    print(f"recall {report['recall']}, median {report['median_translation_m']:.3f} m "
          f"{report['median_rotation_deg']:.2f} deg")
    assert report["recall"]["0.25m_2deg"] >= 0.9


def test_node_refuses_a_map_in_another_or_an_arbitrary_frame(small_map, domain_id, tmp_path):
    """A map is served only as the frame it was built in, unless allow_any_map_frame says otherwise."""
    m = load_map(small_map.out, with_baseline=True)
    arbitrary = save_map(dataclasses.replace(m, frame="arbitrary", metric=False), tmp_path / "arbitrary.pram")
    cases = [  # map, node parameters, configures, what the error says
        (small_map.out, {"map_frame": "world"}, False, "built in frame 'map'"),
        (small_map.out, {"map_frame": "world", "allow_any_map_frame": True}, True, ""),
        (arbitrary, {}, False, "arbitrary"),
        (arbitrary, {"allow_any_map_frame": True}, True, ""),
        (small_map.out, {"map_frame": "odom"}, False, "both 'odom'"),
        (small_map.out, {}, True, ""),
    ]
    for map_dir, params, ok, says in cases:
        h = Harness(domain_id, {"map_path": str(map_dir), **params})
        try:
            result = h.node.trigger_configure()
            assert (result == TransitionCallbackReturn.SUCCESS) == ok, (map_dir, params)
            assert (h.node.loc is not None) == ok
            if not ok:
                assert h.spin(lambda: diag_values(h) is not None)
                st = diag_values(h)
                assert st.level == DiagnosticStatus.ERROR and says in st.message, st.message
        finally:
            h.close()
