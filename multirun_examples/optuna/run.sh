#!/usr/bin/env bash
# Optuna search: the hparams_search=optuna preset (conf/hparams_search/optuna.yaml) sets
# the Optuna sweeper, the search space and multirun mode; the objective is each trial's
# best validation loss. Here: 3 trials over a small space.
# usage: run.sh [PROJECT_DIR] [extra overrides...]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
project="${1:-/tmp/sequifier-multirun-optuna}"; shift || true
[ -f "$project/configs/train.yaml" ] || python "$here/../make_tiny_project.py" "$project"
cd "$project"
sequifier-train hparams_search=optuna hydra.sweeper.n_trials=3 \
  'model_spec.num_layers=choice(1, 2)' "$@"
