"""Map building from the demo and fox bags: geometry, landmarks, VRFs, recognizer, map files."""
import json
import shutil

import numpy as np
import pytest

from pram_ros.core.bag import BagReader, BagWriter
from pram_ros.core.build import BuildConfig, build_map
from pram_ros.core.geometry import invert
from pram_ros.core.landmarks import ground_plane_coords
from pram_ros.core.localizer import Localizer
from pram_ros.core.map import MapError, load_map, save_map
from pram_ros.core.training import TrainConfig
from pram_ros.core.features import FeatureConfig
from pram_ros.core.fine import FineBuildConfig


def _reprojection(m):
    """Reprojection errors of every map observation (baseline keypoints with a map point)."""
    b = m.baseline
    errs = []
    for i in range(len(b.ptr) - 1):
        lo, hi = b.ptr[i], b.ptr[i + 1]
        pid = b.point_ids[lo:hi]
        sel = pid >= 0
        T = invert(b.T_map_camera[i])
        p = m.points[pid[sel]] @ T[:3, :3].T + T[:3, 3]
        uv, front = m.cameras[b.camera[i]].project(p)
        assert front.all()
        errs.append(np.linalg.norm(uv - b.keypoints[lo:hi][sel], axis=1))
    return np.concatenate(errs)


@pytest.mark.parametrize("which", ["demo_map", "fox_map"])
def test_map_geometry_landmarks_and_recognizer(which, request):
    summary = request.getfixturevalue(which)
    m = load_map(summary.out, with_baseline=True)
    # points reproject into the images that observe them within pixels
    err = _reprojection(m) / (max(m.cameras[0].width, m.cameras[0].height) / 640)
    assert np.median(err) < 1.5 and np.percentile(err, 95) < 4.0
    # every landmark's VRFs cover >= 90% of its points, or it hit the 10-frame cap
    b = m.baseline
    seen_by = {}
    for i in range(len(b.ptr) - 1):
        seen_by[i] = set(b.point_ids[b.ptr[i]:b.ptr[i + 1]].tolist())
    frame_pos = {tuple(np.round(T[:3, 3], 6)): i for i, T in enumerate(b.T_map_camera)}
    for lm in range(1, m.num_landmarks + 1):
        pts = set(np.flatnonzero(m.labels == lm).tolist())
        vrfs = np.flatnonzero(m.vrf_landmark == lm)
        imgs = [frame_pos[tuple(np.round(m.frame_T[m.vrf_frame[v]][:3, 3], 6))] for v in vrfs]
        covered = set().union(*[seen_by[i] for i in imgs]) & pts
        assert len(covered) >= 0.9 * len(pts) or len(vrfs) == 10, (lm, len(covered), len(pts), len(vrfs))
        # a VRF's points belong to its landmark
        for v in vrfs:
            assert (m.labels[m.vrf_point_ids(v)] == lm).all()
    # labels are consistent: 1..K, every label used, landmarks spatially compact on the ground plane
    assert set(np.unique(m.labels)) == set(range(1, m.num_landmarks + 1))
    xy = ground_plane_coords(m.points, m.frame_T[:, :3, 3])
    from scipy.spatial import cKDTree

    _, nn = cKDTree(xy).query(xy, k=2)
    assert (m.labels[nn[:, 1]] == m.labels).mean() > 0.9
    # the recognizer recognizes held-out map images far better than chance
    rec = summary.recognition
    assert rec["val_labelled_keypoints"] > 100
    assert rec["val_landmark_accuracy"] > rec["chance"] + 0.5 * (1 - rec["chance"]), rec  # halfway to perfect
    # sizes: map data is a small share of an hloc-style map
    assert summary.sizes["map_data"] < 0.15 * summary.sizes["hloc_style"]
    assert (summary.out / "landmarks.png").stat().st_size > 10_000


def test_map_reloads_bit_for_bit(fox_map, tmp_path):
    m = load_map(fox_map.out, with_baseline=True)
    save_map(m, tmp_path / "copy")
    for name in ("map.npz", "recognizer.safetensors", "baseline.npz"):
        assert (tmp_path / "copy" / name).read_bytes() == (fox_map.out / name).read_bytes(), name
    m2 = load_map(tmp_path / "copy")
    for k in ("points", "labels", "descriptors", "vrf_points"):
        assert np.array_equal(getattr(m, k), getattr(m2, k))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_damaged_foreign_and_mismatched_maps_are_rejected(fox_map, tmp_path):
    # one flipped byte
    bad = _copy(fox_map.out, tmp_path / "flipped")
    data = bytearray((bad / "map.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "map.npz").write_bytes(bytes(data))
    with pytest.raises(MapError, match="checksum of map.npz"):
        load_map(bad)
    # wrong version
    old = _copy(fox_map.out, tmp_path / "version")
    mf = json.loads((old / "manifest.json").read_text())
    mf["version"] = 99
    (old / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(MapError, match="version 99"):
        load_map(old)
    # foreign directory
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "manifest.json").write_text('{"format": "something else"}')
    with pytest.raises(MapError, match="not a pram_ros map"):
        load_map(tmp_path / "foreign")
    # features mismatch: the localizer refuses a map built with other features
    with pytest.raises(MapError, match="features mismatch"):
        Localizer(fox_map.out, features=FeatureConfig(name="sift"))


def test_bag_without_poses_builds_and_says_scale_is_arbitrary(fox_bags, tmp_path):
    nopose = tmp_path / "nopose"
    with BagReader(fox_bags["map"]) as r, BagWriter(nopose, compressed="jpeg") as w:
        for f in list(r.frames())[:12]:
            w.write_image(f.stamp_ns, f.image, f.camera, f.camera_frame)
    summary = build_map(nopose, tmp_path / "map", BuildConfig(train=TrainConfig(steps=20)), progress=False)
    assert not summary.metric and summary.frame == "arbitrary"
    assert any("arbitrary" in w for w in summary.warnings)
    m = load_map(summary.out)
    assert not m.metric and len(m.points) > 200


@pytest.mark.slow
def test_the_same_map_on_a_busy_machine(small_bag, tmp_path):
    """Training steps, not the clock, decide the map: a build with a CPU hog beside it trains as
    many steps as an idle one, into the same weights."""
    import subprocess
    import sys

    # the default safety cap, far away; no fine layer (built after training, from the same images)
    conf = BuildConfig(train=TrainConfig(steps=20), fine=FineBuildConfig(enabled=False))
    idle = build_map(small_bag, tmp_path / "idle", conf, progress=False)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = build_map(small_bag, tmp_path / "busy", conf, progress=False)
    finally:
        hog.kill()
        hog.wait()
    assert idle.recognition["steps"] == busy.recognition["steps"] == 20
    assert not busy.recognition["stopped_by_time_cap"] and not busy.warnings
    a, b = load_map(idle.out).recognizer_state, load_map(busy.out).recognizer_state
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].float().numpy(), b[k].float().numpy(), atol=1e-3, err_msg=k)


def test_time_cap_stops_training_with_a_warning(small_bag, tmp_path, caplog):
    """The time budget is a safety cap: when it stops training, the log, the summary and the map say so."""
    conf = BuildConfig(train=TrainConfig(steps=1000, max_minutes=0.002), fine=FineBuildConfig(enabled=False))
    with caplog.at_level("WARNING"):
        s = build_map(small_bag, tmp_path / "m", conf, progress=False)
    assert s.recognition["stopped_by_time_cap"] and s.recognition["steps"] < 1000
    assert any("safety cap" in w for w in s.warnings), s.warnings
    assert "safety cap" in caplog.text and "stopped by the time cap" in s.table()
    manifest = json.loads((s.out / "manifest.json").read_text())
    assert "safety cap" in json.dumps(manifest)


def test_a_large_images_training_variant_is_rendered_at_the_detectors_size():
    """augment(max_side) shrinks a photograph before the variant is rendered, and its homography
    still maps the original image's pixels onto the variant's (the training labels ride on it)."""
    from pram_ros.core.training import augment

    image = np.zeros((1080, 1920), np.uint8)
    centres = np.array([[300.0, 200.0], [1600.0, 250.0], [960.0, 540.0], [400.0, 900.0], [1500.0, 850.0]])
    for x, y in centres.astype(int):
        image[y - 7:y + 8, x - 7:x + 8] = 255
    rng = np.random.default_rng(0)
    for _ in range(5):
        variant, H = augment(image, rng, max_side=640)
        assert max(variant.shape) <= 1.4 * 640  # the warp's scale change and skew, not 1920 px
        q = np.c_[centres, np.ones(len(centres))] @ H.T
        q = q[:, :2] / q[:, 2:]
        for x, y in q:
            lo_x, lo_y = int(x) - 8, int(y) - 8
            patch = variant[max(lo_y, 0):lo_y + 17, max(lo_x, 0):lo_x + 17].astype(float)
            patch = np.clip(patch - np.median(variant), 0, None) ** 2  # the square, not the noise around it
            yy, xx = np.mgrid[:patch.shape[0], :patch.shape[1]]
            seen = np.array([(xx * patch).sum(), (yy * patch).sum()]) / patch.sum() + [max(lo_x, 0), max(lo_y, 0)]
            assert np.linalg.norm(seen - [x, y]) < 1.0, (seen, (x, y))
