"""`python -m sequifier.demo [FOLDER]`: the whole pipeline on generated data.

Makes a project folder, writes a small synthetic table with learnable structure
(a Markov chain over items, a category that depends on the item, and an AR(1) value
driven by the item), then runs `sequifier preprocess`, `train`, `infer` and `evaluate`
through the real command line, and prints how good the model is against the baselines
(from the run's logs/demo-summary.json, and evaluate's table of every test item) and
where predictions, metrics, logs and models are.

Then the forecasting question on a second, half-hourly table (two regions' demand with
a daily and weekly rhythm and weather): a small model that knows the temperature and the
calendar ahead (`known_ahead_columns`, `time_features`) and forecasts the day in one pass
(`direct_horizon: 48`) is backtested a day (48 half-hours) ahead from many origins by
`sequifier evaluate forecast_horizon=48`,
against persistence and the seasonal-naive baseline (the same half-hour yesterday),
with its skill score and the coverage of its 80% intervals.
"""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import yaml

from sequifier import project
from sequifier.make import make_project

MARKER = ".sequifier-demo"


def demo_table(n_sequences: int = 300, min_len: int = 60, max_len: int = 120, vocab: int = 30, seed: int = 3):
    """A long table whose next item is predictable from the current one."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab, size=(vocab, 3))
    effect = rng.normal(0.0, 1.0, size=vocab)
    lengths = rng.integers(min_len, max_len + 1, size=n_sequences)
    total = int(lengths.sum())
    pick = np.searchsorted(np.cumsum([0.6, 0.25, 0.1]), rng.random(total))  # 3 = random jump
    jumps = rng.integers(0, vocab, size=total)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    items = np.empty(total, dtype=np.int64)
    # the chain is sequential in time but vectorised across sequences
    state = rng.integers(0, vocab, size=n_sequences)
    for t in range(int(lengths.max())):
        alive = lengths > t
        idx = starts[alive] + t
        p = pick[idx]
        nxt = np.where(p < 3, successors[state[alive], np.minimum(p, 2)], jumps[idx])
        state[alive] = nxt
        items[idx] = nxt
    values = np.empty(total)
    x = np.zeros(n_sequences)
    noise = rng.normal(0.0, 0.3, size=total)
    for t in range(int(lengths.max())):
        alive = lengths > t
        idx = starts[alive] + t
        x[alive] = 0.7 * x[alive] + effect[items[idx]] + noise[idx]
        values[idx] = x[alive]
    seq = np.repeat(np.arange(n_sequences), lengths)
    pos = np.arange(total) - np.repeat(starts, lengths)
    return pd.DataFrame({
        "sequenceId": seq,
        "itemPosition": pos,
        "itemId": np.char.add("item-", items.astype(str)),
        "category": (items % 5).astype(np.int64),
        "value": np.round(values, 4),
    })


DATA_CSV = f"{project.DATA}/data.csv"
METADATA = f"{project.METADATA_CONFIGS}/data.json"
BEST_MODEL = f"{project.MODELS}/sequifier-demo-best.onnx"


def demand_table(days: int = 70, seed: int = 5):
    """Half-hourly demand of two regions: daily and weekly profile, temperature-driven
    heating, persistent noise (a small cousin of bench/gen_demand.py)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    n = days * 48
    step = np.arange(n)
    hour = (step % 48) / 2.0
    weekday = (step // 48 + 6) % 7
    frames = []
    for region, size in (("Nord-Öst", 5.0), ("south coast", 3.0)):
        weather = np.cumsum(rng.normal(0.0, 0.15, n))
        weather -= np.linspace(weather[0], weather[-1], n)
        temperature = 8 + 4 * np.sin(2 * np.pi * (hour - 9) / 24) + weather
        profile = 1 + 0.2 * np.exp(-0.5 * ((hour - 8) / 1.5) ** 2) + 0.25 * np.exp(-0.5 * ((hour - 18.5) / 1.8) ** 2)
        profile -= 0.25 * np.exp(-0.5 * ((hour - 3.5) / 2) ** 2)
        weekly = np.where(weekday >= 5, 0.9, 1.0)
        noise = np.convolve(rng.normal(0, 0.02, n + 11), np.ones(12) / np.sqrt(12), "valid")
        demand = size * (profile * weekly * (1 + noise) + 0.02 * np.maximum(0, 14 - temperature) ** 1.3)
        frames.append(pd.DataFrame({
            "timestamp": pd.Timestamp("2024-01-01") + pd.to_timedelta(step * 30, unit="min"),
            "region": region, "demand_gw": np.round(demand, 4), "temperature_c": np.round(temperature, 2)}))
    return pd.concat(frames, ignore_index=True)


FORECAST_PREPROCESS = {
    "project_root": ".", "data_path": f"{project.DATA}/demand.csv", "sequence_id_column": "region",
    "position_column": "timestamp", "seq_length": 96, "split_ratios": [0.7, 0.15, 0.15],
    "stride_by_split": [4, 48, 48], "overwrite": True,
    "known_ahead_columns": ["temperature_c"], "time_features": ["half_hour", "day_of_week"],
}
FORECAST_TRAIN = {
    "project_root": ".", "metadata_config_path": f"{project.METADATA_CONFIGS}/demand.json",
    "model_name": "demand", "target_columns": ["demand_gw"],
    "input_columns": ["demand_gw", "temperature_c", "half_hour", "day_of_week"],
    "export_generative_model": True, "export_embedding_model": False, "inference_batch_size": 64,
    "overwrite": True,
    "model_spec": {"dim_model": 32, "n_head": 4, "num_layers": 2, "dim_feedforward": 64, "direct_horizon": 48},
    "training_spec": {"device": "cpu", "epochs": 6, "batch_size": 64, "learning_rate": 0.003,
                      "criterion": {"demand_gw": "MSELoss"}, "save_interval_epochs": 1,
                      "log_interval": 50, "continue_training": False},
}
FORECAST_EVALUATE = {
    "project_root": ".", "model_path": f"{project.MODELS}/sequifier-demand-best.onnx",
    "metadata_config_path": f"{project.METADATA_CONFIGS}/demand.json", "forecast_horizon": 48,
    "backtest_stride": 4, "overwrite": True,
}


def print_backtest(report: dict) -> None:
    """The day-ahead backtest's answer in three lines."""
    bt = report["backtest"]
    target = bt["targets"]["demand_gw"]
    baselines = ", ".join(f"{name} {values['mae']:.3f}" for name, values in target["baselines"].items())
    print(f"\nday-ahead backtest ({bt['origins']} origins x {bt['horizon']} half-hours, test split): "
          f"MAE model {target['model']['mae']:.3f} GW; baselines: {baselines}")
    print(f"  skill {target['skill']:+.2f} against the best baseline ({target['best_baseline']}): above 0 "
          "the model beats every rule, below 0 a rule beats it (docs/forecasting.md)")
    intervals = target.get("intervals", {})
    if "coverage" in intervals:
        print(f"  80% intervals cover {100 * intervals['coverage']:.0f}% of the truths")


PREPROCESS = {
    "project_root": ".", "data_path": DATA_CSV, "read_format": "csv", "write_format": "parquet",
    "seq_length": 24, "split_ratios": [0.8, 0.1, 0.1], "stride_by_split": [4, 24, 24], "overwrite": True,
}
TRAIN = {
    "project_root": ".", "metadata_config_path": METADATA, "model_name": "demo",
    "read_format": "parquet", "target_columns": ["itemId", "value"],
    "target_column_types": {"itemId": "categorical", "value": "real"}, "seq_length": 24,
    "export_generative_model": True, "export_embedding_model": True, "inference_batch_size": 64,
    "export_pt": True, "overwrite": True,
    "model_spec": {"dim_model": 48, "n_head": 4, "num_layers": 2, "dim_feedforward": 96,
                   "initial_embedding_dim": 48,
                   "feature_embedding_dims": {"itemId": 24, "category": 8, "value": 16}},
    "training_spec": {"device": "cpu", "epochs": 4, "batch_size": 64, "learning_rate": 0.003,
                      "optimizer": {"name": "AdamW", "weight_decay": 0.01},
                      "criterion": {"itemId": "CrossEntropyLoss", "value": "MSELoss"},
                      "save_interval_epochs": 1, "log_interval": 50, "continue_training": False},
}
INFER = {
    "project_root": ".", "model_path": "MODEL", "metadata_config_path": METADATA,
    "read_format": "parquet", "write_format": "csv", "model_type": "generative", "seq_length": 24,
    "inference_batch_size": 256, "output_probabilities": True, "overwrite": True,
}


EVALUATE = {
    "project_root": ".", "model_path": "MODEL", "metadata_config_path": METADATA,
    "read_format": "parquet", "inference_batch_size": 256, "overwrite": True,
}


def prepare_folder(folder: str) -> None:
    if os.path.exists(folder):
        if not os.path.exists(os.path.join(folder, MARKER)):
            sys.exit(f"sequifier: error: '{folder}' exists and is not a demo folder; choose another folder")
        shutil.rmtree(folder)
    make_project(folder)
    open(os.path.join(folder, MARKER), "w").close()


def run_step(args, cwd: str) -> None:
    print(f"\n$ {' '.join(args)}", flush=True)
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "sequifier.cli"] + args, cwd=cwd)
    if result.returncode != 0:
        sys.exit(f"demo step failed: sequifier {' '.join(args)}")
    print(f"  ({time.time() - started:.1f} s)", flush=True)


def print_scorecard(summary: dict) -> None:
    """The best epoch's validation metrics next to the baselines, one row per metric."""
    print(f"\nhow good is the model? (validation split, best epoch {summary['best_epoch']}, "
          "vs predictors that need no model)")
    for target, values in summary["metrics"].items():
        baselines = summary["baselines"][target]
        for metric, value in values.items():
            if metric == "count":
                continue
            beside = ", ".join(f"{name} {b[metric]:.4g}" for name, b in baselines.items())
            print(f"  {target:8s} {metric:15s} model {value:.4g}   baseline: {beside}")


def main(folder: str = os.path.join(project.OUTPUTS, "demo")) -> None:
    started = time.time()
    prepare_folder(folder)
    table = demo_table()
    table.to_csv(os.path.join(folder, DATA_CSV), index=False)
    print(f"demo data: {len(table)} rows, {table.sequenceId.nunique()} sequences -> {folder}/{DATA_CSV}")
    for name, cfg in (("preprocess", PREPROCESS), ("train", TRAIN)):
        with open(os.path.join(folder, project.user_config_path(name)), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    run_step(["preprocess"], folder)
    run_step(["train"], folder)
    with open(os.path.join(folder, project.LOGS, "demo-summary.json")) as f:
        print_scorecard(json.load(f))
    infer = dict(INFER, model_path=BEST_MODEL)
    with open(os.path.join(folder, project.user_config_path("infer")), "w") as f:
        yaml.safe_dump(infer, f, sort_keys=False)
    run_step(["infer"], folder)
    evaluate = dict(EVALUATE, model_path=BEST_MODEL)
    with open(os.path.join(folder, project.user_config_path("evaluate")), "w") as f:
        yaml.safe_dump(evaluate, f, sort_keys=False)
    run_step(["evaluate"], folder)  # every test item vs the baselines, printed as a table
    run_step(["plot", "demo"], folder)  # the curves as a PNG: logs/demo-curves.png
    # forecasting: tomorrow's 48 half-hours, backtested against the seasonal baseline
    demand_table().to_csv(os.path.join(folder, FORECAST_PREPROCESS["data_path"]), index=False)
    for name, cfg in (("forecast-preprocess", FORECAST_PREPROCESS), ("forecast-train", FORECAST_TRAIN),
                      ("forecast-evaluate", FORECAST_EVALUATE)):
        with open(os.path.join(folder, project.user_config_path(name)), "w") as f:
            yaml.safe_dump(cfg, f, sort_keys=False)
    for command in ("preprocess", "train", "evaluate"):
        run_step([command, "--config-path", project.user_config_path(f"forecast-{command}")], folder)
    with open(project.evaluation_path(folder, "sequifier-demand-best", "split2", "metrics", "json")) as f:
        print_backtest(json.load(f))
    print(f"\ndemo finished in {time.time() - started:.0f} s")
    for what, path in (("predictions", project.PREDICTIONS), ("probabilities", project.PROBABILITIES),
                       ("evaluation", project.EVALUATION), ("models", project.MODELS),
                       ("checkpoints", project.CHECKPOINTS), ("logs", project.LOGS)):
        files = sorted(os.listdir(os.path.join(folder, path))) if os.path.isdir(os.path.join(folder, path)) else []
        print(f"  {what:13s} {folder}/{path}/  ({', '.join(files[:4])}{' ...' if len(files) > 4 else ''})")


if __name__ == "__main__":
    main(*sys.argv[1:2])
