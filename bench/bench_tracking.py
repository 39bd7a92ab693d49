"""What `tracking: mlflow` costs a training step, on the training benchmark.

Same data and model as bench_train.py (eager), on the first `--batches` batches of its
training split (a slice of the split's windows, written once to bench/out), one epoch
per run, `log_interval: 10` (the template's: ten times more logged scalars than
bench_train's 100, the harsher case for the tracker). Runs alternate without and with
tracking, so load from other processes falls on both alike; the project's own store in
bench/out is made before the first run (MLflow's migrations are no step's cost).

Two figures:
* the tracker's own time inside the training steps (buffering the scalars TensorBoard
  also gets, and the batched writes to the store), timed around those calls, as a share
  of the steps' time; the store is written every `--flush-seconds` (default 5 s: six
  times as often as sequifier's 30 s, so every run includes several writes);
* 1 - median(samples/s with) / median(samples/s without), over `--repeats` runs each:
  the end-to-end check, noisy on a shared machine.
Target: below 2%. The tracker's start and end (store, params, dataset fingerprint,
artifacts) happen once per run, outside the steps; their wall time is reported too.

usage: python bench/bench_tracking.py [--repeats 3] [--batches 120] [--cores 1] [--flush-seconds 5]
"""

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from bench_infer import OUT, ensure_data, pin_cores
from bench_train import train_config

TARGET_OVERHEAD = 0.02
BATCH = 64


def training_slice(metadata_path: str, batches: int) -> str:
    """The first batches * 64 windows of the training split, as a parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sequifier.config.metadata import read_metadata

    metadata = read_metadata(metadata_path)
    path = os.path.join(OUT, f"bench-train-{batches}-batches.parquet")
    table = pq.read_table(os.path.join(OUT, metadata.split_paths[0]))
    frame = table.to_pandas()  # one row per window and column: keep whole windows
    keys = frame[["sequenceId", "subsequenceId"]].drop_duplicates().head(batches * BATCH)
    frame = frame.merge(keys, on=["sequenceId", "subsequenceId"])
    pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), path)
    return path


class Stopwatch:
    """Seconds spent in the tracker's per-step calls (TrackedRun.metrics and its writes)."""

    def __init__(self, tracking):
        self.seconds = 0.0
        self.calls = 0
        original = tracking.TrackedRun.metrics

        def timed(run, values, step):
            start = time.perf_counter()
            original(run, values, step)
            self.seconds += time.perf_counter() - start
            self.calls += 1

        tracking.TrackedRun.metrics = timed


def one_run(metadata_path: str, data_path: str, tracked: bool, index: int, windows: int) -> tuple[float, float, float]:
    """(training samples/s, seconds of the training steps, wall seconds of run_train)."""
    from sequifier.gate import validate
    from sequifier.train.run import run_train

    cfg = train_config(metadata_path, f"bench-tracking-{'on' if tracked else 'off'}-{index}", 1, False)
    cfg.training_data_path = data_path
    cfg.training_spec.log_interval = 10
    cfg.tracking = "mlflow" if tracked else None
    validate("train", cfg)
    start = time.perf_counter()
    result = run_train(cfg, export=False)
    wall = time.perf_counter() - start
    speed = result.history[-1].samples_per_second  # the loop's own measurement of its steps
    return speed, windows / speed, wall


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, default=120)
    parser.add_argument("--cores", type=int, default=1)
    parser.add_argument("--flush-seconds", type=float, default=5.0)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the project's own store in bench/out
    pin_cores(args.cores)
    metadata_path = ensure_data()
    data_path = training_slice(metadata_path, args.batches)
    from sequifier.project import TRACKING_DB, TRACKING_STORE
    from sequifier.train import tracking

    tracking.FLUSH_SECONDS = args.flush_seconds
    tracking._client("sqlite:///" + os.path.join(OUT, TRACKING_STORE, TRACKING_DB)).search_experiments()
    watch = Stopwatch(tracking)

    speeds, walls, shares = {False: [], True: []}, {False: [], True: []}, []
    for index in range(args.repeats):
        for tracked in (False, True):
            before = watch.seconds
            speed, step_seconds, wall = one_run(metadata_path, data_path, tracked, index, args.batches * BATCH)
            speeds[tracked].append(speed)
            walls[tracked].append(wall)
            line = f"run {index + 1} tracking {'on ' if tracked else 'off'}: {speed:.0f} samples/s, wall {wall:.1f} s"
            if tracked:
                spent = watch.seconds - before
                shares.append(spent / step_seconds)
                line += f", tracker {1000 * spent:.0f} ms in {step_seconds:.1f} s of steps ({shares[-1]:.3%})"
            print(line, flush=True)
    off, on = statistics.median(speeds[False]), statistics.median(speeds[True])
    overhead = 1 - on / off
    share = statistics.median(shares)
    verdict = "ok" if share < TARGET_OVERHEAD else f"ABOVE target {TARGET_OVERHEAD:.0%}"
    print(f"\ntracking benchmark: {args.cores} thread(s), {args.batches} batches of {BATCH}, log_interval 10, "
          f"store written every {args.flush_seconds:g} s, {args.repeats} runs each")
    print(f"  tracker time inside the training steps, median: {share:.3%} of the steps' time ({verdict})")
    print(f"  training samples/s, median: without {off:.0f}, with tracking: mlflow {on:.0f} "
          f"(end to end {overhead:+.2%}; noisy on a shared machine)")
    print(f"  wall time per run, median: without {statistics.median(walls[False]):.1f} s, with "
          f"{statistics.median(walls[True]):.1f} s (the tracked run's start and end included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
