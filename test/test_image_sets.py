"""Posed image sets on disk -> contract bags: COLMAP models (text and binary) and their cameras."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import pram_ros  # noqa: F401  (before pycolmap: see README, Known issues)
import pycolmap
from pram_ros import cli
from pram_ros.core.bag import BagReader
from pram_ros.core.camera import COLMAP_MODELS, Camera, CameraError
from pram_ros.core.geometry import invert
from pram_ros.core.sfm import rigid3d

PARAMS = {  # a plausible parameter vector of each model (focal, principal point, then distortion)
    "SIMPLE_PINHOLE": [500, 320, 240], "PINHOLE": [500, 510, 321, 239], "SIMPLE_RADIAL": [500, 320, 240, 0.1],
    "RADIAL": [500, 320, 240, 0.1, -0.02], "OPENCV": [500, 510, 320, 240, 0.1, 0.01, 0.001, 0.002],
    "FULL_OPENCV": [500, 510, 320, 240, 0.1, 0.01, 0.001, 0.002, 0.003, 0.02, 0.01, 0.001],
    "OPENCV_FISHEYE": [500, 510, 320, 240, 0.1, 0.01, 0.001, 0.002], "SIMPLE_RADIAL_FISHEYE": [500, 320, 240, 0.05],
    "RADIAL_FISHEYE": [500, 320, 240, 0.05, 0.01], "SIMPLE_FISHEYE": [500, 320, 240], "FISHEYE": [500, 510, 320, 240],
}


def test_every_accepted_colmap_model_projects_as_pycolmap_does():
    assert set(PARAMS) == set(COLMAP_MODELS)
    rng = np.random.default_rng(0)
    p = np.c_[rng.uniform(-1, 1, (500, 2)), rng.uniform(1.5, 4.0, 500)]
    for name, params in PARAMS.items():
        colmap = pycolmap.Camera(model=name, width=640, height=480, params=params)
        cam = Camera.from_pycolmap(colmap)
        uv, ok = cam.project(p)
        assert ok.all()
        # COLMAP puts pixel centres at +0.5, OpenCV and ROS at 0
        np.testing.assert_allclose(uv, np.asarray(colmap.img_from_cam(p)) - 0.5, atol=1e-6, err_msg=name)
        back = Camera.from_pycolmap(cam.to_pycolmap())  # and back through the model the build writes
        np.testing.assert_allclose(back.project(p)[0], uv, atol=1e-6, err_msg=name)
    with pytest.raises(CameraError, match="FOV has no ROS equivalent"):
        Camera.from_pycolmap(pycolmap.Camera(model="FOV", width=640, height=480, params=[500, 500, 320, 240, 0.9]))


@pytest.fixture
def facade(demo_bags, tmp_path):
    """(a COLMAP scene of 8 demo images, those frames): images/seq/NNNN.png, every second image
    from a second camera (half the size), the model in sparse/0 (binary) and in text/, with one more
    image, seq/9999.png, whose file is missing."""
    with BagReader(demo_bags["map"]) as r:
        frames = list(r.frames())[:8]
    for f in frames[1::2]:
        f.image, f.camera = cv2.resize(f.image, (320, 240), interpolation=cv2.INTER_AREA), f.camera.scaled(0.5)
    root, missing = tmp_path / "facade", "seq/9999.png"
    rec = pycolmap.Reconstruction()
    for camera_id, f in enumerate(frames[:2], 1):
        cam = f.camera.to_pycolmap()
        cam.camera_id = camera_id
        rec.add_camera_with_trivial_rig(cam)
    (root / "images" / "seq").mkdir(parents=True)
    for i, f in enumerate([*frames, frames[0]]):
        name = missing if i == len(frames) else f"seq/{i:04d}.png"
        if i < len(frames):
            cv2.imwrite(str(root / "images" / name), f.image)
        rec.add_image_with_trivial_frame(pycolmap.Image(name=name, camera_id=1 + i % 2, image_id=i + 1),
                                         rigid3d(invert(f.T_map_camera)))
    for sub, write in (("sparse/0", rec.write), ("text", rec.write_text)):
        (root / sub).mkdir(parents=True)
        write(str(root / sub))
    return root, frames


def test_a_colmap_scene_becomes_a_map_bag_and_a_query_bag(facade, tmp_path, caplog, capsys):
    scene, frames = facade

    assert cli.main(["images-to-bag", str(scene), "--out", str(tmp_path / "bags"), "--query-every", "4"]) == 0
    assert "1 image(s) without a file" in caplog.text
    assert "images: 6 on /camera/image_raw/compressed, 2 cameras (640x480 plumb_bob" in capsys.readouterr().out
    with BagReader(tmp_path / "bags" / "facade_map") as m, BagReader(tmp_path / "bags" / "facade_query") as q:
        got = {"map": list(m.frames(strict=True)), "query": list(q.frames(strict=True))}
    assert [len(got["map"]), len(got["query"])] == [6, 2]  # images 3 and 7 (every 4th) query
    for g, f in zip(sorted(got["map"] + got["query"], key=lambda g: g.stamp_ns), frames):
        assert np.array_equal(g.image, f.image)  # PNG: the pixels unchanged, each image at its own size
        np.testing.assert_allclose(g.T_map_camera, f.T_map_camera, atol=1e-9)
        np.testing.assert_allclose(g.camera.project(np.array([[0.3, -0.2, 2.0]]))[0],
                                   f.camera.project(np.array([[0.3, -0.2, 2.0]]))[0], atol=1e-6)
        assert g.camera_frame == "facade_camera"

    # the text model, named explicitly, with the images elsewhere
    out = tmp_path / "text_bags"
    assert cli.main(["images-to-bag", str(tmp_path), "--model", str(scene / "text"), "--images",
                     str(scene / "images"), "--name", "t", "--out", str(out)]) == 0
    with BagReader(out / "t_map") as m:
        assert len(list(m.frames(strict=True))) == 7  # every 5th of 8 queries: 1


def test_a_folder_that_is_no_image_set_is_refused(facade, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert cli.main(["images-to-bag", str(tmp_path / "photos"), "--out", str(tmp_path / "o")]) == 2
    assert "neither transforms.json nor a COLMAP model" in capsys.readouterr().err
    (tmp_path / "broken").mkdir()
    for f in ("cameras.bin", "images.bin", "points3D.bin"):
        (tmp_path / "broken" / f).write_bytes(b"\x00garbage")
    assert cli.main(["images-to-bag", str(tmp_path / "broken"), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable COLMAP model" in capsys.readouterr().err
    assert cli.main(["images-to-bag", str(facade[0]), "--out", str(tmp_path / "o"), "--query-every", "9"]) == 2
    assert "0 of 8 images would be queries" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
