"""The GPU smoke test: what a person with one (or two) CUDA GPUs runs to see that sequifier
trains, resumes, infers and evaluates on them. Started by `bench/gpu_smoke.sh` (which
exits at once on a machine without CUDA); about 5 minutes on one GPU.

Every check runs the real command line (`python -m sequifier.cli ...`) on the demo's
generated table, in a fresh project under bench/out/gpu_smoke (or --folder), and looks
for the evidence in the command's own log: the device and autocast dtype of the first
training line, "resuming from", the execution provider infer names. The last lines are
the table: one row per check, PASS / FAIL / SKIP and what was seen. Exit status 0 when
no check failed, 1 otherwise. docs/gpu.md says what each row should show.

`--cpu` runs the same commands with device cpu and skips what needs a GPU: a check of
this script itself on a machine without one (it says nothing about GPUs).

usage: bench/gpu_smoke.sh [--folder DIR]      python bench/gpu_smoke.py --cpu
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RESULTS: list[tuple[str, str, str]] = []  # (check, PASS/FAIL/SKIP, detail)
DEVICE = "cuda"

PREPROCESS = {
    "project_root": ".", "data_path": "data/data.csv", "read_format": "csv", "write_format": "parquet",
    "seq_length": 48, "split_ratios": [0.8, 0.1, 0.1], "stride_by_split": [2, 48, 48], "overwrite": True,
}
TRAIN = {
    "project_root": ".", "metadata_config_path": "configs/metadata_configs/data.json", "model_name": "smoke",
    "read_format": "parquet", "target_columns": ["itemId", "value"],
    "target_column_types": {"itemId": "categorical", "value": "real"}, "seq_length": 48,
    "export_generative_model": True, "export_embedding_model": False, "inference_batch_size": 256,
    "export_pt": True, "export_onnx": True, "overwrite": True,
    "model_spec": {"dim_model": 128, "n_head": 4, "num_layers": 2, "dim_feedforward": 256,
                   "initial_embedding_dim": 128,
                   "feature_embedding_dims": {"itemId": 64, "category": 16, "value": 48}},
    "training_spec": {"device": "cuda", "epochs": 1, "batch_size": 128, "learning_rate": 0.003,
                      "optimizer": {"name": "AdamW", "weight_decay": 0.01},
                      "criterion": {"itemId": "CrossEntropyLoss", "value": "MSELoss"},
                      "save_interval_epochs": 1, "log_interval": 50, "continue_training": False,
                      "layer_autocast": True},
}
INFER = {
    "project_root": ".", "metadata_config_path": "configs/metadata_configs/data.json",
    "read_format": "parquet", "write_format": "csv", "model_type": "generative", "seq_length": 48,
    "inference_batch_size": 256, "overwrite": True,
}
EVALUATE = {
    "project_root": ".", "metadata_config_path": "configs/metadata_configs/data.json",
    "read_format": "parquet", "inference_batch_size": 256, "overwrite": True,
}


def record(check: str, ok: bool | None, detail: str) -> None:
    status = "SKIP" if ok is None else ("PASS" if ok else "FAIL")
    RESULTS.append((check, status, detail))
    print(f"[{status}] {check}: {detail}", flush=True)


def sequifier(folder: str, *args: str, timeout: int = 600) -> tuple[int, str]:
    """Run `sequifier ARGS` in the project; (exit status, stdout + stderr)."""
    started = time.time()
    if DEVICE != "cuda" and args[0] == "train":
        args = (*args, f"training_spec.device={DEVICE}")
    done = subprocess.run([sys.executable, "-m", "sequifier.cli", *args], cwd=folder, capture_output=True,
                          text=True, timeout=timeout)
    out = done.stdout + done.stderr
    with open(os.path.join(folder, "smoke.log"), "a") as f:
        f.write(f"\n$ sequifier {' '.join(args)}  ({time.time() - started:.1f} s, exit {done.returncode})\n{out}")
    return done.returncode, out


def last_error(out: str) -> str:
    lines = [line for line in out.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["(no output)"])[-1][:160]


def train(folder: str, check: str, *overrides: str, expect: str | None = None, timeout: int = 600) -> str | None:
    """Train with `overrides`; record PASS when it ends well (and its output matches
    `expect`, a regex); its output, or None when it failed."""
    code, out = sequifier(folder, "train", *overrides, timeout=timeout)
    if code != 0:
        record(check, False, last_error(out))
        return None
    if expect is not None:
        found = re.search(expect, out)
        if not found:
            record(check, False, f"finished, but its log shows no /{expect}/")
            return None
        record(check, True, found.group(0)[:160])
    return out


def first_line(out: str) -> str:
    found = re.search(r"training \S+: [^\n]*", out)
    return found.group(0) if found else "(no first training line)"


# ---- the checks ----------------------------------------------------------------------

def versions() -> dict:
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "gpus": torch.cuda.device_count()}
    if DEVICE == "cuda":
        props = torch.cuda.get_device_properties(0)
        memory = props.total_memory / 2**30
        info["gpu0"] = f"{props.name}, compute capability {props.major}.{props.minor}, {memory:.0f} GiB"
    info["native_bf16"] = DEVICE == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    try:
        import onnxruntime as ort

        info["onnxruntime"] = f"{ort.__version__} {ort.get_available_providers()}"
    except ImportError as e:
        info["onnxruntime"] = f"not importable ({e})"
    record("versions", True, ", ".join(f"{k} {v}" for k, v in info.items()))
    return info


def make_data(folder: str) -> bool:
    sys.path.insert(0, ROOT)
    from sequifier.demo import demo_table
    from sequifier.make import make_project

    if os.path.exists(folder):
        shutil.rmtree(folder)
    make_project(folder)
    n_sequences = 600 if DEVICE == "cuda" else 40  # --cpu: the commands, not the speed
    demo_table(n_sequences=n_sequences, min_len=80, max_len=160).to_csv(os.path.join(folder, "data", "data.csv"),
                                                                        index=False)
    for name, cfg in (("preprocess", PREPROCESS), ("train", TRAIN), ("infer", INFER), ("evaluate", EVALUATE)):
        with open(os.path.join(folder, "configs", f"{name}.yaml"), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    code, out = sequifier(folder, "preprocess")
    record("preprocess", code == 0, f"demo table, {n_sequences} sequences" if code == 0 else last_error(out))
    return code == 0


def train_checks(folder: str, info: dict) -> None:
    amp = "bfloat16" if info["native_bf16"] else "float16"
    expect = rf"device cuda[^\n]*autocast torch\.{amp}[^\n]*" if DEVICE == "cuda" else r"device cpu[^\n]*"
    out = train(folder, f"train on {DEVICE}", "training_spec.epochs=2", expect=expect)
    if out is not None:
        train(folder, "resume", "training_spec.epochs=3", "training_spec.continue_training=true",
              expect=r"resuming from [^\n]*")
    train(folder, "compile: true", "model_name=smoke-compile", "training_spec.compile=true",
          expect=r"epoch 1/1: [^\n]*")
    train(folder, "MQA, autocast", "model_name=smoke-mqa", "model_spec.attention_type=mqa",
          expect=r"epoch 1/1: [^\n]*")
    train(folder, "MQA, float32 (no autocast)", "model_name=smoke-mqa32", "model_spec.attention_type=mqa",
          "training_spec.layer_autocast=false", expect=r"epoch 1/1: [^\n]*")
    if info["native_bf16"] or DEVICE == "cpu":
        train(folder, "bf16 layer dtypes", "model_name=smoke-bf16",
              "training_spec.layer_type_dtypes={linear: bfloat16, decoder: bfloat16}",
              expect=r"epoch 1/1: [^\n]*")
    else:
        record("bf16 layer dtypes", None, "no native bfloat16 on this GPU (emulated: slower than float32)")
    train(folder, "lazy loading, 2 workers", "model_name=smoke-lazy", "training_spec.load_full_data_to_ram=false",
          "training_spec.num_workers=2", expect=r"epoch 1/1: [^\n]*")
    for ranks in (1, 2):
        for parallelism in ("ddp", "fsdp"):
            check = f"{parallelism.upper()} world_size {ranks}"
            if ranks > info["gpus"] and DEVICE == "cuda" or ranks > 1 and DEVICE == "cpu":
                record(check, None, f"needs {ranks} GPUs, {info['gpus']} found")
                continue
            train(folder, check, f"model_name=smoke-{parallelism}{ranks}", "training_spec.distributed=true",
                  f"training_spec.world_size={ranks}", "training_spec.backend=nccl",
                  f"training_spec.data_parallelism={parallelism}", expect=r"epoch 1/1: [^\n]*")
    losses = []
    for run in (1, 2):
        out = train(folder, f"enforce_determinism (run {run})", "model_name=smoke-det",
                    "training_spec.enforce_determinism=true")
        if out is None:
            return
        losses.append(re.findall(r"validation loss ([0-9.]+)", out))
    record("enforce_determinism", losses[0] == losses[1] and bool(losses[0]),
           f"two runs: validation losses {losses[0]} and {losses[1]}")


SYNC_COUNTER = r'''
import sys, warnings
import torch
from sequifier.train import loop
counted = []
original = loop.Trainer.train_epoch
def train_epoch(self, epoch, state):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            return original(self, epoch, state)
        finally:
            torch.cuda.set_sync_debug_mode(0)
            counted.append((sum("synchroniz" in str(w.message) for w in seen), len(self.train_batches)))
loop.Trainer.train_epoch = train_epoch
from sequifier.cli import main
try:
    main(sys.argv[1:])
except SystemExit as e:
    if e.code not in (0, None):
        raise
print("SYNCS", counted)
'''


def sync_count(folder: str) -> None:
    if DEVICE != "cuda":
        record("syncs in one epoch", None, "needs a GPU")
        return
    done = subprocess.run([sys.executable, "-c", SYNC_COUNTER, "train", "model_name=smoke-sync"], cwd=folder,
                          capture_output=True, text=True, timeout=600)
    found = re.search(r"SYNCS \[\((\d+), (\d+)\)\]", done.stdout)
    if not found:
        record("syncs in one epoch", False, last_error(done.stdout + done.stderr))
        return
    syncs, batches = int(found.group(1)), int(found.group(2))
    # the loop reads its loss once per log_interval (50) batches and at the end
    record("syncs in one epoch", syncs <= batches // 50 + 5,
           f"{syncs} synchronising calls over {batches} batches (log_interval 50)")


def flash_attention(info: dict) -> None:
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    sys.path.insert(0, ROOT)
    from sequifier.model.layers import CausalSelfAttention, RotaryEmbedding

    if DEVICE != "cuda":
        record("flash attention, bf16", None, "needs a GPU")
        return
    props = torch.cuda.get_device_properties(0)
    if props.major < 8:
        record("flash attention, bf16", None, f"compute capability {props.major}.{props.minor} < 8.0")
        return
    for kv_heads, name in ((4, "MHA"), (1, "MQA")):
        layer = CausalSelfAttention(128, 4, kv_heads, RotaryEmbedding(32, 256, 10000.0)).cuda()
        x = torch.randn(8, 256, 128, device="cuda")
        try:
            with torch.autocast("cuda", torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                y = layer(x)
            y.float().sum().backward()
            record(f"flash attention, bf16, {name}", True, "the model's attention runs on the flash kernel")
        except RuntimeError as e:
            record(f"flash attention, bf16, {name}", False, str(e).splitlines()[0][:160])


def infer_checks(folder: str) -> None:
    models = os.path.join(folder, "models")
    provider = "CUDAExecutionProvider" if DEVICE == "cuda" else "CPUExecutionProvider"
    for ext, expect in (("pt", rf"torch \S+ on {DEVICE}\S*"), ("onnx", rf"onnxruntime \S+ on {provider}")):
        path = f"models/sequifier-smoke-best.{ext}"
        if not os.path.exists(os.path.join(models, f"sequifier-smoke-best.{ext}")):
            record(f"infer .{ext} on {DEVICE}", False, f"{path} was not exported")
            continue
        for command in ("infer", "evaluate"):
            code, out = sequifier(folder, command, f"model_path={path}", f"device={DEVICE}")
            found = re.search(expect, out)
            record(f"{command} .{ext} on {DEVICE}", code == 0 and found is not None,
                   found.group(0) if code == 0 and found else last_error(out))


def throughput(folder: str, info: dict) -> None:
    """samples/s of one epoch of a larger model, and its model FLOP utilisation against
    the GPU's measured dense matmul rate in the autocast dtype."""
    import torch

    if DEVICE != "cuda":
        record("throughput", None, "needs a GPU")
        return
    dtype = torch.bfloat16 if info["native_bf16"] else torch.float16
    a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    b = torch.randn(8192, 8192, device="cuda", dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    torch.cuda.synchronize()
    peak = n * 2 * 8192**3 / (time.perf_counter() - started)
    del a, b
    dim, layers, length = 512, 6, 48
    out = train(folder, "throughput", "model_name=smoke-speed", f"model_spec.dim_model={dim}",
                f"model_spec.initial_embedding_dim={dim}", "model_spec.n_head=8", f"model_spec.num_layers={layers}",
                f"model_spec.dim_feedforward={4 * dim}",
                "model_spec.feature_embedding_dims={itemId: 256, category: 64, value: 192}",
                "training_spec.batch_size=256", "training_spec.epochs=2", "training_spec.compile=true",
                "export_onnx=false", "export_pt=false")
    if out is None:
        return
    rates = re.findall(r"epoch \d+/2: [^\n]*?([0-9]+) samples/s", out)
    params = re.search(r"training smoke-speed: ([0-9,]+) parameters", out)
    if not rates or not params:
        record("throughput", False, "no samples/s or parameter count in the log")
        return
    rate, n_params = float(rates[-1]), int(params.group(1).replace(",", ""))
    # forward + backward: 6 FLOPs per parameter and token, plus causal attention scores
    flops_per_window = 6 * n_params * length + 12 * layers * length**2 * dim
    mfu = rate * flops_per_window / peak
    record("throughput", True, f"{rate:,.0f} samples/s (epoch 2, compiled), {n_params:,} parameters, "
           f"model FLOP utilisation {mfu:.1%} of the measured {peak / 1e12:.0f} TFLOP/s {str(dtype)[6:]} matmul")


def table() -> None:
    width = max(len(c) for c, _, _ in RESULTS)
    print("\nsequifier GPU smoke test")
    print(f"{'check':{width}s}  result  detail")
    for check, status, detail in RESULTS:
        print(f"{check:{width}s}  {status:6s}  {detail}")
    failed = sum(s == "FAIL" for _, s, _ in RESULTS)
    print(f"\n{len(RESULTS) - failed} of {len(RESULTS)} checks did not fail; {failed} failed")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", default=os.path.join(HERE, "out", "gpu_smoke"))
    parser.add_argument("--cpu", action="store_true", help="check this script on a machine without a GPU")
    args = parser.parse_args()
    global DEVICE
    DEVICE = "cpu" if args.cpu else "cuda"
    folder = os.path.abspath(args.folder)
    started = time.time()
    info = versions()
    if make_data(folder):
        train_checks(folder, info)
        sync_count(folder)
        infer_checks(folder)
        throughput(folder, info)
    flash_attention(info)
    table()
    print(f"({time.time() - started:.0f} s; every command's output: {folder}/smoke.log)")
    return 1 if any(s == "FAIL" for _, s, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
