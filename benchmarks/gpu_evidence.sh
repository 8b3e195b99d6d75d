#!/usr/bin/env bash
# The GPU evidence run: about 8 minutes on an H100 / H200 (docs/benchmarks.md names what it
# measures); `--dry-run` runs the same steps at toy sizes on a CPU (3.4 minutes on 2 cores of an
# AVX2-only Zen 3; `python -m pytest -m heavy` runs it).
# On the GPU machine the repository is not installed: it runs from the tree with the image's
# python3, and Python wheels it lacks (PuLP) come from .whl/ when carried there.
#   bash benchmarks/gpu_evidence.sh [--dry-run] [--out-root DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHON
exec "$PYTHON" benchmarks/gpu_evidence.py "$@"
