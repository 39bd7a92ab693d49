"""Rolling-origin backtest: how good is a model at forecasting H steps, against baselines.

`evaluate` with `forecast_horizon: H` runs this on the split. Origins are items of the
split, one every `backtest_stride` items of each sequence (the first with enough history
for every predictor, the last with H items of the split from it on). From each origin
the model forecasts H items autoregressively: its input is the truth before the origin
(up to seq_length items, left-padded like a sequence's start), each step appends the
model's prediction of its targets, and columns known ahead take their true values (the
known future). All origins move together: one forward pass per step and batch of
`inference_batch_size` origins, no per-origin Python work.

The same origins are forecast by baselines that need no model (`sequifier.infer.baselines`):
`persistence` (the last value before the origin), `seasonal_naive` (the value one
season earlier, repeating the last observed season), `training_mean` (real) or
`majority_class` (categorical, the training split's most frequent value).

Scores, per target, per horizon step and overall, in original units: real `mae`, `rmse`,
`mape` (percent of |truth|, items whose truth is 0 left out); categorical `accuracy` and
the model's `cross_entropy`. `skill` = 1 - model MAE / best baseline MAE (categorical:
1 - model error rate / best baseline error rate): 0 is no better than the best rule,
1 is perfect, below 0 a rule beats the model.

Intervals (real targets): the forecast's quantiles are the model's forecast plus the
quantiles of its backtest errors on a calibration split (by default the split before the
evaluated one, never the training split), per horizon step. Calibrated by construction when the calibration
split behaves like the evaluated one; `evaluate` reports the coverage of the outermost
pair and the pinball loss of each quantile on the evaluated split, so that this can be
checked.
"""

import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from sequifier.catalog import logit_chunks
from sequifier.config.metadata import Metadata
from sequifier.config.schema import PAD_ID
from sequifier.errors import SequifierError
from sequifier.infer import forecasting
from sequifier.infer.baselines import Series, seasonal_index
from sequifier.infer.values import clamp_unknown_ids

logger = logging.getLogger(__name__)

DEFAULT_QUANTILES = (0.1, 0.5, 0.9)
REAL_METRICS = ("mae", "rmse", "mape")
CATEGORICAL_METRICS = ("accuracy", "cross_entropy")


def backtest_rules(cfg, p) -> None:
    """The backtest options of an EvaluateConfig that are invalid or cannot take effect
    (a rule of the gate; the limits that depend on the split and the model are checked
    once they are read, still before anything is written)."""
    horizon = cfg.forecast_horizon
    if horizon is not None and horizon < 1:
        p.add("forecast_horizon", f"must be >= 1 (items forecast from each origin), got {horizon}")
    if cfg.backtest_stride is not None:
        if horizon is None:
            p.add("backtest_stride", "is set but forecast_horizon is not; set forecast_horizon "
                  "for a backtest or remove backtest_stride")
        elif cfg.backtest_stride < 1:
            p.add("backtest_stride", f"must be >= 1, got {cfg.backtest_stride}")
    if cfg.seasonal_period is not None and cfg.seasonal_period < 1:
        p.add("seasonal_period", f"must be >= 1 (items per season), got {cfg.seasonal_period}")
    if cfg.output_quantiles is not None:
        if horizon is None:
            p.add("output_quantiles", "intervals come from the backtest; set forecast_horizon "
                  "or remove output_quantiles")
        p.extend(quantile_problems(cfg.output_quantiles))
    if cfg.calibration_data_path is not None and horizon is None:
        p.add("calibration_data_path", "is set but forecast_horizon is not; set "
              "forecast_horizon or remove calibration_data_path")


def check_model(cfg, job) -> None:
    """Backtest options that the model's targets rule out."""
    types = job.info.target_column_types
    if cfg.output_quantiles is not None and "real" not in types.values():
        raise SequifierError(
            f"output_quantiles: the model '{job.name}' has only categorical targets "
            f"({', '.join(types)}); quantiles are intervals of real targets (a categorical "
            "forecast is scored by accuracy and cross-entropy); remove output_quantiles")


def quantile_problems(quantiles, field: str = "output_quantiles") -> list[str]:
    values = list(quantiles)
    if not values:
        return [f"{field}: is empty; give quantiles such as [0.1, 0.5, 0.9] or remove it"]
    bad = [q for q in values if not isinstance(q, (int, float)) or not 0 < q < 1]
    if bad:
        return [f"{field}: {bad} outside (0, 1); quantiles are probabilities strictly between "
                "0 and 1, e.g. [0.1, 0.5, 0.9]"]
    if len(set(values)) != len(values):
        return [f"{field}: {values} repeats a quantile; give each once"]
    return []


@dataclass
class Forecasts:
    """Forecasts of every origin: `index` [O, H] flat series index of each forecast item,
    `values[target]` [O, H] ids / standardised values, `log_prob[target]` [O, H] the
    model's log-probability of the truth (categorical)."""

    origins: np.ndarray
    index: np.ndarray
    values: dict
    log_prob: dict
    seconds: float
    method: str = "autoregressive"  # or "direct" (infer/forecasting.py method_for)


def origins(series: Series, horizon: int, stride: int, min_history: int) -> np.ndarray:
    """Flat index of every origin: per sequence, from its first split item with
    `min_history` items before it, every `stride` items while H split items follow."""
    n = len(series)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    index = np.arange(n)
    new = np.ones(n, dtype=bool)
    new[1:] = series.sequence[1:] != series.sequence[:-1]
    group = np.cumsum(new) - 1
    n_groups = int(group[-1]) + 1
    # the split's items are the end of each sequence: from its first split item on
    first_split = np.full(n_groups, n, dtype=np.int64)
    np.minimum.at(first_split, group[series.in_split], index[series.in_split])
    seq_start = index[new]
    seq_end = np.append(seq_start[1:], n)
    first = np.maximum(first_split, seq_start + min_history)
    count = np.where(seq_end - horizon >= first, (seq_end - horizon - first) // stride + 1, 0)
    count = np.maximum(count, 0)
    within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    return np.repeat(first, count) + stride * within


def min_history(period: int | None, horizon: int) -> int:
    """Items an origin needs before it: one (persistence), a season for every step."""
    if period is None:
        return 1
    return max(1, period * ((horizon - 1) // period + 1))


def forecast(job, metadata: Metadata, series: Series, origin_index: np.ndarray, horizon: int,
             batch_size: int) -> Forecasts:
    """Forecasts of H items from every origin by the multi-step engine
    (`sequifier.infer.forecasting.forecast`): the history before each origin and the
    known-ahead columns' true values after it."""
    info = job.info
    model = forecasting.ForecastModel.of(info)
    length = model.seq_length
    unforecastable = forecasting.unforecastable_inputs(model)
    if unforecastable:
        raise SequifierError(
            f"forecast_horizon: the model's input columns {unforecastable} are neither targets nor "
            "known ahead, so their values after an origin are unknown; train with them as targets "
            "or as known_ahead_columns, or evaluate one step ahead (remove forecast_horizon)")
    start_time = time.perf_counter()
    index = origin_index[:, None] + np.arange(-length, horizon)[None, :]
    valid = index >= series.start[origin_index][:, None]
    safe = np.where(valid, index, 0)
    columns = list(dict.fromkeys(list(model.input_columns) + list(model.target_columns)))
    windows = {}
    for c in columns:  # left-padded like a window at a sequence's start
        values = series.values[c][safe]
        if metadata.column_types[c] == "categorical":
            values = clamp_unknown_ids(c, np.where(valid, values, PAD_ID).astype(np.int64),
                                       metadata.n_classes[c])
        else:
            values = np.where(valid, values, 0.0).astype(np.float32)
        windows[c] = values
    categorical = [t for t in model.target_columns if model.target_column_types[t] == "categorical"]
    log_prob = {t: np.empty((len(origin_index), horizon), dtype=np.float64) for t in categorical}

    every = getattr(job.runner, "every_position", False)  # evaluate's runners: [b, L, ...]

    def run_tail(inputs, n):
        out = {}
        for k, v in job.runner.run(inputs).items():
            v = np.asarray(v)[:, -n:] if every else np.asarray(v)[:, None]
            vectors = getattr(job.runner, "class_vectors", {}).get(k) if k in categorical else None
            if vectors is not None:  # the runner gives query vectors: score them (catalog.py)
                rows = v.reshape(-1, v.shape[-1])
                v = np.concatenate([logits for _, _, logits in logit_chunks(rows, vectors)])
                v = v.reshape(len(inputs[next(iter(inputs))]), n, -1)
            out[k] = v
        return out

    def run(inputs):  # the last position's outputs
        return {k: v[:, 0] for k, v in run_tail(inputs, 1).items()}

    def on_step(begin, end, step, raw):  # the model's log-probability of each truth
        for t in categorical:
            logits = raw[t] - raw[t].max(axis=1, keepdims=True)
            logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
            truth = windows[t][begin:end, length + step]
            log_prob[t][begin:end, step] = logp[np.arange(end - begin), truth]

    predictions = forecasting.forecast(
        run, model, {c: windows[c][:, :length] for c in model.input_columns},
        {c: windows[c][:, length:] for c in model.known_ahead_columns if c in model.input_columns},
        horizon, on_step=on_step if categorical else None, batch_size=batch_size,
        run_tail=run_tail if every else None)
    return Forecasts(origin_index, index[:, length:], predictions, log_prob,
                     time.perf_counter() - start_time,
                     forecasting.method_for(model, horizon) if every else "autoregressive")


# ---------------------------------------------------------------- scoring


def _real_scores(predicted: np.ndarray, truth: np.ndarray, std: float, mean: float) -> dict:
    """Per step and overall MAE, RMSE, MAPE in original units ([O, H] standardised inputs)."""
    error = (predicted.astype(np.float64) - truth) * std
    actual = np.abs(truth * std + mean)
    nonzero = actual > 0
    ape = np.where(nonzero, np.abs(error) / np.where(nonzero, actual, 1.0), 0.0)
    per_step = {
        "mae": np.abs(error).mean(axis=0),
        "rmse": np.sqrt((error ** 2).mean(axis=0)),
        "mape": 100 * ape.sum(axis=0) / np.maximum(nonzero.sum(axis=0), 1),
    }
    overall = {"mae": float(np.abs(error).mean()), "rmse": float(np.sqrt((error ** 2).mean())),
               "mape": float(100 * ape.sum() / max(int(nonzero.sum()), 1))}
    return {"overall": overall, "per_step": {k: [float(x) for x in v] for k, v in per_step.items()}}


def _categorical_scores(predicted: np.ndarray, truth: np.ndarray, log_prob: np.ndarray | None) -> dict:
    correct = predicted == truth
    overall = {"accuracy": float(correct.mean())}
    per_step = {"accuracy": [float(x) for x in correct.mean(axis=0)]}
    if log_prob is not None:
        overall["cross_entropy"] = float(-log_prob.mean())
        per_step["cross_entropy"] = [float(x) for x in -log_prob.mean(axis=0)]
    return {"overall": overall, "per_step": per_step}


def baseline_forecasts(series: Series, column: str, forecasts: Forecasts, period: int | None,
                       training_value) -> dict[str, np.ndarray]:
    """{baseline: [O, H] forecasts} of one target on the model's origins."""
    values = series.values[column]
    shape = forecasts.index.shape
    out = {"persistence": np.broadcast_to(values[forecasts.origins - 1][:, None], shape)}
    if period is not None:
        ahead = np.broadcast_to(np.arange(shape[1])[None, :], shape)
        source = seasonal_index(forecasts.index, ahead, period, series)
        out["seasonal_naive"] = values[np.maximum(source, 0)]  # origins have the history (min_history)
    out["training_mean" if np.issubdtype(values.dtype, np.floating) else "majority_class"] = (
        np.full(shape, training_value, dtype=values.dtype))
    return out


def score_target(kind: str, series: Series, column: str, forecasts: Forecasts, period: int | None,
                 training_value, std: float = 1.0, mean: float = 0.0) -> dict:
    """The backtest report of one target: model, baselines, best baseline, skill."""
    truth = series.values[column][forecasts.index]
    baselines = baseline_forecasts(series, column, forecasts, period, training_value)
    if kind == "real":
        model = _real_scores(forecasts.values[column], truth, std, mean)
        scored = {name: _real_scores(v, truth, std, mean) for name, v in baselines.items()}
        error = {name: s["overall"]["mae"] for name, s in scored.items()}
        model_error = model["overall"]["mae"]
    else:
        model = _categorical_scores(forecasts.values[column], truth, forecasts.log_prob.get(column))
        scored = {name: _categorical_scores(v, truth, None) for name, v in baselines.items()}
        error = {name: 1 - s["overall"]["accuracy"] for name, s in scored.items()}
        model_error = 1 - model["overall"]["accuracy"]
    best = min(error, key=error.get)
    skill = 1 - model_error / error[best] if error[best] > 0 else (0.0 if model_error == 0 else -math.inf)
    return {"type": kind, "model": model["overall"], "baselines": {n: s["overall"] for n, s in scored.items()},
            "best_baseline": best, "skill": skill,
            "per_step": {"model": model["per_step"], **{n: s["per_step"] for n, s in scored.items()}}}


# ---------------------------------------------------------------- intervals


def residual_quantiles(forecasts: Forecasts, series: Series, column: str,
                       quantiles: list[float]) -> np.ndarray:
    """[len(quantiles), H] quantiles of truth - forecast (standardised) per horizon step."""
    residual = series.values[column][forecasts.index] - forecasts.values[column].astype(np.float64)
    return np.quantile(residual, quantiles, axis=0)


def score_intervals(forecasts: Forecasts, series: Series, column: str, quantiles: list[float],
                    offsets: np.ndarray, std: float) -> dict:
    """Coverage of the outermost quantile pair and pinball loss (original units) on the
    evaluated split, for forecasts + calibration `offsets` [Q, H]."""
    truth = series.values[column][forecasts.index]
    bounds = forecasts.values[column][None, :, :].astype(np.float64) + offsets[:, None, :]
    order = np.argsort(quantiles)
    low, high = bounds[order[0]], bounds[order[-1]]
    covered = (truth >= low) & (truth <= high)
    pinball = {}
    for q, bound in zip(quantiles, bounds):
        diff = (truth - bound) * std
        pinball[str(q)] = float(np.maximum(q * diff, (q - 1) * diff).mean())
    return {
        "quantiles": [float(q) for q in quantiles],
        "interval": [float(quantiles[order[0]]), float(quantiles[order[-1]])],
        "nominal_coverage": float(quantiles[order[-1]] - quantiles[order[0]]),
        "coverage": float(covered.mean()),
        "coverage_per_step": [float(x) for x in covered.mean(axis=0)],
        "pinball": pinball,
        "mean_pinball": float(np.mean(list(pinball.values()))),
    }


# ---------------------------------------------------------------- evaluate's part


@dataclass
class Plan:
    """What a backtest needs besides the model, settled before anything is written."""

    horizon: int
    stride: int
    period: int | None
    period_source: str
    quantiles: list[float]
    calibration_path: str | None  # None: no split to calibrate intervals on
    calibration_note: str


def run_backtest(job, metadata: Metadata, plan: Plan, series: Series, calibration: Series | None,
                 training_values: dict, batch_size: int) -> dict:
    """The backtest report of one model: origins, speed, per target scores and intervals.
    `training_values[target]`: the training mean (standardised) or majority class id."""
    info = job.info
    history = min_history(plan.period, plan.horizon)
    found = origins(series, plan.horizon, plan.stride, history)
    if len(found) == 0:
        raise SequifierError(
            f"forecast_horizon: no sequence of the split has {plan.horizon} items after {history} "
            f"items of history, so no origin can be backtested; use a shorter forecast_horizon "
            "(or seasonal_period), or a longer split")
    forecasts = forecast(job, metadata, series, found, plan.horizon, batch_size)
    logger.info(f"{job.name}: backtest of {len(found):,} origins x {plan.horizon} steps, "
                f"{forecasts.method} ({forecasts.index.size / max(forecasts.seconds, 1e-9):,.0f} steps/s)")
    reals = [t for t in info.target_columns if info.target_column_types[t] == "real"]
    cal = None
    if calibration is not None and reals and plan.quantiles:
        cal_origins = origins(calibration, plan.horizon, plan.stride, history)
        if len(cal_origins):
            cal = forecast(job, metadata, calibration, cal_origins, plan.horizon, batch_size)
    targets = {}
    for t in info.target_columns:
        kind = info.target_column_types[t]
        stats = metadata.selected_columns_statistics.get(t, {})
        std, mean = float(stats.get("std", 1.0)), float(stats.get("mean", 0.0))
        report = score_target(kind, series, t, forecasts, plan.period, training_values[t], std, mean)
        if kind == "real" and plan.quantiles:
            if cal is None:
                report["intervals"] = {"note": plan.calibration_note if calibration is None else
                                       "the calibration split has no origin with enough history"}
            else:
                offsets = residual_quantiles(cal, calibration, t, plan.quantiles)
                report["intervals"] = score_intervals(forecasts, series, t, plan.quantiles, offsets, std)
                report["intervals"]["calibration_origins"] = int(len(cal.origins))
        targets[t] = report
    steps = int(forecasts.index.size)
    return {
        "horizon": plan.horizon, "method": forecasts.method, "stride": plan.stride, "seasonal_period": plan.period,
        "seasonal_period_source": plan.period_source, "origins": int(len(found)),
        "forecast_steps": steps, "seconds": round(forecasts.seconds, 4),
        "steps_per_second": round(steps / forecasts.seconds, 1) if forecasts.seconds > 0 else None,
        "calibration_data_path": plan.calibration_path if cal is not None else None,
        "targets": targets,
    }


def markdown_lines(backtest: dict, model: str) -> list[str]:
    """The backtest section of evaluate's markdown report."""
    lines = ["", f"## Backtest of {model}: {backtest['horizon']} steps ahead",
             "",
             f"{backtest['origins']} origins, one every {backtest['stride']} items of each sequence; "
             f"{backtest['forecast_steps']:,} forecast steps, {backtest.get('method', 'autoregressive')} "
             f"({backtest['steps_per_second'] or 0:,.0f} per second). Seasonal period: "
             + (f"{backtest['seasonal_period']} items ({backtest['seasonal_period_source']})."
                if backtest["seasonal_period"] else f"none ({backtest['seasonal_period_source']})."),
             "Skill = 1 - model error / best baseline error: above 0 the model beats every "
             "baseline, 0.2 means 20% less error than the best one."]
    for target, entry in backtest["targets"].items():
        names = REAL_METRICS if entry["type"] == "real" else CATEGORICAL_METRICS
        lines += ["", "| target | predictor | " + " | ".join(names) + " | skill |",
                  "|---|---|" + "---|" * (len(names) + 1)]
        lines.append(_row(target, "model", entry["model"], names, f"{entry['skill']:.4f}"))
        for name, values in entry["baselines"].items():
            mark = " (best)" if name == entry["best_baseline"] else ""
            lines.append(_row(target, f"baseline: {name}{mark}", values, names, ""))
        intervals = entry.get("intervals")
        if intervals and "coverage" in intervals:
            low, high = intervals["interval"]
            lines += ["", f"{target}: the {low:g}-{high:g} interval covers "
                          f"{100 * intervals['coverage']:.1f}% of the truths (nominal "
                          f"{100 * intervals['nominal_coverage']:.0f}%); mean pinball loss "
                          f"{intervals['mean_pinball']:.4f} over quantiles {intervals['quantiles']} "
                          f"(calibrated on {intervals['calibration_origins']} origins of "
                          f"`{backtest['calibration_data_path']}`)."]
        elif intervals:
            lines += ["", f"{target}: no intervals ({intervals['note']})."]
        metric = "mae" if entry["type"] == "real" else "accuracy"
        per_step = entry["per_step"]
        predictors = list(per_step)
        lines += ["", f"{target} {metric} per horizon step:", "",
                  "| step | " + " | ".join(predictors) + " |", "|---|" + "---|" * len(predictors)]
        for step in range(backtest["horizon"]):
            lines.append(f"| {step + 1} | " + " | ".join(f"{per_step[p][metric][step]:.4f}" for p in predictors) + " |")
    return lines


def _row(target: str, predictor: str, values: dict, names, skill: str) -> str:
    cells = ["-" if values.get(n) is None else f"{values[n]:.4f}" for n in names]
    return f"| {target} | {predictor} | " + " | ".join(cells) + f" | {skill} |"


# ---------------------------------------------------------------- infer's intervals

# infer calibrates on at most about this many origins of the validation split (evenly
# spaced): enough for the 5% and 95% quantiles of every step, and a bounded cost
CALIBRATION_ORIGINS = 4000


def calibration_offsets(job, metadata: Metadata, calibration: Series, horizon: int, quantiles: list[float],
                        batch_size: int, period: int | None = None) -> dict[str, np.ndarray]:
    """{real target: [Q, H] offsets}: the quantiles of the model's backtest errors on the
    calibration series (see the module docstring), for infer's `output_quantiles`."""
    every = origins(calibration, horizon, 1, min_history(period, horizon))
    stride = max(1, len(every) // CALIBRATION_ORIGINS)
    chosen = every[::stride]
    if len(chosen) == 0:
        raise SequifierError(
            f"output_quantiles: the validation split has no sequence with {horizon} items after "
            "an item, so the forecast errors that set the intervals cannot be measured; use a "
            "shorter forecast_horizon or preprocess with a larger validation share")
    found = forecast(job, metadata, calibration, chosen, horizon, batch_size)
    return {t: residual_quantiles(found, calibration, t, quantiles)
            for t in job.info.target_columns if job.info.target_column_types[t] == "real"}
