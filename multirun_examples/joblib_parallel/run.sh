#!/usr/bin/env bash
# Jobs in parallel on this machine: the local_parallel launcher preset
# (conf/hydra/launcher/local_parallel.yaml: joblib, 2 processes at a time).
# usage: run.sh [PROJECT_DIR] [extra overrides...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="${1:-/tmp/sequifier-multirun-joblib}"; shift || true
[ -f "$project/configs/train.yaml" ] || python "$here/../make_tiny_project.py" "$project"
cd "$project"
sequifier-train -m hydra/launcher=local_parallel model_spec.num_layers=1,2 "$@"
