"""gradient_accumulation_steps: k micro-batches of b make the update of one batch of k x b."""

import glob
import os

import pytest
import torch
from helpers.train_data import log_text, make_config, make_project, train

from sequifier.config.problems import Problems
from sequifier.train.rules import training_spec_rules

pytestmark = pytest.mark.usefixtures("single_thread")

# 160 windows, padded and with context slots: the micro-batches hold different numbers of
# scored slots, so per-micro-batch means would weigh slots unequally
# SGD (with momentum): the update is linear in the gradient, so weights compare within float
# tolerance; Adam divides by sqrt(v), which turns float noise in near-zero gradients into
# steps of the full learning rate
CLIPPED = {"training_spec.max_grad_norm": 0.5, "training_spec.epochs": 2, "training_spec.learning_rate": 0.05,
           "training_spec.optimizer": {"name": "SGD", "momentum": 0.9},
           "training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.5}}


def weights(result):
    return torch.load(result.checkpoint_path, weights_only=True)["model"]


def scored_slots_per_batch(root, batch_size):
    from sequifier.config.metadata import read_metadata
    from sequifier.train.data import make_batch_sources

    cfg = make_config(root, **{"training_spec.batch_size": batch_size})
    metadata = read_metadata(os.path.join(root, "configs/metadata_configs/tiny.json"))
    batches, _ = make_batch_sources(cfg, metadata, ["itemId", "itemValue"], torch.device("cpu"))
    batches.set_epoch(1)
    return [int(b.target_mask.sum()) for b in batches]


def test_k_micro_batches_give_the_update_of_one_batch_of_k_times_b(tmp_path):
    root_big, root_acc, root_small = (make_project(tmp_path / n, context=3) for n in ("big", "acc", "small"))
    assert len(set(scored_slots_per_batch(root_acc, 8))) > 1  # padding falls unevenly
    big = train(root_big, **CLIPPED, **{"training_spec.batch_size": 16})
    accumulated = train(root_acc, **CLIPPED, **{"training_spec.batch_size": 8,
                                                "training_spec.gradient_accumulation_steps": 2})
    small = train(root_small, **CLIPPED, **{"training_spec.batch_size": 8})
    a, b, c = weights(big), weights(accumulated), weights(small)
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    assert not all(torch.allclose(a[k], c[k], rtol=1e-4, atol=1e-5) for k in a)  # the test can tell
    assert [r.train_loss for r in accumulated.history] == pytest.approx([r.train_loss for r in big.history],
                                                                        rel=1e-5)
    assert [r.val_loss for r in accumulated.history] == pytest.approx([r.val_loss for r in big.history], rel=1e-5)


def test_steps_logging_checkpoints_and_schedules_count_optimizer_steps(tmp_path):
    root = make_project(tmp_path)  # 160 windows, batch 16: 10 micro-batches, 4 steps of 3 per epoch
    per_batch = {"training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.9},
                 "training_spec.scheduler_step_on": "batch", "training_spec.gradient_accumulation_steps": 3,
                 "training_spec.save_interval_steps": 3, "training_spec.log_interval": 2,
                 "training_spec.epochs": 2}
    result = train(root, **per_batch)
    log = log_text(result)
    assert "epoch 1 step 2/4: train loss" in log and "epoch 1 step 4/4" in log and "batch" not in log.split(
        "epoch 1 step 2/4")[1].split("\n")[0]
    assert "3 accumulated batches of 16 per optimizer step" in log
    checkpoint = torch.load(result.checkpoint_path, weights_only=True)
    assert checkpoint["scheduler"]["last_epoch"] == 8  # 2 epochs x 4 optimizer steps
    # every 3rd optimizer step (global 3, 6), after whole steps: micro-batch 9 of epoch 1, 6 of epoch 2
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "checkpoints", "*batch*")))
    assert names == ["tiny-epoch-0001-batch-000009.pt", "tiny-epoch-0002-batch-000006.pt"]


def test_resume_from_a_mid_epoch_checkpoint_with_accumulation_is_exact(tmp_path):
    settings = {"training_spec.gradient_accumulation_steps": 3, "training_spec.save_interval_steps": 3,
                "training_spec.epochs": 2, "training_spec.dropout": 0.2,
                "training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.7},
                "training_spec.scheduler_step_on": "batch"}
    straight = train(make_project(tmp_path / "a"), **settings)
    root = make_project(tmp_path / "b")
    train(root, **settings)
    for name in ("tiny-epoch-0002.pt", "tiny-epoch-0002-batch-000006.pt", "tiny-epoch-0001.pt"):
        os.remove(os.path.join(root, "checkpoints", name))
    resumed = train(root, **settings)
    assert resumed.resumed_from.endswith("tiny-epoch-0001-batch-000009.pt")
    a, b = weights(straight), weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]


@pytest.mark.parametrize("value", [0, -2])
def test_gradient_accumulation_steps_must_be_at_least_one(tmp_path, value):
    p = Problems()
    training_spec_rules(make_config(tmp_path, **{"training_spec.gradient_accumulation_steps": value}), p)
    assert p.lines == [f"training_spec.gradient_accumulation_steps: must be >= 1, got {value}"]
