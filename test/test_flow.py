"""Optical-flow tracking (flow.py): the keyframe's keypoints found again in a new image."""
import cv2
import numpy as np
import pytest
import skimage.data

from pram_ros.core.features import FeatureConfig, SiftExtractor
from pram_ros.core.flow import FlowConfig, FlowTracker

SHIFT = np.array([7.3, -4.6])  # the second image is the first moved by this many px


@pytest.fixture(scope="module")
def pair():
    """A real photograph and the same scene moved by a sub-pixel shift, with the first one's SIFT
    keypoints (away from the borders the shift brings in)."""
    gray = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
    moved = cv2.warpAffine(gray, np.float32([[1, 0, SHIFT[0]], [0, 1, SHIFT[1]]]), gray.shape[::-1],
                           flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    kp = SiftExtractor(FeatureConfig(name="sift", max_keypoints=500, resize_max=0, device="cpu"))(gray).numpy()[0]
    inside = np.all((kp > 20) & (kp < np.array(gray.shape[::-1]) - 20), axis=1)
    return gray, moved, kp[inside]


def test_flow_finds_the_keypoints_again_to_a_tenth_of_a_pixel(pair):
    """From a prediction several pixels off, the tracks land on the true positions (the shift)."""
    gray, moved, kp = pair
    tracker = FlowTracker()
    tracker.set_keyframe(gray, kp, np.arange(len(kp)))
    predicted = kp + SHIFT + np.array([5.0, -3.0])
    idx, uv = tracker.track(moved, predicted)
    assert len(idx) >= 0.9 * len(kp)
    err = np.linalg.norm(uv - (kp[idx] + SHIFT), axis=1)
    assert np.median(err) < 0.1 and np.quantile(err, 0.9) < 0.3, (np.median(err), np.quantile(err, 0.9))


def test_tracks_whose_patch_is_gone_are_dropped(pair):
    """The right half of the new image shows another picture: the forward-backward check drops the
    tracks that lead there, and keeps those on the left that do not see the new half even in the
    coarsest pyramid level."""
    gray, moved, kp = pair
    other = cv2.resize(cv2.cvtColor(skimage.data.coffee(), cv2.COLOR_RGB2GRAY), gray.shape[::-1])
    half = gray.shape[1] // 2
    covered = moved.copy()
    covered[:, half:] = other[:, half:]
    tracker = FlowTracker()
    tracker.set_keyframe(gray, kp, np.arange(len(kp)))
    idx, uv = tracker.track(covered, kp + SHIFT)
    c = FlowConfig()
    reach = c.window_px * 2 ** c.levels / 2  # how far the coarsest level's window sees
    right = kp[:, 0] + SHIFT[0] > half + c.window_px
    left = kp[:, 0] + SHIFT[0] < half - reach
    kept = np.zeros(len(kp), bool)
    kept[idx] = True
    assert kept[right].mean() < 0.1, kept[right].mean()
    assert kept[left].mean() > 0.9, kept[left].mean()


def test_a_keyframe_serves_only_images_of_its_size(pair):
    gray, _, kp = pair
    tracker = FlowTracker()
    assert not tracker.ready(gray)
    tracker.set_keyframe(gray, kp, np.arange(len(kp)))
    assert tracker.ready(gray) and not tracker.ready(gray[:-2])
    tracker.reset()
    assert not tracker.ready(gray)
