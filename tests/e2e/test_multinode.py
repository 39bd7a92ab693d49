"""Multi-node DDP as SLURM runs it: `torchrun --nnodes 2` started twice (here on one
machine, rendezvous on 127.0.0.1) trains exactly like sequifier's own two spawned ranks."""

import glob
import os
import socket
import subprocess
import sys

import pytest
import torch
from helpers.train_data import make_config, make_project  # noqa: E402
from omegaconf import OmegaConf

from sequifier.train.checkpoint import load_checkpoint  # noqa: E402
from sequifier.train.run import run_train  # noqa: E402

BIN = os.path.dirname(sys.executable)
DDP = {"read_format": "parquet", "training_spec.distributed": True,
       "training_spec.backend": "gloo", "training_spec.epochs": 1, "training_spec.batch_size": 8}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _last_weights(root: str, model_name: str) -> dict:
    (path,) = glob.glob(os.path.join(root, "checkpoints", f"{model_name}-epoch-*.pt"))
    return load_checkpoint(path)["model"]


@pytest.mark.skipif(not os.path.exists(os.path.join(BIN, "torchrun")), reason="no torchrun")
def test_two_torchrun_nodes_train_like_two_spawned_ranks(tmp_path):
    root = make_project(tmp_path, n_train=96, n_val=32, write_format="parquet", sharded=True,
                        per_shard=16)
    cfg = make_config(root, model_name="nodes", **DDP)
    os.makedirs(os.path.join(root, "configs"), exist_ok=True)
    with open(os.path.join(root, "configs", "train.yaml"), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(
        [f"{BIN}/torchrun", "--nnodes", "2", "--nproc_per_node", "1",
         "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "t",
         f"{BIN}/sequifier-train"],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)]
    outputs = [n.communicate(timeout=240)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outputs
    run_train(make_config(root, model_name="spawned", **DDP,
                          **{"training_spec.world_size": 2}), export=False)
    got, want = _last_weights(root, "nodes"), _last_weights(root, "spawned")
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
    # one set of outputs, written by global rank 0
    assert len(glob.glob(os.path.join(root, "logs", "sequifier-nodes-*.txt"))) == 1
    assert len(glob.glob(os.path.join(root, "models", "sequifier-nodes-*"))) >= 1
