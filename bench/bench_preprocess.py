"""Benchmark `preprocess` on the shared synthetic data set (403,730 rows, 2,000 sequences).

Generates bench/out/bench.csv with /work/shared/bench/gen_data.py if absent, then
preprocesses it into bench/out/preprocess-bench/ with seq_length 48, split_ratios
[0.8, 0.1, 0.1], stride_by_split [8, 48, 48], parquet output and 2 cores, and prints
wall time and peak memory (maxrss of this process and of its largest worker).
Target: under 6 s and under 1 GiB.

`--user-table` preprocesses the same data as a user's export instead (issue 12): the id
and position columns renamed (user_id, event_pos, mapped with sequence_id_column /
position_column), ids written as text (`u_00017`) and 5% of itemValue blanked, filled
with the training mean (missing_values: {itemValue: fill}). It must stay within 1.5x of
the plain run's time and memory (bench_preprocess_user_table.py compares the two).

usage: .venv/bin/python bench/bench_preprocess.py [--n-cores N] [--write-format F] [--user-table]
"""

import argparse
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
DATA = os.path.join(OUT, "bench.csv")
GENERATOR = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "bench", "gen_data.py"))
if not os.path.isfile(GENERATOR):
    GENERATOR = "/work/shared/bench/gen_data.py"


def ensure_data() -> None:
    if not os.path.isfile(DATA):
        os.makedirs(OUT, exist_ok=True)
        subprocess.run([sys.executable, GENERATOR, DATA], check=True)


USER_DATA = os.path.join(OUT, "bench-user.csv")


def ensure_user_data() -> None:
    """bench.csv as a user's export: own column names, text ids, 5% of itemValue blank."""
    if os.path.isfile(USER_DATA):
        return
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(DATA)
    ids = pc.binary_join_element_wise("u_", pc.utf8_lpad(table.column("sequenceId").cast(pa.string()), 5, "0"), "")
    blank = np.random.default_rng(12).random(table.num_rows) < 0.05
    value = pc.if_else(pa.array(blank), pa.scalar(None, pa.float64()), table.column("itemValue"))
    user = pa.table({"user_id": ids, "event_pos": table.column("itemPosition"), "itemId": table.column("itemId"),
                     "sup1": table.column("sup1"), "itemValue": value})
    pacsv.write_csv(user, USER_DATA + ".tmp")
    os.replace(USER_DATA + ".tmp", USER_DATA)


def peak_rss_mib() -> float:
    """Peak resident memory in MiB: the larger of this process and its biggest worker."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-cores", type=int, default=2)
    parser.add_argument("--write-format", default="parquet", choices=["parquet", "csv", "pt"])
    parser.add_argument("--user-table", action="store_true",
                        help="text ids, own column names and a fill policy (see the docstring)")
    parser.add_argument("--force-parallel", action="store_true",
                        help="use worker processes even though the input is small")
    args = parser.parse_args()
    ensure_data()
    user = {}
    if args.user_table:
        ensure_user_data()
        user = {"data_path": USER_DATA, "sequence_id_column": "user_id", "position_column": "event_pos",
                "missing_values": {"itemValue": "fill"}}

    from sequifier.config.schema import PreprocessConfig
    from sequifier.data import preprocess
    from sequifier.data.preprocess import run_preprocess

    if args.force_parallel:
        preprocess.PARALLEL_MIN_READ_BYTES = preprocess.PARALLEL_MIN_WINDOW_ROWS = 0

    settings = dict(
        project_root=os.path.join(OUT, "preprocess-bench"), data_path=DATA, read_format="csv",
        write_format=args.write_format, merge_output=args.write_format != "pt",
        seq_length=48, split_ratios=[0.8, 0.1, 0.1], stride_by_split=[8, 48, 48],
        n_cores=args.n_cores, overwrite=True, dataset_name="bench",
    )
    cfg = PreprocessConfig(**{**settings, **user})
    start = time.perf_counter()
    metadata = run_preprocess(cfg)
    wall = time.perf_counter() - start
    print(f"preprocess: {wall:.2f} s wall, peak RSS {peak_rss_mib():.0f} MiB "
          f"(n_cores={args.n_cores}, write_format={args.write_format}, "
          f"{'forced parallel, ' if args.force_parallel else ''}"
          f"{'user table: text ids, fill policy, ' if args.user_table else ''}"
          f"outputs: {', '.join(metadata.split_paths)})")


if __name__ == "__main__":
    main()
