"""Test helpers for infer: a tiny project (metadata + windows) and stand-in ONNX exports.

The stand-in models follow the export contract (one input per column named after it,
one output per target, sequifier metadata_props) and compute something easy to check:
a categorical target predicts "last input id + 1" (wrapping within the real ids), a
real target predicts "last input value + 1" on the standardised scale.
"""

import json
import os
import shutil
import warnings

import numpy as np
import torch

from sequifier.config.metadata import Metadata, write_metadata
from sequifier.config.schema import InferConfig
from sequifier.data.windows import Windows, write_windows

SEQ_LENGTH = 4
# itemId: original ints 100..104 -> ids 2..6; sup1: strings -> ids 2..3; value: real
ITEM_VALUES = [100, 101, 102, 103, 104]
N_ITEM = 7
N_SUP = 4
VALUE_MEAN, VALUE_STD = 10.0, 2.0
COLUMN_TYPES = {"itemId": "categorical", "sup1": "categorical", "value": "real"}


def make_metadata(name="toy") -> Metadata:
    return Metadata(
        name=name,
        seq_length=SEQ_LENGTH,
        write_format="parquet",
        column_types=dict(COLUMN_TYPES),
        id_maps={
            "itemId": {str(v): i + 2 for i, v in enumerate(ITEM_VALUES)},
            "sup1": {"a": 2, "b": 3},
        },
        n_classes={"itemId": N_ITEM, "sup1": N_SUP},
        selected_columns_statistics={"value": {"mean": VALUE_MEAN, "std": VALUE_STD}},
        original_dtypes={"itemId": "int64", "sup1": "str"},
        split_paths=[f"data/{name}-split0.parquet", f"data/{name}-split1.parquet",
                     f"data/{name}-split2.parquet"],
        split_ratios=[0.6, 0.2, 0.2],
        stride_by_split=[1, 1, 1],
    )


def make_windows(n=10, seed=0, width=SEQ_LENGTH + 1) -> Windows:
    """n windows over 3 sequences; positions 10*k + j so each window is recognisable."""
    rng = np.random.default_rng(seed)
    positions = np.arange(n)[:, None] * 10 + np.arange(width)[None, :]
    padding = np.zeros(n, dtype=np.int64)
    item = rng.integers(2, N_ITEM, size=(n, width))
    sup = rng.integers(2, N_SUP, size=(n, width))
    value = rng.normal(size=(n, width)).astype(np.float32)
    # first window left-padded by one slot
    padding[0] = 1
    positions[0, 0], item[0, 0], sup[0, 0], value[0, 0] = -1, 0, 0, 0.0
    return Windows(
        sequence_id=np.arange(n) % 3,
        subsequence_id=np.arange(n),
        padding=padding,
        item_position=positions.astype(np.int64),
        values={"itemId": item, "sup1": sup, "value": value},
    )


def make_project(root, n=10, fmt="parquet", windows=None) -> Metadata:
    metadata = make_metadata()
    write_metadata(metadata, os.path.join(root, "configs/metadata_configs/toy.json"))
    windows = make_windows(n) if windows is None else windows
    for path in metadata.split_paths:
        path = os.path.join(root, path)
        if fmt != "parquet":
            path = path.replace(".parquet", f".{fmt}")
        write_windows(windows, path, fmt)
    return metadata


def infer_config(root, model_path, **overrides) -> InferConfig:
    cfg = InferConfig(
        project_root=str(root),
        model_path=model_path,
        metadata_config_path="configs/metadata_configs/toy.json",
        model_type="generative",
        seq_length=SEQ_LENGTH,
        inference_batch_size=4,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


class StubGenerative(torch.nn.Module):
    """Predicts last id + 1 (within ids 2..n-1) and last value + 1, from the last slot."""

    def __init__(self, inputs, targets, types, n_classes):
        super().__init__()
        self.inputs, self.targets, self.types, self.n_classes = inputs, targets, types, n_classes

    def forward(self, *xs):
        last = {c: x[:, -1] for c, x in zip(self.inputs, xs)}
        # every input takes part (the exporter drops unused inputs), with weight 0
        zero = sum(x.float().sum(1) for x in xs) * 0.0
        out = []
        for t in self.targets:
            if self.types[t] == "categorical":
                n = self.n_classes[t]
                nxt = (last[t] - 2 + 1) % (n - 2) + 2
                out.append(torch.nn.functional.one_hot(nxt, n).float() * 5.0 + zero[:, None])
            else:
                out.append(last[t] + 1.0 + zero)
        return tuple(out)


class StubEmbedding(torch.nn.Module):
    """embedding = [mean of first input over the window, last value of it, 1.0]"""

    def forward(self, *xs):
        x = xs[0].float()
        zero = sum(x.float().sum(1) for x in xs) * 0.0
        return torch.stack([x.mean(1), x[:, -1], torch.ones_like(x[:, 0])], 1) + zero[:, None]


def export_stub(path, inputs=("itemId", "sup1", "value"), targets=("itemId", "value"),
                model_type="generative", with_dropout=False, seq_length=SEQ_LENGTH,
                props=None, n_classes=None):
    """Export a stand-in model to `path` with sequifier metadata_props (or `props`)."""
    import onnx

    inputs, targets = list(inputs), list(targets)
    types = {c: COLUMN_TYPES[c] for c in inputs + targets}
    n_classes = n_classes or {"itemId": N_ITEM, "sup1": N_SUP}
    if model_type == "embedding":
        module, output_names = StubEmbedding(), ["embedding"]
    else:
        module = StubGenerative(inputs, targets, types, n_classes)
        # an output cannot share an input's name in ONNX; outputs come in target order
        output_names = [t if t not in inputs else f"{t}_prediction" for t in targets]
    example = tuple(
        torch.full((2, seq_length), 2, dtype=torch.int64) if types[c] == "categorical"
        else torch.zeros((2, seq_length), dtype=torch.float32)
        for c in inputs
    )
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but quick
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, path, input_names=inputs, output_names=output_names,
            dynamic_axes={name: {0: "batch"} for name in inputs + output_names}, dynamo=False,
        )
    model = onnx.load(path)
    if props is None:
        props = {
            "sequifier_format": "1",
            "model_type": json.dumps(model_type),
            "input_columns": json.dumps(inputs),
            "target_columns": json.dumps(targets),
            "target_column_types": json.dumps({t: types[t] for t in targets}),
            "column_types": json.dumps(types),
            "seq_length": json.dumps(seq_length),
            "with_dropout": json.dumps(with_dropout),
        }
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, path)
    return path


def project_with_models(root, models: dict):
    """A toy project (see make_project) with the given model files copied to models/."""
    make_project(str(root))
    os.makedirs(os.path.join(str(root), "models"))
    for path in models.values():
        shutil.copy(path, os.path.join(str(root), "models"))
    return root
