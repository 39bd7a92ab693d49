"""`sequifier infer`: exported model + preprocessed windows -> predictions in the user's terms.

Flow per model: open the export and check it against the config and the metadata (all
models before any output is written), read the windows once per set of input columns,
run the model batch by batch (feeding predictions back in for autoregression), map ids
and standardised values back, and write each output file atomically.

Windows hold `seq_length + 1` slots. Which slots are predicted (`positions`, `forecast`):

* `last` (default): slots `0..L-1` are the model's input and the prediction is for slot
  `L`, so a prediction's `itemPosition` is the window's original position of slot `L`
  (it lines up with the held-out truth).
* `scored`: the same input, and a prediction for every slot from the window's first
  predicted slot (`windows.first_predicted_slot`) to `L`, all from one forward pass:
  the model is causal, so its output after input slot j is the prediction for slot j+1.
* `forecast`: one window per sequence, the one ending with the sequence's last item;
  slots `1..L` are the input, so the prediction is for the position after the last
  observation (the last position plus the position step).

Each autoregressive step drops the oldest slot, appends the prediction and predicts
the next position.
"""

import logging
import os

import numpy as np

from sequifier import project
from sequifier.config.metadata import Metadata, read_metadata
from sequifier.config.schema import InferConfig
from sequifier.data import future_rows
from sequifier.data.windows import Windows, first_predicted_slot
from sequifier.errors import SequifierError, shown
from sequifier.gate import validate
from sequifier.infer import outputs, recommend
from sequifier.infer.engines import (
    Chooser,
    TopK,
    embed,
    forecasts_directly,
    predict_every_position,
    predict_last,
    sampling_settings,
)
from sequifier.infer.models import (
    ModelJob,
    check_config_matches_model,
    check_distinct_names,
    check_metadata_matches_model,
    model_paths,
    open_model,
    prediction_steps,
)
from sequifier.infer.reading import (
    check_forecast_input,
    default_split,
    forecast_positions,
    forecast_windows,
    model_inputs,
    read_model_windows,
    typed_inputs,
)
from sequifier.infer.tables import (
    embedding_table,
    prediction_table,
    probability_table,
    recommendation_table,
    to_user_values,
)
from sequifier.project import resolve_path

logger = logging.getLogger(__name__)


def run_infer(cfg: InferConfig) -> list[str]:
    """Run every model in `cfg.model_path` on the data; return the paths written."""
    validate("infer", cfg)
    root = cfg.project_root
    metadata = read_metadata(resolve_path(root, cfg.metadata_config_path))
    data_path = resolve_path(root, cfg.data_path or default_split(metadata, -1, "data_path"))

    jobs = [_open(cfg, metadata, resolve_path(root, p)) for p in model_paths(cfg.model_path)]
    check_distinct_names(jobs)
    if not cfg.overwrite:
        outputs.refuse_to_overwrite([p for job in jobs for p in job.output_paths])

    # all data is read and checked before the first model writes anything
    windows_by_columns: dict[tuple, Windows] = {}
    for job in jobs:
        key = tuple(job.info.input_columns)
        if key not in windows_by_columns:
            windows_by_columns[key] = read_model_windows(cfg.read_format, metadata, data_path,
                                                         job.info.input_columns, cfg.seq_length,
                                                         cfg.metadata_config_path)
    if cfg.forecast:
        for windows in windows_by_columns.values():
            check_forecast_input(data_path, windows, cfg.seq_length)
        _gather_future_values(cfg, metadata, jobs, windows_by_columns)
    if cfg.output_quantiles is not None:
        _calibrate_intervals(cfg, metadata, jobs)
    written: list[str] = []
    for job in jobs:
        tables = _infer_model(cfg, metadata, job, windows_by_columns[tuple(job.info.input_columns)])
        outputs.write_tables(tables, cfg.write_format)  # predictions + probabilities together
        for path in tables:
            logger.info(f"wrote {path}")
            written.append(path)
    return written


def _calibrate_intervals(cfg: InferConfig, metadata: Metadata, jobs: list[ModelJob]) -> None:
    """Each model's interval offsets for `output_quantiles`: the quantiles of its forecast
    errors per horizon step in a backtest of the validation split (infer/backtest.py)."""
    from sequifier.infer import backtest
    from sequifier.infer.baselines import series_from_windows

    for job in jobs:
        types = job.info.target_column_types
        if "real" not in types.values():
            raise SequifierError(
                f"output_quantiles: the model '{job.name}' has only categorical targets "
                f"({', '.join(types)}); quantiles are intervals of real targets (use "
                "output_probabilities for a categorical forecast); remove output_quantiles")
    if len(metadata.split_paths) < 2:
        raise SequifierError(
            "output_quantiles: the metadata records no validation split (split 1) to measure the "
            "forecast errors on; preprocess with split_ratios of at least two splits")
    root, horizon = cfg.project_root, prediction_steps(cfg)
    for job in jobs:
        columns = list(dict.fromkeys(job.info.input_columns + job.info.target_columns))
        history, split = (read_model_windows(cfg.read_format, metadata, resolve_path(root, p), columns,
                                             cfg.seq_length, cfg.metadata_config_path)
                          for p in metadata.split_paths[:2])
        job.interval_offsets = backtest.calibration_offsets(
            job, metadata, series_from_windows(split, columns, history), horizon,
            list(cfg.output_quantiles), cfg.inference_batch_size)


def _gather_future_values(cfg: InferConfig, metadata: Metadata, jobs: list[ModelJob],
                          windows_by_columns: dict[tuple, Windows]) -> None:
    """Each model's known-ahead values at its forecast positions (time features from the
    positions, the others from future rows), checked for coverage before any output."""
    needed = sorted({c for job in jobs for c in job.info.known_ahead_columns
                     if c not in metadata.time_features})
    rows = _future_rows(cfg, metadata, needed) if needed else None
    if cfg.future_data_path and not needed:
        logger.warning("future_data_path: no model has known-ahead inputs that future rows give "
                       "(time features follow from the positions), so it is not read")
    for job in jobs:
        if not job.info.known_ahead_columns:
            continue
        windows = forecast_windows(windows_by_columns[tuple(job.info.input_columns)])
        positions = forecast_positions(windows, prediction_steps(cfg), cfg.forecast_position_step)
        derived = [c for c in job.info.known_ahead_columns if c in metadata.time_features]
        given = [c for c in job.info.known_ahead_columns if c not in derived]
        values = future_rows.calendar_values(metadata, derived, positions)
        if given:
            def label(i: int, j: int, windows=windows, positions=positions) -> str:
                keys = outputs.key_columns(metadata, windows.sequence_id[i:i + 1], positions[i, j:j + 1])
                return (f"{metadata.sequence_id_column} {shown(keys[metadata.sequence_id_column][0])} at "
                        f"{metadata.position_column} {keys[metadata.position_column][0].as_py()}")

            values.update(rows.values_at(windows.sequence_id, positions, given, label))
        job.future_known = typed_inputs(metadata, values)


def _future_rows(cfg: InferConfig, metadata: Metadata, columns: list[str]) -> future_rows.FutureRows:
    """The future rows preprocess kept from the table, then those of future_data_path."""
    parts = []
    if metadata.future_path:
        path = resolve_path(cfg.project_root, metadata.future_path)
        if os.path.isfile(path):
            parts.append(future_rows.read_future_rows(path, metadata, columns, "metadata_config_path"))
    if cfg.future_data_path:
        parts.append(future_rows.read_future_rows(resolve_path(cfg.project_root, cfg.future_data_path),
                                                  metadata, columns, "future_data_path"))
    if not parts:
        raise SequifierError(
            f"forecast: the model's known-ahead inputs {columns} need their values at the "
            "forecast positions, and there are no future rows: add rows after each sequence's "
            "last item with those columns filled and the targets empty (then preprocess again), "
            "or name a table of them in future_data_path")
    return future_rows.FutureRows.combine(parts)


def _open(cfg: InferConfig, metadata: Metadata, path: str) -> ModelJob:
    job = open_model(path, metadata, device=cfg.device,
                     training_config_path=resolve_path(cfg.project_root, cfg.training_config_path),
                     model_type=cfg.model_type, seed=cfg.seed, infer_with_dropout=cfg.infer_with_dropout,
                     every_position=cfg.positions == "scored")
    if cfg.forecast and cfg.positions != "scored" and forecasts_directly(job.info, prediction_steps(cfg)):
        # a direct forecast reads the outputs of the window's last H positions
        job = open_model(path, metadata, device=cfg.device,
                         training_config_path=resolve_path(cfg.project_root, cfg.training_config_path),
                         model_type=cfg.model_type, seed=cfg.seed, infer_with_dropout=cfg.infer_with_dropout,
                         every_position=True)
    check_config_matches_model(cfg, job.info, path)
    check_metadata_matches_model(metadata, job.info, path)
    problems = recommend.model_problems(cfg, job.info, metadata.n_classes, path)
    if problems:
        raise SequifierError("\n".join(problems))
    job.output_paths = _output_paths(cfg, job)
    return job


def _output_paths(cfg: InferConfig, job: ModelJob) -> list[str]:
    root, fmt, info = cfg.project_root, cfg.write_format, job.info
    if info.model_type == "embedding":
        return [project.embedding_path(root, job.name, fmt)]
    paths = [project.prediction_path(root, job.name, fmt)]
    categorical = [c for c in info.target_columns if info.target_column_types[c] == "categorical"]
    if cfg.output_probabilities:
        paths += [project.probability_path(root, job.name, c, fmt) for c in categorical]
    if cfg.output_top_k:
        paths += [project.recommendation_path(root, job.name, c, cfg.output_top_k, fmt) for c in categorical]
    return paths


def _infer_model(cfg: InferConfig, metadata: Metadata, job: ModelJob, windows: Windows):
    """Run one model over all windows; return {output path: {column: 1-d array}}."""
    job.runner.reseed(cfg.seed)
    info, root, fmt = job.info, cfg.project_root, cfg.write_format
    first_slot = 0
    if cfg.forecast:  # the input ends with each sequence's last item
        windows, first_slot = forecast_windows(windows), 1
    if info.model_type == "embedding":
        inputs = model_inputs(metadata, info, windows, first_slot)
        embeddings = embed(job, inputs, len(windows), cfg.inference_batch_size)
        # the embedding summarises the window up to its last input slot
        keys = outputs.key_columns(metadata, windows.sequence_id,
                                   windows.item_position[:, first_slot + info.seq_length - 1])
        return {project.embedding_path(root, job.name, fmt): embedding_table(keys, embeddings)}
    chooser = Chooser.from_options(cfg.seed, cfg.sample_from_distribution_columns, sampling_settings(cfg))
    top_k = TopK(cfg.output_top_k, cfg.exclude_seen) if cfg.output_top_k else None
    if cfg.positions == "scored":
        inputs = model_inputs(metadata, info, windows, first_slot)
        rows, slots, predictions, probabilities, top = predict_every_position(
            job, metadata, inputs, first_predicted_slot(windows), cfg.inference_batch_size, chooser,
            cfg.output_probabilities, top_k=top_k)
        keys = outputs.key_columns(metadata, windows.sequence_id[rows], windows.item_position[rows, slots])
    else:
        steps = prediction_steps(cfg)
        length = info.seq_length
        # the ordinary inputs' slots; a known-ahead input's value at the predicted position
        # is the window's next slot (slot L; a forecast's come from future rows)
        history = typed_inputs(metadata, {c: windows.values[c][:, first_slot:first_slot + length]
                                          for c in info.input_columns})
        if cfg.forecast:
            future_known = job.future_known
        else:
            future_known = typed_inputs(metadata, {c: windows.values[c][:, first_slot + length:]
                                                   for c in info.known_ahead_columns})
        if cfg.forecast and steps > 1:
            how = "in one forward pass (direct)" if getattr(job.runner, "every_position", False) \
                else "autoregressively, a forward pass per step"
            logger.info(f"{job.name}: forecasting {steps} steps {how}")
        predictions, probabilities, top = predict_last(job, metadata, history, future_known, steps,
                                                       cfg.inference_batch_size, chooser, cfg.output_probabilities,
                                                       top_k)
        if cfg.forecast:
            positions = forecast_positions(windows, steps, cfg.forecast_position_step)
        else:
            positions = windows.item_position[:, info.seq_length][:, None] + np.arange(steps)
        keys = outputs.key_columns(metadata, np.repeat(windows.sequence_id, steps), positions.reshape(-1))
        predictions = {c: v.reshape(-1) for c, v in predictions.items()}
        probabilities = {c: p.reshape(-1, p.shape[2]) for c, p in probabilities.items()}
        top = {c: tuple(a.reshape(-1, a.shape[2]) for a in pair) for c, pair in top.items()}
    tables = {project.prediction_path(root, job.name, fmt):
              prediction_table(metadata, info, keys, predictions, cfg.map_to_id,
                               _quantile_columns(cfg, metadata, job, predictions))}
    for column, probs in probabilities.items():
        tables[project.probability_path(root, job.name, column, fmt)] = probability_table(
            metadata, column, keys, probs, cfg.map_to_id)
    for column, (ids, probs) in top.items():
        tables[project.recommendation_path(root, job.name, column, ids.shape[1], fmt)] = recommendation_table(
            keys, column, ids, probs, lambda v, c=column: to_user_values(metadata, info, c, v, cfg.map_to_id),
            cfg.top_k_format)
    return tables


def _quantile_columns(cfg: InferConfig, metadata: Metadata, job: ModelJob,
                      predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`TARGET_qQ` columns: each forecast plus its step's calibrated offset, in user units."""
    columns = {}
    if not job.interval_offsets:
        return columns
    steps = prediction_steps(cfg)
    for target, offsets in job.interval_offsets.items():
        forecast = predictions[target].reshape(-1, steps)
        for q, offset in zip(cfg.output_quantiles, offsets):
            values = (forecast + offset[None, :]).reshape(-1)
            columns[f"{target}_q{q:g}"] = to_user_values(metadata, job.info, target, values, cfg.map_to_id)
    return columns
