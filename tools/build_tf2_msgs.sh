#!/usr/bin/env bash
# Build tf2_msgs into a venv from its two message definitions (the ROS 2 PyPI
# wheels do not carry it). Usage: tools/build_tf2_msgs.sh VENV
set -euo pipefail
venv=$(readlink -f "${1:?usage: build_tf2_msgs.sh VENV}")
src=$(dirname "$(readlink -f "$0")")/tf2_msgs
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv" PATH="$venv/bin:$PATH"
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
export LD_LIBRARY_PATH="$venv/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
cmake -S "$src" -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$venv" -DPython3_EXECUTABLE="$venv/bin/python3" \
  -DBUILD_TESTING=OFF >"$build/configure.log" 2>&1 || { tail -40 "$build/configure.log"; exit 1; }
cmake --build "$build" -j "$(nproc)" >"$build/build.log" 2>&1 || { tail -40 "$build/build.log"; exit 1; }
cmake --install "$build" >/dev/null
