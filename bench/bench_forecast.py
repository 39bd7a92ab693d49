"""Day-ahead forecasting: a 48-step rolling backtest of half-hourly demand against the
seasonal-naive and persistence baselines, interval coverage, and backtest speed.

Data: bench/gen_demand.py (4 regions, 420 days of half-hours, 80,574 rows with outages,
missing cells and absent rows; data seed 7), in a `sequifier make` project under
bench/out/forecast/, preprocessed with the recipe of docs/forecasting.md (seq_length 96,
split_ratios [0.8, 0.1, 0.1], training stride 8, the known-ahead columns and calendar
features when this version has them).

Models, trained per seed with the train template's settings (only the columns, the
criterion, the name and the seed set): `direct` uses the temperature, workday flag and
calendar known ahead and forecasts the day in one forward pass (`model_spec.direct_horizon:
48`, the recipe of docs/forecasting.md); `known` the same inputs, forecast autoregressively
(a forward pass per step); `plain` only the demand's own history (autoregressive).

Timed and reported per model: `sequifier evaluate forecast_horizon=48` over the test
split (an origin at every half-hour, intervals calibrated on the validation split),
end to end as a user runs it (the command, Python start included): model MAE against
seasonal naive and persistence, skill, 80% interval coverage, forecast steps per second.
Each figure the median of `--seeds` seeds. Goals, for the recipe's model (`direct`): MAE
<= 0.8x seasonal naive and below persistence, coverage 75-85%, >= 2,000 forecast steps/s
on 2 cores. `--stride` > 1 backtests every stride-th origin only (quicker; the goals are
judged at 1).

usage: python bench/bench_forecast.py [--seeds 3] [--cores 2] [--epochs N] [--stride 1]
                                      [--variants direct,known,plain]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out", "forecast")
sys.path.insert(0, HERE)

from gen_demand import generate, write_csv  # noqa: E402

HORIZON = 48
SEQ_LENGTH = 96
GOAL_RATIO, GOAL_STEPS = 0.8, 2000
GOAL_COVERAGE = (0.75, 0.85)


def has_known_ahead() -> bool:
    from sequifier.config.schema import PreprocessConfig

    return hasattr(PreprocessConfig, "known_ahead_columns") or "known_ahead_columns" in getattr(
        PreprocessConfig, "__dataclass_fields__", {})


def sequifier(*args, cwd=OUT) -> subprocess.CompletedProcess:
    script = os.path.join(os.path.dirname(sys.executable), "sequifier")
    result = subprocess.run([script, *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        raise SystemExit(f"sequifier {' '.join(args[:2])} failed")
    return result


def make_project(known: bool) -> None:
    marker = os.path.join(OUT, "configs", "metadata_configs", "demand.json")
    if os.path.exists(marker):
        return
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    sequifier("make", OUT, cwd=os.path.dirname(OUT))
    write_csv(os.path.join(OUT, "data", "demand.csv"), generate(4, 420, 7))
    args = ["preprocess", "data_path=data/demand.csv", "sequence_id_column=region",
            "position_column=timestamp", f"seq_length={SEQ_LENGTH}", "split_ratios=[0.8,0.1,0.1]",
            "stride_by_split=[8,48,48]", "column_types={is_workday: categorical}"]
    if known:
        args += ["missing_values={demand_gw: interpolate, temperature_c: interpolate}",
                 "known_ahead_columns=[temperature_c,is_workday]",
                 "time_features=[half_hour,day_of_week]"]
    else:
        args += ["missing_values=fill"]
    sequifier(*args)


def train(name: str, inputs: list[str], seed: int, epochs: int | None, extra: list[str]) -> str:
    model = os.path.join(OUT, "models", f"sequifier-{name}-best.onnx")
    if os.path.exists(model):
        return model
    args = ["train", f"model_name={name}", "metadata_config_path=configs/metadata_configs/demand.json",
            "target_columns=[demand_gw]", f"input_columns=[{','.join(inputs)}]",
            "training_spec.criterion={demand_gw: MSELoss}", f"training_spec.seed={seed}",
            "training_spec.accuracy_top_k=5", "overwrite=true", *extra]
    if epochs is not None:
        args.append(f"training_spec.epochs={epochs}")
    start = time.perf_counter()
    sequifier(*args)
    print(f"  trained {name} in {time.perf_counter() - start:.0f} s", flush=True)
    return model


def evaluate(model: str, stride: int) -> tuple[dict, float]:
    start = time.perf_counter()
    written = sequifier("evaluate", f"model_path={model}", "metadata_config_path=configs/metadata_configs/demand.json",
                        f"forecast_horizon={HORIZON}", f"backtest_stride={stride}", "overwrite=true")
    seconds = time.perf_counter() - start
    name = os.path.splitext(os.path.basename(model))[0]
    del written
    with open(os.path.join(OUT, "outputs", "evaluation", f"{name}-split2-metrics.json")) as f:
        return json.load(f), seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=None, help="default: the template's")
    parser.add_argument("--stride", type=int, default=1, help="backtest origin stride (goals: 1)")
    parser.add_argument("--variants", default="direct,known,plain")
    args = parser.parse_args()
    try:
        cores = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cores[:args.cores]))  # the commands inherit it
    except AttributeError:
        pass
    known = has_known_ahead()
    make_project(known)
    calendar = ["half_hour", "day_of_week"] if known else []
    every = ["demand_gw", "temperature_c", "is_workday", *calendar]
    variants = {"direct": (every, [f"model_spec.direct_horizon={HORIZON}"]), "known": (every, []),
                "plain": (["demand_gw"], [])}
    if not known:
        print("this version has no known_ahead_columns: only the model without them is measured")
        variants = {"plain": variants["plain"]}
    wanted = args.variants.split(",")
    variants = {k: v for k, v in variants.items() if k in wanted}
    recipe = "direct" if "direct" in variants else next(iter(variants))
    results: dict[str, list[dict]] = {v: [] for v in variants}
    for seed in range(1, args.seeds + 1):
        for variant, (inputs, extra) in variants.items():
            model = train(f"{variant}-s{seed}", inputs, seed, args.epochs, extra)
            report, seconds = evaluate(model, args.stride)
            bt = report["backtest"]
            target = bt["targets"]["demand_gw"]
            row = {
                "mae": target["model"]["mae"],
                "seasonal_naive": target["baselines"]["seasonal_naive"]["mae"],
                "persistence": target["baselines"]["persistence"]["mae"],
                "skill": target["skill"],
                "coverage": target["intervals"]["coverage"],
                "steps_per_s": bt["forecast_steps"] / seconds,
                "forecast_only_steps_per_s": bt["steps_per_second"],
                "steps": bt["forecast_steps"],
            }
            row["ratio"] = row["mae"] / row["seasonal_naive"]
            results[variant].append(row)
            method = bt.get("method", "autoregressive")
            print(f"  {variant} seed {seed} ({method}): MAE {row['mae']:.4f} "
                  f"(seasonal naive {row['seasonal_naive']:.4f}, "
                  f"persistence {row['persistence']:.4f}; ratio {row['ratio']:.3f}, skill {row['skill']:.3f}), "
                  f"80% coverage {row['coverage']:.3f}, {row['steps']:,} steps in {seconds:.1f} s end to end "
                  f"= {row['steps_per_s']:,.0f}/s (forecasting alone {row['forecast_only_steps_per_s']:,.0f}/s)",
                  flush=True)
    ok = True
    for variant, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"{variant} (median of {len(rows)} seeds): day-ahead MAE {med['mae']:.4f} GW = "
              f"{med['ratio']:.3f}x seasonal naive ({med['seasonal_naive']:.4f}), persistence "
              f"{med['persistence']:.4f}, skill {med['skill']:.3f}; 80% interval coverage "
              f"{100 * med['coverage']:.1f}%; {med['steps_per_s']:,.0f} forecast steps/s end to end")
        if variant == recipe:
            ok &= med["ratio"] <= GOAL_RATIO and med["mae"] < med["persistence"]
            ok &= GOAL_COVERAGE[0] <= med["coverage"] <= GOAL_COVERAGE[1] and med["steps_per_s"] >= GOAL_STEPS
    print(f"goals for '{recipe}' (MAE <= {GOAL_RATIO}x seasonal naive and < persistence, coverage "
          f"{GOAL_COVERAGE[0]:.0%}-{GOAL_COVERAGE[1]:.0%}, >= {GOAL_STEPS:,} steps/s end to end, "
          f"backtest stride {args.stride}): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
