"""`sequifier evaluate`: how good is a model, on every item of a split, against baselines.

Per model: every-position inference (`positions: scored`, one forward pass per window)
predicts each item of the split that has an earlier item exactly once; the metrics of
`sequifier.metrics` score those predictions against the split's own values, and the
baselines (unigram / majority class, training mean, previous value) are scored on the
same items, with class counts and means taken from the training split as training does.

Writes, under outputs/evaluation/: MODEL-SPLIT-metrics.json and .md, MODEL-SPLIT-
predictions.csv|parquet (one row per predicted item, each target next to TARGET_true),
and with several models SPLIT-comparison.md, one table comparing them.
"""

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from sequifier import metrics, project, ranking
from sequifier.catalog import logit_chunks
from sequifier.config.metadata import Metadata, read_metadata
from sequifier.config.schema import DEFAULT_TOP_K, EvaluateConfig
from sequifier.data.windows import Windows, first_predicted_slot
from sequifier.errors import SequifierError
from sequifier.export_format import export_model_name
from sequifier.gate import validate
from sequifier.infer import backtest, outputs
from sequifier.infer.baselines import (
    Series,
    check_seasonal_period,
    detect_seasonal_period,
    seasonal_index,
    series_from_windows,
)
from sequifier.infer.engines import Chooser, predict_every_position
from sequifier.infer.models import (
    ModelJob,
    check_distinct_names,
    check_dropout,
    check_metadata_matches_model,
    model_paths,
    open_model,
)
from sequifier.infer.reading import default_split, model_inputs, read_model_windows
from sequifier.infer.tables import prediction_table, to_user_values
from sequifier.project import resolve_path

logger = logging.getLogger(__name__)


@dataclass
class TargetScore:
    """The summed metrics of one target: the model's and each baseline's."""

    column_type: str
    model: torch.Tensor
    baselines: dict[str, torch.Tensor] = field(default_factory=dict)
    n_classes: int | None = None  # categorical: ids incl. the reserved ones (top-k applies?)


def run_evaluate(cfg: EvaluateConfig) -> list[str]:
    """Evaluate every model in `cfg.model_path` on the split; return the paths written."""
    validate("evaluate", cfg)
    root = cfg.project_root
    metadata = read_metadata(resolve_path(root, cfg.metadata_config_path))
    data_path = resolve_path(root, cfg.data_path or default_split(metadata, -1, "data_path"))
    baseline_path = resolve_path(root, cfg.baseline_data_path or default_split(metadata, 0, "baseline_data_path"))
    split = split_name(metadata, root, data_path)
    jobs = [_open(cfg, metadata, resolve_path(root, p)) for p in model_paths(cfg.model_path)]
    check_distinct_names(jobs)
    top_k = _top_k(cfg, jobs)
    ranks = _ranking_settings(cfg, jobs, metadata)
    for job in jobs:
        backtest.check_model(cfg, job)
    planned = _planned_paths(cfg, jobs, split)
    if not cfg.overwrite:
        outputs.refuse_to_overwrite(planned)

    # everything is read and checked before anything is scored or written
    windows_by_columns: dict[tuple, Windows] = {}
    for job in jobs:
        key = _columns(job)
        if key not in windows_by_columns:
            windows_by_columns[key] = read_model_windows(cfg.read_format, metadata, data_path, list(key),
                                                         metadata.seq_length, cfg.metadata_config_path)
    targets = sorted({t for job in jobs for t in job.info.target_columns})
    training = read_model_windows(cfg.read_format, metadata, baseline_path, targets, metadata.seq_length,
                                  cfg.metadata_config_path)
    for windows in windows_by_columns.values():
        if not (first_predicted_slot(windows) <= metadata.seq_length).any():
            raise SequifierError(
                f"data_path: '{data_path}' has no item to score: every window's targets are "
                "padding, context from an earlier split, or a sequence's first item; evaluate "
                "a split with items (e.g. larger split_ratios for it)"
            )

    def read(path, key):
        return read_model_windows(cfg.read_format, metadata, path, list(key), metadata.seq_length,
                                  cfg.metadata_config_path)

    # the series behind the windows, with the split before as history (seasons, origins)
    before = _split_before(metadata, root, data_path)
    series = {key: series_from_windows(w, list(key), read(before, key) if before else None)
              for key, w in windows_by_columns.items()}
    period, period_source = _seasonal_period(cfg, metadata, list(series.values())[0])
    plan, calibration = None, {}
    if cfg.forecast_horizon is not None:
        plan = _backtest_plan(cfg, metadata, period, period_source, split)
        if plan.calibration_path is not None:
            cal_before = _split_before(metadata, root, plan.calibration_path)
            for key in windows_by_columns:
                calibration[key] = series_from_windows(
                    read(plan.calibration_path, key), list(key),
                    read(cal_before, key) if cal_before else None)

    reports, texts, tables = [], {}, {}
    for job in jobs:
        key = _columns(job)
        report, rows = _evaluate_model(cfg, metadata, job, windows_by_columns[key], training, top_k,
                                       split, ranks[job.path], cfg.exclude_seen, series[key], period)
        report.update(model=job.path, data_path=data_path, split=split,
                      baseline_data_path=baseline_path, seasonal_period=period,
                      seasonal_period_source=period_source)
        if plan is not None:
            report["backtest"] = backtest.run_backtest(
                job, metadata, plan, series[key], calibration.get(key),
                _training_values(metadata, job, training), cfg.inference_batch_size)
        reports.append(report)
        texts[project.evaluation_path(root, job.name, split, "metrics", "json")] = (
            json.dumps(report, indent=2, allow_nan=True) + "\n")
        texts[project.evaluation_path(root, job.name, split, "metrics", "md")] = markdown(
            [report], f"Evaluation of {job.name} on {split}")
        tables.update(rows)
    if len(jobs) > 1:
        texts[project.comparison_path(root, split)] = markdown(reports, f"Models compared on {split}")
    outputs.write_tables(tables, cfg.write_format, texts)  # one set: all files or none
    if cfg.tracking is not None:  # to each model's training run (sequifier/train/tracking.py)
        from sequifier.train.tracking import log_evaluation

        log_evaluation(cfg, split, [
            (export_model_name(job.path), job.path, report,
             [project.evaluation_path(root, job.name, split, "metrics", ext) for ext in ("json", "md")])
            for job, report in zip(jobs, reports)])
    for report in reports:
        logger.info("\n" + markdown([report], f"{os.path.basename(report['model'])} on {split}"))
    for path in planned:
        logger.info(f"wrote {path}")
    return planned


def _seasonal_period(cfg: EvaluateConfig, metadata: Metadata, series: Series) -> tuple[int | None, str]:
    """The seasonal-naive baseline's period: the config's, else detected from time positions."""
    if cfg.seasonal_period is not None:
        check_seasonal_period(cfg.seasonal_period, series)
        return cfg.seasonal_period, "seasonal_period"
    period, source = detect_seasonal_period(metadata, series)
    if period is not None and (np.arange(len(series)) - series.start).max() < period:
        return None, f"{source} is longer than the history in the data; set seasonal_period"
    if period is None:
        logger.info(f"no seasonal-naive baseline: {source}")
    return period, source


def _backtest_plan(cfg: EvaluateConfig, metadata: Metadata, period: int | None, period_source: str,
                   split: str) -> backtest.Plan:
    quantiles = list(cfg.output_quantiles) if cfg.output_quantiles is not None else list(backtest.DEFAULT_QUANTILES)
    calibration, note = None, ""
    if cfg.calibration_data_path is not None:
        calibration = resolve_path(cfg.project_root, cfg.calibration_data_path)
    elif split.startswith("split") and split[5:].isdigit() and int(split[5:]) >= 2:
        calibration = resolve_path(cfg.project_root, metadata.split_paths[int(split[5:]) - 1])
    else:
        note = (f"no split between the training split and {split} to calibrate them on; set "
                "calibration_data_path (not the training split: its errors are too small)")
    return backtest.Plan(cfg.forecast_horizon, cfg.backtest_stride or 1, period, period_source,
                         quantiles, calibration, note)


def _training_values(metadata: Metadata, job: ModelJob, training: Windows) -> dict:
    """Per target: the training split's mean (real) or most frequent id (categorical)."""
    values = {}
    for t in job.info.target_columns:
        train_values = tensor(training.values[t][:, 1:])
        mask = torch.arange(1, train_values.shape[1] + 1)[None, :] >= tensor(training.target_start)[:, None]
        if job.info.target_column_types[t] == "categorical":
            values[t] = int(metrics.class_counts(train_values, metadata.n_classes[t], mask).argmax())
        else:
            values[t] = metrics.mean_from_value_sums(metrics.value_sums(train_values, mask))
    return values


def _split_before(metadata: Metadata, root: str, path: str) -> str | None:
    """The metadata's split just before `path`, if `path` is one of its later splits."""
    name = split_name(metadata, root, path)
    if name.startswith("split") and name[5:].isdigit() and int(name[5:]) >= 1:
        return resolve_path(root, metadata.split_paths[int(name[5:]) - 1])
    return None


def split_name(metadata: Metadata, root: str, path: str) -> str:
    """`splitK` for a split of the metadata, else the file's stem."""
    for k, split in enumerate(metadata.split_paths):
        if os.path.abspath(resolve_path(root, split)) == os.path.abspath(path):
            return f"split{k}"
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _open(cfg: EvaluateConfig, metadata: Metadata, path: str) -> ModelJob:
    """A generative model of the metadata's seq_length, run on every position."""
    job = open_model(path, metadata, device=cfg.device,
                     training_config_path=resolve_path(cfg.project_root, cfg.training_config_path),
                     # no seed of its own: evaluate takes argmax and refuses dropout exports
                     model_type="generative", seed=0, every_position=True)
    info, name = job.info, os.path.basename(path)
    if info.model_type != "generative":
        raise SequifierError(f"model_path: '{name}' is an {info.model_type} model; evaluate scores the "
                             "predictions of generative models")
    if info.seq_length != metadata.seq_length:
        raise SequifierError(f"model_path: '{name}' was trained with seq_length {info.seq_length}, but the "
                             f"metadata's data has seq_length {metadata.seq_length}; evaluate it on data "
                             "preprocessed with the model's seq_length")
    check_dropout(False, info, path)
    check_metadata_matches_model(metadata, info, path)
    return job


def _columns(job: ModelJob) -> tuple:
    """Model inputs and targets: evaluate reads the targets' true values too."""
    return tuple(dict.fromkeys(job.info.input_columns + job.info.target_columns))


def _top_k(cfg: EvaluateConfig, jobs: list[ModelJob]) -> int:
    if cfg.accuracy_top_k is None:
        return DEFAULT_TOP_K
    for job in jobs:
        if "categorical" not in job.info.target_column_types.values():
            raise SequifierError(
                f"accuracy_top_k: the model '{job.name}' has only real targets, and top-k "
                "accuracy is a metric of categorical targets; remove accuracy_top_k"
            )
    return cfg.accuracy_top_k


def _ranking_settings(cfg: EvaluateConfig, jobs: list[ModelJob], metadata: Metadata) -> dict:
    """{model path: {categorical target: its ranking k}}; the ranking_k / exclude_seen
    rules (sequifier.ranking) checked against each model's targets."""
    from sequifier import ranking

    problems, settings = [], {}
    for job in jobs:
        types = dict(job.info.target_column_types)
        for line in ranking.ranking_k_problems("ranking_k", cfg.ranking_k, metadata.n_classes, types,
                                               cfg.exclude_seen, "exclude_seen"):
            if line not in problems:
                problems.append(line)
        settings[job.path] = {t: ranking.resolve_ranking_k(cfg.ranking_k, metadata.n_classes[t])
                              for t, kind in types.items() if kind == "categorical"}
    if problems:
        raise SequifierError("\n".join(problems))
    return settings


def _planned_paths(cfg: EvaluateConfig, jobs: list[ModelJob], split: str) -> list[str]:
    root = cfg.project_root
    paths = []
    for job in jobs:
        paths += [project.evaluation_path(root, job.name, split, "metrics", "json"),
                  project.evaluation_path(root, job.name, split, "metrics", "md"),
                  project.evaluation_path(root, job.name, split, "predictions", cfg.write_format)]
    if len(jobs) > 1:
        paths.append(project.comparison_path(root, split))
    return paths  # a backtest's report is part of the metrics files


# ---------------------------------------------------------------- scoring


def _evaluate_model(cfg: EvaluateConfig, metadata: Metadata, job: ModelJob, windows: Windows,
                    training: Windows, top_k: int, split: str, ranking_k: dict[str, tuple],
                    exclude_seen: bool, series: Series, period: int | None):
    """(report, {predictions path: table}) of one model on the split."""
    info = job.info
    start_time = time.perf_counter()
    first_slot = first_predicted_slot(windows)
    inputs = model_inputs(metadata, info, windows)
    truth = {t: tensor(windows.values[t][:, 1:])
             for t in info.target_columns}
    sums = {t: metrics.empty_sums(info.target_column_types[t], ranking_k=ranking_k.get(t, ()))
            for t in info.target_columns}
    seen = _seen_previous(windows, ranking_k) if exclude_seen else {}

    def score(raw, mask, start, end):
        picked = torch.from_numpy(mask)
        for t in info.target_columns:
            target = truth[t][start:end]
            if info.target_column_types[t] == "categorical":
                # the scored rows against the whole catalogue, a bounded chunk at a time
                rows, targets = raw[t][mask], target[picked]
                context = (ranking.seen_for_rows(seen[t][start:end], torch.nonzero(picked.reshape(-1)).squeeze(1))
                           if t in seen else None)
                vectors = getattr(job.runner, "class_vectors", {}).get(t)
                for first, last, logits in logit_chunks(rows, vectors):
                    part = None if context is None else context[first:last]
                    sums[t] += metrics.ranked_row_sums(torch.from_numpy(logits), targets[first:last], top_k,
                                                       ranking_k.get(t, ()), part)
            else:
                sums[t] += metrics.real_sums(tensor(raw[t]), target, _std(metadata, t), picked)

    rows, slots, predictions, _, _ = predict_every_position(job, metadata, inputs, first_slot,
                                                         cfg.inference_batch_size, Chooser.argmax(),
                                                         with_probabilities=False, on_batch=score)
    seconds = time.perf_counter() - start_time
    full_mask = torch.from_numpy(np.arange(1, info.seq_length + 1)[None, :] >= first_slot[:, None])
    scores = {}
    for t in info.target_columns:
        kind = info.target_column_types[t]
        found = _baselines(metadata, t, kind, windows, training, full_mask, top_k, ranking_k.get(t, ()),
                           exclude_seen)
        if kind == "real" and period is not None:
            found["seasonal_naive"] = _seasonal_sums(metadata, t, windows, series, period, full_mask)
        scores[t] = TargetScore(kind, sums[t], found,
                                metadata.n_classes.get(t) if kind == "categorical" else None)
    report = {
        "top_k": top_k,
        "count": len(rows),
        "seconds": round(seconds, 4),
        "items_per_second": round(len(rows) / seconds, 1) if seconds > 0 else None,
        "exclude_seen": exclude_seen,
        "targets": {t: _target_report(s, top_k, ranking_k.get(t, ())) for t, s in scores.items()},
    }
    keys = outputs.key_columns(metadata, windows.sequence_id[rows], windows.item_position[rows, slots])
    true_values = {
        f"{t}_true": to_user_values(metadata, info, t, windows.values[t][rows, slots], cfg.map_to_id)
        for t in info.target_columns
    }
    path = project.evaluation_path(cfg.project_root, job.name, split, "predictions", cfg.write_format)
    return report, {path: prediction_table(metadata, info, keys, predictions, cfg.map_to_id, extra=true_values)}


def tensor(array: np.ndarray) -> torch.Tensor:
    """A tensor of `array`'s values (a copy where the array is a read-only Arrow view)."""
    array = np.ascontiguousarray(array)
    return torch.from_numpy(array if array.flags.writeable else array.copy())


def _std(metadata: Metadata, column: str) -> float:
    return float(metadata.selected_columns_statistics[column]["std"])


def _seen_previous(windows: Windows, ranking_k: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """{ranked target: [N, L] its item in the slot before each target}: the items seen."""
    return {t: tensor(windows.values[t][:, :-1]) for t, ks in ranking_k.items() if ks}


def _markov(metadata: Metadata, column: str, train_values: torch.Tensor, train_previous: torch.Tensor,
            train_mask: torch.Tensor, counts: torch.Tensor) -> metrics.MarkovBaseline:
    n_classes = metadata.n_classes[column]
    keys = metrics.transition_keys(train_previous, train_values, n_classes, train_mask)
    return metrics.MarkovBaseline.fit(keys, n_classes, counts)


def _baselines(metadata: Metadata, column: str, kind: str, windows: Windows, training: Windows,
               mask: torch.Tensor, top_k: int, ranking_k: tuple = (),
               exclude_seen: bool = False) -> dict[str, torch.Tensor]:
    """The baselines' sums on the same items as the model, fitted on the training split's
    scored targets (the slots training learns from)."""
    values = tensor(windows.values[column])
    targets = values[:, 1:]
    train_values = tensor(training.values[column][:, 1:])
    train_slots = torch.arange(1, train_values.shape[1] + 1)
    train_mask = train_slots[None, :] >= tensor(training.target_start)[:, None]
    if kind == "categorical":
        counts = metrics.class_counts(train_values, metadata.n_classes[column], train_mask)
        train_previous = tensor(training.values[column][:, :-1])
        markov = _markov(metadata, column, train_values, train_previous, train_mask, counts)
        return metrics.categorical_baseline_sums(targets, counts, top_k, mask, previous=values[:, :-1],
                                                 markov=markov, ranking_k=ranking_k,
                                                 exclude_seen=exclude_seen and bool(ranking_k))
    mean = metrics.mean_from_value_sums(metrics.value_sums(train_values, train_mask))
    return metrics.real_baseline_sums(targets, values[:, :-1], mean, _std(metadata, column), mask)


def _seasonal_sums(metadata: Metadata, column: str, windows: Windows, series: Series, period: int,
                   mask: torch.Tensor) -> torch.Tensor:
    """Real sums of the value one season earlier, on the scored items that have one (a
    sequence's first season has none: its count is smaller than the model's)."""
    index = _series_index(series, windows.sequence_id, windows.item_position[:, 1:])
    source = seasonal_index(np.maximum(index, 0), np.zeros_like(index), period, series)
    has = torch.from_numpy((index >= 0) & (source >= 0)) & mask
    values = series.values[column][np.maximum(source, 0)]
    return metrics.real_sums(tensor(values), tensor(windows.values[column][:, 1:]), _std(metadata, column), has)


def _series_index(series: Series, sequence_id: np.ndarray, position: np.ndarray) -> np.ndarray:
    """Flat series index of each (sequence, position) item; -1 where the series lacks it."""
    sequences = np.unique(series.sequence)
    positions = np.unique(series.position)
    width = len(positions) + 1

    def key(seq, pos):
        s = np.searchsorted(sequences, seq)
        q = np.searchsorted(positions, pos)
        return s.astype(np.int64) * width + q

    keys = key(series.sequence, series.position)  # sorted: the series is in (sequence, position) order
    wanted = key(np.broadcast_to(sequence_id[:, None], position.shape), position)
    found = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[found] == wanted, found, -1)


def _target_report(score: TargetScore, top_k: int, ranking_k: tuple = ()) -> dict:
    report = {
        "type": score.column_type,
        "model": _plain(metrics.metrics_from_sums(score.column_type, score.model, top_k, ranking_k,
                                                  score.n_classes)),
        "baselines": {name: _plain(metrics.metrics_from_sums(score.column_type, sums, top_k, ranking_k,
                                                             score.n_classes))
                      for name, sums in score.baselines.items()},
    }
    if ranking_k:
        report["ranking_k"] = list(ranking_k)
    return report


def _ranking_names(reports: list[dict]) -> list[str]:
    """The ranking metric columns of the categorical table (every k any target has)."""
    from sequifier import ranking

    ks = sorted({k for r in reports for t in r["targets"].values() for k in t.get("ranking_k", [])})
    return ranking.metric_names(ks) if ks else []


def _plain(values: dict) -> dict:
    """JSON-friendly: NaN (no scored item) becomes null."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


# ---------------------------------------------------------------- reports


def markdown(reports: list[dict], title: str) -> str:
    """One table per target type: a row per model and then per baseline, same items."""
    lines = [f"# {title}", ""]
    first = reports[0]
    lines.append(f"Data: `{first['data_path']}` ({first['count']} items predicted, each once); "
                 f"baselines fitted on `{first['baseline_data_path']}`."
                 + (" Seen items are removed from the rankings (exclude_seen)." if first.get("exclude_seen") else ""))
    for kind in ("categorical", "real"):
        targets = [t for t, r in first["targets"].items() if r["type"] == kind]
        for report in reports[1:]:
            targets += [t for t, r in report["targets"].items() if r["type"] == kind and t not in targets]
        if not targets:
            continue
        names = (["count", "accuracy", metrics.top_k_name(first["top_k"]), "cross_entropy"]
                 + _ranking_names(reports) if kind == "categorical" else ["count", "mae", "rmse"])
        lines += ["", "| target | predictor | " + " | ".join(names) + " |",
                  "|---|---|" + "---|" * len(names)]
        for target in targets:
            baselines = None
            for report in reports:
                entry = report["targets"].get(target)
                if entry is None:
                    continue
                model = os.path.splitext(os.path.basename(report["model"]))[0]
                lines.append(_row(target, model, entry["model"], names))
                baselines = baselines or entry["baselines"]
            for name, values in (baselines or {}).items():
                lines.append(_row(target, f"baseline: {name}", values, names))
    lines.append("")
    lines.append("Items per second (forward passes and scoring, per model): " + ", ".join(
        f"{os.path.splitext(os.path.basename(r['model']))[0]} {r['items_per_second']:,.0f}"
        for r in reports if r["items_per_second"]))
    if first.get("seasonal_period") is None and "seasonal_period_source" in first:
        lines.append(f"No seasonal-naive baseline: {first['seasonal_period_source']}.")
    for report in reports:
        if "backtest" in report:
            lines += backtest.markdown_lines(report["backtest"],
                                             os.path.splitext(os.path.basename(report["model"]))[0])
    return "\n".join(lines) + "\n"


def _row(target: str, predictor: str, values: dict, names: list[str]) -> str:
    def cell(name):
        if name not in values:  # top-k of a column with k values or fewer (metrics.top_k_applies)
            return "n/a"
        value = values[name]
        if value is None:
            return "-"
        return f"{value:d}" if isinstance(value, int) else f"{value:.4f}"

    return f"| {target} | {predictor} | " + " | ".join(cell(n) for n in names) + " |"
