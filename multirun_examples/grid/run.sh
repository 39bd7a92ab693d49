#!/usr/bin/env bash
# Grid sweep: 2 layer counts x 2 learning rates = 4 jobs, run one after another.
# usage: run.sh [PROJECT_DIR] [extra overrides...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="${1:-/tmp/sequifier-multirun-grid}"; shift || true
[ -f "$project/configs/train.yaml" ] || python "$here/../make_tiny_project.py" "$project"
cd "$project"
sequifier-train -m model_spec.num_layers=1,2 training_spec.lr=1e-3,3e-4 "$@"
