"""Cross-field validation, run once right after composition.

Each rule adds one line naming the field path and the fix; all lines are raised together
as one SequifierError, so a user sees every problem of a config at once. Some rules
also normalise (mqa's n_kv_heads, StepLR's default arguments) so the rest of the code
can trust the config.

This is the one gate: every command's runner (`run_preprocess`, `run_train` on every
DDP rank, `run_infer`) calls `validate` before it creates, renames or deletes a file.
Rules whose value another component owns (losses, optimizers and schedulers, attention
heads, the DDP backend, output names) are that component's check, called from here.
"""

import math
from typing import List

from sequifier.config.metadata import COLUMN_TYPES, Metadata, read_metadata
from sequifier.config.schema import EvaluateConfig, InferConfig, PreprocessConfig, TrainConfig
from sequifier.data.windows import WINDOW_FORMATS
from sequifier.errors import SequifierError
from sequifier.export_format import MODEL_TYPES
from sequifier.io_utils import name_problem, resolve_path

DEVICES = ("cpu", "cuda", "mps")


class Problems:
    """Collects one line per problem; `raise_if_any` raises them as one error."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, field: str, message: str) -> None:
        self.lines.append(f"{field}: {message}")

    def check(self, ok: bool, field: str, message: str) -> None:
        if not ok:
            self.add(field, message)

    def one_of(self, value, options, field: str) -> None:
        self.check(value in options, field, f"'{value}' is not one of {', '.join(map(str, options))}")

    def positive(self, value, field: str, allow_none: bool = False, minimum=1) -> None:
        if value is None and allow_none:
            return
        self.check(value is not None and value >= minimum, field, f"must be >= {minimum}, got {value}")

    def call(self, check, *args) -> None:
        """Run a component's own check (it raises a SequifierError) and keep its lines."""
        try:
            check(*args)
        except SequifierError as e:
            self.lines.extend(str(e).splitlines())

    def raise_if_any(self) -> None:
        if self.lines:
            raise SequifierError("\n".join(self.lines))


def check_name(field: str, value, folder: str, p: Problems) -> None:
    """A user-chosen name that becomes part of file names: literal and short enough."""
    problem = name_problem(value, folder)
    if problem:
        p.add(field, problem)


def validate(command: str, cfg) -> None:
    {"preprocess": validate_preprocess, "train": validate_train, "infer": validate_infer,
     "evaluate": validate_evaluate}[command](cfg)


# --- preprocess -------------------------------------------------------------------------

def validate_preprocess(cfg: PreprocessConfig) -> None:
    p = Problems()
    from sequifier.data.read_table import EXTENSIONS

    p.one_of(cfg.read_format, list(EXTENSIONS), "read_format")
    p.one_of(cfg.write_format, WINDOW_FORMATS, "write_format")
    for field in ("sequence_id_column", "position_column"):
        p.check(bool(getattr(cfg, field)), field, "must name a column of the input")
    p.check(cfg.sequence_id_column != cfg.position_column, "position_column",
            f"'{cfg.position_column}' is also sequence_id_column; ids and positions need two columns")
    for col, kind in (cfg.column_types or {}).items():
        p.one_of(kind, COLUMN_TYPES, f"column_types.{col}")
        p.check(col not in (cfg.sequence_id_column, cfg.position_column), f"column_types.{col}",
                "is the id or position column, not a feature")
    from sequifier.data.missing import parse_missing_values

    for line in parse_missing_values(cfg.missing_values, (cfg.sequence_id_column, cfg.position_column))[1]:
        field, _, message = line.partition(": ")
        p.add(field, message)
    if cfg.write_format == "pt" and cfg.merge_output:
        p.add("merge_output", "write_format 'pt' writes sharded output: set merge_output: false")
    from sequifier.data.budget import budget_problem
    from sequifier.data.preprocess import dataset_name, default_workers

    if cfg.n_cores is None or cfg.n_cores > 0:
        problem = budget_problem(cfg.max_ram_gb, cfg.n_cores or default_workers())
        p.check(problem is None, "max_ram_gb", problem or "")
    field = "dataset_name" if cfg.dataset_name else "dataset_name (from data_path)"
    check_name(field, dataset_name(cfg), cfg.project_root, p)
    p.positive(cfg.seq_length, "seq_length")
    if not cfg.split_ratios or any(r <= 0 for r in cfg.split_ratios):
        p.add("split_ratios", f"needs one positive share per split, got {list(cfg.split_ratios or [])}")
    elif not math.isclose(sum(cfg.split_ratios), 1.0, abs_tol=1e-6):
        p.add("split_ratios", f"must sum to 1, got {list(cfg.split_ratios)} (sum {sum(cfg.split_ratios):g})")
    if cfg.stride_by_split is not None:
        p.check(len(cfg.stride_by_split) == len(cfg.split_ratios or []), "stride_by_split",
                f"needs one stride per split ({len(cfg.split_ratios or [])}), got {list(cfg.stride_by_split)}")
        p.check(all(s >= 1 for s in cfg.stride_by_split), "stride_by_split", "strides must be >= 1")
    from sequifier.data.splits import SPLIT_METHODS, START_MODES

    p.one_of(cfg.subsequence_start_mode, START_MODES, "subsequence_start_mode")

    p.one_of(cfg.split_method, SPLIT_METHODS, "split_method")
    from sequifier.data.splits import holdout_setting_problems

    p.lines.extend(holdout_setting_problems(cfg.split_method, cfg.holdout_items, len(cfg.split_ratios or [])))
    p.positive(cfg.max_rows, "max_rows", allow_none=True)
    p.positive(cfg.n_cores, "n_cores", allow_none=True)
    p.positive(cfg.batches_per_file, "batches_per_file")
    p.raise_if_any()


# --- train ------------------------------------------------------------------------------

def validate_train(cfg: TrainConfig) -> None:
    p = Problems()
    _check_train_fields(cfg, p)
    _check_model_spec(cfg, p)
    _check_training_spec(cfg, p)
    p.raise_if_any()
    metadata = read_metadata(resolve_path(cfg.project_root, cfg.metadata_config_path))
    _check_against_metadata(cfg, metadata, p)
    p.raise_if_any()


def _check_train_fields(cfg: TrainConfig, p: Problems) -> None:
    check_name("model_name", cfg.model_name, cfg.project_root, p)
    p.one_of(cfg.read_format, WINDOW_FORMATS, "read_format")
    p.check(len(cfg.target_columns) > 0, "target_columns", "name at least one column to predict")
    for col, kind in (cfg.target_column_types or {}).items():  # missing types: the metadata's
        if col not in cfg.target_columns:
            p.add(f"target_column_types.{col}", f"'{col}' is not in target_columns {list(cfg.target_columns)}")
        p.one_of(kind, COLUMN_TYPES, f"target_column_types.{col}")
    p.positive(cfg.seq_length, "seq_length", allow_none=True)
    p.positive(cfg.inference_batch_size, "inference_batch_size")


def _check_model_spec(cfg: TrainConfig, p: Problems) -> None:
    # the option lists belong to the model code that builds them (imports torch: train only)
    from sequifier.model.layers import ACTIVATIONS, NORMALIZATIONS
    from sequifier.model.transformer import POSITIONAL_ENCODINGS

    m = cfg.model_spec
    for name in ("dim_model", "n_head", "num_layers", "dim_feedforward"):
        p.positive(getattr(m, name), f"model_spec.{name}")
    p.positive(m.initial_embedding_dim, "model_spec.initial_embedding_dim", allow_none=True)
    if m.n_head >= 1 and m.dim_model % m.n_head:
        p.add("model_spec.n_head", f"dim_model ({m.dim_model}) must be divisible by n_head ({m.n_head}); "
              f"choose n_head from {[h for h in range(1, min(m.dim_model, 64) + 1) if m.dim_model % h == 0]}")
    p.one_of(m.activation_fn, ACTIVATIONS, "model_spec.activation_fn")
    p.one_of(m.positional_encoding, POSITIONAL_ENCODINGS, "model_spec.positional_encoding")
    p.one_of(m.normalization, NORMALIZATIONS, "model_spec.normalization")
    p.check(m.rope_theta > 0, "model_spec.rope_theta", f"must be > 0, got {m.rope_theta}")
    if m.positional_encoding == "rope" and m.n_head >= 1 and m.dim_model % m.n_head == 0:
        p.check((m.dim_model // m.n_head) % 2 == 0, "model_spec.positional_encoding",
                f"rope needs an even head size, but dim_model/n_head = {m.dim_model // m.n_head}")
    if m.joint_embedding_dim is not None and m.joint_embedding_dim != m.dim_model:
        p.add("model_spec.joint_embedding_dim",
              f"must equal dim_model ({m.dim_model}) when set, got {m.joint_embedding_dim}; or set it to null")
    _check_attention(m, p)


def _check_attention(m, p: Problems) -> None:
    from sequifier.model.transformer import ATTENTION_TYPES, kv_heads

    p.one_of(m.attention_type, ATTENTION_TYPES, "model_spec.attention_type")
    if m.attention_type in ATTENTION_TYPES and m.n_head >= 1:
        p.call(kv_heads, m)


def _check_training_spec(cfg: TrainConfig, p: Problems) -> None:
    t = cfg.training_spec
    device_kind = t.device.split(":")[0]
    p.one_of(device_kind, DEVICES, "training_spec.device")
    for name in ("epochs", "batch_size", "save_interval_epochs", "log_interval", "world_size",
                 "accuracy_top_k"):
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
    p.one_of(t.scheduler_step_on, ("epoch", "batch"), "training_spec.scheduler_step_on")
    from sequifier.train import distributed

    p.call(distributed.check_supported, t)
    _check_optimizer_and_scheduler(t, p)
    targets = list(cfg.target_columns)
    for col in targets:
        if col not in t.criterion:
            p.add(f"training_spec.criterion.{col}",
                  "missing: give a loss for every target (e.g. CrossEntropyLoss, MSELoss)")
    for col in t.criterion:
        if col not in targets:
            p.add(f"training_spec.criterion.{col}", f"'{col}' is not in target_columns {targets}")
    for field, keys in (("loss_weights", t.loss_weights), ("class_weights", t.class_weights)):
        for col in keys or {}:
            p.check(col in targets, f"training_spec.{field}.{col}", f"'{col}' is not in target_columns {targets}")
    if t.layer_type_dtypes:
        from sequifier.model.dtypes import DTYPES, LAYER_TYPES  # imports torch: only when used

        for layer, dtype in t.layer_type_dtypes.items():
            p.one_of(layer, LAYER_TYPES, f"training_spec.layer_type_dtypes.{layer}")
            p.one_of(dtype, list(DTYPES), f"training_spec.layer_type_dtypes.{layer}")


def _check_optimizer_and_scheduler(t, p: Problems) -> None:
    from sequifier.train import optimizers, schedulers  # import torch: only for train

    p.lines.extend(optimizers.block_problems(t.optimizer, t.learning_rate))
    p.lines.extend(optimizers.decay_kinds_problems(t.weight_decay_on))
    if t.scheduler_step_on in schedulers.STEP_ON:
        # per-epoch stepping: the run's length is known here; per batch, once the data is read
        known_steps = t.epochs if t.scheduler_step_on == "epoch" else None
        p.lines.extend(schedulers.block_problems(t.scheduler, t.scheduler_step_on, known_steps))
        # the run records (and a resume compares) the arguments it trains with
        t.scheduler = schedulers.with_default_arguments(t.scheduler)


def _check_against_metadata(cfg: TrainConfig, metadata: Metadata, p: Problems) -> None:
    """Also fills what defaults to the metadata: seq_length and the targets' types."""
    if cfg.seq_length is None:
        cfg.seq_length = metadata.seq_length
    p.check(cfg.seq_length == metadata.seq_length, "seq_length",
            f"{cfg.seq_length} differs from the preprocessed data's seq_length {metadata.seq_length} "
            f"(metadata {cfg.metadata_config_path}); set seq_length: {metadata.seq_length} or re-run preprocess")
    reads_splits = cfg.training_data_path is None or cfg.validation_data_path is None
    _check_read_format(cfg.read_format, reads_splits, metadata, p)
    available = metadata.column_types
    for col in cfg.target_columns:
        if col not in available:
            p.add("target_columns", f"'{col}' is not a column of the preprocessed data {sorted(available)}")
        elif (cfg.target_column_types or {}).get(col) not in (None, available[col]):
            p.add(f"target_column_types.{col}", f"'{cfg.target_column_types[col]}' but preprocess recorded "
                  f"'{available[col]}' for it; set it to '{available[col]}' or leave it out")
    given = cfg.target_column_types or {}
    cfg.target_column_types = {c: given.get(c, available.get(c)) for c in cfg.target_columns}
    _check_ranking(cfg, metadata, p)
    for col in cfg.training_spec.class_share_log_columns:
        p.check(cfg.target_column_types.get(col) == "categorical", "training_spec.class_share_log_columns",
                f"'{col}' must be a categorical target column")
    inputs = list(cfg.input_columns) if cfg.input_columns is not None else list(available)
    for col in inputs:
        p.check(col in available, "input_columns",
                f"'{col}' is not a column of the preprocessed data {sorted(available)}")
    p.check(len(inputs) > 0, "input_columns", "needs at least one column")
    _check_feature_embedding_dims(cfg, inputs, metadata, p)
    # These import torch: only here, and checked against the data's own column types.
    from sequifier.model.transformer import tie_embeddings_problems
    from sequifier.train.losses import criterion_problems

    for col, entry in cfg.training_spec.criterion.items():
        if col in available and col in cfg.target_columns:
            p.lines.extend(criterion_problems(entry, col, available[col]))

    for line in tie_embeddings_problems(cfg.model_spec.tie_embeddings, inputs, list(cfg.target_columns), available):
        p.lines.append(line)


def _check_ranking(cfg: TrainConfig, metadata: Metadata, p: Problems) -> None:
    """ranking_k / exclude_seen against the targets' catalogues, and select_on against
    the metrics the run will compute (the rules live with the ranking and the loop)."""
    from sequifier import metrics, ranking
    from sequifier.train.loop import select_on_problems

    t = cfg.training_spec
    types = {c: kind for c, kind in cfg.target_column_types.items() if kind is not None}
    n_classes = {c: metadata.n_classes.get(c, 0) for c in types}
    problems = ranking.ranking_k_problems("training_spec.ranking_k", t.ranking_k, n_classes, types,
                                          t.exclude_seen, "training_spec.exclude_seen")
    p.lines.extend(problems)
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
    p.lines.extend(select_on_problems(t.select_on, available))


def _check_read_format(read_format: str, reads_splits: bool, metadata: Metadata, p: Problems) -> None:
    """A command reading the splits the metadata names reads them in their written format."""
    if reads_splits and read_format != metadata.write_format:
        p.add("read_format", f"'{read_format}' but the metadata's splits are written as "
              f"{metadata.write_format}; set read_format: {metadata.write_format}")


def _check_feature_embedding_dims(cfg: TrainConfig, inputs, metadata: Metadata, p: Problems) -> None:
    from sequifier.model import embedding_sizes

    known = [c for c in inputs if c in metadata.column_types]
    try:
        embedding_sizes.feature_embedding_dims(
            embedding_sizes.initial_embedding_dim(cfg.model_spec), known, metadata.column_types,
            metadata.n_classes, cfg.model_spec.feature_embedding_dims)
    except SequifierError as e:
        p.lines.append(str(e))


# --- infer ------------------------------------------------------------------------------

def _check_model_paths(model_path, p: Problems) -> None:
    """`model_path` of infer and evaluate: one path or a non-empty list of them."""
    paths = model_path if isinstance(model_path, list) else [model_path]
    p.check(len(paths) > 0 and all(isinstance(x, str) and x for x in paths), "model_path",
            f"must be a model file path or a list of them, got {model_path!r}")


def validate_infer(cfg: InferConfig) -> None:
    p = Problems()
    _check_model_paths(cfg.model_path, p)
    p.one_of(cfg.model_type, MODEL_TYPES, "model_type")
    p.one_of(cfg.read_format, WINDOW_FORMATS, "read_format")
    p.one_of(cfg.device.split(":")[0], DEVICES, "device")
    p.positive(cfg.seq_length, "seq_length", allow_none=True)
    p.positive(cfg.inference_batch_size, "inference_batch_size")
    from sequifier.infer.run import option_problems  # the rules live with the code they govern

    p.lines.extend(option_problems(cfg))
    for col, kind in (cfg.target_column_types or {}).items():
        p.one_of(kind, COLUMN_TYPES, f"target_column_types.{col}")
    if cfg.sample_from_distribution_columns and cfg.target_columns is not None:
        for col in cfg.sample_from_distribution_columns:
            p.check(col in cfg.target_columns, "sample_from_distribution_columns",
                    f"'{col}' is not in target_columns {list(cfg.target_columns)}")
    p.raise_if_any()
    metadata = read_metadata(resolve_path(cfg.project_root, cfg.metadata_config_path))
    if cfg.seq_length is None:  # defaults to the metadata's
        cfg.seq_length = metadata.seq_length
    p.check(cfg.seq_length == metadata.seq_length, "seq_length",
            f"{cfg.seq_length} differs from the preprocessed data's seq_length {metadata.seq_length}; "
            f"set seq_length: {metadata.seq_length}")
    _check_read_format(cfg.read_format, cfg.data_path is None, metadata, p)
    p.raise_if_any()


# --- evaluate ---------------------------------------------------------------------------

def validate_evaluate(cfg: EvaluateConfig) -> None:
    p = Problems()
    _check_model_paths(cfg.model_path, p)
    p.one_of(cfg.read_format, WINDOW_FORMATS, "read_format")
    p.one_of(cfg.write_format, ("csv", "parquet"), "write_format")
    p.one_of(cfg.device.split(":")[0], DEVICES, "device")
    p.positive(cfg.inference_batch_size, "inference_batch_size")
    p.positive(cfg.accuracy_top_k, "accuracy_top_k", allow_none=True)
    p.raise_if_any()
    metadata = read_metadata(resolve_path(cfg.project_root, cfg.metadata_config_path))
    _check_read_format(cfg.read_format, cfg.data_path is None or cfg.baseline_data_path is None, metadata, p)
    p.raise_if_any()
