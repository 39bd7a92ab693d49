"""reuse_metadata_path: new data encoded with an earlier run's id maps and statistics."""

import logging
import os

import numpy as np
import pytest
from helpers.preprocess_data import config, load_splits, long_table, write_input

from sequifier.config.schema import UNKNOWN_ID
from sequifier.data.preprocess import run_preprocess
from sequifier.errors import SequifierError


@pytest.fixture
def trained(tmp_path):
    """A first preprocess run: the encoding a model was trained with."""
    write_input(long_table(), tmp_path / "data" / "train.csv")
    return run_preprocess(config(tmp_path, tmp_path / "data" / "train.csv"))


def new_data(tmp_path, frame):
    return write_input(frame, tmp_path / "new" / "fresh.csv")


def test_new_data_gets_the_old_ids_statistics_and_unknown_ids(tmp_path, trained, caplog):
    caplog.set_level(logging.INFO, logger="sequifier")
    frame = long_table(seed=5, first_id=100)
    frame.loc[:4, "colour"] = "violet"  # never seen by the first run
    frame["value"] = frame["value"] + 50.0  # would move mean/std if recomputed
    path = new_data(tmp_path, frame)
    reused = run_preprocess(config(tmp_path, path, reuse_metadata_path="configs/metadata_configs/train.json",
                                   split_ratios=[1.0], stride_by_split=[2]))
    assert reused.id_maps == trained.id_maps
    assert reused.n_classes == trained.n_classes
    assert reused.selected_columns_statistics == trained.selected_columns_statistics
    (windows,) = load_splits(tmp_path, reused)
    real = windows.item_position >= 0
    seq = np.broadcast_to(windows.sequence_id[:, None], real.shape)[real]
    items = {(s, p): (c, v) for s, p, c, v in zip(seq, windows.item_position[real],
                                                   windows.values["colour"][real], windows.values["value"][real])}
    violet = {(s, p) for s, p in frame.loc[frame.colour == "violet", ["sequenceId", "itemPosition"]].to_numpy()}
    assert {k for k, (c, _) in items.items() if c == UNKNOWN_ID} == violet
    assert "colour: 1 values not in the id map" in caplog.text
    # known values keep the first run's ids; reals use its mean and std
    stats = trained.selected_columns_statistics["value"]
    for row in frame.head(20).itertuples():
        colour, value = items[(row.sequenceId, row.itemPosition)]
        if row.colour != "violet":
            assert colour == trained.id_maps["colour"][row.colour]
        assert value == pytest.approx((row.value - stats["mean"]) / stats["std"], rel=1e-5)


def test_without_reuse_the_maps_are_rebuilt(tmp_path, trained):
    frame = long_table(seed=5, first_id=100)
    frame.loc[:4, "colour"] = "violet"
    fresh = run_preprocess(config(tmp_path, new_data(tmp_path, frame)))
    assert "violet" in fresh.id_maps["colour"] and fresh.id_maps != trained.id_maps


def test_column_mismatch_is_one_line(tmp_path, trained):
    frame = long_table(seed=5, first_id=100).drop(columns=["code"])
    with pytest.raises(SequifierError, match="reuse_metadata_path: .* describes columns .* needs exactly"):
        run_preprocess(config(tmp_path, new_data(tmp_path, frame),
                              reuse_metadata_path="configs/metadata_configs/train.json"))
    assert not os.path.exists(tmp_path / "data" / "fresh-split0.parquet")


def test_type_mismatch_and_missing_file(tmp_path, trained):
    frame = long_table(seed=5, first_id=100)
    frame["code"] = frame["code"].astype(str) + "x"
    with pytest.raises(SequifierError, match="column 'code' is int64 in .* but str in"):
        run_preprocess(config(tmp_path, new_data(tmp_path, frame),
                              reuse_metadata_path="configs/metadata_configs/train.json"))
    with pytest.raises(SequifierError, match="reuse_metadata_path: file .*nope.json' not found"):
        run_preprocess(config(tmp_path, new_data(tmp_path, long_table()), reuse_metadata_path="nope.json"))
