"""Windows of later splits may start with earlier splits' items as context; those
slots are recorded in targetStart and never scored, so validation loss is not computed
on training items."""

import numpy as np
import pytest
import torch
from helpers.preprocess_data import config, load_splits, long_table, write_input

from sequifier.config.metadata import Metadata
from sequifier.data.preprocess import run_preprocess
from sequifier.data.splits import segment_bounds
from sequifier.data.window_files import read_windows
from sequifier.data.windows import Windows, write_shards, write_windows
from sequifier.train.data import InRamBatches, load_window_tensors

LENGTHS = (40, 23, 9)
RATIOS = [0.6, 0.2, 0.2]


@pytest.mark.parametrize("write_format", ["parquet", "pt"])
def test_target_start_marks_the_first_item_of_the_windows_split(tmp_path, write_format):
    path = write_input(long_table(lengths=LENGTHS), tmp_path / "data" / "t.csv")
    metadata = run_preprocess(config(tmp_path, path, split_ratios=RATIOS, write_format=write_format,
                                     merge_output=write_format != "pt"))
    bounds = segment_bounds(np.array(LENGTHS), RATIOS)
    context_seen = False
    for k, windows in enumerate(load_splits(tmp_path, metadata)):
        index = (windows.item_position - 5) // 3  # long_table positions are 3 * index + 5
        seg_start = bounds[windows.sequence_id, k][:, None]
        slots = np.arange(windows.window_length)[None, :]
        real = windows.item_position >= 0
        in_split = real & (index >= seg_start)
        # every real slot from targetStart on is this split's item, every one before is not
        assert np.array_equal(in_split, real & (slots >= windows.target_start[:, None]))
        assert np.all(windows.target_start >= windows.padding)
        context_seen |= bool(np.any(real & ~in_split))
    assert context_seen  # the short validation/test segments do borrow context


def test_training_scores_only_targets_from_target_start(tmp_path):
    windows = Windows(np.arange(2), np.zeros(2, np.int64), np.array([1, 0]),
                      np.arange(10).reshape(2, 5), {"a": np.arange(2, 12).reshape(2, 5)},
                      target_start=np.array([1, 3]))
    metadata = Metadata("t", 4, "parquet", {"a": "categorical"}, {"a": {}}, {"a": 20}, {}, {"a": "int64"}, [])
    for fmt in ("parquet", "pt"):
        path = str(tmp_path / f"w.{fmt}")
        if fmt == "pt":
            write_shards(windows, path, "w", 8, metadata.column_types)
        else:
            write_windows(windows, path, fmt)
        assert read_windows(path, fmt, metadata.column_types).target_start.tolist() == [1, 3]
    data = load_window_tensors(str(tmp_path / "w.parquet"), "parquet", metadata, ["a"], 4, "training_data_path")
    (batch,) = InRamBatches(data, ["a"], ["a"], 2, shuffle=False, seed=0, device=torch.device("cpu"))
    # target position j is slot j + 1: window 0 scores slots 1..4, window 1 only slots 3, 4
    assert batch.target_mask.tolist() == [[True] * 4, [False, False, True, True]]
