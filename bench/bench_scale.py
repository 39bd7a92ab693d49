"""Scale benchmark: preprocess at 0.4 M / 4 M / 16 M rows, and one training epoch on the
largest table streamed from parquet shards, on 2 CPU cores.

Data: ../shared/bench/gen_data.py with --sequences 2000, 20000, 80000 (100-300 items per
sequence: 0.4 M, 4 M, 16 M rows), written as parquet to bench/out/scale/ when missing.

Preprocess: seq_length 48, split_ratios [0.8, 0.1, 0.1], default strides (48), parquet
output, `merge_output: false` (folders of parquet shards of `batches_per_file` windows),
n_cores 2, `max_ram_gb` as given (default: preprocess's default). Each step runs in a
child process; its memory is the resident set of the child and all its worker
processes, summed and sampled every 50 ms (peak reported). `--repeat N` runs every size
N times, alternating sizes, and reports medians.

Training: the preprocess benchmark's model shrunk for speed (dim_model 64, one layer;
inputs itemId, sup1, itemValue; target itemId), batch 64, 1 epoch. The 16 M-row split is
read lazily from its parquet shards (`load_full_data_to_ram: false`, `max_ram_gb: 1`) and
compared with in-RAM and lazy training on the 0.4 M-row table (samples/s of the epoch,
the loop's own measurement; all three back to back, so they share the machine's load;
with `--repeat N` the three alternate N times and medians are reported).

Goals (issue 13): preprocess peak memory flat (16 M within 1.3x of 4 M, under 2 GiB),
wall time linear in rows; lazy training under 2 GiB and within 10 % of in-RAM samples/s.

usage: nice python bench/bench_scale.py [--sizes 2000,20000,80000] [--skip-train]
                                         [--skip-preprocess] [--max-ram-gb GB] [--repeat N]
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out", "scale")
GENERATOR = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench", "gen_data.py"))
if not os.path.isfile(GENERATOR):
    GENERATOR = "/work/shared/bench/gen_data.py"
SEQ_LENGTH = 48
PAGE = os.sysconf("SC_PAGE_SIZE")


# ---- memory of a process tree ----------------------------------------------------------

def _children() -> dict:
    tree = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            tree.setdefault(int(fields[1]), []).append(int(name))
        except OSError:  # the process ended while we looked
            continue
    return tree


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants."""
    tree, todo, total = _children(), [root], 0
    while todo:
        pid = todo.pop()
        todo += tree.get(pid, [])
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def measure(cmd: list) -> tuple:
    """(wall seconds, peak summed RSS bytes, stdout) of a child process tree."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while child.poll() is None:
            peak[0] = max(peak[0], tree_rss(child.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = child.communicate()
    wall = time.perf_counter() - start
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, peak[0], out


# ---- steps (run in child processes) ----------------------------------------------------

def data_path(sequences: int) -> str:
    return os.path.join(OUT, f"gen-{sequences}.parquet")


def ensure_data(sequences: int) -> None:
    path = data_path(sequences)
    if not os.path.isfile(path):
        os.makedirs(OUT, exist_ok=True)
        subprocess.run([sys.executable, GENERATOR, path + ".tmp.parquet", "--sequences",
                        str(sequences)], check=True)
        os.replace(path + ".tmp.parquet", path)


def step_preprocess(sequences: int, max_ram_gb: str) -> None:
    from sequifier.config.schema import PreprocessConfig
    from sequifier.data.preprocess import run_preprocess

    budget = {} if max_ram_gb == "default" else {"max_ram_gb": float(max_ram_gb)}
    cfg = PreprocessConfig(
        project_root=OUT, data_path=data_path(sequences), read_format="parquet",
        write_format="parquet", merge_output=False, seq_length=SEQ_LENGTH,
        split_ratios=[0.8, 0.1, 0.1], n_cores=2, overwrite=True, dataset_name=f"s{sequences}",
        **budget)
    metadata = run_preprocess(cfg)
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(data_path(sequences)).metadata.num_rows
    print(json.dumps({"rows": rows, "splits": metadata.split_paths}))


def step_train(sequences: int, lazy: bool) -> None:
    from sequifier.config.schema import ModelSpec, TrainConfig, TrainingSpec
    from sequifier.train.run import run_train

    name = f"s{sequences}"
    cfg = TrainConfig(
        project_root=OUT, metadata_config_path=f"configs/metadata_configs/{name}.json",
        model_name=f"{name}-{'lazy' if lazy else 'ram'}", read_format="parquet",
        target_columns=["itemId"], target_column_types={"itemId": "categorical"},
        input_columns=["itemId", "sup1", "itemValue"], seq_length=SEQ_LENGTH,
        export_generative_model=True, export_embedding_model=False, inference_batch_size=64,
        overwrite=True,
        model_spec=ModelSpec(dim_model=64, n_head=4, num_layers=1, dim_feedforward=128,
                             initial_embedding_dim=64,
                             feature_embedding_dims={"itemId": 32, "sup1": 16, "itemValue": 16}),
        training_spec=TrainingSpec(
            device="cpu", epochs=1, batch_size=64, learning_rate=1e-3,
            criterion={"itemId": "CrossEntropyLoss"}, save_interval_epochs=1,
            scheduler={"name": "none"}, log_interval=1000, continue_training=False,
            load_full_data_to_ram=not lazy, max_ram_gb=1.0),
    )
    result = run_train(cfg, export=False)
    record = result.history[-1]
    print(json.dumps({"samples_per_second": record.samples_per_second,
                      "val_loss": record.val_loss}))


# ---- report ----------------------------------------------------------------------------

def _last_json(out: str) -> dict:
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="2000,20000,80000", help="sequences per table")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-preprocess", action="store_true",
                        help="train on the outputs of an earlier run of this benchmark")
    parser.add_argument("--max-ram-gb", default="default", help="preprocess's memory budget")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs per preprocess size and training step (medians)")
    parser.add_argument("--step", nargs="+", help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.step:
        kind, sequences = args.step[0], int(args.step[1])
        if kind == "preprocess":
            step_preprocess(sequences, args.step[2])
        else:
            step_train(sequences, lazy=kind == "train-lazy")
        return

    sizes = [int(s) for s in args.sizes.split(",")]
    me = [sys.executable, os.path.abspath(__file__), "--step"]
    if not args.skip_preprocess:
        preprocess_table(sizes, me, args.max_ram_gb, args.repeat)
    if not args.skip_train:
        train_table(sizes, me, args.repeat)


def preprocess_table(sizes: list, me: list, max_ram_gb: str, repeat: int) -> None:
    from statistics import median

    print(f"preprocess (parquet in, parquet shards out, n_cores 2, max_ram_gb {max_ram_gb}; "
          f"median of {repeat})")
    print("| rows | wall s | s per M rows | peak RSS, all processes |")
    print("|---|---|---|---|")
    for sequences in sizes:
        ensure_data(sequences)
    runs = {s: [] for s in sizes}
    for _ in range(repeat):  # sizes alternate, so that they share the machine's load
        for sequences in sizes:
            wall, peak, out = measure(me + ["preprocess", str(sequences), max_ram_gb])
            runs[sequences].append((wall, peak, _last_json(out)["rows"]))
    peaks = {}
    for sequences in sizes:
        wall = median(w for w, _, _ in runs[sequences])
        peaks[sequences] = median(p for _, p, _ in runs[sequences])
        rows = runs[sequences][0][2]
        print(f"| {rows / 1e6:.1f} M | {wall:.1f} | {wall / (rows / 1e6):.2f} | "
              f"{peaks[sequences] / 2**20:.0f} MiB |", flush=True)
    if len(sizes) > 1:
        print(f"peak memory of the largest over the second largest: "
              f"{peaks[sizes[-1]] / peaks[sizes[-2]]:.2f}x (goal: at most 1.3x, under 2 GiB)")


def train_table(sizes: list, me: list, repeat: int) -> None:
    from statistics import median

    print(f"\ntraining, 1 epoch (dim_model 64, 1 layer, batch 64; median of {repeat})")
    print("| data | loading | samples/s | peak RSS, all processes |")
    print("|---|---|---|---|")
    steps = [(sizes[0], "train-ram"), (sizes[0], "train-lazy"), (sizes[-1], "train-lazy")]
    runs = {step: [] for step in steps}
    for _ in range(repeat):  # steps alternate, so that they share the machine's load
        for sequences, kind in steps:
            _, peak, out = measure(me + [kind, str(sequences)])
            runs[(sequences, kind)].append((_last_json(out)["samples_per_second"], peak))
    speed = {}
    for sequences, kind in steps:
        speed[(sequences, kind)] = median(s for s, _ in runs[(sequences, kind)])
        peak = median(p for _, p in runs[(sequences, kind)])
        loading = "in RAM" if kind == "train-ram" else "lazy parquet shards, max_ram_gb 1"
        print(f"| {sequences} sequences | {loading} | {speed[(sequences, kind)]:.0f} | "
              f"{peak / 2**20:.0f} MiB |", flush=True)
    ratio = speed[steps[-1]] / speed[steps[0]]
    print(f"samples/s of the largest table, lazy, over the smallest in RAM: {ratio:.2f} "
          "(goal: at least 0.9; memory under 2 GiB)")


if __name__ == "__main__":
    main()
