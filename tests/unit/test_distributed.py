"""DDP set-up: backend choice, torchrun join, spawned gloo ranks on CPU, rank-0-only output."""

import glob
import logging
import os

import numpy as np
import pytest
import torch
from helpers.train_data import make_config, make_project  # noqa: E402

from sequifier.config.schema import TrainingSpec  # noqa: E402
from sequifier.data.lazy import LazyWindowLoader  # noqa: E402
from sequifier.errors import SequifierError  # noqa: E402
from sequifier.train import distributed  # noqa: E402
from sequifier.train.run import run_train  # noqa: E402


def spec(**kw) -> TrainingSpec:
    base = dict(device="cpu", epochs=1, batch_size=4, learning_rate=0.1, criterion={},
                save_interval_epochs=1, distributed=True, world_size=2, backend="gloo")
    base.update(kw)
    return TrainingSpec(**base)


# ---- checks without processes ----------------------------------------------------------

def test_nccl_on_cpu_falls_back_to_gloo_with_a_log_line(caplog):
    with caplog.at_level(logging.WARNING):
        assert distributed.choose_backend("nccl", "cpu", announce=True) == "gloo"
    assert "using gloo" in caplog.text
    assert distributed.choose_backend("gloo", "cpu") == "gloo"


def test_unknown_backend_and_bad_world_size_are_user_errors():
    with pytest.raises(SequifierError, match="training_spec.backend: 'mpi'"):
        distributed.check_supported(spec(backend="mpi"))
    with pytest.raises(SequifierError, match="world_size must be >= 1"):
        distributed.check_supported(spec(world_size=0))
    if not torch.cuda.is_available():
        with pytest.raises(SequifierError, match="CUDA devices"):
            distributed.check_supported(spec(device="cuda", backend="gloo"))
    # the rule applies where the value takes effect: a one-process run does not use it
    # (run.py logs it as unused instead, see test_unused_backend_is_logged)
    distributed.check_supported(spec(distributed=False, backend="mpi"))
    distributed.check_supported(spec(distributed=False, backend="nccl"))


def test_single_process_helpers_are_identity():
    assert distributed.is_main_process()
    model = torch.nn.Linear(2, 2)
    assert distributed.wrap_model(model, spec()) is model
    t = torch.tensor([1.0, 2.0])
    assert distributed.sum_across_ranks(t) is t and distributed.mean_across_ranks(t) is t
    assert distributed.rank_device("cuda") == "cuda"


def test_torchrun_ranks_other_than_0_write_no_hydra_files(monkeypatch):
    assert distributed.hydra_overrides_for_rank() == []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert "hydra.output_subdir=null" in distributed.hydra_overrides_for_rank()
    monkeypatch.setenv("RANK", "0")
    assert distributed.hydra_overrides_for_rank() == []


def _report_context(value):
    ctx = distributed.context()
    t = distributed.sum_across_ranks(torch.tensor([float(value)]))
    return ctx.rank, ctx.world_size, ctx.backend, float(t[0])


def test_under_torchrun_the_process_joins_the_group(monkeypatch):
    # torchrun's environment for a group of one: this process is rank 0 and joins it.
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(distributed._free_port())).items():
        monkeypatch.setenv(k, v)
    result = distributed.launch(_report_context, (3,), spec(world_size=4, backend="nccl"))
    assert result == (0, 1, "gloo", 3.0)  # torchrun's world size wins; nccl -> gloo on cpu
    assert not distributed.context().enabled and not torch.distributed.is_initialized()


# ---- spawned gloo ranks ----------------------------------------------------------------

def _ddp_steps(folder, batch_size, lr):
    """Train a linear model on this rank's shard group; rank 0 returns the weights."""
    ctx = distributed.context()
    loader = LazyWindowLoader(folder, ["itemValue"], batch_size, seed=3,
                              rank=ctx.rank, world_size=ctx.world_size)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    ddp = distributed.wrap_model(model, spec())
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loader.set_epoch(0)
    for batch in loader:
        x = batch["columns"]["itemValue"]
        loss = ((ddp(x[:, :-1]).squeeze(1) - x[:, -1]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()], len(loader)


def test_ddp_update_equals_single_process_on_the_global_batch(tmp_path):
    root = make_project(tmp_path, n_train=128, n_val=16, write_format="pt")
    folder = os.path.join(root, "data/tiny-split0")
    params, steps = distributed.launch(_ddp_steps, (folder, 8, 0.05), spec())
    # The same steps in one process: global batch k = rank 0's batch k + rank 1's batch k.
    loaders = [LazyWindowLoader(folder, ["itemValue"], 8, seed=3, rank=r, world_size=2)
               for r in range(2)]
    for lo in loaders:
        lo.set_epoch(0)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    n = 0
    for b0, b1 in zip(*loaders):
        losses = [((model(b["columns"]["itemValue"][:, :-1]).squeeze(1)
                    - b["columns"]["itemValue"][:, -1]) ** 2).mean() for b in (b0, b1)]
        opt.zero_grad()
        ((losses[0] + losses[1]) / 2).backward()  # DDP averages the ranks' gradients
        opt.step()
        n += 1
    assert n == steps == 8
    for got, want in zip(params, model.parameters()):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


def test_two_gloo_ranks_train_like_one_process_over_the_same_global_batch(tmp_path):
    root = make_project(tmp_path, n_train=256, n_val=64, write_format="pt")
    # with clipping: DDP clips the averaged (global) gradient, as one process does
    common = {"read_format": "pt", "training_spec.epochs": 2, "training_spec.max_grad_norm": 0.5,
              "training_spec.log_interval": 4}
    ddp = run_train(make_config(root, model_name="ddp", **common,
                                **{"training_spec.distributed": True,
                                   "training_spec.world_size": 2,
                                   "training_spec.batch_size": 16}))
    single = run_train(make_config(root, model_name="single", **common,
                                   **{"training_spec.batch_size": 32}), export=False)
    ddp_curve = np.array([[h.train_loss, h.val_loss] for h in ddp.history])
    single_curve = np.array([[h.train_loss, h.val_loss] for h in single.history])
    assert ddp_curve.shape == (2, 2)
    # Same model init, same global batch size; only the order of windows differs.
    np.testing.assert_allclose(ddp_curve, single_curve, rtol=0.08)
    assert ddp_curve[-1, 1] < ddp_curve[0, 1]
    # baselines need no model: summed over the two ranks they equal the one-process ones
    for column, by_name in single.baselines.items():
        for name, want in by_name.items():
            got = ddp.baselines[column][name]
            assert got["count"] == want["count"] > 0
            assert got == pytest.approx(want, rel=1e-9)
    assert [h.val_metrics["itemId"]["count"] for h in ddp.history] == \
        [h.val_metrics["itemId"]["count"] for h in single.history]
    # rank 0 alone wrote checkpoints, logs and exports (one set, no per-rank copies)
    assert len(glob.glob(os.path.join(root, "checkpoints", "ddp-*"))) == 2
    assert len(glob.glob(os.path.join(root, "logs", "sequifier-ddp-*.txt"))) == 1
    with open(glob.glob(os.path.join(root, "logs", "sequifier-ddp-*.txt"))[0]) as f:
        assert "grad norm" in f.read()
    assert ddp.best_model_paths and all(os.path.isfile(p) for p in ddp.best_model_paths)


@pytest.mark.parametrize("write_format,sharded", [("parquet", True)])
def test_ddp_on_tabular_formats_with_loader_workers(tmp_path, write_format, sharded):
    # Spawned ranks that start their own DataLoader worker: the dataset must pickle.
    root = make_project(tmp_path, n_train=96, n_val=32, write_format=write_format,
                        sharded=sharded, per_shard=16)
    # the launcher's log file (Hydra's run-folder log): rank 0 logs through it as well
    launcher_log = logging.FileHandler(tmp_path / "train.log")
    launcher_log.setFormatter(logging.Formatter("[launcher format] %(message)s"))
    root_logger = logging.getLogger()
    root_logger.addHandler(launcher_log)
    level = root_logger.level
    root_logger.setLevel(logging.INFO)
    try:
        result = run_train(make_config(root, model_name="ddp", read_format=write_format,
                                       **{"training_spec.distributed": True,
                                          "training_spec.world_size": 2,
                                          "training_spec.num_workers": 1,
                                          "training_spec.batch_size": 16}), export=False)
    finally:
        root_logger.removeHandler(launcher_log)
        root_logger.setLevel(level)
        launcher_log.close()
    losses = [h.val_loss for h in result.history]
    assert len(losses) == 2 and np.isfinite(losses).all()
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert "[launcher format] epoch 2/2: train loss" in "\n".join(lines)
    assert sum("training ddp:" in line for line in lines) == 1  # rank 0 only


@pytest.mark.parametrize("write_format,sharded", [("pt", True), ("parquet", True),
                                                  ("parquet", False), ("csv", False)])
def test_each_rank_reads_only_its_own_part(tmp_path, write_format, sharded):
    root = make_project(tmp_path, n_train=96, n_val=16, write_format=write_format,
                        sharded=sharded, per_shard=16)
    path = os.path.join(root, "data", "tiny-split0" + ("" if sharded else f".{write_format}"))
    seen, read = [], []
    for rank in range(2):
        loader = LazyWindowLoader(path, ["itemId"], 8, read_format=write_format, seed=3,
                                  rank=rank, world_size=2, max_ram_gb=float("inf"))
        loader.set_epoch(0)
        seen.append(np.concatenate([b["sequenceId"].numpy() for b in loader]))
        read.append(sum(w.sequence_id.size for w in loader.cache._entries.values()))
    assert sorted(np.concatenate(seen).tolist()) == list(range(96))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert read == [48, 48]  # each rank loaded its half of the windows, nothing more


def test_a_rank_without_data_is_one_line(tmp_path):
    root = make_project(tmp_path, n_train=1, n_val=16, write_format="parquet")
    with pytest.raises(SequifierError, match="training_data_path: '.*tiny-split0.parquet' "
                                             "holds too few windows"):
        distributed.launch(_streamed_sources, (make_config(
            root, read_format="parquet", **{"training_spec.distributed": True,
                                            "training_spec.world_size": 2,
                                            "training_spec.batch_size": 2}),), spec())


def test_a_split_too_small_for_the_ranks_is_refused_before_they_start(tmp_path, monkeypatch):
    root = make_project(tmp_path, n_train=64, n_val=2, write_format="parquet", sharded=True, per_shard=1)

    def no_launch(*args):
        raise AssertionError("ranks started")

    monkeypatch.setattr(distributed, "launch", no_launch)
    cfg = make_config(root, read_format="parquet", **{"training_spec.distributed": True,
                                                      "training_spec.world_size": 3,
                                                      "training_spec.backend": "gloo",
                                                      "training_spec.device": "cpu"})
    with pytest.raises(SequifierError, match=r"validation_data_path: '.*tiny-split1' holds too few "
                                             r"windows \(2\) to give each of 3 rank/worker streams"):
        run_train(cfg, export=False)
    assert sorted(os.listdir(root)) == ["configs", "data"]


def _streamed_sources(cfg):
    from sequifier.config.metadata import read_metadata
    from sequifier.train.data import make_batch_sources

    metadata = read_metadata(os.path.join(cfg.project_root, cfg.metadata_config_path))
    make_batch_sources(cfg, metadata, ["itemId"], torch.device("cpu"))


def test_an_error_in_a_rank_reaches_the_caller_as_one_line(tmp_path):
    root = make_project(tmp_path, n_train=64, n_val=16, write_format="pt")
    for shard in glob.glob(os.path.join(root, "**", "*.pt"), recursive=True):
        with open(shard, "wb") as f:  # only the ranks read the shards
            f.write(b"not a shard")
    cfg = make_config(root, read_format="pt", **{"training_spec.load_full_data_to_ram": False,
                                                 "training_spec.distributed": True,
                                                 "training_spec.world_size": 2})
    with pytest.raises(SequifierError, match="shard .* cannot be read"):
        run_train(cfg, export=False)


def _validation_metric_sums(folder):
    """Metric sums of a fixed predictor over this rank's windows, summed over the ranks."""
    from sequifier.train.batch import make_batch
    from sequifier.train.scoring import ScoredTarget, reduce_sums

    ctx = distributed.context()
    loader = LazyWindowLoader(folder, ["itemId", "itemValue"], 5, shuffle=False, seed=0,
                              rank=ctx.rank, world_size=ctx.world_size)
    loader.set_epoch(0)
    table = torch.randn(12, 12, generator=torch.Generator().manual_seed(0))
    targets = [ScoredTarget("itemId", "categorical", 3, n_classes=12),
               ScoredTarget("itemValue", "real", 3, std=2.0)]
    sums = {t.column: torch.zeros(4 if t.column_type == "categorical" else 3, dtype=torch.float64)
            for t in targets}
    for raw in loader:
        batch = make_batch(raw["columns"], raw["targetStart"], ["itemId", "itemValue"],
                           ["itemId", "itemValue"], torch.device("cpu"))
        outputs = {"itemId": table[batch.inputs["itemId"]], "itemValue": 0.5 * batch.inputs["itemValue"]}
        for t in targets:
            sums[t.column] += t.sums(outputs[t.column], batch)
    return reduce_sums(sums)


def test_validation_metric_sums_over_two_ranks_equal_one_process(tmp_path):
    root = make_project(tmp_path, n_train=16, n_val=77, write_format="pt", context=2)
    folder = os.path.join(root, "data/tiny-split1")
    two = distributed.launch(_validation_metric_sums, (folder,), spec())
    one = _validation_metric_sums(folder)
    for column in one:
        assert two[column][0] == one[column][0] > 0  # counts exact
        torch.testing.assert_close(two[column], one[column], rtol=1e-12, atol=1e-9)


# ---- FSDP2 -------------------------------------------------------------------------------

def _weights(root, model_name):
    from sequifier.train.checkpoint import latest_checkpoint, load_checkpoint

    return load_checkpoint(latest_checkpoint(os.path.join(root, "checkpoints"), model_name))["model"]


def test_fsdp_trains_to_the_ddp_weights_and_resumes_from_a_full_checkpoint(tmp_path):
    root = make_project(tmp_path, n_train=64, n_val=16, write_format="parquet")
    common = {"read_format": "parquet", "training_spec.distributed": True,
              "training_spec.world_size": 2, "training_spec.batch_size": 8,
              "training_spec.max_grad_norm": 0.5}  # clipping runs on FSDP's sharded grads
    ddp = run_train(make_config(root, model_name="ddp", **common), export=False)
    # FSDP: one epoch, then a resumed run continues to epoch 2 from the full checkpoint
    fsdp = {**common, "training_spec.data_parallelism": "fsdp"}
    run_train(make_config(root, model_name="fsdp", **fsdp, **{"training_spec.epochs": 1}),
              export=False)
    first = _weights(root, "fsdp")
    assert all(v.device.type == "cpu" and not hasattr(v, "placements") for v in first.values())
    resumed = run_train(make_config(root, model_name="fsdp", **fsdp))
    assert resumed.resumed_from is not None and resumed.last_epoch == 2
    got, want = _weights(root, "fsdp"), _weights(root, "ddp")
    assert got.keys() == want.keys()
    for key in want:
        # reduce-scatter vs all-reduce sum in another order: float noise, which Adam's
        # normalisation makes relative to the step size (lr 0.01), not to the weight
        torch.testing.assert_close(got[key], want[key], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose([h.val_loss for h in resumed.history],
                               [h.val_loss for h in ddp.history], rtol=1e-4)
    assert resumed.best_model_paths and all(os.path.isfile(p) for p in resumed.best_model_paths)


def test_fsdp_shards_mixed_layer_dtypes_one_group_per_dtype(tmp_path):
    # bfloat16 linears beside float32 norms in one block: FSDP2 takes one parameter dtype
    # per group ("FSDP expects uniform original parameter dtype"), so each dtype is a unit
    root = make_project(tmp_path, n_train=32, n_val=16, write_format="parquet")
    result = run_train(make_config(root, **{
        "read_format": "parquet", "training_spec.distributed": True, "training_spec.world_size": 2,
        "training_spec.batch_size": 8, "training_spec.epochs": 1, "training_spec.max_grad_norm": 1.0,
        "training_spec.data_parallelism": "fsdp",
        "training_spec.layer_type_dtypes": {"linear": "bfloat16", "norm": "float32"}}), export=False)
    assert np.isfinite(result.history[-1].val_loss)
    weights = _weights(root, "tiny")
    assert weights["blocks.0.attention.qkv.weight"].dtype == torch.bfloat16
    assert weights["blocks.0.norm_attention.weight"].dtype == torch.float32


def _mesh_of_wrapped(device_type):
    from torch.distributed.tensor import DTensor

    model = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(4, 4)]), torch.nn.Linear(4, 2))
    distributed.wrap_model(model, spec(data_parallelism="fsdp", world_size=1), torch.device(device_type))
    return {p.device_mesh.device_type for p in model.parameters() if isinstance(p, DTensor)}


def test_fsdp_builds_its_mesh_for_the_training_device(monkeypatch):
    # FSDP's default mesh is the machine's accelerator: on a GPU machine a device: cpu run
    # would get CUDA shards beside CPU batches. The mesh follows the training device.
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(distributed._free_port())).items():
        monkeypatch.setenv(k, v)
    import torch.distributed.device_mesh as device_mesh

    asked = []
    real = device_mesh.init_device_mesh
    monkeypatch.setattr(device_mesh, "init_device_mesh",
                        lambda device_type, *a, **kw: asked.append(device_type) or real(device_type, *a, **kw))
    assert distributed.launch(_mesh_of_wrapped, ("cpu",), spec(world_size=1)) == {"cpu"}
    assert asked == ["cpu"]


def _ddp_broadcasts_buffers():
    from sequifier.model.layers import RotaryEmbedding

    model = torch.nn.Sequential(torch.nn.Linear(8, 8), RotaryEmbedding(8, 16, 10000.0))
    return distributed.wrap_model(model, spec(world_size=1)).broadcast_buffers


def test_ddp_does_not_broadcast_the_constant_rope_tables(monkeypatch):
    from sequifier.model.layers import RotaryEmbedding

    # the model's only buffers are the RoPE tables: non-persistent constants (nothing to sync)
    rope = RotaryEmbedding(8, 16, 10000.0)
    assert set(dict(rope.named_buffers())) == rope._non_persistent_buffers_set == {"cos", "sin"}
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(distributed._free_port())).items():
        monkeypatch.setenv(k, v)
    assert distributed.launch(_ddp_broadcasts_buffers, (), spec(world_size=1)) is False


def test_the_final_barrier_waits_for_rank_0s_export_longer_than_a_collective(monkeypatch):
    # the other ranks wait in the last barrier while rank 0 exports; that wait runs on a
    # gloo group of its own with FINISH_TIMEOUT, not under the 5-minute collective timeout
    for k, v in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                     MASTER_PORT=str(distributed._free_port())).items():
        monkeypatch.setenv(k, v)
    groups, barriers = [], []
    new_group, barrier = torch.distributed.new_group, torch.distributed.barrier

    def spy_group(*a, **kw):
        groups.append((kw.get("backend"), kw.get("timeout"), new_group(*a, **kw)))
        return groups[-1][2]

    monkeypatch.setattr(torch.distributed, "new_group", spy_group)
    monkeypatch.setattr(torch.distributed, "barrier",
                        lambda *a, **kw: barriers.append(kw.get("group")) or barrier(*a, **kw))
    distributed.launch(_report_context, (1,), spec(world_size=1))
    assert distributed.FINISH_TIMEOUT > distributed.COLLECTIVE_TIMEOUT
    assert [(b, t) for b, t, _ in groups] == [("gloo", distributed.FINISH_TIMEOUT)]
    assert barriers == [groups[0][2]]


def _accumulated_gradients(parallelism):
    """Two micro-batches per rank (rank-dependent data) through `gradient_sync`: rank 0 returns
    its gradient after the first (not synced) and after the second (synced) backward."""
    ctx = distributed.context()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    wrapped = distributed.wrap_model(model, spec(data_parallelism=parallelism), torch.device("cpu"))
    x = torch.arange(16, dtype=torch.float32).reshape(4, 4) * (ctx.rank + 1)
    seen = []
    for i, micro in enumerate((x[:2], x[2:])):
        with distributed.gradient_sync(wrapped, sync=i == 1):
            wrapped(micro).sum().backward()
        grad = model[1].weight.grad  # FSDP keeps an unsynced gradient unsharded, inside
        grad = grad.full_tensor() if hasattr(grad, "full_tensor") else grad
        seen.append(None if grad is None else grad.detach().clone())
    return seen


@pytest.mark.parametrize("parallelism", ["ddp", pytest.param("fsdp", marks=pytest.mark.slow)])
def test_accumulation_micro_batches_skip_the_all_reduce_until_the_last(parallelism):
    first, last = distributed.launch(_accumulated_gradients, (parallelism,), spec())
    # the same sums in one process: rank r's data is x * (r + 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
    x = torch.arange(16, dtype=torch.float32).reshape(4, 4)
    model(x[:2]).sum().backward()
    local = model[1].weight.grad.clone()
    model.zero_grad()
    for r in (1, 2):  # both ranks, both micro-batches, averaged over the ranks
        model(x * r).sum().backward()
    averaged = model[1].weight.grad / 2
    if parallelism == "ddp":  # rank 0's own gradient until the last micro-batch
        torch.testing.assert_close(first, local)
    torch.testing.assert_close(last, averaged)
