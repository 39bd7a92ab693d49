"""Inference throughput: predicted sequences per second, end to end, on 2 CPU cores.

Data: the benchmark set (../shared/bench/gen_data.py defaults, 403,730 rows, 2,000
sequences) preprocessed with seq_length 48, split_ratios [0.8, 0.1, 0.1] and
stride_by_split [8, 48, 48]; infer runs on the test split (split 2). Both are created in
bench/out/ when missing.

Model: the training benchmark's architecture (dim_model 128, n_head 4, num_layers 2,
dim_feedforward 256, swiglu; target itemId; inputs itemId, sup1, itemValue), untrained
(speed does not depend on the weights), exported to ONNX with sequifier.export.

Timed: `run_infer` as the CLI calls it - open the model, read the split, run the model
with inference_batch_size 256, map ids back, write the csv. Reported: windows / second
(best and median of the runs), plus the bare onnxruntime forward of a warmed-up session
for comparison (each infer run is a fresh session, which pays its warm-up).

usage: python bench/bench_infer.py [--runs 5] [--batch 256] [--cores 2]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
GEN_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench", "gen_data.py"))
DATASET = "bench"
SEQ_LENGTH = 48
TARGET_SEQ_PER_S = 1500


def pin_cores(n: int) -> None:
    """Use at most n cores (the figure is quoted for 2)."""
    try:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cores[:n]))
    except AttributeError:
        pass
    import torch

    torch.set_num_threads(n)


def ensure_data() -> str:
    """Metadata path of the preprocessed benchmark data (made when missing)."""
    from sequifier.config.schema import PreprocessConfig
    from sequifier.data.preprocess import run_preprocess

    csv = os.path.join(OUT, f"{DATASET}.csv")
    if not os.path.exists(csv):
        os.makedirs(OUT, exist_ok=True)
        subprocess.run([sys.executable, GEN_DATA, csv], check=True)
    # Preprocessed anew every time (about 1 s): windows left by an older version could
    # lack what the current code reads.
    run_preprocess(PreprocessConfig(
        project_root=OUT, data_path=csv, read_format="csv", write_format="parquet",
        seq_length=SEQ_LENGTH, split_ratios=[0.8, 0.1, 0.1], stride_by_split=[8, 48, 48],
        dataset_name=DATASET, overwrite=True,
    ))
    return os.path.join(OUT, "configs", "metadata_configs", f"{DATASET}.json")


def ensure_model(metadata_path: str, batch: int) -> str:
    from sequifier.config.metadata import read_metadata
    from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
    from sequifier.export import export_onnx
    from sequifier.model.transformer import build_model

    path = os.path.join(OUT, "models", "bench-infer-untrained.onnx")
    if os.path.exists(path):
        return path
    cfg = TrainConfig(
        project_root=OUT, metadata_config_path=metadata_path, model_name="bench-infer",
        target_columns=["itemId"], target_column_types={"itemId": "categorical"},
        input_columns=["itemId", "sup1", "itemValue"], seq_length=SEQ_LENGTH,
        export_generative_model=True, export_embedding_model=False, inference_batch_size=batch,
        model_spec=ModelSpec(
            dim_model=128, n_head=4, num_layers=2, dim_feedforward=256,
            initial_embedding_dim=128, activation_fn="swiglu",
            feature_embedding_dims={"itemId": 64, "sup1": 32, "itemValue": 32},
        ),
        training_spec=TrainingSpec(device="cpu", epochs=1, batch_size=batch, learning_rate=1e-3,
                                   criterion={"itemId": "CrossEntropyLoss"},
                                   save_interval_epochs=1),
    )
    model = build_model(cfg, read_metadata(metadata_path))
    export_onnx(model, path, "generative", batch, with_dropout=False)
    return path


def time_infer(model_path: str, metadata_path: str, batch: int) -> tuple:
    from sequifier.config.schema import InferConfig
    from sequifier.infer import run_infer

    cfg = InferConfig(
        project_root=OUT, model_path=model_path, metadata_config_path=metadata_path,
        model_type="generative", seq_length=SEQ_LENGTH, inference_batch_size=batch,
        read_format="parquet", write_format="csv", overwrite=True,
    )
    start = time.perf_counter()
    written = run_infer(cfg)
    seconds = time.perf_counter() - start
    with open(written[0]) as f:
        n = sum(1 for _ in f) - 1
    return n, seconds


def time_forward(model_path: str, metadata_path: str, batch: int, cores: int) -> float:
    """Bare onnxruntime forward over the same windows (no reading, mapping or writing)."""
    import numpy as np
    import onnxruntime as ort

    from sequifier.config.metadata import read_metadata
    from sequifier.data.window_files import read_windows

    metadata = read_metadata(metadata_path)
    columns = ["itemId", "sup1", "itemValue"]
    path = os.path.join(OUT, metadata.split_paths[-1])
    windows = read_windows(path, "parquet", metadata.column_types, columns)
    inputs = {
        c: np.ascontiguousarray(windows.values[c][:, :SEQ_LENGTH].astype(
            np.int64 if metadata.column_types[c] == "categorical" else np.float32))
        for c in columns
    }
    options = ort.SessionOptions()  # as sequifier's ONNX runner sets them
    options.intra_op_num_threads = cores
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    n = len(windows)

    def one_pass() -> float:
        start = time.perf_counter()
        for i in range(0, n, batch):
            session.run(None, {c: v[i:i + batch] for c, v in inputs.items()})
        return n / (time.perf_counter() - start)

    one_pass()  # warm-up: the first pass of a session allocates its memory arena
    return max(one_pass() for _ in range(3))


def start(description: str):
    """The common start of the inference benchmarks: --runs/--batch/--cores parsed, the
    process pinned to the cores, the benchmark data preprocessed; (args, metadata path)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    pin_cores(args.cores)
    return args, ensure_data()


def main() -> int:
    args, metadata_path = start(__doc__.split("\n\n")[0])
    model_path = ensure_model(metadata_path, args.batch)
    rates = []
    for _ in range(args.runs):
        n, seconds = time_infer(model_path, metadata_path, args.batch)
        rates.append(n / seconds)
        print(f"infer: {n} windows in {seconds:.2f} s -> {n / seconds:,.0f} seq/s", flush=True)
    forward = time_forward(model_path, metadata_path, args.batch, args.cores)
    best, median = max(rates), statistics.median(rates)
    print(f"infer end to end (batch {args.batch}, {args.cores} cores): best {best:,.0f} seq/s, "
          f"median {median:,.0f} seq/s (target >= {TARGET_SEQ_PER_S:,}); "
          f"bare onnxruntime forward of a warm session {forward:,.0f} seq/s")
    return 0 if median >= TARGET_SEQ_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())
