"""The rules of `sequifier train`'s config, and its `resolve` step.

The gate (`sequifier.gate`) calls, in order: `train_rules` (the config alone), then
`resolve` (fills what defaults to the metadata and the scheduler's default arguments),
then `train_metadata_rules` (the config against the preprocessed data). Rules whose
value another component owns are that component's (model/rules.py, optimizers,
schedulers, losses, distributed); this module only calls them.
"""

from sequifier import metrics, ranking
from sequifier.config.metadata import COLUMN_TYPES, Metadata
from sequifier.config.problems import Problems
from sequifier.config.schema import DEVICES, TrainConfig
from sequifier.data.known_ahead import target_problems as known_ahead_target_problems
from sequifier.data.rules import read_format_rule
from sequifier.data.windows import WINDOW_FORMATS
from sequifier.errors import SequifierError
from sequifier.export_format import onnx_size_problem
from sequifier.model.dtypes import DTYPES, LAYER_TYPES
from sequifier.model.rules import model_column_rules, model_spec_rules
from sequifier.project import name_problem
from sequifier.signals import signal_problems
from sequifier.train import distributed, schedulers
from sequifier.train.device import precision_problems
from sequifier.train.loop import select_on_problems
from sequifier.train.losses import criterion_rules, loss_rules
from sequifier.train.optimizers import optimizer_rules
from sequifier.train.tracking import tracking_rules


def train_rules(cfg: TrainConfig, p: Problems) -> None:
    p.problem("model_name", name_problem(cfg.model_name, cfg.project_root))
    p.one_of(cfg.read_format, WINDOW_FORMATS, "read_format")
    p.check(len(cfg.target_columns) > 0, "target_columns", "name at least one column to predict")
    for col, kind in (cfg.target_column_types or {}).items():  # missing types: the metadata's
        if col not in cfg.target_columns:
            p.add(f"target_column_types.{col}", f"'{col}' is not in target_columns {list(cfg.target_columns)}")
        p.one_of(kind, COLUMN_TYPES, f"target_column_types.{col}")
    p.positive(cfg.seq_length, "seq_length", allow_none=True)
    p.positive(cfg.inference_batch_size, "inference_batch_size")
    model_spec_rules(cfg.model_spec, p)
    training_spec_rules(cfg, p)
    tracking_rules(cfg, p)


def training_spec_rules(cfg: TrainConfig, p: Problems) -> None:
    t = cfg.training_spec
    p.one_of(t.device.split(":")[0], DEVICES, "training_spec.device")
    for name in ("epochs", "batch_size", "save_interval_epochs", "log_interval", "world_size",
                 "accuracy_top_k", "gradient_accumulation_steps"):
        p.positive(getattr(t, name), f"training_spec.{name}")
    p.positive(t.early_stopping_epochs, "training_spec.early_stopping_epochs", allow_none=True)
    p.positive(t.save_interval_steps, "training_spec.save_interval_steps", allow_none=True)
    p.positive(t.keep_last_checkpoints, "training_spec.keep_last_checkpoints", allow_none=True)
    p.positive(t.num_workers, "training_spec.num_workers", minimum=0)
    p.positive(t.device_max_concat_length, "training_spec.device_max_concat_length", minimum=2)
    p.check(t.learning_rate > 0, "training_spec.learning_rate", f"must be > 0, got {t.learning_rate}")
    p.check(0 <= t.dropout < 1, "training_spec.dropout", f"must be in [0, 1), got {t.dropout}")
    p.check(t.max_grad_norm is None or t.max_grad_norm > 0, "training_spec.max_grad_norm",
            f"must be > 0, or null for no clipping, got {t.max_grad_norm}")
    p.check(t.max_ram_gb > 0, "training_spec.max_ram_gb", f"must be > 0, got {t.max_ram_gb}")
    p.extend(signal_problems(t.stop_signals, "training_spec.stop_signals"))
    p.call(distributed.check_supported, t)
    optimizer_rules(t, p)
    schedulers.scheduler_rules(t, p)
    loss_rules(t, list(cfg.target_columns), p)
    for layer, dtype in (t.layer_type_dtypes or {}).items():
        p.one_of(layer, LAYER_TYPES, f"training_spec.layer_type_dtypes.{layer}")
        p.one_of(dtype, list(DTYPES), f"training_spec.layer_type_dtypes.{layer}")
    p.extend(precision_problems(t.device, t.layer_type_dtypes))


def resolve(cfg: TrainConfig, metadata: Metadata) -> None:
    """Fill what the config leaves to defaults: seq_length and the targets' types from the
    metadata, the scheduler's default arguments. Values the user gave stay as given (the
    metadata rules then compare them)."""
    if cfg.seq_length is None:
        cfg.seq_length = metadata.seq_length
    given = cfg.target_column_types or {}
    cfg.target_column_types = {c: given.get(c, metadata.column_types.get(c)) for c in cfg.target_columns}
    schedulers.resolve(cfg.training_spec)


def train_metadata_rules(cfg: TrainConfig, metadata: Metadata, p: Problems) -> None:
    """The (resolved) config against the preprocessed data."""
    p.check(cfg.seq_length == metadata.seq_length, "seq_length",
            f"{cfg.seq_length} differs from the preprocessed data's seq_length {metadata.seq_length} "
            f"(metadata {cfg.metadata_config_path}); set seq_length: {metadata.seq_length} or re-run preprocess")
    reads_splits = cfg.training_data_path is None or cfg.validation_data_path is None
    read_format_rule(cfg.read_format, reads_splits, metadata, p)
    available = metadata.column_types
    for col in cfg.target_columns:
        if col not in available:
            p.add("target_columns", f"'{col}' is not a column of the preprocessed data {sorted(available)}")
        elif cfg.target_column_types.get(col) not in (None, available[col]):
            p.add(f"target_column_types.{col}", f"'{cfg.target_column_types[col]}' but preprocess recorded "
                  f"'{available[col]}' for it; set it to '{available[col]}' or leave it out")
    ranking_rules(cfg, metadata, p)
    class_share_rule(cfg, p)
    inputs = list(cfg.input_columns) if cfg.input_columns is not None else list(available)
    for col in inputs:
        p.check(col in available, "input_columns",
                f"'{col}' is not a column of the preprocessed data {sorted(available)}")
    p.check(len(inputs) > 0, "input_columns", "needs at least one column")
    p.extend(known_ahead_target_problems(metadata.known_ahead_columns, cfg.target_columns))
    criterion_rules(cfg.training_spec, list(cfg.target_columns), available, p, metadata.n_classes)
    model_column_rules(cfg.model_spec, inputs, list(cfg.target_columns), metadata, p)
    if cfg.export_onnx and not p.lines:
        onnx_size_rule(cfg, metadata, p)


def onnx_size_rule(cfg: TrainConfig, metadata: Metadata, p: Problems) -> None:
    """A model too large for one ONNX file is refused before training, not at its export
    (the limit is the export format's; the weights are counted on the meta device)."""
    import torch

    from sequifier.model.transformer import build_model

    try:
        with torch.device("meta"):  # shapes only: no memory for the weights
            model = build_model(cfg, metadata)
    except SequifierError:
        return  # the model's own rules report it
    n_weights = sum(t.numel() for t in model.parameters()) + sum(t.numel() for t in model.buffers())
    p.problem("export_onnx", onnx_size_problem(n_weights))


def class_share_rule(cfg: TrainConfig, p: Problems) -> None:
    """`class_share_log_columns` names categorical targets (their shares are logged per epoch)."""
    categorical = [c for c in cfg.target_columns if cfg.target_column_types.get(c) == "categorical"]
    for col in cfg.training_spec.class_share_log_columns:
        p.check(col in categorical, "training_spec.class_share_log_columns",
                f"'{col}' must be a categorical target column (categorical targets: {categorical})")


def ranking_rules(cfg: TrainConfig, metadata: Metadata, p: Problems) -> None:
    """ranking_k / exclude_seen against the targets' catalogues, and select_on against
    the metrics the run will compute (the checks live with the ranking and the loop)."""
    t = cfg.training_spec
    types = {c: kind for c, kind in cfg.target_column_types.items() if kind is not None}
    n_classes = {c: metadata.n_classes.get(c, 0) for c in types}
    problems = ranking.ranking_k_problems("training_spec.ranking_k", t.ranking_k, n_classes, types,
                                          t.exclude_seen, "training_spec.exclude_seen")
    p.extend(problems)
    if problems:
        return
    available = {}
    for col, kind in types.items():
        if kind == "categorical":
            ks = ranking.resolve_ranking_k(t.ranking_k, n_classes[col])
            available[col] = (["cross_entropy", "accuracy", metrics.top_k_name(t.accuracy_top_k)]
                              + (ranking.metric_names(ks) if ks else []))
        else:
            available[col] = ["mae", "rmse", "mse"]
    p.extend(select_on_problems(t.select_on, available))
