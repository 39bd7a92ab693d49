"""continue_training / overwrite: resuming is exact, existing outputs are never replaced unasked."""

import functools
import glob
import os

import pytest
import torch
from helpers.train_data import log_text, make_config, make_project, train

from sequifier.errors import SequifierError
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")

# dropout consumes the torch RNG and StepLR carries state, so both must be restored
RESUMABLE = {"training_spec.dropout": 0.2, "training_spec.enforce_determinism": True,
             "training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.7},
             "training_spec.optimizer": {"name": "AdEMAMix", "alpha_warmup": 10, "beta3_warmup": 10}}


train = functools.partial(train, defaults=RESUMABLE)


def names(root, folder="checkpoints"):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, folder, "*")))


def test_two_plus_two_epochs_equal_four(tmp_path):
    straight = train(make_project(tmp_path / "a"), **{"training_spec.epochs": 4})
    root = make_project(tmp_path / "b")
    first = train(root, **{"training_spec.epochs": 2})
    resumed = train(root, **{"training_spec.epochs": 4})
    assert first.resumed_from is None and resumed.resumed_from.endswith("tiny-epoch-0002.pt")
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in straight.history]
    a = torch.load(straight.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(a["state"]["best_model"][k], b["state"]["best_model"][k]) for k in a["model"])
    assert (resumed.best_epoch, resumed.best_val_loss) == (straight.best_epoch, straight.best_val_loss)


def test_warmup_cosine_per_batch_resumes_exactly(tmp_path):
    warmup = {"training_spec.scheduler": {"name": "WarmupCosineLR", "warmup_fraction": 0.3},
              "training_spec.scheduler_step_on": "batch", "training_spec.max_grad_norm": 0.5}
    # The schedule spans the configured run, so "interrupted" here is a 4-epoch run whose
    # last two checkpoints are lost: it resumes from epoch 2 on the same curve.
    straight = train(make_project(tmp_path / "a"), **warmup, **{"training_spec.epochs": 4})
    root = make_project(tmp_path / "b")
    train(root, **warmup, **{"training_spec.epochs": 4})
    for epoch in (3, 4):
        os.remove(os.path.join(root, "checkpoints", f"tiny-epoch-000{epoch}.pt"))
    resumed = train(root, **warmup, **{"training_spec.epochs": 4})
    assert resumed.resumed_from.endswith("tiny-epoch-0002.pt")
    assert [r.learning_rate for r in resumed.history] == [r.learning_rate for r in straight.history]
    assert [r.val_loss for r in resumed.history] == [r.val_loss for r in straight.history]
    a = torch.load(straight.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["scheduler"] == b["scheduler"] and b["scheduler"]["last_epoch"] == 40  # 4 epochs x 10 batches


def test_warmup_longer_than_the_run_is_refused_before_any_file_is_touched(tmp_path):
    root = make_project(tmp_path)
    train(root, **{"training_spec.epochs": 1})
    before = names(root)
    too_long = {"training_spec.scheduler": {"name": "WarmupCosineLR", "warmup_steps": 30},
                "training_spec.scheduler_step_on": "batch", "training_spec.epochs": 3,
                "training_spec.continue_training": False}
    with pytest.raises(SequifierError, match=r"training_spec.scheduler: WarmupCosineLR rejected .*"
                                             r"warmup_steps \(30\) must be shorter than the run \(30 scheduler steps\)"):
        train(root, overwrite=True, **too_long)
    assert names(root) == before  # the outputs it would replace are still there


def test_resume_of_a_finished_run_trains_nothing(tmp_path):
    root = make_project(tmp_path)
    done = train(root, **{"training_spec.epochs": 2})
    again = train(root, **{"training_spec.epochs": 2})
    assert again.last_epoch == 2 and again.history == done.history
    assert names(root) == ["tiny-epoch-0001.pt", "tiny-epoch-0002.pt"]
    with open(again.log_path) as f:
        assert "has already trained 2 of training_spec.epochs=2 epochs; nothing left to train" in f.read()


def test_existing_outputs_need_overwrite(tmp_path):
    root = make_project(tmp_path)
    train(root, **{"training_spec.epochs": 2})
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(root, "checkpoints", "*"))}
    with pytest.raises(SequifierError, match=r"model_name 'tiny': outputs of an earlier run exist.*overwrite: true"):
        train(root, **{"training_spec.continue_training": False, "training_spec.epochs": 1})
    assert {p: os.path.getmtime(p) for p in before} == before
    fresh = train(root, overwrite=True, **{"training_spec.continue_training": False, "training_spec.epochs": 1})
    assert fresh.resumed_from is None and names(root) == ["tiny-epoch-0001.pt"]
    # another model_name is independent
    assert train(root, model_name="other", **{"training_spec.continue_training": False,
                                              "training_spec.epochs": 1}).resumed_from is None


def test_exported_models_without_checkpoints_are_protected(tmp_path):
    root = make_project(tmp_path)
    os.makedirs(os.path.join(root, "models"))
    with open(os.path.join(root, "models", "sequifier-tiny-best-3.onnx"), "w") as f:
        f.write("x")
    with pytest.raises(SequifierError, match="sequifier-tiny-best-3.onnx"):
        train(root, **{"training_spec.epochs": 1})


def test_checkpoint_of_another_architecture_is_refused_with_the_fix(tmp_path):
    root = make_project(tmp_path)
    train(root, **{"training_spec.epochs": 1})
    before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(root, "*", "*"))}
    for changed, field in (({"model_spec.dim_feedforward": 64}, "model_spec.dim_feedforward: 32 -> 64"),
                           ({"training_spec.optimizer": {"name": "AdamW"}}, 'training_spec.optimizer.name: "AdEMAMix" -> "AdamW"'),
                           ({"training_spec.scheduler": {"name": "ExponentialLR", "gamma": 0.9}},
                            'training_spec.scheduler.name: "StepLR" -> "ExponentialLR"')):
        with pytest.raises(SequifierError) as e:
            train(root, **{"training_spec.epochs": 2, **changed})
        message = str(e.value)
        assert len(message.splitlines()) == 1 and field in message, message
        assert "model_name=NEW_NAME" in message and "continue_training=false overwrite=true" in message
    assert {p: os.path.getmtime(p) for p in before} == before  # nothing touched


def test_changed_loop_settings_are_applied_and_logged(tmp_path):
    root = make_project(tmp_path)
    train(root, **{"training_spec.epochs": 1, "training_spec.learning_rate": 0.01})
    changed = {"training_spec.epochs": 2, "training_spec.learning_rate": 0.02, "training_spec.batch_size": 8,
               "training_spec.scheduler": {"name": "StepLR", "step_size": 1, "gamma": 0.5},
               "training_spec.optimizer": {"name": "AdEMAMix", "alpha_warmup": 10, "beta3_warmup": 10,
                                           "weight_decay": 0.1}}
    resumed = train(root, **changed)
    log = log_text(resumed)
    for line in ("training_spec.learning_rate: 0.01 -> 0.02", "training_spec.epochs: 1 -> 2",
                 "training_spec.batch_size: 16 -> 8", "training_spec.scheduler.gamma: 0.7 -> 0.5",
                 "training_spec.optimizer.weight_decay: (unset) -> 0.1"):
        assert f"changed since the checkpoint, applied: {line}" in log, log
    # epoch 2 ran with the new base rate, decayed once by the old gamma (StepLR after epoch 1)
    assert resumed.history[-1].learning_rate == pytest.approx(0.02 * 0.7)
    state = torch.load(resumed.checkpoint_path, weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.1 and group["lr"] == pytest.approx(0.02 * 0.7 * 0.5)
    assert state["scheduler"]["gamma"] == 0.5 and state["config"]["training_spec"]["learning_rate"] == 0.02


def test_finished_run_with_a_changed_lr_logs_it_and_exports_nothing_new(tmp_path):
    root = make_project(tmp_path)
    cfg = {"export_onnx": False, "export_pt": True, "training_spec.epochs": 1}
    run_train(make_config(root, **cfg))
    models = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(root, "models", "*"))}
    again = run_train(make_config(root, **cfg, **{"training_spec.learning_rate": 0.5}))
    assert {p: os.path.getmtime(p) for p in models} == models
    assert again.best_model_paths == [os.path.join(root, "models", "sequifier-tiny-best.pt")]
    log = log_text(again)
    assert "changed since the checkpoint, applied: training_spec.learning_rate" in log
    assert "models left as they are (set overwrite: true to export them again)" in log


def test_a_run_killed_before_its_export_gets_its_models_on_rerun(tmp_path):
    """Killed after the last checkpoint, before the export: the rerun has nothing left to
    train, and exports (without overwrite) instead of leaving the project without models."""
    root = make_project(tmp_path)
    cfg = {"export_onnx": False, "export_pt": True, "training_spec.epochs": 1}
    run_train(make_config(root, **cfg), export=False)  # as if killed right before the export
    assert names(root, "models") == []
    again = run_train(make_config(root, **cfg))
    assert again.resumed_from is not None and again.last_epoch == 1
    assert again.best_model_paths == [os.path.join(root, "models", "sequifier-tiny-best.pt")]
    assert "exporting its best and last states (the run that trained them ended before its export)" in log_text(again)


def test_real_export_and_resumed_export_replaces_earlier_files(tmp_path):
    root = make_project(tmp_path)
    cfg = {"export_onnx": False, "export_pt": True, "training_spec.epochs": 1}
    first = run_train(make_config(root, **cfg))
    assert names(root, "models") == ["sequifier-tiny-best-1.pt", "sequifier-tiny-best.pt",
                                     "sequifier-tiny-last-1.pt", "sequifier-tiny-last.pt"]
    assert first.best_model_paths[0].endswith("sequifier-tiny-best.pt")
    resumed = run_train(make_config(root, **{**cfg, "training_spec.epochs": 2}))
    assert resumed.resumed_from is not None
    # the stable names hold the new best/last; epoch-named twins of epoch 1 are gone
    assert names(root, "models") == sorted([f"sequifier-tiny-best-{resumed.best_epoch}.pt", "sequifier-tiny-best.pt",
                                            "sequifier-tiny-last-2.pt", "sequifier-tiny-last.pt"])


@pytest.mark.parametrize("bad", [
    {"training_spec.criterion": {"itemId": "MSELoss"}},  # refused by the loss builder's own check
    {"training_spec.scheduler": {"name": "StepLR", "step_size": "abc"}},  # fails in its first step
])
def test_a_config_error_with_overwrite_deletes_nothing(tmp_path, bad):
    root = make_project(tmp_path)
    train(root, **{"training_spec.epochs": 1})
    before = names(root)
    with pytest.raises(SequifierError):
        train(root, **{"training_spec.epochs": 1, "overwrite": True,
                       "training_spec.continue_training": False, **bad})
    assert names(root) == before != []


def test_resumed_run_continues_its_log_and_tensorboard_folder_with_hparams(tmp_path):
    root = make_project(tmp_path)
    first = train(root, **{"training_spec.epochs": 1})
    resumed = train(root, **{"training_spec.epochs": 2})
    assert resumed.log_path == first.log_path
    assert log_text(resumed).count("resuming from") == 1 and "epoch 1/1" in log_text(resumed)
    boards = glob.glob(os.path.join(root, "logs", "tensorboard", "tiny", "*"))
    assert len(boards) == 1
    events = b"".join(open(p, "rb").read() for p in glob.glob(os.path.join(boards[0], "events.*")))
    assert b"_hparams_/session_start_info" in events and b"hparams/best_val_loss" in events
    assert b"training_spec.learning_rate" in events
