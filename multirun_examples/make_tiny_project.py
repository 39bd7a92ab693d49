"""Write a tiny sequifier project for the multirun examples: pt shards, metadata, train.yaml.

    python multirun_examples/make_tiny_project.py PROJECT_DIR

The data are 512 training and 128 validation windows of a learnable toy sequence (the
next itemId mostly follows from the current one), already in sequifier's window format,
so the examples need no preprocess step and each job trains in seconds.
"""

import os
import sys

import numpy as np

from sequifier.config.metadata import Metadata, write_metadata
from sequifier.data.windows import Windows, write_shards

SEQ_LENGTH = 8
VOCAB = 10
COLUMN_TYPES = {"itemId": "categorical", "itemValue": "real"}

TRAIN_YAML = f"""\
# Tiny project for the multirun examples: one epoch of a very small model.
project_root: .
metadata_config_path: configs/metadata_configs/tiny.json
model_name: tiny
read_format: pt
target_columns: [itemId, itemValue]
target_column_types: {{itemId: categorical, itemValue: real}}
seq_length: {SEQ_LENGTH}
export_generative_model: true
export_embedding_model: false
export_onnx: false
export_pt: true
inference_batch_size: 4
model_spec:
  dim_model: 16
  n_head: 2
  num_layers: 1
  dim_feedforward: 32
  initial_embedding_dim: 16
  feature_embedding_dims: {{itemId: 12, itemValue: 4}}
training_spec:
  device: cpu
  epochs: 1
  batch_size: 32
  learning_rate: 0.003
  criterion: {{itemId: CrossEntropyLoss, itemValue: MSELoss}}
  save_interval_epochs: 1
  log_interval: 100
"""


def toy_windows(n: int, seed: int) -> Windows:
    rng = np.random.default_rng(seed)
    width = SEQ_LENGTH + 1
    items = np.empty((n, width), dtype=np.int64)
    items[:, 0] = rng.integers(0, VOCAB, n)
    for j in range(1, width):
        follow = (3 * items[:, j - 1] + 1) % VOCAB
        items[:, j] = np.where(rng.random(n) < 0.85, follow, rng.integers(0, VOCAB, n))
    ids = items + 2  # 0 and 1 are reserved (PAD, UNKNOWN)
    values = ((items - 4.5) / 3.0 + rng.normal(0, 0.1, (n, width))).astype(np.float32)
    padding = np.zeros(n, dtype=np.int64)
    positions = np.tile(np.arange(width, dtype=np.int64), (n, 1))
    return Windows(np.arange(n, dtype=np.int64), np.zeros(n, dtype=np.int64), padding,
                   positions, {"itemId": ids, "itemValue": values})


def make_tiny_project(root: str) -> str:
    split_paths = []
    for split, (n, seed) in enumerate(((512, 1), (128, 2))):
        rel = f"data/tiny-split{split}"
        write_shards(toy_windows(n, seed), os.path.join(root, rel), f"tiny-split{split}", 128,
                     COLUMN_TYPES)
        split_paths.append(rel)
    write_metadata(Metadata(
        name="tiny", seq_length=SEQ_LENGTH, write_format="pt", column_types=COLUMN_TYPES,
        id_maps={"itemId": {str(100 + v): v + 2 for v in range(VOCAB)}},
        n_classes={"itemId": VOCAB + 2},
        selected_columns_statistics={"itemValue": {"mean": 0.0, "std": 1.0}},
        original_dtypes={"itemId": "int64"}, split_paths=split_paths,
    ), os.path.join(root, "configs/metadata_configs/tiny.json"))
    with open(os.path.join(root, "configs/train.yaml"), "w") as f:
        f.write(TRAIN_YAML)
    return root


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python make_tiny_project.py PROJECT_DIR")
    print(make_tiny_project(sys.argv[1]))
