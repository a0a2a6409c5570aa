"""The synthetic demo place: its ground truth agrees with its pixels, and the query run differs."""
import numpy as np
import pytest

from pram_ros.core.bag import BagReader
from pram_ros.core.geometry import invert, make_T
from pram_ros.core.synthetic import (BLOCK_Y, DEMO_CAMERA, FLAT, MAP_RUN, QUERY_RUN, T_BASE_CAMERA, Renderer, _Rz,
                                     build_scene, odometry, site_runs, trajectory)


@pytest.fixture(scope="module")
def scene():
    return build_scene()


def _reprojection_residual(scene, image, T_map_camera, T_render, rng):
    """Median colour difference between texture colours of 3D scene points and the pixels they project to."""
    cam = DEMO_CAMERA
    # 3D points on visible surfaces: cast rays through random pixels of the true camera.
    uv = rng.uniform([5, 5], [cam.width - 6, cam.height - 6], (600, 2))
    xy = cam.normalize(uv)
    dirs = np.c_[xy, np.ones(len(xy))] @ T_render[:3, :3].T
    dist, idx, ab = scene.raycast(T_render[:3, 3], dirs)
    hit = np.isfinite(dist)
    X = T_render[:3, 3] + dist[hit, None] * dirs[hit]
    albedo = np.concatenate([scene.albedo(k, ab[hit][idx[hit] == k]) for k in np.unique(idx[hit])])
    X = np.concatenate([X[idx[hit] == k] for k in np.unique(idx[hit])])
    # Project them with the pose under test (independent of the renderer's warps), read the pixels.
    p_cam = X @ invert(T_map_camera)[:3, :3].T + invert(T_map_camera)[:3, 3]
    px, front = cam.project(p_cam)
    inside = front & (px[:, 0] >= 0) & (px[:, 1] >= 0) & (px[:, 0] <= cam.width - 1) & (px[:, 1] <= cam.height - 1)
    assert inside.sum() > 200
    pix = image[np.round(px[inside, 1]).astype(int), np.round(px[inside, 0]).astype(int)].astype(float)
    return float(np.median(np.abs(pix - albedo[inside]).mean(1)))


def test_ground_truth_projects_onto_rendered_texture(scene):
    """Known 3D points, projected with the ground-truth pose and camera info, land on their own colour."""
    rng = np.random.default_rng(0)
    renderer = Renderer(scene, DEMO_CAMERA)
    stamps, T_map_base = trajectory(MAP_RUN)
    for i in (0, 200, 450):
        T = T_map_base[i] @ T_BASE_CAMERA
        image = renderer.render(T, FLAT)
        good = _reprojection_residual(scene, image, T, T, rng)
        # Control: a pose 1 degree off must not agree, so the check can fail.
        wrong = T @ make_T(_Rz(np.radians(1.0)), [0, 0, 0])
        bad = _reprojection_residual(scene, image, wrong, T, rng)
        assert good < 12, (i, good)
        assert bad > 2 * good, (i, good, bad)


def test_demo_bags_read_back_with_ground_truth(demo_bags):
    for name in ("map", "query"):
        with BagReader(demo_bags[name]) as r:
            frames = list(r.frames(strict=True))
        assert len(frames) == 24
        f = frames[3]
        assert f.image.shape == (480, 640, 3) and f.camera == DEMO_CAMERA
        assert f.T_map_camera is not None and f.T_odom_base is not None
        assert np.allclose(f.T_base_camera, T_BASE_CAMERA)
        # Camera 1.25 m above the floor, looking roughly horizontally (optical z near the xy plane).
        assert abs(f.T_map_camera[2, 3] - 1.25) < 1e-6
        assert abs(f.T_map_camera[2, 2]) < 0.2


def test_query_run_differs_from_mapping_run():
    _, Tm = trajectory(MAP_RUN)
    _, Tq = trajectory(QUERY_RUN)
    pm = np.array([T[:2, 3] for T in Tm])
    pq = np.array([T[:2, 3] for T in Tq])
    nearest = np.linalg.norm(pq[:, None] - pm[None], axis=2).min(1)
    assert np.median(nearest) > 0.3  # another path through the same place
    assert (nearest > 1.0).mean() > 0.1  # places the mapping run saw only from farther away
    assert QUERY_RUN.lighting != MAP_RUN.lighting and QUERY_RUN.lighting.noise_sigma > 0
    assert pq[:, 0].min() > 0 and pq[:, 0].max() < 16 and pq[:, 1].max() < 12


@pytest.mark.parametrize("run", [MAP_RUN, QUERY_RUN])
def test_odometry_drifts_realistically(run):
    _, T = trajectory(run)
    odo = odometry(T, run.seed)
    path = sum(np.linalg.norm(b[:3, 3] - a[:3, 3]) for a, b in zip(T[:-1], T[1:]))
    end_err = np.linalg.norm((invert(T[0]) @ T[-1])[:3, 3] - odo[-1][:3, 3])
    assert 0.003 * path < end_err < 0.05 * path
    assert np.allclose(odo[0], np.eye(4))


def test_a_larger_site_chains_blocks_through_doors():
    """`blocks`: one block is the demo; more blocks are connected through doors, the runs drive
    through every block without passing through a wall, and the blocks look different."""
    assert site_runs(1) == (MAP_RUN, QUERY_RUN)
    scene = build_scene(blocks=3)
    for run in site_runs(3):
        _, T = trajectory(run)
        xy = np.array([t[:2, 3] for t in T])
        assert xy[:, 1].max() > 2 * BLOCK_Y  # it reaches the last block
        # no step of the run crosses a wall: a ray along each step hits nothing closer than the step
        steps = xy[1:] - xy[:-1]
        origins = np.c_[xy[:-1], np.full(len(steps), 1.0)]
        dirs = np.c_[steps, np.zeros(len(steps))]
        hits = [scene.raycast(o, d[None])[0][0] for o, d in zip(origins[::7], dirs[::7])]
        assert all(h > 1.0 for h in hits)  # (distance in units of the step: > 1 means beyond it)
    # the same spot in the second block looks different from the first
    renderer = Renderer(scene, DEMO_CAMERA)
    T0 = make_T(_Rz(0.3), [4.0, 3.0, 0.0]) @ T_BASE_CAMERA
    T1 = T0.copy()
    T1[1, 3] += BLOCK_Y
    a, b = renderer.render(T0, FLAT).astype(float), renderer.render(T1, FLAT).astype(float)
    assert np.abs(a - b).mean() > 10
