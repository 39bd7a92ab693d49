"""Tiny generated projects for the training tests (windows + metadata on disk)."""

import os

import numpy as np
from omegaconf import OmegaConf

from sequifier.config.metadata import Metadata, write_metadata
from sequifier.config.schema import PAD_ID, TrainConfig
from sequifier.data.windows import Windows, write_shards, write_windows

VOCAB = 10  # item values 100..109 -> ids 2..11
N_CLASSES = VOCAB + 2
SEQ_LENGTH = 8


def make_windows(n: int, seq_length: int, seed: int, context: int = 0) -> Windows:
    """Learnable windows: itemId mostly follows id -> 3*id+1 (mod VOCAB); itemValue tracks it.

    `context` > 0: up to that many slots after the padding are earlier-split context
    (targetStart), never fewer than one scored target.
    """
    rng = np.random.default_rng(seed)
    width = seq_length + 1
    items = np.empty((n, width), dtype=np.int64)
    items[:, 0] = rng.integers(0, VOCAB, n)
    for j in range(1, width):
        follow = (3 * items[:, j - 1] + 1) % VOCAB
        items[:, j] = np.where(rng.random(n) < 0.85, follow, rng.integers(0, VOCAB, n))
    ids = items + 2
    values = (items - 4.5) / 3.0 + rng.normal(0, 0.1, (n, width))
    padding = np.where(rng.random(n) < 0.3, rng.integers(1, seq_length, n), 0)
    pad = np.arange(width)[None, :] < padding[:, None]
    ids[pad] = PAD_ID
    values[pad] = 0.0
    positions = np.where(pad, -1, np.arange(width)[None, :] - padding[:, None])
    target_start = None
    if context:
        target_start = np.minimum(padding + rng.integers(0, context + 1, n), seq_length).astype(np.int64)
    return Windows(np.arange(n), np.zeros(n, dtype=np.int64), padding.astype(np.int64),
                   positions.astype(np.int64),
                   {"itemId": ids, "itemValue": values.astype(np.float32)}, target_start)


def make_project(root, n_train=160, n_val=48, seq_length=SEQ_LENGTH, write_format="parquet",
                 context: int = 0, value_std: float = 1.0, sharded=None, per_shard=64) -> str:
    """A project of `make_windows` splits; `value_std` is itemValue's std in the metadata;
    `sharded` (default: only for pt) writes folders of `per_shard`-window files, as
    preprocess does with merge_output: false."""
    root = str(root)
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir, exist_ok=True)
    column_types = {"itemId": "categorical", "itemValue": "real"}
    split_paths = []
    for split, (n, seed) in enumerate(((n_train, 1), (n_val, 2))):
        windows = make_windows(n, seq_length, seed, context)
        if sharded or write_format == "pt":
            rel = f"data/tiny-split{split}"
            write_shards(windows, os.path.join(root, rel), f"tiny-split{split}", per_shard,
                         column_types, write_format)
        else:
            rel = f"data/tiny-split{split}.{write_format}"
            write_windows(windows, os.path.join(root, rel), write_format)
        split_paths.append(rel)
    metadata = Metadata(
        name="tiny", seq_length=seq_length, write_format=write_format, column_types=column_types,
        id_maps={"itemId": {str(100 + v): v + 2 for v in range(VOCAB)}},
        n_classes={"itemId": N_CLASSES},
        selected_columns_statistics={"itemValue": {"mean": 0.0, "std": value_std}},
        original_dtypes={"itemId": "int64"}, split_paths=split_paths,
    )
    write_metadata(metadata, os.path.join(root, "configs/metadata_configs/tiny.json"))
    return root


def make_config(root, **overrides) -> TrainConfig:
    """A TrainConfig for `make_project`'s data; overrides use dotted keys for nested fields."""
    base = {
        "project_root": str(root),
        "metadata_config_path": "configs/metadata_configs/tiny.json",
        "model_name": "tiny",
        "target_columns": ["itemId", "itemValue"],
        "target_column_types": {"itemId": "categorical", "itemValue": "real"},
        "seq_length": SEQ_LENGTH,
        "export_generative_model": True,
        "export_embedding_model": False,
        "inference_batch_size": 4,
        "model_spec": {
            "dim_model": 16, "n_head": 2, "num_layers": 1, "dim_feedforward": 32,
            "initial_embedding_dim": 16,
            "feature_embedding_dims": {"itemId": 12, "itemValue": 4},
        },
        "training_spec": {
            "device": "cpu", "epochs": 2, "batch_size": 16, "learning_rate": 0.01,
            "criterion": {"itemId": "CrossEntropyLoss", "itemValue": "MSELoss"},
            "save_interval_epochs": 1, "scheduler": {"name": "none"}, "log_interval": 5,
        },
    }
    cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), base)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return OmegaConf.to_object(cfg)


def log_text(result) -> str:
    """The text of a training run's log file."""
    with open(result.log_path) as f:
        return f.read()


def train(root, defaults=None, **overrides):
    """A training run of `make_config(root)` with `defaults` and then `overrides` applied
    (dotted keys), export skipped."""
    from sequifier.train.run import run_train

    return run_train(make_config(root, **{**(defaults or {}), **overrides}), export=False)
