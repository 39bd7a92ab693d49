"""save_interval_steps (exact mid-epoch resume, also after kill -9) and keep_last_checkpoints."""

import glob
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers.train_data import log_text, make_config, make_project

from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")
# the child imports tests/helpers as pytest does (pyproject's pythonpath)
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# dropout draws from the RNG and AdEMAMix/StepLR carry state: all must resume exactly
SETTINGS = {"training_spec.dropout": 0.2, "training_spec.enforce_determinism": True,
            "training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.7},
            "training_spec.optimizer": {"name": "AdEMAMix", "alpha_warmup": 10, "beta3_warmup": 10},
            "training_spec.epochs": 3, "training_spec.save_interval_steps": 4}

# Trains SETTINGS in a child process, slowed down per batch so that it can be killed mid-epoch.
CHILD = f"""
import sys, time
import torch
torch.set_num_threads(1)
from helpers.train_data import make_config
from sequifier.train.loop import Trainer
from sequifier.train.run import run_train
batch_loss = Trainer.batch_loss
def slow(self, *args, **kwargs):
    time.sleep(0.05)
    return batch_loss(self, *args, **kwargs)
Trainer.batch_loss = slow
run_train(make_config(sys.argv[1], **{SETTINGS!r}), export=False)
"""


def weights(path):
    return torch.load(path, weights_only=True)["model"]


def test_kill_9_mid_epoch_resumes_to_bit_identical_weights(tmp_path):
    straight = run_train(make_config(make_project(tmp_path / "a"), **SETTINGS), export=False)
    root = make_project(tmp_path / "b")
    path = os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    child = subprocess.Popen([sys.executable, "-c", CHILD, root], env={**os.environ, "PYTHONPATH": path})
    try:
        deadline = time.time() + 120
        while not glob.glob(os.path.join(root, "checkpoints", "tiny-epoch-0002-batch-*.pt")):
            assert child.poll() is None and time.time() < deadline, "no mid-epoch checkpoint appeared"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    resumed = run_train(make_config(root, **SETTINGS), export=False)
    assert "-batch-" in os.path.basename(resumed.resumed_from)
    batch = int(resumed.resumed_from.split("-batch-")[1][:6])
    assert f"resuming from {resumed.resumed_from} (batch {batch} of epoch 2)" in log_text(resumed)
    a, b = weights(straight.checkpoint_path), weights(resumed.checkpoint_path)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in straight.history]


def test_keep_last_checkpoints_keeps_the_newest_and_the_best(tmp_path):
    root = make_project(tmp_path)
    # learning rate 0: the validation loss never improves after epoch 1, which stays the best
    result = run_train(make_config(root, **{"training_spec.epochs": 4, "training_spec.learning_rate": 1e-12,
                                            "training_spec.keep_last_checkpoints": 2,
                                            "training_spec.save_interval_steps": 4}), export=False)
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "checkpoints", "*.pt")))
    assert result.best_epoch == 1
    assert names == ["tiny-epoch-0001.pt", "tiny-epoch-0004-batch-000006.pt", "tiny-epoch-0004.pt"]
