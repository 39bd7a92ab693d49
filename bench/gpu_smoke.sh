#!/usr/bin/env bash
# sequifier's GPU smoke test: about 5 minutes on one CUDA GPU, a pass/fail table at the end
# (bench/gpu_smoke.py runs the checks; docs/gpu.md says what each row should show).
# On a machine where torch sees no CUDA device it exits at once with one line (status 2).
#
#   bash bench/gpu_smoke.sh [--folder DIR]        (or: make gpu-smoke)
#   PYTHON=/path/to/python bash bench/gpu_smoke.sh
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
if ! found=$("$PYTHON" -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())' 2>/dev/null); then
    echo "gpu_smoke: not run: $PYTHON cannot import torch (make install-gpu first)"
    exit 2
fi
read -r torch_version cuda_version available <<<"$found"
if [ "$available" != "True" ]; then
    echo "gpu_smoke: not run: no CUDA device visible to torch $torch_version (CUDA build: $cuda_version); nothing to check on this machine"
    exit 2
fi
exec "$PYTHON" bench/gpu_smoke.py "$@"
