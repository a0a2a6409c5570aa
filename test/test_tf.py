import numpy as np
import pytest

from pram_ros.core.geometry import extrapolate, invert, make_T, rotation_error_deg
from pram_ros.core.synthetic import _Rz
from pram_ros.core.tf import TfBuffer, TfError

S = 1_000_000_000


def test_interpolates_between_samples_and_composes_chain():
    buf = TfBuffer()
    buf.set_transform("odom", "base_link", 0, make_T(_Rz(0.0), [0, 0, 0]))
    buf.set_transform("odom", "base_link", 2 * S, make_T(_Rz(np.pi / 2), [2, 0, 0]))
    ext = make_T(np.eye(3), [0.1, 0, 1.0])
    buf.set_transform("base_link", "cam", 0, ext, static=True)
    T = buf.lookup("odom", "base_link", S)
    assert np.allclose(T[:3, 3], [1, 0, 0])
    assert rotation_error_deg(T[:3, :3], _Rz(np.pi / 4)) < 1e-6
    T_odom_cam = buf.lookup("odom", "cam", S)
    assert np.allclose(T_odom_cam, T @ ext)
    assert np.allclose(buf.lookup("cam", "odom", S), invert(T_odom_cam))


def test_refuses_extrapolation_unknown_frames_and_missing_links():
    buf = TfBuffer()
    buf.set_transform("odom", "base_link", S, np.eye(4))
    buf.set_transform("odom", "base_link", 2 * S, np.eye(4))
    with pytest.raises(TfError, match="outside"):
        buf.lookup("odom", "base_link", 3 * S)
    with pytest.raises(TfError, match="unknown frame 'nope'"):
        buf.lookup("odom", "nope", S)
    buf.set_transform("map", "other", 0, np.eye(4), static=True)
    with pytest.raises(TfError, match="no path"):
        buf.lookup("map", "base_link", S)


def test_cycle_is_reported_not_looped():
    buf = TfBuffer()
    buf.set_transform("a", "b", 0, np.eye(4), static=True)
    buf.set_transform("b", "c", 0, np.eye(4), static=True)
    buf.set_transform("c", "a", 0, np.eye(4), static=True)
    with pytest.raises(TfError, match="cycle"):
        buf.lookup("a", "c", 0)


def test_history_is_bounded_and_bad_transforms_refused():
    buf = TfBuffer(cache_ns=5 * S)
    for k in range(100):
        buf.set_transform("odom", "base_link", k * S, np.eye(4))
    assert len(buf._edges["base_link"].stamps) <= 6
    bad = np.eye(4)
    bad[0, 3] = np.nan
    with pytest.raises(TfError):
        buf.set_transform("odom", "base_link", 0, bad)
    with pytest.raises(TfError):
        buf.set_transform("x", "x", 0, np.eye(4))


def test_constant_velocity_extrapolation_continues_a_steady_turn():
    """A camera turning 10 degrees and moving 30 cm a step: two steps past the second pose is the
    fourth, exactly; s=0 is the last pose itself."""
    poses = [make_T(_Rz(np.radians(10.0 * k)), np.array([0.3 * k, 0.1 * k, 1.2])) for k in range(4)]
    assert np.allclose(extrapolate(poses[0], poses[1], 2.0), poses[3], atol=1e-12)
    assert np.allclose(extrapolate(poses[1], poses[2], 0.5), make_T(_Rz(np.radians(25.0)), [0.75, 0.25, 1.2]),
                       atol=1e-12)
    assert np.allclose(extrapolate(poses[0], poses[1], 0.0), poses[1])
