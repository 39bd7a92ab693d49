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
from dataclasses import dataclass, field

import numpy as np

from sequifier.config.metadata import Metadata, read_metadata
from sequifier.config.schema import InferConfig
from sequifier.data.window_files import check_fingerprint, read_windows
from sequifier.data.windows import (
    TABULAR_FORMATS,
    Windows,
    first_predicted_slot,
    last_window_per_sequence,
)
from sequifier.errors import SequifierError
from sequifier.export_format import EMBEDDING_OUTPUT
from sequifier.gate import validate
from sequifier.infer import outputs
from sequifier.infer.model_info import ModelInfo
from sequifier.infer.model_runner import load_runner
from sequifier.infer.values import (
    SAMPLING_FIELDS,
    CategoryDecoder,
    choose_ids,
    clamp_unknown_ids,
    destandardise,
    sampling_by_column,
    softmax,
)
from sequifier.io_utils import resolve_path

logger = logging.getLogger(__name__)


def _as_list(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@dataclass
class ModelJob:
    """One model to run, after its export has been checked against config and metadata."""

    path: str
    name: str  # file stem, used in output names
    runner: object
    info: ModelInfo
    output_paths: list[str] = field(default_factory=list)


def run_infer(cfg: InferConfig) -> list[str]:
    """Run every model in `cfg.model_path` on the data; return the paths written."""
    validate("infer", cfg)
    root = cfg.project_root
    metadata = read_metadata(resolve_path(root, cfg.metadata_config_path))
    data_path = resolve_path(root, cfg.data_path or _last_split(metadata))

    jobs = [_open_model(cfg, metadata, resolve_path(root, p)) for p in _as_list(cfg.model_path)]
    _check_distinct_names(jobs)
    if not cfg.overwrite:
        outputs.refuse_to_overwrite([p for job in jobs for p in job.output_paths])

    # all data is read and checked before the first model writes anything
    windows_by_columns: dict[tuple, Windows] = {}
    for job in jobs:
        key = tuple(job.info.input_columns)
        if key not in windows_by_columns:
            windows_by_columns[key] = read_input(cfg.read_format, metadata, data_path,
                                                 job.info.input_columns, cfg.seq_length,
                                                 cfg.metadata_config_path)
    if cfg.forecast:
        for windows in windows_by_columns.values():
            _check_forecast_input(data_path, windows, cfg.seq_length)
    written: list[str] = []
    for job in jobs:
        tables = _infer_model(cfg, metadata, job, windows_by_columns[tuple(job.info.input_columns)])
        outputs.write_tables(tables, cfg.write_format)  # predictions + probabilities together
        for path in tables:
            logger.info(f"wrote {path}")
            written.append(path)
    return written


def _check_forecast_input(data_path: str, windows: Windows, seq_length: int) -> None:
    """A forecast continues each sequence's last item: a window without one has nothing
    to continue (preprocess never writes one; a hand-made or foreign file can)."""
    empty = windows.padding > seq_length
    if empty.any():
        raise SequifierError(
            f"data_path: {int(empty.sum())} windows of '{data_path}' hold no item (e.g. of "
            f"sequence {windows.sequence_id[empty][0]}): a forecast needs sequences of at "
            "least one item; preprocess the data again"
        )


def _last_split(metadata: Metadata) -> str:
    if not metadata.split_paths:
        raise SequifierError("data_path: not set and the metadata records no splits; set data_path")
    return metadata.split_paths[-1]


def _check_distinct_names(jobs: list[ModelJob]) -> None:
    names = [job.name for job in jobs]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise SequifierError(
            f"model_path: several models share the file name '{doubled[0]}', so their "
            "outputs would overwrite each other; rename or run them separately"
        )


# ---------------------------------------------------------------- checks


def _open_model(cfg: InferConfig, metadata: Metadata, path: str) -> ModelJob:
    runner = load_runner(
        path, cfg.device, resolve_path(cfg.project_root, cfg.training_config_path),
        cfg.model_type, metadata, cfg.infer_with_dropout, cfg.seed,
        every_position=cfg.positions == "scored",
    )
    info = runner.info
    _check_config_matches_model(cfg, info, path)
    _check_metadata_matches_model(metadata, info, path)
    name = os.path.splitext(os.path.basename(path))[0]
    job = ModelJob(path, name, runner, info)
    job.output_paths = _output_paths(cfg, info, name)
    return job


def _mismatch(field_name: str, given, expected, path: str) -> SequifierError:
    return SequifierError(
        f"{field_name}: {given} does not match the model '{os.path.basename(path)}', which has "
        f"{expected}; remove {field_name} from the config to use the model's"
    )


def _check_config_matches_model(cfg: InferConfig, info: ModelInfo, path: str) -> None:
    if cfg.model_type != info.model_type:
        raise _mismatch("model_type", repr(cfg.model_type), repr(info.model_type), path)
    if cfg.seq_length != info.seq_length:
        raise SequifierError(
            f"seq_length: {cfg.seq_length} does not match the model "
            f"'{os.path.basename(path)}', trained with seq_length {info.seq_length}"
        )
    if cfg.input_columns is not None and sorted(cfg.input_columns) != sorted(info.input_columns):
        raise _mismatch("input_columns", list(cfg.input_columns), info.input_columns, path)
    if cfg.target_columns is not None and sorted(cfg.target_columns) != sorted(info.target_columns):
        raise _mismatch("target_columns", list(cfg.target_columns), info.target_columns, path)
    if cfg.target_column_types is not None and (
        dict(cfg.target_column_types) != info.target_column_types
    ):
        raise _mismatch(
            "target_column_types", dict(cfg.target_column_types), info.target_column_types, path
        )
    if cfg.infer_with_dropout and not info.can_sample_dropout:
        raise SequifierError(
            f"infer_with_dropout: the model '{os.path.basename(path)}' was exported without "
            "dropout; re-train/export with export_with_dropout: true (and dropout > 0), or "
            "set infer_with_dropout: false"
        )
    if info.with_dropout and not cfg.infer_with_dropout:
        raise SequifierError(
            f"infer_with_dropout: the model '{os.path.basename(path)}' was exported with "
            "dropout on, so its outputs are random; set infer_with_dropout: true to use it "
            "for Monte Carlo dropout, or use an export without dropout"
        )
    categorical_targets = [
        c for c in info.target_columns if info.target_column_types.get(c) == "categorical"
    ]
    for column in cfg.sample_from_distribution_columns or []:
        if info.model_type != "generative" or column not in categorical_targets:
            raise SequifierError(
                f"sample_from_distribution_columns: '{column}' is not a categorical target of "
                f"the model (categorical targets: {categorical_targets})"
            )
    if cfg.autoregression:
        if info.model_type != "generative":
            raise SequifierError("autoregression: only generative models can forecast")
        not_targets = [c for c in info.input_columns if c not in info.target_columns]
        if not_targets:
            raise SequifierError(
                f"autoregression: input columns {not_targets} are not targets of the model, "
                "so their future values cannot be forecast; train a model that predicts "
                "every input column or set autoregression: false"
            )


def _check_metadata_matches_model(metadata: Metadata, info: ModelInfo, path: str) -> None:
    for column, n_classes in (info.n_classes or {}).items():
        if column in metadata.n_classes:
            _check_n_classes(metadata, column, n_classes, path)
    for column in info.input_columns + info.target_columns:
        model_type = info.column_types.get(column, info.target_column_types.get(column))
        data_type = metadata.column_types.get(column)
        if data_type is None:
            raise SequifierError(
                f"metadata_config_path: column '{column}' of the model "
                f"'{os.path.basename(path)}' is not in the metadata (columns "
                f"{metadata.columns}); use the metadata the model was trained with"
            )
        if model_type is not None and model_type != data_type:
            raise SequifierError(
                f"metadata_config_path: column '{column}' is {data_type} in the metadata but "
                f"{model_type} in the model '{os.path.basename(path)}'; use the metadata the "
                "model was trained with"
            )


def _output_paths(cfg: InferConfig, info: ModelInfo, name: str) -> list[str]:
    root, fmt = cfg.project_root, cfg.write_format
    if info.model_type == "embedding":
        return [outputs.embedding_path(root, name, fmt)]
    paths = [outputs.prediction_path(root, name, fmt)]
    if cfg.output_probabilities:
        paths += [
            outputs.probability_path(root, name, c, fmt)
            for c in info.target_columns
            if info.target_column_types[c] == "categorical"
        ]
    return paths


# ---------------------------------------------------------------- data


def _is_empty_tabular(path: str, read_format: str) -> bool:
    if read_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError
            raise SequifierError(f"data_path: '{path}' is not a readable parquet file") from None
    with open(path, "rb") as f:  # csv: a header and nothing else (bytes: any file is safe)
        f.readline()
        return not f.readline().strip()


def read_input(read_format: str, metadata: Metadata, path: str, columns: list[str],
               seq_length: int, metadata_path: str) -> Windows:
    """The windows of `path` with `columns`, checked to be windows of `seq_length` and to
    be encoded with the id maps of `metadata` (read from `metadata_path`)."""
    empty = SequifierError(f"data_path: '{path}' holds no windows; nothing to infer on")
    tabular = read_format in TABULAR_FORMATS
    is_file = tabular and os.path.isfile(path)
    if is_file and (os.path.getsize(path) == 0 or _is_empty_tabular(path, read_format)):
        raise empty
    check_fingerprint(path, read_format, metadata, metadata_path)
    try:
        windows = read_windows(path, read_format, metadata.column_types, columns)
    except SequifierError as e:
        raise SequifierError(f"data_path: {e}") from None
    except (ValueError, OSError) as e:  # parser errors of pandas/pyarrow: wrong format
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        if not first_line.isprintable():  # a parser quoting the binary bytes it choked on
            first_line = type(e).__name__
        raise SequifierError(
            f"data_path: '{path}' could not be read as {read_format} ({first_line}); "
            "check read_format"
        ) from None
    if len(windows) == 0:
        raise empty
    if windows.window_length != seq_length + 1:
        raise SequifierError(
            f"seq_length: the data '{path}' holds windows of seq_length "
            f"{windows.window_length - 1}, the model expects {seq_length}; preprocess "
            "with the model's seq_length"
        )
    return windows


def model_inputs(metadata: Metadata, info: ModelInfo, windows: Windows,
                 first_slot: int = 0) -> dict[str, np.ndarray]:
    """Slots first_slot..first_slot+L-1 of each input column, typed as the export expects."""
    length = info.seq_length
    inputs = {}
    for column in info.input_columns:
        values = windows.values[column][:, first_slot:first_slot + length]
        if metadata.column_types[column] == "categorical":
            values = clamp_unknown_ids(column, values.astype(np.int64), metadata.n_classes[column])
        else:
            values = values.astype(np.float32)
        inputs[column] = values
    return inputs


# ---------------------------------------------------------------- running


def _infer_model(cfg: InferConfig, metadata: Metadata, job: ModelJob, windows: Windows):
    """Run one model over all windows; return {output path: {column: 1-d array}}."""
    job.runner.reseed(cfg.seed)
    first_slot = 0
    if cfg.forecast:  # the input ends with each sequence's last item
        windows, first_slot = windows.select(last_window_per_sequence(windows)), 1
    inputs = model_inputs(metadata, job.info, windows, first_slot)
    if job.info.model_type == "embedding":
        return _infer_embeddings(cfg, metadata, job, windows, inputs, first_slot)
    if cfg.positions == "scored":
        rows, slots, predictions, probabilities = predict_every_position(
            cfg, metadata, job, inputs, first_predicted_slot(windows))
        keys = outputs.key_columns(metadata, windows.sequence_id[rows],
                                   windows.item_position[rows, slots])
        return prediction_tables(cfg, metadata, job, keys, predictions, probabilities)
    steps = 1 + (cfg.autoregression_extra_steps or 0) * bool(cfg.autoregression)
    predictions, probabilities = _predict(cfg, metadata, job, inputs, len(windows), steps)
    if cfg.forecast:
        positions = forecast_positions(windows, steps, cfg.forecast_position_step)
    else:
        positions = windows.item_position[:, job.info.seq_length][:, None] + np.arange(steps)
    keys = outputs.key_columns(metadata, np.repeat(windows.sequence_id, steps), positions.reshape(-1))
    predictions = {c: v.reshape(-1) for c, v in predictions.items()}
    probabilities = {c: p.reshape(-1, p.shape[2]) for c, p in probabilities.items()}
    return prediction_tables(cfg, metadata, job, keys, predictions, probabilities)


def forecast_positions(windows: Windows, steps: int, step: int | None) -> np.ndarray:
    """[N, steps] positions after each window's last item: last + step * (1..steps).

    The step is `forecast_position_step` when set, else the sequence's most recent step
    (last position minus the one before; 1 for a sequence of one item).
    """
    last = windows.item_position[:, -1]
    if step is None:
        before = windows.item_position[:, -2]
        # slot L-1 is an item unless the window is all padding up to its last slot
        has_before = windows.padding < windows.window_length - 1
        step = np.where(has_before, last - before, 1)
    step = np.broadcast_to(np.asarray(step, dtype=np.int64), last.shape)
    return last[:, None] + step[:, None] * np.arange(1, steps + 1)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _infer_embeddings(cfg: InferConfig, metadata: Metadata, job: ModelJob, windows: Windows, inputs,
                      first_slot: int):
    parts = []
    for start, end in _batches(len(windows), cfg.inference_batch_size):
        batch = {c: np.ascontiguousarray(v[start:end]) for c, v in inputs.items()}
        parts.append(np.asarray(job.runner.run(batch)[EMBEDDING_OUTPUT], dtype=np.float32))
    embeddings = np.concatenate(parts)
    # the embedding summarises the window up to its last input slot
    columns = outputs.key_columns(metadata, windows.sequence_id,
                                  windows.item_position[:, first_slot + job.info.seq_length - 1])
    columns.update({str(j): embeddings[:, j] for j in range(embeddings.shape[1])})
    return {outputs.embedding_path(cfg.project_root, job.name, cfg.write_format): columns}


def prediction_tables(cfg, metadata: Metadata, job: ModelJob, keys: dict[str, np.ndarray],
                      predictions: dict[str, np.ndarray], probabilities: dict[str, np.ndarray],
                      extra: dict[str, np.ndarray] | None = None, path: str | None = None):
    """{path: table} of the predictions (ids/standardised values, one per row of `keys`)
    in the user's terms, plus one probability table per categorical target asked for.
    `extra` columns follow the predictions (e.g. evaluate's truth)."""
    info, root, fmt = job.info, cfg.project_root, cfg.write_format
    table = dict(keys)
    for column in info.target_columns:
        table[column] = to_user_values(metadata, info, column, predictions[column], cfg.map_to_id)
    table.update(extra or {})
    tables = {path or outputs.prediction_path(root, job.name, fmt): table}
    for column, probs in probabilities.items():
        n_classes = probs.shape[1]
        names = (_decoder(metadata, column).class_names()[:n_classes] if cfg.map_to_id
                 else [str(i) for i in range(n_classes)])
        tables[outputs.probability_path(root, job.name, column, fmt)] = {
            **keys, **{name: probs[:, j] for j, name in enumerate(names)}
        }
    return tables


def to_user_values(metadata: Metadata, info: ModelInfo, column: str, values: np.ndarray,
                   map_to_id: bool) -> np.ndarray:
    """Ids -> original values (with map_to_id), standardised -> original scale."""
    if info.target_column_types[column] == "real":
        return destandardise(values, metadata.selected_columns_statistics[column])
    return _decoder(metadata, column).decode(values) if map_to_id else values


def every_position_batches(job: ModelJob, inputs: dict[str, np.ndarray], first_slot: np.ndarray,
                           batch_size: int):
    """One forward pass per window, batch by batch: yields (start, end, outputs, mask),
    outputs per target [b, L, n_classes] / [b, L] and mask [b, L] True where the output
    (the prediction for slot j + 1) is one to keep."""
    target_slots = np.arange(1, job.info.seq_length + 1)
    for start, end in _batches(len(first_slot), batch_size):
        batch = {c: np.ascontiguousarray(v[start:end]) for c, v in inputs.items()}
        mask = target_slots[None, :] >= first_slot[start:end, None]
        yield start, end, job.runner.run(batch), mask


def predict_every_position(cfg, metadata: Metadata, job: ModelJob, inputs, first_slot: np.ndarray,
                           on_batch=None):
    """Predictions for every slot from `first_slot` on, one row per predicted slot.

    Returns (window index [M], slot [M], {target: [M] ids or standardised values},
    {categorical target: [M, n_classes] probabilities} if asked for). `on_batch(outputs,
    mask, start, end)` sees each batch's raw outputs (evaluate scores them).
    """
    info = job.info
    rng, sampling = _sampler(cfg)
    target_slots = np.arange(1, info.seq_length + 1)
    full_mask = target_slots[None, :] >= first_slot[:, None]
    rows, positions = np.nonzero(full_mask)
    n_rows = len(rows)
    predictions: dict[str, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    done = 0
    for start, end, raw, mask in every_position_batches(job, inputs, first_slot,
                                                        cfg.inference_batch_size):
        if on_batch is not None:
            on_batch(raw, mask, start, end)
        k = int(mask.sum())
        for column in info.target_columns:
            out = raw[column][mask]
            if info.target_column_types[column] == "categorical":
                _check_n_classes(metadata, column, out.shape[1], job.path)
                ids = choose_ids(out, rng if column in sampling else None, sampling.get(column))
                _buffer(predictions, column, (n_rows,), np.int64)[done:done + k] = ids
                if cfg.output_probabilities:
                    _buffer(probabilities, column, (n_rows, out.shape[1]), np.float32)[
                        done:done + k] = softmax(out)
            else:
                _buffer(predictions, column, (n_rows,), np.float32)[done:done + k] = out
        done += k
    return rows, positions + 1, predictions, probabilities


def _sampler(cfg) -> tuple[np.random.Generator, dict]:
    sampled = list(getattr(cfg, "sample_from_distribution_columns", None) or [])
    per_column = {name: getattr(cfg, name, None) for name in SAMPLING_FIELDS}
    return np.random.default_rng(cfg.seed), sampling_by_column(sampled, per_column)


def _predict(cfg, metadata: Metadata, job: ModelJob, inputs, n: int, steps: int):
    """Run the model over all windows, `steps` times each for autoregression.

    Returns ({target: [n, steps] ids or standardised values},
             {categorical target: [n, steps, n_classes] probabilities} if asked for).
    """
    info = job.info
    categorical = {c for c in info.target_columns if info.target_column_types[c] == "categorical"}
    rng, sampling = _sampler(cfg)
    predictions: dict[str, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    for start, end in _batches(n, cfg.inference_batch_size):
        batch = {c: np.ascontiguousarray(v[start:end]) for c, v in inputs.items()}
        for step in range(steps):
            raw = job.runner.run(batch)
            chosen = {}
            for column in info.target_columns:
                out = raw[column]
                if column in categorical:
                    _check_n_classes(metadata, column, out.shape[1], job.path)
                    chosen[column] = choose_ids(out, rng if column in sampling else None,
                                                sampling.get(column))
                    if cfg.output_probabilities:
                        shape = (n, steps, out.shape[1])
                        _buffer(probabilities, column, shape, np.float32)[start:end, step] = (
                            softmax(out)
                        )
                else:
                    chosen[column] = np.asarray(out, dtype=np.float32).reshape(-1)
                buffer = _buffer(predictions, column, (n, steps), chosen[column].dtype)
                buffer[start:end, step] = chosen[column]
            if step + 1 < steps:  # drop the oldest slot, append the prediction
                batch = {
                    c: np.concatenate([v[:, 1:], chosen[c][:, None].astype(v.dtype)], axis=1)
                    for c, v in batch.items()
                }
    return predictions, probabilities


def _buffer(store: dict, column: str, shape, dtype) -> np.ndarray:
    if store.get(column) is None:
        store[column] = np.empty(shape, dtype=dtype)
    return store[column]


def _decoder(metadata: Metadata, column: str) -> CategoryDecoder:
    return CategoryDecoder(metadata, column, metadata.n_classes[column])


def _check_n_classes(metadata: Metadata, column: str, n_classes: int, path: str) -> None:
    if n_classes != metadata.n_classes[column]:
        raise SequifierError(
            f"metadata_config_path: the model '{os.path.basename(path)}' has "
            f"{n_classes} classes for '{column}' but the metadata has "
            f"{metadata.n_classes[column]}; use the metadata the model was trained with"
        )
