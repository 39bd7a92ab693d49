"""Benchmark `preprocess` on the shared synthetic data set (403,730 rows, 2,000 sequences).

Generates bench/out/bench.csv with /work/shared/bench/gen_data.py if absent, then
preprocesses it into bench/out/preprocess-bench/ with seq_length 48, split_ratios
[0.8, 0.1, 0.1], stride_by_split [8, 48, 48], parquet output and 2 cores, and prints
wall time and peak memory (maxrss of this process and of its largest worker).
Target: under 6 s and under 1 GiB.

usage: .venv/bin/python bench/bench_preprocess.py [--n-cores N] [--write-format F]
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


def peak_rss_mib() -> float:
    """Peak resident memory in MiB: the larger of this process and its biggest worker."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n-cores", type=int, default=2)
    parser.add_argument("--write-format", default="parquet", choices=["parquet", "csv", "pt"])
    parser.add_argument("--force-parallel", action="store_true",
                        help="use worker processes even though the input is small")
    args = parser.parse_args()
    ensure_data()

    from sequifier.config.schema import PreprocessConfig
    from sequifier.data import preprocess
    from sequifier.data.preprocess import run_preprocess

    if args.force_parallel:
        preprocess.PARALLEL_MIN_READ_BYTES = preprocess.PARALLEL_MIN_WINDOW_ROWS = 0

    cfg = PreprocessConfig(
        project_root=os.path.join(OUT, "preprocess-bench"), data_path=DATA, read_format="csv",
        write_format=args.write_format, merge_output=args.write_format != "pt",
        seq_length=48, split_ratios=[0.8, 0.1, 0.1], stride_by_split=[8, 48, 48],
        n_cores=args.n_cores, overwrite=True, dataset_name="bench",
    )
    start = time.perf_counter()
    metadata = run_preprocess(cfg)
    wall = time.perf_counter() - start
    print(f"preprocess: {wall:.2f} s wall, peak RSS {peak_rss_mib():.0f} MiB "
          f"(n_cores={args.n_cores}, write_format={args.write_format}, "
          f"{'forced parallel, ' if args.force_parallel else ''}"
          f"outputs: {', '.join(metadata.split_paths)})")


if __name__ == "__main__":
    main()
