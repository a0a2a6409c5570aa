#!/usr/bin/env bash
# The device run of issue 6, in one call on a lent GPU machine (Python 3.12, torch, OpenCV,
# scipy and scikit-learn installed; no network). The other packages travel as cp312 wheels in
# .whl/ (fetch them here first with bench/fetch_gpu_wheels.sh). Prints the table last.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
# On the device machine, $OUT comes back: keep the whole log there too.
python3 bench/gpu_check.py "$@" 2>&1 | tee "${OUT:-/tmp}/gpu_check.log"
