"""The rules of `sequifier infer` and `sequifier evaluate`, and infer's `resolve` step.

Each rule appends one line per problem to the collector; the gate (`sequifier.gate`)
calls the config rules, then `resolve` (infer's seq_length from the metadata), then the
metadata rules. The lists of choices belong to the code that acts on them: POSITIONS
here (infer's engines read it), WRITE_FORMATS in outputs.py, the sampling settings in
values.py. Torch-free: infer with ONNX models never imports torch for its checks.
"""

import logging

from sequifier.config.metadata import COLUMN_TYPES, Metadata
from sequifier.config.problems import Problems
from sequifier.config.schema import DEVICES, EvaluateConfig, InferConfig
from sequifier.data.rules import read_format_rule
from sequifier.data.windows import WINDOW_FORMATS
from sequifier.errors import shown
from sequifier.export_format import MODEL_TYPES
from sequifier.infer import recommend
from sequifier.infer.forecasting import horizon_limit_problems, horizon_problems
from sequifier.infer.outputs import WRITE_FORMATS
from sequifier.infer.values import SAMPLING_FIELDS, sampling_problems
from sequifier.project import latest_best_model

# last: one prediction after each window; scored: one for every item inside it
POSITIONS = ("last", "scored")


def model_path_rule(cfg, p: Problems, model_type: str = "generative") -> None:
    """`model_path` of infer and evaluate: one path or a non-empty list of them; null
    (the templates' value) becomes the best model of the project's newest training,
    and the log names it."""
    if cfg.model_path is None:
        found = latest_best_model(cfg.project_root, model_type)
        if found is None:
            p.add("model_path", "null means the best model of the project's newest training, and logs/ holds "
                  f"no training summary with a {model_type} model; train first or set model_path to a model file")
            return
        cfg.model_path, model_name = found
        logging.getLogger("sequifier").info(
            f"model_path: {cfg.model_path} (null: the best model of the newest training, model_name '{model_name}')")
        return
    model_path = cfg.model_path
    paths = model_path if isinstance(model_path, list) else [model_path]
    p.check(len(paths) > 0 and all(isinstance(x, str) and x for x in paths), "model_path",
            f"must be a model file path or a list of them, got {shown(model_path)}")


def infer_rules(cfg: InferConfig, p: Problems) -> None:
    model_path_rule(cfg, p, cfg.model_type if cfg.model_type in MODEL_TYPES else "generative")
    p.one_of(cfg.model_type, MODEL_TYPES, "model_type")
    p.one_of(cfg.read_format, WINDOW_FORMATS, "read_format")
    p.one_of(cfg.device.split(":")[0], DEVICES, "device")
    p.positive(cfg.seq_length, "seq_length", allow_none=True)
    p.positive(cfg.inference_batch_size, "inference_batch_size")
    option_rules(cfg, p)
    for col, kind in (cfg.target_column_types or {}).items():
        p.one_of(kind, COLUMN_TYPES, f"target_column_types.{col}")
    if cfg.sample_from_distribution_columns and cfg.target_columns is not None:
        for col in cfg.sample_from_distribution_columns:
            p.check(col in cfg.target_columns, "sample_from_distribution_columns",
                    f"'{col}' is not in target_columns {list(cfg.target_columns)}")


def option_rules(cfg: InferConfig, p: Problems) -> None:
    """The options that are invalid or cannot take effect with the others."""
    p.one_of(cfg.write_format, WRITE_FORMATS, "write_format")
    if cfg.autoregression_extra_steps is not None and not cfg.autoregression:
        p.add("autoregression_extra_steps", "is set but autoregression is false; "
              "set autoregression: true or remove autoregression_extra_steps")
    if cfg.autoregression_extra_steps is not None and cfg.autoregression_extra_steps < 0:
        p.add("autoregression_extra_steps", "must be 0 or more")
    if cfg.positions not in POSITIONS:
        p.one_of(cfg.positions, POSITIONS, "positions")
    elif cfg.positions == "scored" and (cfg.autoregression or cfg.forecast):
        p.add("positions", "'scored' predicts the items inside each window; it does not combine "
              "with autoregression or forecast (which continue after the window); use positions: last")
    if cfg.forecast_position_step is not None:
        if not cfg.forecast:
            p.add("forecast_position_step", "is set but forecast is false; set "
                  "forecast: true or remove forecast_position_step")
        elif cfg.forecast_position_step < 1:
            p.add("forecast_position_step", f"must be >= 1, got {cfg.forecast_position_step}")
    if cfg.future_data_path is not None and not cfg.forecast:
        p.add("future_data_path", "is set but forecast is false; set forecast: true or remove "
              "future_data_path")
    p.extend(horizon_problems(cfg.forecast_horizon, cfg.forecast, cfg.autoregression,
                              cfg.autoregression_extra_steps))
    if cfg.output_quantiles is not None:
        from sequifier.infer.backtest import quantile_problems

        if not cfg.forecast:
            p.add("output_quantiles", "intervals are of forecasts; set forecast: true (with "
                  "forecast_horizon) or remove output_quantiles")
        p.extend(quantile_problems(cfg.output_quantiles))
    sampled = list(cfg.sample_from_distribution_columns or [])
    p.extend(sampling_problems(sampled, {name: getattr(cfg, name) for name in SAMPLING_FIELDS}))
    p.extend(recommend.option_problems(cfg))


def resolve(cfg: InferConfig, metadata: Metadata) -> None:
    """seq_length defaults to the preprocessed data's."""
    if cfg.seq_length is None:
        cfg.seq_length = metadata.seq_length


def infer_metadata_rules(cfg: InferConfig, metadata: Metadata, p: Problems) -> None:
    p.check(cfg.seq_length == metadata.seq_length, "seq_length",
            f"{cfg.seq_length} differs from the preprocessed data's seq_length {metadata.seq_length}; "
            f"set seq_length: {metadata.seq_length}")
    p.extend(horizon_limit_problems(cfg.forecast_horizon, cfg.seq_length))
    read_format_rule(cfg.read_format, cfg.data_path is None, metadata, p)


def evaluate_rules(cfg: EvaluateConfig, p: Problems) -> None:
    model_path_rule(cfg, p)
    p.one_of(cfg.read_format, WINDOW_FORMATS, "read_format")
    p.one_of(cfg.write_format, WRITE_FORMATS, "write_format")
    p.one_of(cfg.device.split(":")[0], DEVICES, "device")
    p.positive(cfg.inference_batch_size, "inference_batch_size")
    p.positive(cfg.accuracy_top_k, "accuracy_top_k", allow_none=True)
    from sequifier.infer.backtest import backtest_rules  # the backtest's options live with it

    backtest_rules(cfg, p)
    from sequifier.train.tracking import tracking_rules  # the tracker's options live with it

    tracking_rules(cfg, p)


def evaluate_metadata_rules(cfg: EvaluateConfig, metadata: Metadata, p: Problems) -> None:
    read_format_rule(cfg.read_format, cfg.data_path is None or cfg.baseline_data_path is None, metadata, p)
    # the backtest forecasts as infer does: the same limit
    p.extend(horizon_limit_problems(cfg.forecast_horizon, metadata.seq_length))
