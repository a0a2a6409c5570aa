"""Shared fixtures: small demo bags, the fox data, and DDS isolation for rclpy tests."""
from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")

SHARED = Path(__file__).resolve().parents[2] / "shared"
FOX_DIR = SHARED / "data" / "fox"
_domain_ids = itertools.count(100 + os.getpid() % 50)
SYSTEM_FIXTURES = {"demo_full", "demo_query_frames", "demo_map", "fox_map"}  # full-size map builds and renders


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs a full demo or fox map (as a fixture, or a parameter naming one) is a system
    test: `slow`, like the marked ones."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {}).values()
        if SYSTEM_FIXTURES & (set(getattr(item, "fixturenames", ())) | {p for p in params if isinstance(p, str)}):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def domain_id() -> int:
    """A DDS domain id of the test's own (localhost-only discovery is set above)."""
    return next(_domain_ids)


@pytest.fixture
def ros(domain_id):
    """(context, executor) of an rclpy context in the test's own DDS domain."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor

    ctx = Context()
    rclpy.init(context=ctx, domain_id=domain_id)
    ex = SingleThreadedExecutor(context=ctx)
    yield ctx, ex
    ex.shutdown()
    rclpy.shutdown(context=ctx)


def needs(module: str, what: str):
    """Import a ROS piece that only ../shared/ros2 provides here (make setup installs it): skip
    without it, except under CI, where it must be there."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("PRAM_REQUIRE_SHARED"):
            pytest.fail(f"{what} is not installed ({exc}) but PRAM_REQUIRE_SHARED is set: run make setup")
        pytest.skip(f"{what} is not installed ({exc}); make setup installs it from ../shared/ros2")


@pytest.fixture(scope="session")
def fox_dir() -> Path:
    if not (FOX_DIR / "transforms.json").is_file():
        if os.environ.get("PRAM_REQUIRE_SHARED"):
            pytest.fail(f"{FOX_DIR} is missing but PRAM_REQUIRE_SHARED is set")
        pytest.skip(f"fox data not found at {FOX_DIR}")
    return FOX_DIR


@pytest.fixture(scope="session")
def demo_bags(tmp_path_factory) -> dict[str, Path]:
    """The demo's mapping and query runs, truncated to 24 images each to stay fast."""
    from pram_ros.core.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo"), max_images=24, progress=False)


@pytest.fixture(scope="session")
def small_bag(demo_bags, tmp_path_factory) -> Path:
    """12 images of the demo mapping run, with their poses: a map builds in seconds."""
    from pram_ros.core.bag import BagReader, BagWriter

    out = tmp_path_factory.mktemp("small") / "bag"
    with BagReader(demo_bags["map"]) as r, BagWriter(out) as w:
        for f in list(r.frames())[:12]:
            w.write_image(f.stamp_ns, f.image, f.camera, f.camera_frame)
            w.write_pose(f.stamp_ns, f.T_map_camera)
    return out


@pytest.fixture(scope="session")
def fox_bags(fox_dir, tmp_path_factory) -> dict[str, Path]:
    from pram_ros.core.image_sets import image_set_to_bags

    return image_set_to_bags(fox_dir, tmp_path_factory.mktemp("fox"))


@pytest.fixture(scope="session")
def fox_map(fox_bags, tmp_path_factory):
    """A map built from the fox map bag with fox's poses (BuildSummary)."""
    from pram_ros.core.build import BuildConfig, build_map
    from pram_ros.core.training import TrainConfig

    return build_map(fox_bags["map"], tmp_path_factory.mktemp("maps") / "fox",
                     BuildConfig(train=TrainConfig(steps=150, max_minutes=0)), progress=False)


@pytest.fixture(scope="session")
def demo_full(tmp_path_factory) -> dict[str, Path]:
    """The full demo bags, as `make demo` renders them."""
    from pram_ros.core.synthetic import make_demo_data

    return make_demo_data(tmp_path_factory.mktemp("demo_full"), progress=False)


@pytest.fixture(scope="session")
def demo_query_frames(demo_full) -> list:
    """Every frame of the full demo query run (images, cameras, ground truth, odometry)."""
    from pram_ros.core.bag import BagReader

    with BagReader(demo_full["query"]) as r:
        return list(r.frames())


@pytest.fixture(scope="session")
def demo_map(demo_full, tmp_path_factory):
    """The demo map with the default build settings, without the training time cap (BuildSummary):
    the same map on a busy machine as on an idle one."""
    from pram_ros.core.build import BuildConfig, build_map
    from pram_ros.core.training import TrainConfig

    summary = build_map(demo_full["map"], tmp_path_factory.mktemp("maps") / "demo",
                        BuildConfig(train=TrainConfig(max_minutes=0)), progress=False)
    assert summary.recognition["steps"] == summary.recognition["steps_planned"] == TrainConfig().min_steps
    return summary


@pytest.fixture(scope="session")
def small_map(small_bag, tmp_path_factory):
    """A tiny map (12 demo images, 30 training steps; BuildSummary): for the tests that need some
    map, not a good one."""
    from pram_ros.core.build import BuildConfig, build_map
    from pram_ros.core.training import TrainConfig

    return build_map(small_bag, tmp_path_factory.mktemp("maps") / "small",
                     BuildConfig(train=TrainConfig(steps=30, max_minutes=0)), progress=False)
