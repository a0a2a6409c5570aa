"""Damaged and hostile files: maps, weights and bags are refused with a clear error; nothing
untrusted is unpickled and no path leaves its directory."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pram_ros.core.bag import IMAGE_T, BagError, BagReader, BagTopics, BagWriter
from pram_ros.core.build import build_map
from pram_ros.core.map import MapError, load_map
from pram_ros.core.superpoint import load_superpoint_weights


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _reseal(d: Path) -> None:
    """Make the manifest's checksums match the (tampered) files, as an attacker would."""
    mf = json.loads((d / "manifest.json").read_text())
    for name in mf["files"]:
        p = d / name
        if p.is_file():
            mf["files"][name] = {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
    (d / "manifest.json").write_text(json.dumps(mf))


def _edit_manifest(d: Path, **changes) -> None:
    mf = json.loads((d / "manifest.json").read_text())
    mf.update(changes)
    (d / "manifest.json").write_text(json.dumps(mf))


@pytest.fixture(scope="module")
def good(small_map):
    return Path(small_map.out)


@pytest.mark.parametrize("case, error", [
    ("truncated", "checksum of map.npz"),
    ("truncated_resealed", "cannot read"),
    ("missing_weights", "recognizer.safetensors is missing"),
    ("missing_manifest", "no manifest.json"),
    ("empty_manifest", "not valid JSON"),
    ("manifest_not_object", "not a pram_ros map"),
    ("wrong_version", "version 0"),
    ("escape_parent", "outside its directory"),
    ("escape_absolute", "outside its directory"),
    ("escape_subdir", "outside its directory"),
    ("symlink_out", "symbolic link"),
    ("weights_garbage", "cannot read recognizer weights"),
    ("weights_wrong_shapes", "do not fit the recognizer"),
    ("arrays_wrong_dtype", "dtype"),
    ("camera_absurd", "malformed"),
])
def test_damaged_and_hostile_maps_are_refused(good, tmp_path, case, error):
    d = _copy(good, tmp_path / "map")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the map")
    if case.startswith("truncated"):
        data = (d / "map.npz").read_bytes()
        (d / "map.npz").write_bytes(data[: len(data) // 3])
        if case.endswith("resealed"):
            _reseal(d)
    elif case == "missing_weights":
        (d / "recognizer.safetensors").unlink()
    elif case == "missing_manifest":
        (d / "manifest.json").unlink()
    elif case == "empty_manifest":
        (d / "manifest.json").write_text("")
    elif case == "manifest_not_object":
        (d / "manifest.json").write_text("[1, 2, 3]")
    elif case == "wrong_version":
        _edit_manifest(d, version=0)
    elif case.startswith("escape"):
        name = {"escape_parent": "../secret.txt", "escape_absolute": str(secret),
                "escape_subdir": "sub/secret.txt"}[case]
        mf = json.loads((d / "manifest.json").read_text())
        mf["files"][name] = {"sha256": hashlib.sha256(secret.read_bytes()).hexdigest(), "bytes": 15}
        (d / "manifest.json").write_text(json.dumps(mf))
    elif case == "symlink_out":
        (d / "map.npz").unlink()
        (d / "map.npz").symlink_to(good / "map.npz")  # checksum matches: only the link gives it away
    elif case == "weights_garbage":
        (d / "recognizer.safetensors").write_bytes(os.urandom(4096))
        _reseal(d)
    elif case == "weights_wrong_shapes":
        from safetensors.torch import save_file

        save_file({"input_proj.weight": torch.zeros(3, 3, dtype=torch.float16)}, str(d / "recognizer.safetensors"))
        _reseal(d)
    elif case == "arrays_wrong_dtype":
        with np.load(d / "map.npz") as z:
            arrays = {k: z[k] for k in z.files}
        arrays["points"] = arrays["points"].astype(np.float64)
        with open(d / "map.npz", "wb") as f:
            np.savez(f, **arrays)
        _reseal(d)
    elif case == "camera_absurd":
        mf = json.loads((d / "manifest.json").read_text())
        mf["cameras"][0]["fx"] = -1.0
        (d / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(MapError, match=error):
        load_map(d)


def test_planted_pickles_are_never_executed(good, tmp_path):
    marker = tmp_path / "pwned"
    # 1. an object array (a pickle) inside map.npz, checksums resealed
    d = _copy(good, tmp_path / "npz")
    with np.load(d / "map.npz") as z:
        arrays = {k: z[k] for k in z.files}
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    arrays["labels"] = evil
    with open(d / "map.npz", "wb") as f:
        np.savez(f, **arrays)  # np.savez pickles object arrays
    _reseal(d)
    with pytest.raises(MapError):
        load_map(d)
    # 2. the weights replaced by a torch pickle
    d = _copy(good, tmp_path / "weights")
    torch.save({"w": Payload(marker)}, d / "recognizer.safetensors")
    _reseal(d)
    with pytest.raises(MapError, match="recognizer weights"):
        load_map(d)
    # 3. a raw pickle as map.npz
    d = _copy(good, tmp_path / "raw")
    (d / "map.npz").write_bytes(pickle.dumps(Payload(marker)))
    _reseal(d)
    with pytest.raises(MapError, match="cannot read"):
        load_map(d)
    # 4. SuperPoint weights that are a pickle payload
    w = tmp_path / "superpoint_v1.pth"
    torch.save({"conv1a.weight": Payload(marker)}, w)
    with pytest.raises(ValueError, match="not a loadable torch state dict"):
        load_superpoint_weights(w)
    assert not marker.exists()
    # the sanity check of the check: unpickling the payload does create the marker
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()


def test_fake_weights_files_are_refused(tmp_path):
    w = tmp_path / "superpoint_v1.pth"
    w.write_bytes(os.urandom(10_000))
    with pytest.raises(ValueError, match="not a loadable torch state dict"):
        load_superpoint_weights(w)
    torch.save([1, 2, 3], w)
    with pytest.raises(ValueError, match="not a state dict"):
        load_superpoint_weights(w)
    torch.save({"conv1a.weight": torch.zeros(2)}, w)
    with pytest.raises(ValueError, match="not a MagicLeap SuperPoint state dict"):
        load_superpoint_weights(w)


def test_bags_with_missing_topics_zero_messages_or_mixed_encodings(demo_bags, tmp_path):
    with BagReader(demo_bags["map"]) as r:
        frames = list(r.frames())[:6]
    # zero messages: the image topic exists with no messages; reading yields nothing, building says why
    empty = tmp_path / "empty"
    with BagWriter(empty) as w:
        w._conn(w.topics.image, IMAGE_T, reliable=False)
        w.write_camera_info(frames[0].stamp_ns, frames[0].camera, frames[0].camera_frame)
    with BagReader(empty) as r:
        assert list(r.frames()) == []
    with pytest.raises(RuntimeError, match="only 0 usable keyframes"):
        build_map(empty, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()
    # mixed encodings on one topic: every frame decodes to the same picture
    mixed = tmp_path / "mixed"
    encodings = ["bgr8", "rgb8", "mono8", "bgra8", "mono16", "rgba8"]
    with BagWriter(mixed) as w:
        for f, enc in zip(frames, encodings):
            w.encoding = enc
            w.write_image(f.stamp_ns, f.image, f.camera, f.camera_frame)
    with BagReader(mixed) as r:
        back = list(r.frames())
    assert len(back) == len(frames)
    for f, b, enc in zip(frames, back, encodings):
        gray = b.image if b.image.ndim == 2 else b.image.mean(-1)
        scale = 257.0 if enc == "mono16" else 1.0
        assert abs(gray.astype(float) / scale - f.image.mean(-1)).mean() < 3.0, enc
    # a topic the contract needs is missing: the error names it and what the bag has
    with pytest.raises(BagError, match="/nope/camera_info"):
        BagReader(mixed, BagTopics(camera_info="/nope/camera_info"))
    no_images = tmp_path / "no_images"
    with BagWriter(no_images) as w:
        w.write_camera_info(frames[0].stamp_ns, frames[0].camera, frames[0].camera_frame)
    with pytest.raises(BagError, match="neither '/camera/image_raw'.*its topics: /camera/camera_info"):
        BagReader(no_images)


def test_info_describes_a_verified_map_and_refuses_a_damaged_one(good, small_map, tmp_path, capsys):
    """`pram-ros info MAP` prints what the map holds once its files are verified; a damaged map or a
    folder that is neither map nor bag gets the reason, not a traceback."""
    from pram_ros import cli

    assert cli.main(["info", str(good)]) == 0
    head, *lines = capsys.readouterr().out.splitlines()
    assert head == f"{good}: pram_ros map, checksums and arrays verified"
    rows = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines)
    m = load_map(good)
    assert rows["images used"] == str(small_map.images) and rows["3D points"] == str(len(m.points))
    assert rows["landmarks (K)"] == str(m.num_landmarks) and rows["frame / metric"] == "map / yes"
    assert rows["fine layer"].startswith(f"{len(m.fine.points)} points")
    assert rows["training steps"] == "30 of 30"
    # 12 images: more than exhaustive matching's 10, within the fallback's 50
    assert rows["method auto"] == "pram, then every map image for what recognition cannot pose"
    d = _copy(good, tmp_path / "map")
    data = (d / "map.npz").read_bytes()
    (d / "map.npz").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty").mkdir()
    for path, says in ((d, "checksum of map.npz"), (tmp_path / "empty", "neither a bag")):
        assert cli.main(["info", str(path)]) == 2
        assert says in capsys.readouterr().err
