"""GPU-facing decisions as plain functions, checked on a CPU machine (issue 23).

Nothing here needs a GPU: each test feeds the function the values a GPU machine would
(device names, torchrun's environment, saved RNG states, available providers)."""

import re
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from sequifier.config.schema import TrainingSpec
from sequifier.errors import SequifierError
from sequifier.train import distributed
from sequifier.train.checkpoint import restore_cuda_rng_states

ROOT = Path(__file__).resolve().parents[2]


def spec(**kw) -> TrainingSpec:
    base = dict(device="cpu", epochs=1, batch_size=4, learning_rate=0.1, criterion={},
                save_interval_epochs=1, distributed=True, world_size=2, backend="gloo")
    base.update(kw)
    return TrainingSpec(**base)


# ---- device of each rank ---------------------------------------------------------------

@pytest.mark.parametrize("device", ["cuda:0", "cuda:1"])
def test_a_device_naming_one_gpu_is_refused_for_distributed_runs(device):
    problem = distributed.distributed_device_problem(device)
    assert problem.startswith(f"training_spec.device: '{device}' names one GPU") and "set device: cuda" in problem
    with pytest.raises(SequifierError, match="names one GPU"):
        distributed.check_supported(spec(device=device))
    assert distributed.distributed_device_problem("cuda") is None
    assert distributed.distributed_device_problem("cpu") is None
    distributed.check_supported(spec(device=device, distributed=False))  # one process: its GPU


def test_the_gpu_count_is_compared_with_the_ranks_of_this_node(monkeypatch):
    assert distributed.processes_on_this_node(3) == 3  # launch spawns all ranks here
    for k, v in dict(RANK="5", WORLD_SIZE="16", LOCAL_RANK="1", LOCAL_WORLD_SIZE="8").items():
        monkeypatch.setenv(k, v)
    assert distributed.processes_on_this_node(3) == 8  # 2 nodes x 8 GPUs: 8 here, not 16
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    distributed.check_supported(spec(device="cuda", backend="gloo"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "9")
    with pytest.raises(SequifierError, match="9 processes on this machine need 9 CUDA devices, 8 found"):
        distributed.check_supported(spec(device="cuda", backend="gloo"))


# ---- checkpoints -----------------------------------------------------------------------

def test_cuda_rng_states_from_a_machine_with_more_gpus_restore_the_ones_present():
    saved = [torch.full((4,), i, dtype=torch.uint8) for i in range(8)]
    restored = {}
    assert restore_cuda_rng_states(saved, 2, lambda state, i: restored.__setitem__(i, state)) == 2
    assert sorted(restored) == [0, 1] and all(int(restored[i][0]) == i for i in restored)
    restored.clear()
    assert restore_cuda_rng_states(saved[:1], 4, lambda state, i: restored.__setitem__(i, state)) == 1
    assert sorted(restored) == [0]


# ---- packaging -------------------------------------------------------------------------

def test_the_torch_range_admits_only_versions_with_fully_shard_and_the_norm_helpers():
    line = re.search(r'^\s*"(torch[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M)
    torch_req = Requirement(line.group(1))
    assert not torch_req.specifier.contains("2.5.1")  # no fully_shard export, no get_total_norm
    assert torch_req.specifier.contains("2.6.0")
    # the pinned wheel of the set-up satisfies it, so pip never fetches another torch
    pin = re.search(r"TORCH_PIN \?= torch==([\d.]+)", (ROOT / "Makefile").read_text()).group(1)
    assert torch_req.specifier.contains(pin)
    assert torch_req.specifier.contains(Version(torch.__version__.split("+")[0]))
    from torch.distributed.fsdp import fully_shard  # noqa: F401
    assert hasattr(torch.nn.utils, "get_total_norm") and hasattr(torch.nn.utils, "clip_grads_with_norm_")


# ---- mixed precision -------------------------------------------------------------------

def test_cuda_autocast_follows_the_layers_dtype_and_native_bf16():
    from sequifier.train.device import autocast_dtype, uses_grad_scaler

    cuda = torch.device("cuda")
    # a GPU with emulated bf16 only (V100, T4): float16 with loss scaling
    assert autocast_dtype(cuda, True, None, bf16_native=False) == torch.float16
    assert uses_grad_scaler(cuda, torch.float16)
    assert autocast_dtype(cuda, True, None, bf16_native=True) == torch.bfloat16
    assert not uses_grad_scaler(cuda, torch.bfloat16)
    # layers stored in bfloat16: autocast to their dtype, not to float16 beside them
    assert autocast_dtype(cuda, True, {"linear": "bfloat16", "norm": "float32"},
                          bf16_native=False) == torch.bfloat16
    assert autocast_dtype(cuda, False, {"linear": "bfloat16"}) is None
    # the CPU keeps its behaviour: no autocast of a float32 model, no scaler
    assert autocast_dtype(torch.device("cpu"), True, {"linear": "float16"}) == torch.float16
    assert not uses_grad_scaler(torch.device("cpu"), torch.float16)


def test_the_bf16_check_does_not_count_emulation(monkeypatch):
    from sequifier.train.device import native_bf16

    seen = {}

    def supported(including_emulation=True):
        seen["including_emulation"] = including_emulation
        return including_emulation  # a T4: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert native_bf16(torch.device("cuda")) is False and seen == {"including_emulation": False}
    assert native_bf16(torch.device("cpu")) is False



# ---- inference -------------------------------------------------------------------------

def test_onnx_on_cuda_refuses_a_session_that_fell_back_to_the_cpu():
    from sequifier.infer.model_runner import _onnx_providers, session_provider

    assert session_provider("cpu", ["CPUExecutionProvider"], "m.onnx") == "CPUExecutionProvider"
    assert session_provider("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"],
                            "m.onnx") == "CUDAExecutionProvider"
    # onnxruntime-gpu installed, but its CUDA provider failed to load: a CPU-only session
    with pytest.raises(SequifierError, match="could not start its CUDA provider") as e:
        session_provider("cuda", ["CPUExecutionProvider"], "m.onnx")
    assert "\n" not in str(e.value) and "make install-gpu" in str(e.value)
    with pytest.raises(SequifierError, match="has no CUDAExecutionProvider"):
        _onnx_providers("cuda", ["CPUExecutionProvider"], "m.onnx")
    assert _onnx_providers("cuda:1", ["CUDAExecutionProvider", "CPUExecutionProvider"], "m.onnx")[0] == \
        ("CUDAExecutionProvider", {"device_id": 1})


def test_inference_logs_the_execution_provider(tmp_path, caplog):
    import logging

    from helpers.infer_stub import export_stub

    from sequifier.infer.model_runner import OnnxRunner

    path = str(tmp_path / "m.onnx")
    export_stub(path)
    with caplog.at_level(logging.INFO, logger="sequifier.infer.model_runner"):
        runner = OnnxRunner(path, "cpu", 0)
    assert runner.provider == "CPUExecutionProvider"
    assert "m.onnx: onnxruntime" in caplog.text and "on CPUExecutionProvider" in caplog.text


# ---- model -----------------------------------------------------------------------------

def test_a_linear_under_autocast_does_not_cast_its_low_precision_input_up_and_back():
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode

    from sequifier.model.layers import Linear

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func is torch.ops.aten._to_copy.default:
                self.seen.append((tuple(args[0].shape), args[0].dtype, kwargs.get("dtype")))
            return func(*args, **kwargs)

    torch.manual_seed(0)
    linear, x = Linear(8, 4), torch.randn(3, 8).to(torch.bfloat16)
    with torch.autocast("cpu", torch.bfloat16), Casts() as casts:
        y = linear(x)
    assert [c for c in casts.seen if c[0] == (3, 8)] == []  # only weight and bias are cast
    with torch.autocast("cpu", torch.bfloat16):
        assert torch.equal(y, F.linear(x.float(), linear.weight, linear.bias))  # the same values
    # without autocast the input still follows the weight's dtype
    assert linear(x).dtype == torch.float32


# ---- batches ---------------------------------------------------------------------------

def test_a_column_that_is_input_and_target_goes_to_the_device_once():
    from sequifier.train.batch import make_batch

    rows = {"item": torch.arange(12).view(2, 6), "price": torch.randn(2, 6)}
    # "meta" stands in for a GPU: a real copy per .to(), no data
    batch = make_batch(rows, torch.tensor([1, 3]), ["item", "price"], ["item"], torch.device("meta"))
    copied = batch.inputs["item"]._base
    assert copied is not None and copied.shape == (2, 6)  # the whole window, once
    assert batch.targets["item"]._base is copied and batch.previous["item"] is batch.inputs["item"]
    assert batch.inputs["item"].device.type == "meta" and batch.target_mask.device.type == "meta"


# ---- the smoke test --------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA path")
def test_the_gpu_smoke_test_exits_at_once_with_one_line_without_cuda():
    import subprocess
    import sys

    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_smoke.sh")], capture_output=True, text=True,
                          env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
    assert done.returncode == 2 and done.stderr == ""
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("gpu_smoke: not run: no CUDA device")


def test_float32_gqa_on_cuda_repeats_its_kv_heads_with_the_same_result(monkeypatch):
    from sequifier.model import layers

    q = torch.randn(2, 4, 6, 8)
    assert not layers.expand_kv_heads(q)  # CPU and ONNX export keep enable_gqa
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert layers.expand_kv_heads(q) and not layers.expand_kv_heads(q.to(torch.bfloat16))
    monkeypatch.undo()
    torch.manual_seed(0)
    attention = layers.CausalSelfAttention(16, 4, 1, layers.RotaryEmbedding(4, 8, 10000.0))
    x = torch.randn(2, 6, 16)
    with_gqa = attention(x)
    monkeypatch.setattr(layers, "expand_kv_heads", lambda q: True)
    torch.testing.assert_close(attention(x), with_gqa, rtol=1e-6, atol=1e-6)


def test_tf32_matmuls_on_cuda_unless_determinism_is_asked_for(monkeypatch):
    from sequifier.train.device import configure_matmul

    asked = []
    monkeypatch.setattr(torch, "set_float32_matmul_precision", asked.append)
    configure_matmul(torch.device("cpu"), False)
    assert asked == []
    configure_matmul(torch.device("cuda", 1), False)
    configure_matmul(torch.device("cuda"), True)
    assert asked == ["high", "highest"]


def test_the_baselines_training_counts_read_batches_on_the_host():
    from sequifier.train.data import InRamBatches, WindowTensors, host_batches

    data = WindowTensors({"item": torch.arange(30).view(5, 6) % 7}, torch.tensor([1, 1, 2, 3, 1]))
    source = InRamBatches(data, ["item"], ["item"], 2, shuffle=False, seed=0, device=torch.device("meta"))
    assert next(iter(source)).inputs["item"].device.type == "meta"  # "meta" stands in for a GPU
    with host_batches(source) as host:
        batches = list(host)
    assert len(batches) == 3 and all(b.targets["item"].device.type == "cpu" for b in batches)
    assert source.device == torch.device("meta")
