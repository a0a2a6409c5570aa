"""The landmark stage's VRF steps, the training-length rule and the points-in-view index: each
checked against the plain, whole-map computation it replaces (those cost grew with the map)."""
import numpy as np
import pytest

from pram_ros.core.camera import Camera
from pram_ros.core.geometry import invert
from pram_ros.core.landmarks import LandmarkConfig, Observations, _Grid, greedy_vrfs, landmark_views, vrf_points
from pram_ros.core.map import load_map
from pram_ros.core.training import TrainConfig
from pram_ros.core.visibility import PointsInView


def random_tracks(seed: int = 0, points: int = 600, images: int = 40, k: int = 6):
    """Labels and observations of a map where each point is seen by 3-6 nearby images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(1, k + 1, points).astype(np.int32)
    obs_p, obs_i = [], []
    for p in range(points):
        first = rng.integers(0, images - 6)
        for i in sorted(rng.choice(np.arange(first, first + 6), rng.integers(3, 7), replace=False)):
            obs_p.append(p)
            obs_i.append(i)
    perm = rng.permutation(len(obs_p))  # tracks arrive in no particular order
    obs = Observations(np.array(obs_p)[perm], np.array(obs_i)[perm], np.arange(len(obs_p)))
    return labels, obs


def whole_map_vrfs(labels, obs, conf):
    """The greedy cover computed by scanning every observation for every landmark."""
    out = []
    for lm in np.unique(labels):
        pts = np.flatnonzero(labels == lm)
        sel = np.isin(obs.point, pts)
        img_pts = {}
        for i, p in zip(obs.image[sel], obs.point[sel]):
            img_pts.setdefault(int(i), set()).add(int(p))
        covered = set()
        while len(covered) < conf.vrf_coverage * len(pts) and img_pts and \
                sum(1 for x in out if x[0] == lm) < conf.max_vrfs:
            best = max(img_pts, key=lambda i: (len(img_pts[i] - covered), -i))
            if len(img_pts[best] - covered) < max(1, conf.vrf_min_gain * len(pts)):
                break
            covered |= img_pts.pop(best)
            out.append((int(lm), best))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vrf_cover_equals_the_whole_map_scan(seed):
    labels, obs = random_tracks(seed)
    conf = LandmarkConfig(max_vrfs=4)
    vrfs = greedy_vrfs(labels, landmark_views(labels, obs), conf)
    assert vrfs == whole_map_vrfs(labels, obs, conf)
    assert len(vrfs) > len(np.unique(labels))  # the cover needed several images per landmark


def whole_map_vrf_points(vrfs, labels, obs, points, project, conf):
    """VRF points by intersecting each VRF with every image and scanning every kept point."""
    order = np.argsort(obs.image, kind="stable")
    bounds = np.searchsorted(obs.image[order], np.arange(obs.image.max() + 2))
    per_image = {i: obs.point[order[bounds[i]:bounds[i + 1]]] for i in range(len(bounds) - 1)}
    out = []
    for lm, img in vrfs:
        own = per_image[img][labels[per_image[img]] == lm]
        kept, uv_kept = list(own), project(img, points[own])
        shared = {j: len(np.intersect1d(pts, own)) for j, pts in per_image.items() if j != img}
        for j in sorted(shared, key=lambda j: -shared[j])[:5]:
            if shared[j] == 0:
                break
            cand = np.setdiff1d(per_image[j][labels[per_image[j]] == lm], kept)
            for p, q in zip(cand, project(img, points[cand])):
                if np.min(np.sum((uv_kept - q) ** 2, 1)) > conf.sparsify_radius_px ** 2:
                    kept.append(p)
                    uv_kept = np.vstack([uv_kept, q])
        out.append(np.array(sorted(kept), np.int64))
    return out


@pytest.mark.parametrize("seed", [3, 4])
def test_vrf_points_equal_the_whole_map_scan(seed):
    labels, obs = random_tracks(seed)
    conf = LandmarkConfig()
    views = landmark_views(labels, obs)
    vrfs = greedy_vrfs(labels, views, conf)
    rng = np.random.default_rng(seed)
    uv_of = rng.uniform(0, 120, (len(labels), 2))  # a fixed pixel per point stands in for the projection
    points = np.c_[np.arange(len(labels)), np.zeros((len(labels), 2))]

    def project(i, X):
        return uv_of[X[:, 0].astype(int)]

    ours = vrf_points(vrfs, views, points, project, conf)
    theirs = whole_map_vrf_points(vrfs, labels, obs, points, project, conf)
    assert len(ours) == len(theirs) == len(vrfs)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)
    own_total = sum(len(views[lm][img]) for lm, img in vrfs)
    assert sum(map(len, ours)) > own_total  # covisible images added points, and sparsification dropped some
    assert sum(map(len, ours)) < sum(len(np.unique(np.concatenate(list(views[lm].values())))) for lm, _ in vrfs)


def test_grid_answers_like_a_scan_of_every_kept_point():
    rng = np.random.default_rng(1)
    grid, kept = _Grid(15.0), []
    for q in rng.uniform(-50, 300, (800, 2)):
        free = not kept or np.min(((np.array(kept) - q) ** 2).sum(1)) > 15.0 ** 2
        assert grid.free(q) == free
        if free:
            grid.add(q)
            kept.append(q)
    assert 20 < len(kept) < 800


def test_training_length_follows_the_training_views():
    tc = TrainConfig()
    assert tc.planned_steps(100) == tc.min_steps  # a small map: the floor
    assert tc.planned_steps(8_000) == int(np.ceil(tc.epochs * 8_000 / tc.batch_size))
    assert tc.planned_steps(16_000) == 2 * tc.planned_steps(8_000)
    assert TrainConfig(steps=123).planned_steps(16_000) == 123


def test_points_in_view_equal_a_projection_of_the_whole_map(small_map):
    """From the map's own image poses (moved back too, so that points fall beyond the viewing
    depth) the index finds exactly what projecting every point finds within that depth; from
    behind a wall looking back at it, what it leaves out is what the map only saw from the other side."""
    m = load_map(small_map.out)
    view = PointsInView.of_map(m)
    assert 0 < view.max_depth < np.inf
    cam: Camera = m.cameras[0]
    P = m.points.astype(np.float64)
    seen_from = [[] for _ in range(len(P))]  # the VRF camera centres that hold each point
    for v in range(len(m.vrf_frame)):
        for i in m.vrf_point_ids(v):
            seen_from[i].append(m.frame_T[m.vrf_frame[v]][:3, 3])

    def projected(pose, margin=20.0):
        p = P @ pose[:3, :3].T + pose[:3, 3]
        uv, front = cam.project(p)
        return np.flatnonzero(front & (p[:, 2] <= view.max_depth) & (uv[:, 0] >= -margin) & (uv[:, 1] >= -margin) &
                              (uv[:, 0] < cam.width + margin) & (uv[:, 1] < cam.height + margin))

    left_out = 0
    for T_map_camera in m.frame_T:
        T = invert(T_map_camera)
        T_far = T.copy()
        T_far[2, 3] += 0.5 * view.max_depth
        for pose in (T, T_far):
            np.testing.assert_array_equal(view(pose, cam, 20.0), projected(pose))
        # behind the wall this image looks at (1 m past its points' median depth), turned around:
        # looking at that wall from the other side
        depth = np.median((P[projected(T)] @ T[:3, :3].T + T[:3, 3])[:, 2])
        centre = T_map_camera[:3, :3] @ [0.0, 0.0, depth + 1.0] + T_map_camera[:3, 3]
        back = np.eye(4)
        back[:3, :3] = np.diag([-1.0, 1.0, -1.0]) @ T[:3, :3]
        back[:3, 3] = -back[:3, :3] @ centre
        found, brute = view(back, cam, 20.0), projected(back)
        assert set(found) <= set(brute)
        for i in np.setdiff1d(brute, found):
            rays = [(P[i] - c) / np.linalg.norm(P[i] - c) for c in seen_from[i]]
            assert np.dot(P[i] - centre, np.sum(rays, 0)) < 0  # seen only from the other side
            left_out += 1
    assert left_out > 0


def test_camera_contains_is_the_image_grown_by_the_margin():
    cam = Camera(640, 480, 500.0, 500.0, 320.0, 240.0)
    uv = np.array([[0, 0], [639.9, 479.9], [640, 10], [10, 480], [-0.1, 10], [np.nan, 10], [-2, 481]])
    assert cam.contains(uv).tolist() == [True, True, False, False, False, False, False]
    assert cam.contains(uv, margin=2.0).tolist() == [True, True, True, True, True, False, True]
