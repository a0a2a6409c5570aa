#!/usr/bin/env bash
# Build a ROS 2 interface package (message and service definitions) into a venv with rosidl: the
# ROS 2 PyPI wheels do not carry tf2_msgs, bond or composition_interfaces.
# Usage: tools/build_interfaces.sh VENV PACKAGE_DIR
set -euo pipefail
venv=$(readlink -f "${1:?usage: build_interfaces.sh VENV PACKAGE_DIR}")
src=$(readlink -f "${2:?usage: build_interfaces.sh VENV PACKAGE_DIR}")
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
export LD_LIBRARY_PATH="$venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
echo "building $(basename "$src") into $venv"
cmake -S "$src" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$venv/bin/python3" \
  -DBUILD_TESTING=OFF >"$build/configure.log" 2>&1 || { tail -40 "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 || { tail -40 "$build/build.log"; exit 1; }
cmake --install "$build" >/dev/null
