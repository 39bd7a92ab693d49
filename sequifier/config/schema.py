"""Typed schema of every command's configuration.

One dataclass per config group. They are registered in Hydra's ConfigStore (see
`compose.py`), so composition type-checks values and `???` marks mandatory fields.
OmegaConf 2.3 rejects `Literal` and unions of containers, so enumerations are plain
`str` fields checked by the owners' rules (see `sequifier/gate.py`), and per-column maps are dicts.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

# the signals that stop a command gracefully (train: training_spec.stop_signals; sequifier/signals.py)
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")

# Reserved categorical ids, shared by preprocess, train and infer.
PAD_ID = 0
UNKNOWN_ID = 1
# The device kinds of training_spec.device and of infer/evaluate's device ("cuda:1" is kind cuda).
DEVICES = ("cpu", "cuda", "mps")
# k of the top-k accuracy: train's training_spec.accuracy_top_k and evaluate's when unset.
DEFAULT_TOP_K = 5


@dataclass
class PreprocessConfig:
    project_root: str = MISSING
    data_path: str = MISSING
    # the user's names of the id and position columns (outputs use them too)
    sequence_id_column: str = "sequenceId"
    position_column: str = "itemPosition"
    # error | drop_rows | fill | {fill: VALUE}, or {column: policy, "*": policy}
    # (see sequifier/data/missing.py); OmegaConf cannot type a str-or-dict union
    missing_values: Any = "error"
    # {column: real | categorical}: read a column as this type instead of the one its
    # values suggest (e.g. integer counts as real, a time as real ticks)
    column_types: Optional[Dict[str, str]] = None
    read_format: str = "csv"
    write_format: str = "parquet"
    merge_output: bool = True
    selected_columns: Optional[List[str]] = None
    max_rows: Optional[int] = None
    seq_length: int = MISSING
    split_ratios: List[float] = MISSING
    stride_by_split: Optional[List[int]] = None
    # within_sequence: each sequence is cut in time order; between_sequences: whole
    # sequences go to one split each (seeded), to judge a model on unseen sequences;
    # leave_last_out: the last holdout_items items of each sequence are the test split,
    # the ones before validation (the recommender's protocol; split_ratios only count splits)
    split_method: str = "within_sequence"
    # Not in the original field list: leave_last_out's n - the last n items of every
    # sequence are the test split, the n before them validation (null: 1; only with
    # split_method: leave_last_out)
    holdout_items: Optional[int] = None
    subsequence_start_mode: str = "distribute"
    seed: int = 1010
    n_cores: Optional[int] = None
    batches_per_file: int = 1024
    continue_preprocessing: bool = False
    # Not in the original field list: name of the outputs (default: data_path's stem)
    # and an explicit switch to replace existing outputs.
    dataset_name: Optional[str] = None
    overwrite: bool = False
    # Not in the original field list: apply the id maps and statistics of an earlier run's
    # metadata JSON instead of computing new ones (new data for an existing model).
    reuse_metadata_path: Optional[str] = None
    # Not in the original field list: memory budget of the whole run (all processes); an
    # input larger than its share is read in chunks of whole sequences (data/budget.py)
    max_ram_gb: float = 2.0
    # Not in the original field list: input columns whose value at the predicted position
    # is known when predicting it (calendar, planned prices, weather forecasts). The model
    # predicting position t+1 sees them at t+1 (sequifier/data/known_ahead.py); a forecast
    # takes their future values from future rows (a sequence's trailing rows whose other
    # feature cells are all empty, kept aside as `data/NAME-future.parquet`).
    known_ahead_columns: List[str] = field(default_factory=list)
    # Not in the original field list: calendar columns derived from a time/date
    # position_column (half_hour, hour, day_of_week, month, ...; data/time_features.py),
    # categorical and known ahead; infer derives them for future positions too.
    time_features: List[str] = field(default_factory=list)


@dataclass
class ModelSpec:
    dim_model: int = MISSING
    n_head: int = MISSING
    num_layers: int = MISSING
    dim_feedforward: int = MISSING
    # width of the concatenated column embeddings; null = dim_model
    initial_embedding_dim: Optional[int] = None
    joint_embedding_dim: Optional[int] = None
    feature_embedding_dims: Optional[Dict[str, int]] = None
    activation_fn: str = "swiglu"
    attention_type: str = "mha"
    n_kv_heads: Optional[int] = None
    positional_encoding: str = "learned"
    rope_theta: float = 10000.0
    normalization: str = "rmsnorm"
    norm_first: bool = True
    # Not in the original field list: output logits of a categorical column that is both
    # an input and a target reuse its input embedding table. true = every such column,
    # a list = those columns, false = none (OmegaConf cannot type a bool-or-list union).
    tie_embeddings: Any = False
    # Not in the original field list: train to forecast this many steps in one forward
    # pass (direct multi-step; data/masked_future.py); null = autoregressive forecasts only.
    direct_horizon: Optional[int] = None


# The optimizer and scheduler blocks: `name` plus the class's keyword arguments, checked
# against the class by the registries (train/optimizers.py, train/schedulers.py). A YAML
# block or a preset is merged over these defaults, so they hold the name only: default
# arguments here would leak into another class's block. StepLR's step_size=1,
# gamma=0.99 are filled in by validation (schedulers.DEFAULT_ARGUMENTS).
def _default_optimizer() -> Dict[str, Any]:
    return {"name": "Adam"}


def _default_scheduler() -> Dict[str, Any]:
    return {"name": "StepLR"}


@dataclass
class TrainingSpec:
    device: str = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    learning_rate: float = MISSING
    # Short name of learning_rate, folded into it where the user writes it (config/compose.py;
    # both set and different: error), so the composed config keeps it unset.
    lr: Optional[float] = None
    dropout: float = 0.0
    optimizer: Dict[str, Any] = field(default_factory=_default_optimizer)
    scheduler: Dict[str, Any] = field(default_factory=_default_scheduler)
    scheduler_step_on: str = "epoch"
    # target -> loss class name, or {name: LossName, argument: value, ...}
    criterion: Dict[str, Any] = MISSING
    loss_weights: Optional[Dict[str, float]] = None
    # target column -> list of per-class weights (index = class id) or {class value: weight}
    class_weights: Optional[Dict[str, Any]] = None
    save_interval_epochs: int = MISSING
    # Not in the original field list: a checkpoint every N optimizer steps as well (exact
    # mid-epoch resume), and how many checkpoints to keep (None: all; the best epoch's is kept).
    save_interval_steps: Optional[int] = None
    keep_last_checkpoints: Optional[int] = None
    # Not in the original field list: micro-batches of batch_size whose gradients are summed
    # into one optimizer step (the update of one batch of k x batch_size, on the memory of
    # one micro-batch); save_interval_steps, log_interval and per-batch schedulers count
    # optimizer steps.
    gradient_accumulation_steps: int = 1
    # Not in the original field list: signals on which training finishes its optimizer step,
    # writes a step checkpoint and the summary, and exits with status 75 (a second one stops
    # at once); []: no graceful stop, a signal stops at once. SIGUSR2 is submitit's.
    stop_signals: List[str] = field(default_factory=lambda: list(STOP_SIGNALS))
    early_stopping_epochs: Optional[int] = None
    log_interval: int = 10
    class_share_log_columns: List[str] = field(default_factory=list)
    enforce_determinism: bool = False
    num_workers: int = 0
    max_ram_gb: float = 16.0
    backend: str = "nccl"
    device_max_concat_length: int = 12
    continue_training: bool = True
    distributed: bool = False
    world_size: int = 1
    # Not in the original field list: how distributed ranks share the model. ddp: each rank
    # holds all weights and gradients are averaged; fsdp: weights, gradients and optimizer
    # state are sharded over the ranks (FSDP2, torch.distributed.fsdp.fully_shard).
    data_parallelism: str = "ddp"
    load_full_data_to_ram: bool = True
    layer_type_dtypes: Optional[Dict[str, str]] = None
    layer_autocast: bool = True
    # Not in the original field list: seed for weights, shuffling and dropout, and an
    # opt-in torch.compile of the model for speed.
    seed: int = 1010
    compile: bool = False
    # Not in the original field list: clip the total gradient norm to this value before
    # every optimizer step (null: no clipping).
    max_grad_norm: Optional[float] = None
    # Not in the original field list: the parameter kinds the optimizer's weight_decay
    # applies to (matrices, embeddings, norms, biases); the others get no decay.
    weight_decay_on: List[str] = field(default_factory=lambda: ["matrices"])
    # Not in the original field list: k of the top-k accuracy reported per epoch for
    # categorical targets (sequifier/metrics.py).
    accuracy_top_k: int = DEFAULT_TOP_K
    # Not in the original field list: the k of HR@k and NDCG@k (with MRR) reported per
    # categorical target (sequifier/ranking.py; null: [10, 20], each k up to the
    # catalogue), whether the items each target's context already holds are removed from
    # the ranking, and the validation metric that picks the best epoch and drives early
    # stopping ("loss", or a metric such as ndcg@10, optionally COLUMN.ndcg@10).
    ranking_k: Optional[List[int]] = None
    exclude_seen: bool = False
    select_on: str = "loss"


@dataclass
class TrainConfig:
    project_root: str = MISSING
    metadata_config_path: str = MISSING
    model_name: str = MISSING
    training_data_path: Optional[str] = None
    validation_data_path: Optional[str] = None
    read_format: str = "parquet"
    target_columns: List[str] = MISSING
    # null = the metadata's types and seq_length (a value that disagrees is an error)
    target_column_types: Optional[Dict[str, str]] = None
    input_columns: Optional[List[str]] = None
    seq_length: Optional[int] = None
    export_generative_model: bool = MISSING
    export_embedding_model: bool = MISSING
    inference_batch_size: int = MISSING
    export_onnx: bool = True
    export_pt: bool = False
    export_with_dropout: bool = False
    # Not in the original field list: replace models/checkpoints of an earlier run with
    # the same model_name instead of refusing.
    overwrite: bool = False
    # Not in the original field list: experiment tracking (sequifier/train/tracking.py).
    # mlflow: the run is an MLflow run (params, metric histories, tags, artifacts);
    # tracking_uri null: MLFLOW_TRACKING_URI, else the project's outputs/mlflow/mlflow.db;
    # tracking_experiment null: the project folder's name.
    tracking: Optional[str] = None
    tracking_uri: Optional[str] = None
    tracking_experiment: Optional[str] = None
    model_spec: ModelSpec = field(default_factory=ModelSpec)
    training_spec: TrainingSpec = field(default_factory=TrainingSpec)


@dataclass
class InferConfig:
    project_root: str = MISSING
    # one path or a list of paths (OmegaConf cannot type a str-or-list union)
    model_path: Any = MISSING
    data_path: Optional[str] = None
    metadata_config_path: str = MISSING
    training_config_path: str = "configs/train.yaml"
    read_format: str = "parquet"
    write_format: str = "csv"
    model_type: str = MISSING
    input_columns: Optional[List[str]] = None
    target_columns: Optional[List[str]] = None
    target_column_types: Optional[Dict[str, str]] = None
    seq_length: Optional[int] = None  # null = the metadata's
    inference_batch_size: int = MISSING
    output_probabilities: bool = False
    map_to_id: bool = True
    autoregression: bool = False
    autoregression_extra_steps: Optional[int] = None
    sample_from_distribution_columns: Optional[List[str]] = None
    infer_with_dropout: bool = False
    device: str = "cpu"
    seed: int = 1010
    # Not in the original field list: replace existing outputs/ files of the same models
    # instead of refusing (as in preprocess and train).
    overwrite: bool = False
    # Not in the original field list: which slots of a window are predicted ("last": the
    # held-out last slot; "scored": every slot of the window's own split, each item of
    # the split once), forecasting after each sequence's last observed item (and the
    # position step of a forecast; null: the sequence's most recent step), and how
    # sampled columns are drawn (per column: temperature, top_k, top_p).
    positions: str = "last"
    forecast: bool = False
    forecast_position_step: Optional[int] = None
    # Not in the original field list: how many positions a forecast predicts per sequence
    # (1..seq_length; null: 1 + autoregression_extra_steps); forecast: true only.
    forecast_horizon: Optional[int] = None
    # Not in the original field list: a csv/parquet table of future rows (id, position and
    # known-ahead columns, in the user's terms) for a forecast with known-ahead inputs; its
    # rows replace those preprocess kept from the table at the same positions.
    future_data_path: Optional[str] = None
    # Not in the original field list: quantiles of each real target's forecast (e.g.
    # [0.1, 0.5, 0.9]), from the model's backtest errors on the validation split per
    # horizon step (sequifier/infer/backtest.py); forecast: true only.
    output_quantiles: Optional[List[float]] = None
    temperature: Optional[Dict[str, float]] = None
    top_k: Optional[Dict[str, int]] = None
    top_p: Optional[Dict[str, float]] = None
    # Not in the original field list: per categorical target, the k most likely items of
    # every predicted row with their probabilities (outputs/recommendations/), in the
    # user's own ids; `long`: one row per item and rank, `wide`: k item and k probability
    # columns per row. exclude_seen leaves out the items the model's input window already
    # holds. A probability table of more than infer/recommend.py's DENSE_PROBABILITY_LIMIT
    # classes needs allow_dense_probabilities: true.
    output_top_k: Optional[int] = None
    top_k_format: str = "long"
    exclude_seen: bool = False
    allow_dense_probabilities: bool = False


@dataclass
class EvaluateConfig:
    """`sequifier evaluate`: score models on a split, every item once, against baselines."""

    project_root: str = MISSING
    # one path or a list of paths (OmegaConf cannot type a str-or-list union)
    model_path: Any = MISSING
    metadata_config_path: str = MISSING
    # the split to score (null: the metadata's last split) and the training split whose
    # class counts / mean make the baselines (null: the metadata's first split)
    data_path: Optional[str] = None
    baseline_data_path: Optional[str] = None
    training_config_path: str = "configs/train.yaml"
    read_format: str = "parquet"
    write_format: str = "csv"
    inference_batch_size: int = 256
    # k of the top-k accuracy of categorical targets (null: 5)
    accuracy_top_k: Optional[int] = None
    # k of HR@k / NDCG@k of categorical targets (null: [10, 20], each k up to the
    # catalogue) and whether items already in each target's context leave the ranking
    ranking_k: Optional[List[int]] = None
    exclude_seen: bool = False
    map_to_id: bool = True
    device: str = "cpu"
    overwrite: bool = False
    # Not in the original field list (sequifier/infer/backtest.py): items per season of
    # the seasonal-naive baseline (null: one day of time positions, none for integers);
    # with forecast_horizon, a rolling-origin backtest of that many steps from an origin
    # every backtest_stride items (null: 1), intervals at output_quantiles (null: 0.1,
    # 0.5, 0.9) calibrated on calibration_data_path (null: the split before data_path)
    seasonal_period: Optional[int] = None
    forecast_horizon: Optional[int] = None
    backtest_stride: Optional[int] = None
    output_quantiles: Optional[List[float]] = None
    calibration_data_path: Optional[str] = None
    # Not in the original field list: mlflow logs each model's scores to its training run
    # in the store (or to a new run tagged with the model when it has none); the store and
    # experiment as in train (sequifier/train/tracking.py)
    tracking: Optional[str] = None
    tracking_uri: Optional[str] = None
    tracking_experiment: Optional[str] = None


SCHEMAS = {"preprocess": PreprocessConfig, "train": TrainConfig, "infer": InferConfig,
           "evaluate": EvaluateConfig}
