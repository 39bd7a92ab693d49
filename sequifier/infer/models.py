"""Opening the models infer and evaluate run, and checking them before any output.

`open_model` loads an export (ONNX or `.pt`) into a `ModelJob`; `check_config_matches_model`
checks infer's options against what the export says about itself, and
`check_metadata_matches_model` the export against the metadata (columns, types, classes).
Every model of a run is opened and checked before the first output is written.
"""

import os
from dataclasses import dataclass, field

from sequifier.config.metadata import Metadata
from sequifier.config.schema import InferConfig
from sequifier.errors import SequifierError, shown
from sequifier.infer import forecasting
from sequifier.infer.model_info import ModelInfo
from sequifier.infer.model_runner import load_runner


@dataclass
class ModelJob:
    """One model to run, after its export has been checked against config and metadata."""

    path: str
    name: str  # file stem, used in output names
    runner: object
    info: ModelInfo
    output_paths: list[str] = field(default_factory=list)
    # forecast: the known-ahead inputs' values at the forecast positions, [N, H] each
    future_known: dict = field(default_factory=dict)
    # output_quantiles: per real target [Q, H] offsets added to the forecast (infer/backtest.py)
    interval_offsets: dict = field(default_factory=dict)


def model_paths(model_path) -> list[str]:
    """`model_path` (one path or a list) as a list."""
    if isinstance(model_path, str):
        return [model_path]
    return [str(v) for v in model_path]


def open_model(path: str, metadata: Metadata, *, device: str, training_config_path: str, model_type: str,
               seed: int, infer_with_dropout: bool = False, every_position: bool = False) -> ModelJob:
    """The export at `path`, ready to run (the caller checks it: `check_config_matches_model`,
    `check_metadata_matches_model`). `training_config_path` and `model_type` describe a
    `.pt` file that holds weights only."""
    runner = load_runner(path, device, training_config_path, model_type, metadata, infer_with_dropout, seed,
                         every_position=every_position, queries=None)  # large catalogues: scored in chunks
    return ModelJob(path, os.path.splitext(os.path.basename(path))[0], runner, runner.info)


def check_distinct_names(jobs: list[ModelJob]) -> None:
    names = [job.name for job in jobs]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise SequifierError(
            f"model_path: several models share the file name '{doubled[0]}', so their "
            "outputs would overwrite each other; rename or run them separately"
        )


def _mismatch(field_name: str, given, expected, path: str) -> SequifierError:
    return SequifierError(
        f"{field_name}: {given} does not match the model '{os.path.basename(path)}', which has "
        f"{expected}; remove {field_name} from the config to use the model's"
    )


def check_config_matches_model(cfg: InferConfig, info: ModelInfo, path: str) -> None:
    """Infer's options against what the export says about itself."""
    if cfg.model_type != info.model_type:
        raise _mismatch("model_type", shown(cfg.model_type), shown(info.model_type), path)
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
    check_dropout(cfg.infer_with_dropout, info, path)
    categorical_targets = [
        c for c in info.target_columns if info.target_column_types.get(c) == "categorical"
    ]
    for column in cfg.sample_from_distribution_columns or []:
        if info.model_type != "generative" or column not in categorical_targets:
            raise SequifierError(
                f"sample_from_distribution_columns: '{column}' is not a categorical target of "
                f"the model (categorical targets: {categorical_targets})"
            )
    if cfg.autoregression or prediction_steps(cfg) > 1:
        if info.model_type != "generative":
            raise SequifierError("autoregression: only generative models can forecast")
        not_targets = forecasting.unforecastable_inputs(forecasting.ForecastModel.of(info))
        if not_targets:
            raise SequifierError(
                f"autoregression: input columns {not_targets} are neither targets nor "
                "known-ahead columns of the model, so their future values cannot be forecast; "
                "train a model that predicts them, preprocess them as known_ahead_columns, or "
                "set autoregression: false"
            )
    check_known_ahead_use(cfg, info, path)


def prediction_steps(cfg: InferConfig) -> int:
    """Positions predicted per window: forecast_horizon, else 1 plus
    autoregression_extra_steps."""
    if cfg.forecast_horizon is not None:
        return int(cfg.forecast_horizon)
    return 1 + (cfg.autoregression_extra_steps or 0) * bool(cfg.autoregression)


def check_known_ahead_use(cfg: InferConfig, info: ModelInfo, path: str) -> None:
    """The values a known-ahead input needs after the window's last slot are in no window."""
    if not info.known_ahead_columns:
        return
    name = os.path.basename(path)
    if cfg.forecast and info.model_type == "embedding":
        raise SequifierError(
            f"forecast: the embedding model '{name}' has known-ahead inputs "
            f"{info.known_ahead_columns}, whose values after each sequence's last item are not "
            "in the windows; use forecast: false")
    if prediction_steps(cfg) > 1 and not cfg.forecast:
        raise SequifierError(
            f"autoregression_extra_steps: the model '{name}' has known-ahead inputs "
            f"{info.known_ahead_columns}, whose values after each window's last slot are not "
            "in the windows; use forecast: true to continue after each sequence's last item, "
            "or autoregression_extra_steps: 0")


def check_dropout(infer_with_dropout: bool, info: ModelInfo, path: str) -> None:
    if infer_with_dropout and not info.can_sample_dropout:
        raise SequifierError(
            f"infer_with_dropout: the model '{os.path.basename(path)}' was exported without "
            "dropout; re-train/export with export_with_dropout: true (and dropout > 0), or "
            "set infer_with_dropout: false"
        )
    if info.with_dropout and not infer_with_dropout:
        raise SequifierError(
            f"infer_with_dropout: the model '{os.path.basename(path)}' was exported with "
            "dropout on, so its outputs are random; set infer_with_dropout: true to use it "
            "for Monte Carlo dropout, or use an export without dropout"
        )


def check_metadata_matches_model(metadata: Metadata, info: ModelInfo, path: str) -> None:
    for column, n_classes in (info.n_classes or {}).items():
        if column in metadata.n_classes:
            check_n_classes(metadata, column, n_classes, path)
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


def check_n_classes(metadata: Metadata, column: str, n_classes: int, path: str) -> None:
    if n_classes != metadata.n_classes[column]:
        raise SequifierError(
            f"metadata_config_path: the model '{os.path.basename(path)}' has "
            f"{n_classes} classes for '{column}' but the metadata has "
            f"{metadata.n_classes[column]}; use the metadata the model was trained with"
        )
