"""Unit tests of the training components: registries, losses, batches, checkpoints, device."""

import math
import os
import random

import numpy as np
import pytest
import torch
from helpers.train_data import N_CLASSES, make_config, make_project

from sequifier.config.metadata import read_metadata
from sequifier.config.problems import Problems
from sequifier.config.schema import PAD_ID, TrainingSpec
from sequifier.errors import SequifierError
from sequifier.train import schedulers
from sequifier.train.ademamix import AdEMAMix
from sequifier.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from sequifier.train.data import InRamBatches, WindowTensors, make_batch_sources
from sequifier.train.device import autocast_dtype, resolve_device
from sequifier.train.losses import build_target_losses, class_weight_vector
from sequifier.train.optimizers import build_optimizer, optimizer_rules
from sequifier.train.schedulers import build_scheduler

pytestmark = pytest.mark.usefixtures("single_thread")


def params():
    return [torch.nn.Parameter(torch.zeros(3))]


# ---- optimizers ---------------------------------------------------------------------

def test_optimizer_by_name_with_kwargs():
    opt = build_optimizer(params(), {"name": "AdamW", "weight_decay": 0.3, "betas": [0.8, 0.9]}, 0.05)
    assert isinstance(opt, torch.optim.AdamW)
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["betas"]) == (0.05, 0.3, (0.8, 0.9))
    assert isinstance(build_optimizer(params(), {"name": "SGD", "momentum": 0.9}, 0.1), torch.optim.SGD)
    ademamix = build_optimizer(params(), {"name": "AdEMAMix", "alpha": 8.0, "betas": [0.9, 0.99, 0.999]}, 1e-3)
    assert isinstance(ademamix, AdEMAMix) and ademamix.param_groups[0]["alpha"] == 8.0


def test_fused_kernel_by_default_unless_chosen():
    assert build_optimizer(params(), {"name": "Adam"}, 0.1).param_groups[0]["fused"] is True
    chosen = build_optimizer(params(), {"name": "Adam", "foreach": False}, 0.1).param_groups[0]
    assert not chosen["fused"] and chosen["foreach"] is False
    assert build_optimizer(params(), {"name": "AdamW", "amsgrad": True}, 0.1).param_groups[0]["fused"]


def optimizer_problems(block, learning_rate=0.1, decay_on=("matrices",)):
    """The lines of the optimizer's rule (checked once, in the gate: the builder trusts it)."""
    p = Problems()
    optimizer_rules(TrainingSpec(optimizer=block, learning_rate=learning_rate, weight_decay_on=list(decay_on)), p)
    return p.lines


def test_optimizer_errors_name_the_field():
    assert optimizer_problems({"name": "Adamm"})[0].startswith("training_spec.optimizer.name: unknown optimizer 'Adamm'")
    assert optimizer_problems({"name": "Adam", "momentum": 0.9})[0].startswith("training_spec.optimizer.momentum")
    assert optimizer_problems({"name": "Adam", "lr": 0.9})[0].startswith("training_spec.optimizer.lr")
    assert optimizer_problems({"name": "Adam", "betas": [0.9, 1.5]})[0].startswith(
        "training_spec.optimizer: Adam rejected its arguments")


# ---- schedulers ---------------------------------------------------------------------

def test_scheduler_by_name_and_none():
    opt = build_optimizer(params(), {"name": "SGD"}, 1.0)
    sched = build_scheduler(opt, {"name": "StepLR", "step_size": 1, "gamma": 0.5}, "epoch")
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5
    assert build_scheduler(opt, {"name": "none"}, "epoch") is None
    assert build_scheduler(opt, None, "batch") is None


def test_scheduler_errors():
    opt = build_optimizer(params(), {"name": "SGD"}, 1.0)
    with pytest.raises(SequifierError, match="training_spec.scheduler.name"):
        build_scheduler(opt, {"name": "Nope"}, "epoch")
    with pytest.raises(SequifierError, match="training_spec.scheduler.gama"):
        build_scheduler(opt, {"name": "StepLR", "step_size": 1, "gama": 0.5}, "epoch")
    with pytest.raises(SequifierError, match="scheduler_step_on"):
        build_scheduler(opt, {"name": "ReduceLROnPlateau"}, "batch")
    with pytest.raises(SequifierError, match="scheduler_step_on"):
        build_scheduler(opt, {"name": "StepLR", "step_size": 1}, "week")


# ---- losses -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("proj"))


@pytest.fixture(scope="module")
def metadata(project):
    return read_metadata(os.path.join(project, "configs/metadata_configs/tiny.json"))


def losses_for(project, metadata, **overrides):
    cfg = make_config(project, **overrides)
    return build_target_losses(cfg.training_spec, cfg.target_columns, cfg.target_column_types,
                               metadata, torch.device("cpu"))


def test_masked_slots_do_not_count(project, metadata):
    ce, mse = losses_for(project, metadata)
    logits = torch.randn(2, 3, N_CLASSES)
    target = torch.tensor([[PAD_ID, 4, 5], [3, 3, 3]])
    mask = torch.tensor([[False, True, True], [True, True, True]])
    loss_sum, weight = ce.sums(logits, target, mask)
    expected = torch.nn.functional.cross_entropy(logits[mask], target[mask])
    assert torch.allclose(loss_sum / weight, expected)
    # changing a masked slot's prediction or target changes nothing
    logits2, target2 = logits.clone(), target.clone()
    logits2[0, 0] = 100.0
    target2[0, 0] = 7
    assert torch.equal(ce.sums(logits2, target2, mask)[0], loss_sum)
    values = torch.randn(2, 3)
    real_target = torch.randn(2, 3)
    s, w = mse.sums(values, real_target, mask)
    assert torch.allclose(s / w, ((values - real_target)[mask] ** 2).mean())


def test_class_weights_list_and_value_map(project, metadata):
    weights = [0.0] * N_CLASSES
    weights[4] = 3.0
    weights[5] = 1.0
    assert torch.equal(class_weight_vector("itemId", weights, metadata), torch.tensor(weights))
    by_value = class_weight_vector("itemId", {102: 3.0, "103": 0.5}, metadata)
    assert by_value[4] == 3.0 and by_value[5] == 0.5 and by_value[2] == 1.0
    (ce, _) = losses_for(project, metadata, **{"training_spec.class_weights": {"itemId": weights}})
    logits = torch.randn(1, 2, N_CLASSES)
    target = torch.tensor([[4, 5]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    s, w = ce.sums(logits, target, mask)
    per_slot = torch.nn.functional.cross_entropy(logits[0], target[0], reduction="none")
    assert torch.allclose(s / w, (3 * per_slot[0] + per_slot[1]) / 4)
    with pytest.raises(SequifierError, match=r"training_spec.class_weights.itemId: value '999'"):
        class_weight_vector("itemId", {999: 1.0}, metadata)
    with pytest.raises(SequifierError, match=r"training_spec.class_weights.itemId: a list needs"):
        class_weight_vector("itemId", [1.0, 2.0], metadata)


def test_loss_weights_and_criterion_errors(project, metadata):
    _, mse = losses_for(project, metadata, **{"training_spec.loss_weights": {"itemValue": 0.25}})
    assert mse.loss_weight == 0.25
    (ce, mse) = losses_for(project, metadata, **{"training_spec.criterion": {"itemId": "NLLLoss", "itemValue": "L1Loss"}})
    assert ce.log_probs and isinstance(mse.criterion, torch.nn.L1Loss)
    with pytest.raises(SequifierError, match=r"training_spec.criterion.itemValue: no loss"):
        losses_for(project, metadata, **{"training_spec.criterion": {"itemId": "CrossEntropyLoss"}})
    with pytest.raises(SequifierError, match=r"training_spec.criterion.itemId: categorical"):
        losses_for(project, metadata, **{"training_spec.criterion": {"itemId": "MSELoss", "itemValue": "MSELoss"}})
    with pytest.raises(SequifierError, match=r"training_spec.criterion.itemValue: unknown loss 'Foo'"):
        losses_for(project, metadata, **{"training_spec.criterion": {"itemId": "CrossEntropyLoss", "itemValue": "Foo"}})
    with pytest.raises(SequifierError, match=r"training_spec.loss_weights.other"):
        losses_for(project, metadata, **{"training_spec.loss_weights": {"other": 1.0}})


def test_criterion_arguments_reach_the_loss(project, metadata):
    criteria = {"itemId": {"name": "CrossEntropyLoss", "label_smoothing": 0.2},
                "itemValue": {"name": "HuberLoss", "delta": 0.5}}
    ce, huber = losses_for(project, metadata, **{"training_spec.criterion": criteria})
    assert ce.criterion.label_smoothing == 0.2 and huber.criterion.delta == 0.5
    torch.manual_seed(0)
    logits, target = torch.randn(2, 3, N_CLASSES), torch.randint(2, N_CLASSES, (2, 3))
    mask = torch.ones(2, 3, dtype=torch.bool)
    smoothed, n = ce.sums(logits, target, mask)
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, N_CLASSES), target.reshape(-1),
                                                 label_smoothing=0.2)
    torch.testing.assert_close(smoothed / n, expected)
    # Validation measures the plain loss, so runs with and without smoothing compare.
    plain, n = ce.sums(logits, target, mask, training=False)
    torch.testing.assert_close(plain / n, torch.nn.functional.cross_entropy(
        logits.reshape(-1, N_CLASSES), target.reshape(-1)))
    # Plain names keep working and give the unsmoothed loss in training too.
    ce_plain, _ = losses_for(project, metadata)
    torch.testing.assert_close(ce_plain.sums(logits, target, mask)[0], plain)


def test_criterion_argument_errors(project, metadata):
    cases = [({"name": "CrossEntropyLoss", "weight": [1.0]}, r"criterion.itemId.weight: give per-class weights"),
             ({"name": "CrossEntropyLoss", "label_smoothing": -0.1}, r"criterion.itemId.label_smoothing: must be in \[0, 1\)"),
             ({"name": "CrossEntropyLoss", "ignore_index": 0}, r"criterion.itemId.ignore_index: padding")]
    for entry, message in cases:
        with pytest.raises(SequifierError, match=message):
            losses_for(project, metadata, **{"training_spec.criterion": {"itemId": entry, "itemValue": "MSELoss"}})
    # values are checked by running the loss once
    with pytest.raises(SequifierError, match=r"criterion.itemValue: HuberLoss rejected its arguments \{'delta': -1.0\}"):
        losses_for(project, metadata, **{"training_spec.criterion": {
            "itemId": "CrossEntropyLoss", "itemValue": {"name": "HuberLoss", "delta": -1.0}}})


# ---- batches ------------------------------------------------------------------------

def test_batches_slice_inputs_targets_and_mask():
    values = torch.arange(3 * 5).reshape(3, 5)  # 3 windows, L = 4
    data = WindowTensors({"a": values}, target_start=torch.tensor([0, 2, 4]))
    source = InRamBatches(data, ["a"], ["a"], batch_size=2, shuffle=False, seed=0, device=torch.device("cpu"))
    batches = list(source)
    assert len(source) == 2 and [b.size for b in batches] == [2, 1]
    first = batches[0]
    assert torch.equal(first.inputs["a"], values[:2, :4])
    assert torch.equal(first.targets["a"], values[:2, 1:])
    # padding 2: slots 0, 1 are pad, so target positions 0 (slot 1) is masked, 1.. are real
    assert first.target_mask.tolist() == [[True] * 4, [False, True, True, True]]
    assert batches[1].target_mask.tolist() == [[False, False, False, True]]


def test_shuffle_depends_on_seed_and_epoch_only():
    data = WindowTensors({"a": torch.arange(50).reshape(10, 5)}, torch.zeros(10, dtype=torch.int64))

    def order(seed, epoch):
        source = InRamBatches(data, ["a"], ["a"], 4, shuffle=True, seed=seed, device=torch.device("cpu"))
        source.set_epoch(epoch)
        return torch.cat([b.inputs["a"][:, 0] for b in source]).tolist()

    assert order(1, 1) == order(1, 1)
    assert order(1, 1) != order(1, 2)
    assert order(1, 1) != order(2, 1)
    assert sorted(order(3, 5)) == list(range(0, 50, 5))


def test_sources_respect_input_columns(project, metadata):
    cfg = make_config(project, input_columns=["itemId"], target_columns=["itemValue"],
                      target_column_types={"itemValue": "real"},
                      **{"training_spec.criterion": {"itemValue": "MSELoss"}})
    train, val = make_batch_sources(cfg, metadata, ["itemId"], torch.device("cpu"))
    batch = next(iter(train))
    assert set(batch.inputs) == {"itemId"} and set(batch.targets) == {"itemValue"}
    assert (train.n_samples, val.n_samples) == (160, 48)


def test_data_errors(tmp_path, metadata):
    root = make_project(tmp_path)
    cfg = make_config(root, input_columns=["nope"])
    with pytest.raises(SequifierError, match="input_columns: column 'nope'"):
        make_batch_sources(cfg, metadata, ["nope"], torch.device("cpu"))
    small = metadata.__class__(**{**metadata.__dict__, "n_classes": {"itemId": 5}})
    with pytest.raises(SequifierError, match=r"column 'itemId' holds id \d+, outside 0..4"):
        make_batch_sources(make_config(root), small, ["itemId", "itemValue"], torch.device("cpu"))
    empty_root = make_project(tmp_path / "empty", n_train=0)
    with pytest.raises(SequifierError, match="training_data_path: .* holds no windows"):
        make_batch_sources(make_config(empty_root), metadata, ["itemId"], torch.device("cpu"))
    cfg = make_config(root, training_data_path="data/missing.parquet")
    with pytest.raises(SequifierError, match="not found"):
        make_batch_sources(cfg, metadata, ["itemId"], torch.device("cpu"))


def test_pt_shards_load_like_parquet(tmp_path, metadata):
    a = make_project(tmp_path / "a")
    b = make_project(tmp_path / "b", write_format="pt")
    ta, _ = make_batch_sources(make_config(a), metadata, ["itemId", "itemValue"], torch.device("cpu"))
    meta_b = read_metadata(os.path.join(b, "configs/metadata_configs/tiny.json"))
    tb, _ = make_batch_sources(make_config(b, read_format="pt"), meta_b, ["itemId", "itemValue"], torch.device("cpu"))
    for col in ("itemId", "itemValue"):
        assert torch.equal(ta.data.values[col], tb.data.values[col])


# ---- checkpoints --------------------------------------------------------------------

def test_checkpoint_round_trip_with_weights_only(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    path = tmp_path / "checkpoints" / "m-epoch-0002.pt"
    save_checkpoint(str(path), {"model": {"w": torch.ones(2)}, "state": {"epoch": 2, "best": float("inf")}})
    expected = (torch.rand(1), np.random.rand(), random.random())
    loaded = torch.load(path, weights_only=True)  # plain containers only
    set_rng_states(loaded["rng"])
    assert (torch.rand(1), np.random.rand(), random.random()) == expected
    assert load_checkpoint(str(path))["state"]["epoch"] == 2
    save_checkpoint(str(tmp_path / "checkpoints" / "m-epoch-0010.pt"), {})
    save_checkpoint(str(tmp_path / "checkpoints" / "m-x-epoch-0099.pt"), {})
    assert latest_checkpoint(str(tmp_path / "checkpoints"), "m").endswith("m-epoch-0010.pt")
    assert not [f for f in os.listdir(tmp_path / "checkpoints") if f.startswith(".tmp")]
    assert isinstance(rng_states()["torch"], torch.Tensor)


def test_unreadable_checkpoint_is_a_user_error(tmp_path):
    bad = tmp_path / "m-epoch-0001.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(SequifierError, match="cannot be read"):
        load_checkpoint(str(bad))


# ---- device / precision -------------------------------------------------------------

def test_device_availability():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(SequifierError, match="training_spec.device: cuda is not available"):
            resolve_device("cuda")
    if not torch.backends.mps.is_available():
        with pytest.raises(SequifierError, match="training_spec.device: mps is not available"):
            resolve_device("mps")
    with pytest.raises(SequifierError, match="training_spec.device"):
        resolve_device("tpu")


def test_autocast_dtype_per_device():
    cpu = torch.device("cpu")
    assert autocast_dtype(cpu, True, None) is None  # fp32 model: no slow CPU bf16
    assert autocast_dtype(cpu, True, {"linear": "bfloat16"}) == torch.bfloat16
    assert autocast_dtype(cpu, True, {"linear": "float16"}) == torch.float16
    assert autocast_dtype(cpu, False, {"linear": "bfloat16"}) is None
    assert autocast_dtype(torch.device("mps"), True, None) == torch.float16


def test_column_in_metadata_but_missing_from_data(tmp_path, metadata):
    root = make_project(tmp_path)
    extended = metadata.__class__(**{**metadata.__dict__,
                                     "column_types": {**metadata.column_types, "extra": "real"}})
    cfg = make_config(root, input_columns=["itemId", "extra"])
    with pytest.raises(SequifierError, match=r"training_data_path: data file .* has no column\(s\) \['extra'\]"):
        make_batch_sources(cfg, extended, ["itemId", "extra"], torch.device("cpu"))


def test_progress_bar_only_on_a_terminal(tmp_path, monkeypatch):
    import sys

    from sequifier.train.logs import TrainLogger

    logger = TrainLogger(str(tmp_path), "m", tensorboard=False)
    items = [1, 2]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert logger.progress(items, 2, "epoch 1") is items
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    bar = logger.progress(items, 2, "epoch 1")
    assert bar is not items and list(bar) == items
    logger.close()


# ---- weight decay by parameter kind ---------------------------------------------------

def _tiny_model(**spec):
    from test_model import make_model

    return make_model(**spec).train()


@pytest.mark.parametrize("block", [{"name": "AdamW", "weight_decay": 0.5},
                                   {"name": "AdEMAMix", "weight_decay": 0.5}])
def test_weight_decay_reaches_matrices_only_by_default(block):
    from sequifier.train.optimizers import parameter_groups, parameters_by_kind

    model = _tiny_model(tie_embeddings=True, normalization="layer_norm")
    kinds = parameters_by_kind(model)
    assert all(kinds[k] for k in ("matrices", "embeddings", "norms", "biases"))
    before = {id(p): p.detach().clone() for p in model.parameters()}
    optimizer = build_optimizer(parameter_groups(model, block, ["matrices"]), block, 0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # the step is then weight decay alone
    optimizer.step()
    for kind, params in kinds.items():
        moved = [not torch.equal(p, before[id(p)]) for p in params]
        if kind == "matrices":
            assert all(moved), kind
            torch.testing.assert_close(params[0].detach(), before[id(params[0])] * (1 - 0.1 * 0.5))
        else:
            assert not any(moved), kind  # no decay on embeddings, norm scales/biases, biases
    # asked for: embeddings decay too
    optimizer = build_optimizer(parameter_groups(model, block, ["matrices", "embeddings"]), block, 0.1)
    table = model.embedding.tables["a"].weight
    start = table.detach().clone()
    optimizer.step()
    assert not torch.equal(table, start)


def test_decay_groups_cover_every_parameter_once_and_optimizers_without_decay():
    from sequifier.train.optimizers import parameter_groups

    model = _tiny_model(tie_embeddings=True)
    groups = parameter_groups(model, {"name": "AdamW"}, ["matrices"])
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters()) and len(set(grouped)) == len(grouped)
    assert [g.get("weight_decay") for g in groups] == [None, 0.0]  # decayed group: the block's value
    assert len(parameter_groups(model, {"name": "Rprop"}, ["matrices"])) == 1  # Rprop has no weight decay
    assert optimizer_problems({"name": "AdamW"}, decay_on=["matrices", "weights"]) == [
        "training_spec.weight_decay_on: unknown kind(s) ['weights']; use any of matrices, embeddings, norms, biases"]


# ---- warm-up + cosine ------------------------------------------------------------------

def lr_curve(scheduler, optimizer, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


@pytest.mark.parametrize("optimizer_block", [{"name": "Adam"}, {"name": "AdamW", "weight_decay": 0.01},
                                             {"name": "AdEMAMix"}, {"name": "SGD", "momentum": 0.9}])
def test_warmup_rises_then_decays_to_the_floor_with_every_optimizer(optimizer_block):
    optimizer = build_optimizer(params(), optimizer_block, 0.1)
    scheduler = build_scheduler(optimizer, {"name": "WarmupCosineLR", "warmup_steps": 4, "min_lr_ratio": 0.1},
                                "batch", total_steps=20)
    lrs = lr_curve(scheduler, optimizer, 20)
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # linear warm-up to the rate
    assert all(a > b for a, b in zip(lrs[4:], lrs[5:]))  # then strictly decreasing
    assert lrs[-1] == pytest.approx(0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # the floor, and it stays there
    fraction = build_scheduler(build_optimizer(params(), {"name": "Adam"}, 0.1),
                               {"name": "WarmupCosineLR", "warmup_fraction": 0.25}, "batch", total_steps=20)
    assert fraction.warmup_steps == 5


def test_warmup_arguments_are_checked():
    def problems(block, total):
        return schedulers.block_problems(block, "batch", total)

    assert "warmup_steps (20) must be shorter than the run (20 scheduler steps)" in problems(
        {"name": "WarmupCosineLR", "warmup_steps": 20}, 20)[0]
    assert problems({"name": "WarmupCosineLR", "warmup_steps": 20}, None) == []  # length unknown yet
    assert "not both" in problems({"name": "WarmupCosineLR", "warmup_steps": 2, "warmup_fraction": 0.1}, 20)[0]
    assert "warmup_fraction must be in [0, 1)" in problems({"name": "WarmupCosineLR", "warmup_fraction": 1.0}, 20)[0]
    assert "min_lr_ratio must be in [0, 1]" in problems({"name": "WarmupCosineLR", "min_lr_ratio": 2.0}, 20)[0]
    assert problems({"name": "WarmupCosineLR", "total_steps": 5}, 20)[0].startswith(
        "training_spec.scheduler.total_steps: WarmupCosineLR takes no argument")
