"""End-to-end runs of the training loop on tiny generated data (export skipped)."""

import glob
import math
import os
import re

import pytest
import torch
from helpers.train_data import log_text, make_config, make_project, train

from sequifier.errors import SequifierError
from sequifier.train import run as run_module
from sequifier.train.data import InRamBatches
from sequifier.train.run import run_train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def root(tmp_path):
    return make_project(tmp_path)


def checkpoints(root):
    return sorted(os.path.basename(p) for p in glob.glob(os.path.join(root, "checkpoints", "*.pt")))


def final_weights(result):
    return torch.load(result.checkpoint_path, weights_only=True)["model"]


def test_loss_decreases(root):
    result = train(root, **{"training_spec.epochs": 4})
    losses = [r.val_loss for r in result.history]
    assert losses[-1] < losses[0] * 0.8
    assert result.history[-1].train_loss < result.history[0].train_loss
    assert result.best_val_loss == min(losses) and result.last_epoch == 4
    assert result.best_epoch == 1 + losses.index(min(losses))


def test_seed_gives_identical_runs_and_different_seeds_differ(tmp_path):
    runs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        root = make_project(tmp_path / name)
        runs[name] = train(root, **{"training_spec.epochs": 1, "training_spec.seed": seed,
                                    "training_spec.dropout": 0.1, "training_spec.enforce_determinism": True})
    assert runs["a"].history[0].train_loss == runs["b"].history[0].train_loss  # bit-identical
    assert runs["a"].history[0].val_loss == runs["b"].history[0].val_loss
    wa, wb = final_weights(runs["a"]), final_weights(runs["b"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert runs["a"].history[0].train_loss != runs["c"].history[0].train_loss


def test_enforce_determinism_switches_deterministic_algorithms(root, monkeypatch):
    seen = []
    original = InRamBatches.__iter__

    def spy(self):
        seen.append(torch.are_deterministic_algorithms_enabled())
        return original(self)

    monkeypatch.setattr(InRamBatches, "__iter__", spy)
    train(root, model_name="on", **{"training_spec.epochs": 1, "training_spec.enforce_determinism": True})
    assert seen and all(seen)
    assert not torch.are_deterministic_algorithms_enabled()  # restored afterwards
    seen.clear()
    train(root, model_name="off", **{"training_spec.epochs": 1})
    assert seen and not any(seen)


def test_dropout_learning_rate_and_batch_size_take_effect(tmp_path):
    def one(name, **overrides):
        return train(make_project(tmp_path / name), **{"training_spec.epochs": 1, **overrides})

    base = one("base")
    assert one("dropout", **{"training_spec.dropout": 0.5}).history[0].train_loss != base.history[0].train_loss
    fast = one("lr", **{"training_spec.learning_rate": 0.05})
    assert fast.history[0].learning_rate == 0.05 and fast.history[0].train_loss != base.history[0].train_loss
    big = one("bs", **{"training_spec.batch_size": 80, "training_spec.log_interval": 1})
    assert "batch 2/2" in log_text(big) and "batch 3/" not in log_text(big)


def test_optimizer_and_scheduler_step_on(tmp_path):
    def one(name, **overrides):
        return train(make_project(tmp_path / name), **{"training_spec.epochs": 2, **overrides})

    step = {"name": "StepLR", "step_size": 1, "gamma": 0.5}
    by_epoch = one("e", **{"training_spec.scheduler": step})
    assert [r.learning_rate for r in by_epoch.history] == [0.01, 0.005]
    by_batch = one("b", **{"training_spec.scheduler": step, "training_spec.scheduler_step_on": "batch"})
    assert by_batch.history[0].learning_rate == pytest.approx(0.01 * 0.5**10)  # 10 batches
    ademamix = one("a", **{"training_spec.optimizer": {"name": "AdEMAMix", "alpha": 2.0, "alpha_warmup": 5}})
    state = torch.load(ademamix.checkpoint_path, weights_only=True)["optimizer"]
    assert "exp_avg_slow" in next(iter(state["state"].values()))
    assert state["param_groups"][0]["alpha"] == 2.0
    with pytest.raises(SequifierError, match="training_spec.optimizer.gamma"):
        one("x", **{"training_spec.optimizer": {"name": "Adam", "gamma": 1}})


def test_loss_weights_combine_targets(root):
    result = train(root, **{"training_spec.epochs": 1, "training_spec.loss_weights": {"itemValue": 0.25}})
    record = result.history[0]
    assert record.val_loss == pytest.approx(record.val_losses["itemId"] + 0.25 * record.val_losses["itemValue"])


def test_class_weights_change_training(tmp_path):
    base = train(make_project(tmp_path / "a"), **{"training_spec.epochs": 1})
    weighted = train(make_project(tmp_path / "b"), **{"training_spec.epochs": 1,
                                                      "training_spec.class_weights": {"itemId": {105: 5.0}}})
    assert weighted.history[0].val_losses["itemId"] != base.history[0].val_losses["itemId"]


def test_early_stopping(tmp_path):
    # SGD steps of 1e-30 leave float32 weights unchanged: the validation loss never improves
    frozen = {"training_spec.learning_rate": 1e-30, "training_spec.optimizer": {"name": "SGD"},
              "training_spec.epochs": 8}
    stopped = train(make_project(tmp_path / "a"), **frozen, **{"training_spec.early_stopping_epochs": 2})
    assert stopped.last_epoch == 3 and stopped.best_epoch == 1
    assert "early stopping" in log_text(stopped)
    assert train(make_project(tmp_path / "b"), **frozen).last_epoch == 8


def test_save_interval_and_final_checkpoint(root):
    train(root, **{"training_spec.epochs": 5, "training_spec.save_interval_epochs": 2})
    assert checkpoints(root) == ["tiny-epoch-0002.pt", "tiny-epoch-0004.pt", "tiny-epoch-0005.pt"]
    assert not glob.glob(os.path.join(root, "checkpoints", ".tmp*"))


def test_logs_file_and_tensorboard(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(root, **{"training_spec.log_interval": 3, "training_spec.epochs": 2})
    text = log_text(result)
    assert os.path.basename(result.log_path).startswith("sequifier-tiny-")
    for epoch in (1, 2):
        for batch in (3, 6, 9):
            assert f"epoch {epoch} batch {batch}/10: train loss" in text
        assert f"epoch {epoch}/2: train loss" in text
    assert "batch 10/10" not in text and "validation loss" in text and "itemValue" in text
    assert "predicted class shares" not in text
    runs = glob.glob(os.path.join(root, "logs", "tensorboard", "tiny", "*"))
    assert len(runs) == 1
    events = EventAccumulator(runs[0])
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "epoch/train_loss", "epoch/validation_loss", "epoch/learning_rate",
            "epoch/validation_loss/itemId"} <= tags
    assert len(events.Scalars("train/loss")) == 6


def test_class_share_log_columns(root):
    result = train(root, **{"training_spec.epochs": 1, "training_spec.class_share_log_columns": ["itemId"]})
    line = next(x for x in log_text(result).splitlines() if "predicted class shares for itemId" in x)
    shares = [float(part.split(": ")[1]) for part in line.split("(validation): ")[1].split(", ")]
    assert math.isclose(sum(shares), 1.0, abs_tol=1e-3)
    assert any(f"{100 + v}:" in line for v in range(10))  # original values, not ids
    with pytest.raises(SequifierError, match="class_share_log_columns: 'itemValue'"):
        train(root, model_name="x", **{"training_spec.class_share_log_columns": ["itemValue"]})


def test_nan_loss_stops_without_saving_the_nan_state(root, monkeypatch):
    original = InRamBatches.gather

    def poisoned(self, index):
        batch = original(self, index)
        if self.shuffle and self.epoch == 2:
            batch.inputs["itemValue"] = batch.inputs["itemValue"] * float("nan")
        return batch

    monkeypatch.setattr(InRamBatches, "gather", poisoned)
    with pytest.raises(SequifierError, match=r"training loss at epoch 2, batch \d+ is nan.*tiny-epoch-0001"):
        train(root, **{"training_spec.epochs": 3})
    assert checkpoints(root) == ["tiny-epoch-0001.pt"]
    state = torch.load(os.path.join(root, "checkpoints", "tiny-epoch-0001.pt"), weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_compile_wraps_the_model(root, monkeypatch):
    calls = []

    def fake_compile(model, *args, **kwargs):
        calls.append(model)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    train(root, model_name="eager", **{"training_spec.epochs": 1})
    assert calls == []
    train(root, model_name="compiled", **{"training_spec.epochs": 1, "training_spec.compile": True})
    assert len(calls) == 1


def test_layer_type_dtypes_and_autocast(root, monkeypatch):
    from sequifier.model.transformer import SequifierModel

    seen = []
    original = SequifierModel.forward

    def spy(self, inputs, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu"))
        return original(self, inputs, **kwargs)

    monkeypatch.setattr(SequifierModel, "forward", spy)
    bf16 = {"training_spec.epochs": 1, "training_spec.layer_type_dtypes": {"linear": "bfloat16"}}
    result = train(root, model_name="amp", **bf16)
    assert set(seen) == {torch.bfloat16}
    weights = final_weights(result)
    assert any(v.dtype == torch.bfloat16 for v in weights.values())
    seen.clear()
    train(root, model_name="noamp", **bf16, **{"training_spec.layer_autocast": False})
    assert set(seen) == {False}
    seen.clear()
    train(root, model_name="fp32", **{"training_spec.epochs": 1})  # CPU fp32: no autocast
    assert set(seen) == {False}


def test_input_columns_subset_reaches_the_model(root):
    result = train(root, input_columns=["itemId"], **{
        "training_spec.epochs": 1, "model_spec.feature_embedding_dims": {"itemId": 16}})
    keys = final_weights(result).keys()
    assert any("itemId" in k for k in keys) and not any("embedding" in k and "itemValue" in k for k in keys)


def test_bad_inputs_are_one_line_errors(root):
    if not torch.cuda.is_available():
        with pytest.raises(SequifierError, match="training_spec.device: cuda is not available"):
            train(root, **{"training_spec.device": "cuda"})
    with pytest.raises(SequifierError, match="target_columns"):
        train(root, target_columns=["nope"], target_column_types={"nope": "real"},
              **{"training_spec.criterion": {"nope": "MSELoss"}})
    assert checkpoints(root) == []


def test_export_called_for_best_and_last(root, monkeypatch):
    import sys
    import types

    calls = []
    fake = types.ModuleType("sequifier.export")

    def export_models(model, layout, cfg, models_dir, tag, epoch, extra_metadata):
        calls.append((tag, epoch, {k: v.clone() for k, v in model.state_dict().items()}))
        return [os.path.join(models_dir, f"sequifier-{cfg.model_name}-{tag}-{epoch}.onnx")]

    fake.export_models = export_models
    monkeypatch.setitem(sys.modules, "sequifier.export", fake)
    result = run_train(make_config(root, **{"training_spec.learning_rate": 1e-30, "training_spec.optimizer": {"name": "SGD"},
                                            "training_spec.epochs": 2}))
    assert [(c[0], c[1]) for c in calls] == [("best", 1), ("last", 2)]
    assert result.best_model_paths[0].endswith("tiny-best-1.onnx")
    # what the CLI returns to a sweeper: the best epoch's validation loss
    assert isinstance(result, run_module.TrainResult) and result.best_epoch == 1
    assert result.best_val_loss == result.history[0].val_loss < float("inf")


def test_real_compile_of_a_tiny_model_trains_like_eager(tmp_path, monkeypatch):
    """torch.compile for real: dynamo traces the model and AOT autograd its backward (the
    aot_eager backend: no C++ code generation, a few seconds; inductor: the slow test below)."""
    real_compile, compiled_models = torch.compile, []

    def aot_eager(model, *args, **kwargs):
        compiled_models.append(model)
        return real_compile(model, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", aot_eager)
    small = {"training_spec.epochs": 1}
    eager = run_train(make_config(make_project(tmp_path / "a", n_train=32, n_val=16), **small), export=False)
    compiled = run_train(make_config(make_project(tmp_path / "b", n_train=32, n_val=16),
                                     **small, **{"training_spec.compile": True}), export=False)
    assert len(compiled_models) == 1
    assert compiled.history[0].val_loss == pytest.approx(eager.history[0].val_loss, rel=1e-4)
    assert compiled.history[0].train_loss == pytest.approx(eager.history[0].train_loss, rel=1e-4)


@pytest.mark.slow
def test_real_compile_trains_like_eager(tmp_path):
    eager = train(make_project(tmp_path / "a"), **{"training_spec.epochs": 1})
    compiled = train(make_project(tmp_path / "b"), **{"training_spec.epochs": 1, "training_spec.compile": True})
    assert compiled.history[0].val_loss == pytest.approx(eager.history[0].val_loss, rel=1e-3)


def test_tied_embeddings_train_and_log_the_parameter_saving(root):
    dims = {"model_spec.feature_embedding_dims": {"itemId": 4, "itemValue": 12}}
    untied = train(root, model_name="untied", **dims)
    tied = train(root, model_name="tied", **dims, **{"training_spec.epochs": 3, "model_spec.tie_embeddings": True})
    count = lambda result: int(re.search(r"([\d,]+) parameters", log_text(result)).group(1).replace(",", ""))  # noqa: E731
    # itemId (12 classes, width 4, dim_model 16): the 12 x 16 head matrix becomes a 4 x 16 projection
    assert count(untied) - count(tied) == 12 * 16 - 4 * 16
    assert f"parameters ({12 * 16 - 4 * 16} fewer than untied: tie_embeddings itemId)" in log_text(tied)
    losses = [r.val_loss for r in tied.history]
    assert losses[-1] < losses[0]


# ---- gradient clipping (training_spec.max_grad_norm) -------------------------------------

def _weight_change(root, name, **overrides):
    settings = {"training_spec.optimizer": {"name": "SGD"}, "training_spec.learning_rate": 0.05,
                "training_spec.epochs": 1, "training_spec.log_interval": 5, **overrides}
    before = run_train(make_config(root, model_name=name + "-0", **{**settings, "training_spec.epochs": 1,
                                                                     "training_spec.learning_rate": 1e-12}),
                       export=False)
    after = train(root, model_name=name, **settings)
    start, end = final_weights(before), final_weights(after)
    change = torch.sqrt(sum(((end[k] - start[k]) ** 2).sum() for k in start))
    return float(change), after


def test_clipping_bounds_every_update_and_logs_the_norm(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    free, free_run = _weight_change(root, "free")
    clipped, clipped_run = _weight_change(root, "clipped", **{"training_spec.max_grad_norm": 0.01})
    n_steps = 10  # 160 windows / batch 16
    # plain SGD: each step moves the weights by lr * (clipped) gradient, at most 0.05 * 0.01
    assert clipped <= n_steps * 0.05 * 0.01 * (1 + 1e-4)
    assert free > 10 * clipped
    norms = [float(m) for m in re.findall(r"grad norm ([\d.e+-]+) \(clipped (\d+)/5\)", log_text(clipped_run))
             for m in m[:1]]
    assert len(norms) == 2 and min(norms) > 0.01  # the pre-clip norm is logged
    assert "grad norm" in log_text(free_run) and "clipped" not in log_text(free_run)
    runs = glob.glob(os.path.join(root, "logs", "tensorboard", "clipped", "*"))
    events = EventAccumulator(runs[0])
    events.Reload()
    assert [e.value for e in events.Scalars("train/grad_norm")] == pytest.approx(norms, rel=5e-3)  # log: 3 digits


def test_clipping_sees_unscaled_gradients_under_a_gradient_scaler(root, monkeypatch):
    from sequifier.train import loop

    plain = train(root, model_name="plain", **{"training_spec.max_grad_norm": 0.05})
    original = loop.Trainer.__init__

    def with_scaler(self, **kwargs):
        original(self, **kwargs)
        self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)

    monkeypatch.setattr(loop.Trainer, "__init__", with_scaler)
    scaled = train(root, model_name="scaled", **{"training_spec.max_grad_norm": 0.05})
    norms = lambda r: [float(x) for x in re.findall(r"grad norm ([\d.e+-]+)", log_text(r))]  # noqa: E731
    # Unscaled first: the same norms as without a scaler, not 4096 times larger.
    assert norms(scaled) == pytest.approx(norms(plain), rel=5e-3)
    torch.testing.assert_close(final_weights(scaled), final_weights(plain), rtol=1e-4, atol=1e-5)


def test_warmup_cosine_per_batch_in_the_loop_and_decay_groups_logged_once(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(root, **{"training_spec.scheduler": {"name": "WarmupCosineLR", "warmup_steps": 5},
                            "training_spec.scheduler_step_on": "batch", "training_spec.epochs": 3,
                            "training_spec.log_interval": 1,
                            "training_spec.optimizer": {"name": "AdamW", "weight_decay": 0.1}})
    runs = glob.glob(os.path.join(root, "logs", "tensorboard", "tiny", "*"))
    events = EventAccumulator(runs[0])
    events.Reload()
    lrs = [e.value for e in events.Scalars("train/learning_rate")]  # after each of the 30 batches
    assert len(lrs) == 30
    # logged after each step: the rate of the next batch (batch 6 is the first at the full rate)
    assert all(a < b for a, b in zip(lrs[:4], lrs[1:5])) and lrs[4] == pytest.approx(0.01)
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:])) and lrs[-1] == pytest.approx(0.001)
    text = log_text(result)
    assert text.count("weight decay 0.1 on matrices (") == 1
    assert "none on embeddings (2 tensors" in text and "norms (" in text and "biases (" in text
    # stepped per epoch, the coarse schedule is said in one line
    epoch_steps = train(root, model_name="per-epoch", **{
        "training_spec.scheduler": {"name": "WarmupCosineLR", "warmup_steps": 1}, "training_spec.epochs": 2})
    assert "WarmupCosineLR moves once per epoch" in log_text(epoch_steps)
