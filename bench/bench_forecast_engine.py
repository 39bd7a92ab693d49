"""Forecast engine throughput: forecast steps per second of `infer.forecasting.forecast`.

Model: the train template's architecture (dim_model 64, n_head 4, num_layers 2,
dim_feedforward 128, swiglu) with seq_length 96 on a day-ahead layout: target
demand (real), inputs demand, temperature (real, known ahead), half_hour and
day_of_week (categorical, known ahead); untrained (speed does not depend on the
weights), exported to ONNX with sequifier.export and run with sequifier's ONNX runner.

Timed: `forecast` of H=48 steps for N sequences (random history and future values),
batch_size sequences per forward pass, by both methods: `autoregressive` (a forward pass
per step) and `direct` (the same model exported with `direct_horizon: 48`: one pass over
the masked window, outputs of the last 48 positions). Reported per method: forecast steps
per second (N * H / seconds), median of --runs runs. The engine's own work (building each
step's inputs) is numpy over the batch; the forward passes are most of the time.

usage: python bench/bench_forecast_engine.py [--runs 3] [--sequences 512] [--batch 256] [--cores 2]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_infer import pin_cores  # noqa: E402

SEQ_LENGTH, HORIZON = 96, 48


def model_file(folder: str, direct_horizon=None) -> str:
    import torch

    from sequifier.config.schema import ModelSpec
    from sequifier.export import export_onnx
    from sequifier.model.transformer import ColumnLayout, SequifierModel

    layout = ColumnLayout(
        input_columns=["demand", "temperature", "half_hour", "day_of_week"],
        column_types={"demand": "real", "temperature": "real", "half_hour": "categorical",
                      "day_of_week": "categorical"},
        n_classes={"half_hour": 50, "day_of_week": 9}, target_columns=["demand"],
        target_column_types={"demand": "real"}, seq_length=SEQ_LENGTH,
        known_ahead_columns=["temperature", "half_hour", "day_of_week"], direct_horizon=direct_horizon)
    torch.manual_seed(0)
    model = SequifierModel(ModelSpec(dim_model=64, n_head=4, num_layers=2, dim_feedforward=128), layout)
    path = os.path.join(folder, f"engine-{direct_horizon}.onnx")
    export_onnx(model, path, "generative", 2, with_dropout=False)
    return path


def inputs(n: int, rng) -> tuple:
    history = {"demand": rng.normal(size=(n, SEQ_LENGTH)).astype(np.float32),
               "temperature": rng.normal(size=(n, SEQ_LENGTH)).astype(np.float32),
               "half_hour": rng.integers(2, 50, (n, SEQ_LENGTH)),
               "day_of_week": rng.integers(2, 9, (n, SEQ_LENGTH))}
    future = {"temperature": rng.normal(size=(n, HORIZON)).astype(np.float32),
              "half_hour": rng.integers(2, 50, (n, HORIZON)),
              "day_of_week": rng.integers(2, 9, (n, HORIZON))}
    return history, future


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sequences", type=int, default=512)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    pin_cores(args.cores)
    from sequifier.infer import forecasting
    from sequifier.infer.model_runner import OnnxRunner

    history, future = inputs(args.sequences, np.random.default_rng(0))
    with tempfile.TemporaryDirectory() as folder:
        for method, direct_horizon in (("autoregressive", None), ("direct", HORIZON)):
            path = model_file(folder, direct_horizon)
            runner = OnnxRunner(path, "cpu", 0, every_position=direct_horizon is not None)
            model = forecasting.ForecastModel.of(runner.info)
            if direct_horizon is None:
                run, run_tail = runner.run, None
            else:
                def run_tail(i, n, runner=runner):
                    return {k: v[:, -n:] for k, v in runner.run(i).items()}

                def run(i, runner=runner):
                    return {k: v[:, -1] for k, v in runner.run(i).items()}
            forecasting.forecast(run, model, history, future, 2, batch_size=args.batch)  # warm-up
            seconds = []
            for _ in range(args.runs):
                start = time.perf_counter()
                forecasting.forecast(run, model, history, future, HORIZON, batch_size=args.batch,
                                     run_tail=run_tail)
                seconds.append(time.perf_counter() - start)
            steps = args.sequences * HORIZON
            median = statistics.median(seconds)
            print(f"forecast engine, {method}: {steps / median:,.0f} forecast steps/s (median of {args.runs}; "
                  f"{args.sequences} sequences x {HORIZON} steps, seq_length {SEQ_LENGTH}, batch {args.batch}, "
                  f"{args.cores} cores; runs {', '.join(f'{s:.2f}' for s in seconds)} s)", flush=True)


if __name__ == "__main__":
    main()
