"""Tiny long tables and helpers shared by the preprocess tests."""

import glob
import os

import numpy as np
import pandas as pd

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import PreprocessConfig
from sequifier.data.preprocess import run_preprocess
from sequifier.data.window_files import read_windows
from sequifier.errors import SequifierError


def long_table(lengths=(23, 3, 9, 40, 1, 12), seed=0, first_id=0) -> pd.DataFrame:
    """Sequences of the given lengths with a string, an integer and a real column, shuffled."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    frame = pd.DataFrame({
        "sequenceId": np.repeat(np.arange(first_id, first_id + len(lengths)), lengths),
        # positions with gaps: they are ordered, not necessarily 0..n-1
        "itemPosition": np.concatenate([np.arange(k) * 3 + 5 for k in lengths]),
        "colour": rng.choice(["red", "green", "blue", "grey"], size=n),
        "code": rng.choice([7, 30, 100, 9], size=n),
        "value": np.round(rng.normal(3.0, 2.0, size=n), 4),
    })
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def config(root, data_path, **overrides) -> PreprocessConfig:
    values = {"project_root": str(root), "data_path": str(data_path), "seq_length": 4,
              "split_ratios": [0.6, 0.2, 0.2], "stride_by_split": [2, 3, 5], "n_cores": 1}
    values.update(overrides)
    return PreprocessConfig(**values)


def write_input(frame: pd.DataFrame, path, fmt="csv") -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


def load_splits(root, metadata):
    return [read_windows(os.path.join(str(root), p), metadata.write_format, metadata.column_types)
            for p in metadata.split_paths]


def rebuild_long_table(root, name) -> pd.DataFrame:
    """The user's table from the windows of all splits, mapped back to original values."""
    metadata = read_metadata(os.path.join(str(root), "configs", "metadata_configs", f"{name}.json"))
    parts = []
    for windows in load_splits(root, metadata):
        real = windows.item_position >= 0
        part = {"sequenceId": np.broadcast_to(windows.sequence_id[:, None], real.shape)[real],
                "itemPosition": windows.item_position[real]}
        for column, kind in metadata.column_types.items():
            values = windows.values[column][real]
            if kind == "categorical":
                inverse = metadata.inverse_id_map(column)
                part[column] = [inverse[int(i)] for i in values]
            else:
                stats = metadata.selected_columns_statistics[column]
                part[column] = values * stats["std"] + stats["mean"]
        parts.append(pd.DataFrame(part))
    return sorted_table(pd.concat(parts).drop_duplicates(["sequenceId", "itemPosition"]))


def sorted_table(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(["sequenceId", "itemPosition"]).reset_index(drop=True)


def expect_error(root, cfg, *fragments, nothing_written=False):
    """preprocess fails with one line holding every fragment, and leaves no split or
    metadata (with `nothing_written`: nothing at all under data/ and configs/); the message."""
    import pytest

    with pytest.raises(SequifierError) as e:
        run_preprocess(cfg)
    message = str(e.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    assert glob.glob(os.path.join(str(root), "data", "*split*")) == []
    assert glob.glob(os.path.join(str(root), "configs", "metadata_configs", "*.json")) == []
    if nothing_written:
        assert glob.glob(os.path.join(str(root), "data", "*")) == []
        assert glob.glob(os.path.join(str(root), "data", ".*")) == []
        assert glob.glob(os.path.join(str(root), "configs", "*")) == []
    return message
