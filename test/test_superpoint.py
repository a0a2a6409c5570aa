"""SuperPoint on the CPU with random weights: decoding, NMS, top-k, descriptors, batching, loading."""
import numpy as np
import pytest
import torch

from pram_ros.core.features import FeatureConfig, make_extractor
from pram_ros.core.superpoint import SuperPoint, _shapes, decode_scores, load_superpoint_weights, nms


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = SuperPoint(max_keypoints=200, detection_threshold=0.0005).eval()
    return m


@pytest.fixture(scope="module")
def images():
    from pram_ros.core.synthetic import DEMO_CAMERA, MAP_LIGHT, Renderer, build_scene
    from pram_ros.core.geometry import look_at

    r = Renderer(build_scene(), DEMO_CAMERA)
    out = []
    for eye, tgt in [((2, 3, 1.3), (8, 3, 1.2)), ((12, 3, 1.3), (12, 10, 1.3))]:
        img = r.render(look_at(np.array(eye, float), np.array(tgt, float)), MAP_LIGHT)
        out.append(torch.from_numpy(img.mean(2)[:240, :320].astype(np.float32) / 255)[None])
    return torch.stack(out)


def test_outputs_nms_topk_and_descriptors(model, images):
    with torch.inference_mode():
        out = model(images)
    assert len(out) == 2
    for o in out:
        n = len(o["keypoints"])
        assert 0 < n <= 200
        assert o["keypoints"].shape == (n, 2) and o["descriptors"].shape == (n, 256) and o["scores"].shape == (n,)
        assert torch.all(o["scores"][:-1] >= o["scores"][1:])  # top-k order
        assert torch.allclose(o["descriptors"].norm(dim=1), torch.ones(n), atol=1e-5)
        k = o["keypoints"]
        d = (k[:, None] - k[None]).abs().max(-1).values + torch.eye(n) * 1e9
        assert d.min() > model.nms_radius  # no two survivors within the NMS radius
        assert (k[:, 0] >= 4).all() and (k[:, 1] >= 4).all()  # border removed
        assert (k[:, 0] < 320 - 4).all() and (k[:, 1] < 240 - 4).all()


def test_batched_equals_unbatched(model, images):
    with torch.inference_mode():
        batched = model(images)
        single = [model(images[i:i + 1])[0] for i in range(len(images))]
    for b, s in zip(batched, single):
        assert torch.equal(b["keypoints"], s["keypoints"])
        assert torch.allclose(b["descriptors"], s["descriptors"], atol=1e-5)


def test_detector_head_decoding_matches_numpy_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 65, 3, 4)).astype(np.float32)
    ours = decode_scores(torch.from_numpy(logits))[0].numpy()
    # reference: softmax over 65 channels, drop the dustbin, each cell's 64 values fill an 8x8 block row-major
    e = np.exp(logits[0] - logits[0].max(0, keepdims=True))
    prob = (e / e.sum(0, keepdims=True))[:64]
    ref = np.zeros((24, 32), np.float32)
    for cy in range(3):
        for cx in range(4):
            ref[cy * 8:(cy + 1) * 8, cx * 8:(cx + 1) * 8] = prob[:, cy, cx].reshape(8, 8)
    assert np.allclose(ours, ref, atol=1e-6)


def test_nms_keeps_isolated_maxima():
    s = torch.zeros(1, 20, 20)
    s[0, 5, 5], s[0, 5, 7], s[0, 15, 15] = 0.9, 0.5, 0.7  # (5,7) is within radius 4 of the stronger (5,5)
    kept = torch.nonzero(nms(s, 4)[0]).tolist()
    assert kept == [[5, 5], [15, 15]]


def test_magicleap_layout_loads_and_wrong_layout_is_refused(tmp_path):
    good = {k: torch.randn(shape) for k, shape in _shapes().items()}
    torch.save(good, tmp_path / "superpoint_v1.pth")
    state = load_superpoint_weights(tmp_path / "superpoint_v1.pth")
    m = SuperPoint()
    m.load_state_dict(state)
    ex = make_extractor(FeatureConfig(name="superpoint", weights=str(tmp_path / "superpoint_v1.pth"), device="cpu"))
    feats = ex(np.random.default_rng(0).integers(0, 255, (120, 160), dtype=np.uint8))
    assert feats.descriptors.shape[1] == 256
    bad = dict(good)
    bad["convDb.weight"] = torch.randn(128, 256, 1, 1)
    del bad["conv1a.bias"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a MagicLeap SuperPoint state dict") as e:
        load_superpoint_weights(tmp_path / "bad.pth")
    assert "conv1a.bias" in str(e.value) and "convDb.weight" in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a loadable"):
        load_superpoint_weights(tmp_path / "junk.pth")


def test_missing_weights_say_where_and_why(tmp_path):
    with pytest.raises(FileNotFoundError, match="non-commercial licence") as e:
        load_superpoint_weights(tmp_path / "nothing.pth")
    assert "superpoint_v1.pth" in str(e.value) and "xfeat" in str(e.value)
