"""`sequifier infer`: exported model + preprocessed windows -> predictions in the user's terms.

Flow per model: open the export and check it against the config and the metadata (all
models before any output is written), read the windows once per set of input columns,
run the model batch by batch (feeding predictions back in for autoregression), map ids
and standardised values back, and write each output file atomically.

Windows hold `seq_length + 1` slots; slots `0..L-1` are the model's input and the
prediction is for slot `L`, so a prediction's `itemPosition` is the window's original
position of slot `L` (it lines up with the held-out truth). Each autoregressive step
drops the oldest slot, appends the prediction and predicts the next position.
"""

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from sequifier.config.metadata import Metadata, read_metadata
from sequifier.config.schema import InferConfig
from sequifier.data.windows import TABULAR_FORMATS, Windows, read_windows
from sequifier.errors import SequifierError
from sequifier.export_format import EMBEDDING_OUTPUT
from sequifier.infer import outputs
from sequifier.infer.model_info import ModelInfo
from sequifier.infer.model_runner import load_runner
from sequifier.infer.values import (
    CategoryDecoder,
    choose_ids,
    clamp_unknown_ids,
    destandardise,
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
    from sequifier.config.validate import validate_infer

    validate_infer(cfg)
    root = cfg.project_root
    metadata = read_metadata(resolve_path(root, cfg.metadata_config_path))
    if cfg.data_path is None and metadata.write_format != cfg.read_format:
        raise SequifierError(
            f"read_format: the metadata's splits are written as {metadata.write_format} but "
            f"read_format is '{cfg.read_format}'; set read_format: {metadata.write_format}"
        )
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
            windows_by_columns[key] = _read_input(cfg, metadata, data_path, job.info)
    written: list[str] = []
    for job in jobs:
        tables = _infer_model(cfg, metadata, job, windows_by_columns[tuple(job.info.input_columns)])
        outputs.write_tables(tables, cfg.write_format)  # predictions + probabilities together
        for path in tables:
            logger.info(f"wrote {path}")
            written.append(path)
    return written


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


def _read_input(cfg: InferConfig, metadata: Metadata, path: str, info: ModelInfo) -> Windows:
    empty = SequifierError(f"data_path: '{path}' holds no windows; nothing to infer on")
    tabular = cfg.read_format in TABULAR_FORMATS
    if tabular and os.path.isdir(path):
        raise SequifierError(
            f"data_path: '{path}' is a folder; with read_format {cfg.read_format} point it at "
            f"one preprocessed split file (data/NAME-splitK.{cfg.read_format})"
        )
    is_file = tabular and os.path.isfile(path)
    if is_file and (os.path.getsize(path) == 0 or _is_empty_tabular(path, cfg.read_format)):
        raise empty
    try:
        windows = read_windows(path, cfg.read_format, metadata.column_types, info.input_columns)
    except SequifierError as e:
        raise SequifierError(f"data_path: {e}") from None
    except (ValueError, OSError) as e:  # parser errors of pandas/pyarrow: wrong format
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        if not first_line.isprintable():  # a parser quoting the binary bytes it choked on
            first_line = type(e).__name__
        raise SequifierError(
            f"data_path: '{path}' could not be read as {cfg.read_format} ({first_line}); "
            "check read_format"
        ) from None
    if len(windows) == 0:
        raise empty
    if windows.window_length != cfg.seq_length + 1:
        raise SequifierError(
            f"seq_length: the data '{path}' holds windows of seq_length "
            f"{windows.window_length - 1}, the model expects {cfg.seq_length}; preprocess "
            "with the model's seq_length"
        )
    return windows


def _model_inputs(metadata: Metadata, info: ModelInfo, windows: Windows) -> dict[str, np.ndarray]:
    """Slots 0..L-1 of each input column, typed as the export expects."""
    length = info.seq_length
    inputs = {}
    for column in info.input_columns:
        values = windows.values[column][:, :length]
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
    inputs = _model_inputs(metadata, job.info, windows)
    if job.info.model_type == "embedding":
        return _infer_embeddings(cfg, metadata, job, windows, inputs)
    return _infer_generative(cfg, metadata, job, windows, inputs)


def _batches(n: int, batch_size: int):
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _infer_embeddings(cfg: InferConfig, metadata: Metadata, job: ModelJob, windows: Windows, inputs):
    parts = []
    for start, end in _batches(len(windows), cfg.inference_batch_size):
        batch = {c: np.ascontiguousarray(v[start:end]) for c, v in inputs.items()}
        parts.append(np.asarray(job.runner.run(batch)[EMBEDDING_OUTPUT], dtype=np.float32))
    embeddings = np.concatenate(parts)
    # the embedding summarises the window up to its last input slot (L-1)
    columns = outputs.key_columns(metadata, windows.sequence_id,
                                  windows.item_position[:, job.info.seq_length - 1])
    columns.update({str(j): embeddings[:, j] for j in range(embeddings.shape[1])})
    return {outputs.embedding_path(cfg.project_root, job.name, cfg.write_format): columns}


def _infer_generative(cfg, metadata: Metadata, job: ModelJob, windows: Windows, inputs):
    steps = 1 + (cfg.autoregression_extra_steps or 0) * bool(cfg.autoregression)
    predictions, probabilities = _predict(cfg, metadata, job, inputs, len(windows), steps)
    info, root, fmt = job.info, cfg.project_root, cfg.write_format
    positions = windows.item_position[:, info.seq_length][:, None] + np.arange(steps)
    keys = outputs.key_columns(metadata, np.repeat(windows.sequence_id, steps), positions.reshape(-1))
    table = dict(keys)
    for column in info.target_columns:
        values = predictions[column].reshape(-1)
        if info.target_column_types[column] == "real":
            values = destandardise(values, metadata.selected_columns_statistics[column])
        elif cfg.map_to_id:
            values = _decoder(metadata, column).decode(values)
        table[column] = values
    tables = {outputs.prediction_path(root, job.name, fmt): table}
    for column, probs in probabilities.items():
        n_classes = probs.shape[2]
        names = (_decoder(metadata, column).class_names()[:n_classes] if cfg.map_to_id
                 else [str(i) for i in range(n_classes)])
        probs = probs.reshape(-1, n_classes)
        tables[outputs.probability_path(root, job.name, column, fmt)] = {
            **keys, **{name: probs[:, j] for j, name in enumerate(names)}
        }
    return tables


def _predict(cfg, metadata: Metadata, job: ModelJob, inputs, n: int, steps: int):
    """Run the model over all windows, `steps` times each for autoregression.

    Returns ({target: [n, steps] ids or standardised values},
             {categorical target: [n, steps, n_classes] probabilities} if asked for).
    """
    info = job.info
    categorical = {c for c in info.target_columns if info.target_column_types[c] == "categorical"}
    sampled = set(cfg.sample_from_distribution_columns or [])
    rng = np.random.default_rng(cfg.seed)
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
                    chosen[column] = choose_ids(out, rng if column in sampled else None)
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
