"""A tiny real project for every-position inference, forecasting and evaluate: a long
table preprocessed into splits, and an untrained model over its columns exported as
.onnx and .pt (predictions need not be good, only consistent)."""

import os

import numpy as np
import torch

from helpers.preprocess_data import config, long_table, write_input
from sequifier.config.metadata import read_metadata
from sequifier.config.schema import InferConfig, ModelSpec, TrainConfig, TrainingSpec
from sequifier.data.preprocess import run_preprocess
from sequifier.export import export_onnx, export_pt
from sequifier.model.transformer import build_model

SEQ_LENGTH = 4
LENGTHS = (23, 3, 9, 40, 1, 12)
METADATA = "configs/metadata_configs/t.json"


def preprocess(root, stride_by_split=None, split_ratios=(0.6, 0.2, 0.2)):
    """Preprocess LENGTHS into `root` (dataset 't'); returns (long table, metadata)."""
    frame = long_table(lengths=LENGTHS)
    path = write_input(frame, os.path.join(str(root), "data", "t.csv"))
    run_preprocess(config(root, path, split_ratios=list(split_ratios), stride_by_split=stride_by_split,
                          overwrite=True))
    return frame, read_metadata(os.path.join(str(root), METADATA))


def make_project(root, columns=("colour", "code", "value"), targets=("colour", "value"),
                 stride_by_split=None, split_ratios=(0.6, 0.2, 0.2)):
    """Preprocess LENGTHS into `root` (dataset 't') and export one model; returns
    (long table, metadata, {"onnx": path, "pt": path})."""
    frame, metadata = preprocess(root, stride_by_split, split_ratios)
    torch.manual_seed(0)
    types = {c: metadata.column_types[c] for c in targets}
    cfg = TrainConfig(
        project_root=str(root), metadata_config_path=METADATA, model_name="m",
        target_columns=list(targets), target_column_types=types, input_columns=list(columns),
        seq_length=SEQ_LENGTH, export_generative_model=True, export_embedding_model=False,
        inference_batch_size=3,
        model_spec=ModelSpec(dim_model=16, n_head=2, num_layers=1, dim_feedforward=16,
                             initial_embedding_dim=len(columns) * 4,
                             feature_embedding_dims={c: 4 for c in columns}),
        training_spec=TrainingSpec(device="cpu", epochs=1, batch_size=4, learning_rate=1e-3,
                                   criterion={t: "CrossEntropyLoss" for t in targets},
                                   save_interval_epochs=1),
    )
    model = build_model(cfg, metadata)
    os.makedirs(os.path.join(str(root), "models"), exist_ok=True)
    paths = {"onnx": os.path.join(str(root), "models", "m.onnx"),
             "pt": os.path.join(str(root), "models", "m.pt")}
    export_onnx(model, paths["onnx"], "generative", 2, with_dropout=False)
    export_pt(model, paths["pt"], "generative", with_dropout=False)
    return frame, metadata, paths


def infer_config(root, model_path, **overrides) -> InferConfig:
    cfg = InferConfig(project_root=str(root), model_path=model_path, metadata_config_path=METADATA,
                      model_type="generative", seq_length=SEQ_LENGTH, inference_batch_size=3)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def items_with_context(frame, split: int, split_ratios=(0.6, 0.2, 0.2)) -> set:
    """(sequenceId, itemPosition) of split `split`'s items that have an earlier item."""
    from sequifier.data.splits import segment_bounds

    out = set()
    for sequence, group in frame.groupby("sequenceId"):
        positions = np.sort(group["itemPosition"].to_numpy())
        bounds = segment_bounds(np.array([len(positions)]), list(split_ratios))[0]
        for index in range(max(bounds[split], 1), bounds[split + 1]):
            out.add((int(sequence), int(positions[index])))
    return out
