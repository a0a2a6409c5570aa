"""fox conversion follows its README: NeRF axes flipped to optical, distortion kept, missing frames skipped."""
import json

import cv2
import numpy as np

from pram_ros.core.bag import BagReader
from pram_ros.core.image_sets import NERF_TO_OPTICAL, load_nerf
from pram_ros.core.geometry import invert


def _sampson_px(frames, i, j, cam, nerf_axes=False):
    """Median Sampson distance (pixels) of SIFT matches between frames i, j under their poses."""
    imgs = [cv2.imread(str(frames[k].path), cv2.IMREAD_GRAYSCALE) for k in (i, j)]
    sift = cv2.SIFT_create(2000)
    (k1, d1), (k2, d2) = [sift.detectAndCompute(im, None) for im in imgs]
    m = cv2.BFMatcher().knnMatch(d1, d2, k=2)
    good = [a for a, b in m if a.distance < 0.7 * b.distance]
    assert len(good) > 50
    x1 = cam.normalize(np.array([k1[g.queryIdx].pt for g in good]))
    x2 = cam.normalize(np.array([k2[g.trainIdx].pt for g in good]))
    Ti, Tj = frames[i].T_map_camera, frames[j].T_map_camera
    if nerf_axes:  # undo the conversion: what one gets by forgetting the axis flip
        Ti, Tj = Ti @ NERF_TO_OPTICAL, Tj @ NERF_TO_OPTICAL
    T21 = invert(Tj) @ Ti
    t = T21[:3, 3]
    E = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]]) @ T21[:3, :3]
    h1, h2 = np.c_[x1, np.ones(len(x1))], np.c_[x2, np.ones(len(x2))]
    Ex1, Etx2 = h1 @ E.T, h2 @ E
    num = np.sum(h2 * Ex1, 1) ** 2
    den = Ex1[:, 0] ** 2 + Ex1[:, 1] ** 2 + Etx2[:, 0] ** 2 + Etx2[:, 1] ** 2
    return float(np.median(np.sqrt(num / den)) * cam.fx)


def test_poses_follow_the_optical_convention(fox_dir):
    frames = load_nerf(fox_dir)
    cam = frames[0].camera
    good = _sampson_px(frames, 0, 1, cam)
    flipped = _sampson_px(frames, 0, 1, cam, nerf_axes=True)
    assert good < 1.0, good  # COLMAP poses: sub-pixel with the distortion model respected
    assert flipped > 10 * good
    # Every camera looks at the figurine: optical z points to the centre of the camera ring.
    centres = np.array([f.T_map_camera[:3, 3] for f in frames])
    to_centre = centres.mean(0) - centres
    z = np.array([f.T_map_camera[:3, 2] for f in frames])
    assert (np.sum(z * to_centre, 1) > 0).all()


def test_bags_split_present_frames_and_keep_intrinsics(fox_dir, fox_bags):
    meta = json.loads((fox_dir / "transforms.json").read_text())
    present = sorted(p.name for p in (fox_dir / "images").iterdir())
    assert len(meta["frames"]) > len(present) == 50
    with BagReader(fox_bags["map"]) as m, BagReader(fox_bags["query"]) as q:
        mf, qf = list(m.frames(strict=True)), list(q.frames(strict=True))
    assert len(mf) == 40 and len(qf) == 10
    stamps = sorted([f.stamp_ns for f in mf + qf])
    # every 5th present image (by capture order) is a query
    assert [f.stamp_ns for f in qf] == stamps[4::5]
    cam = qf[0].camera
    assert (cam.width, cam.height, cam.model) == (1080, 1920, "plumb_bob")
    assert cam.D[:4] == (meta["k1"], meta["k2"], meta["p1"], meta["p2"])
    assert (cam.fx, cam.cy) == (meta["fl_x"], meta["cy"])
    # original JPEG bytes travel unchanged
    orig = cv2.imread(str(fox_dir / "images" / present[4]))
    assert np.array_equal(qf[0].image, orig)
    assert all(f.T_map_camera is not None for f in mf + qf)
