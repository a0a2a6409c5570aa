"""ament_python package setup: builds with colcon in a ROS 2 workspace and with pip in a venv."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "pram_ros"


def tree(src: str, dest: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install the files under `src` (maps a user put there) into `dest`."""
    out = []
    for root, _, files in os.walk(src):
        if files:
            out.append((os.path.normpath(os.path.join(dest, os.path.relpath(root, src))),
                        [os.path.join(root, f) for f in files]))
    return out

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*")),
        *tree("maps", f"share/{PACKAGE}/maps"),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="pram_ros developers",
    maintainer_email="pram-ros@users.noreply.github.com",
    description="PRAM visual localization for ROS 2: landmark recognition + landmark-wise PnP.",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "pram-ros = pram_ros.cli:main",
            "localizer = pram_ros.ros.localizer_node:main",
            "map_builder = pram_ros.ros.map_builder_node:main",
        ],
    },
)
