#!/usr/bin/env bash
# One SLURM job per sweep point (hydra-submitit-launcher, preset
# conf/hydra/launcher/slurm.yaml). Not run by the tests: needs a SLURM cluster.
# usage: run.sh PROJECT_DIR PARTITION [extra overrides...]
set -euo pipefail
project="$1"; partition="$2"; shift 2
cd "$project"
sequifier-train -m hydra/launcher=slurm hydra.launcher.partition="$partition" \
  training_spec.device=cuda model_spec.num_layers=2,4,8 training_spec.lr=1e-3,3e-4 "$@"
