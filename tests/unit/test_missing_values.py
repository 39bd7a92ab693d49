"""missing_values policies (error, drop_rows, fill, {fill: VALUE}) and the column warnings."""

import glob
import logging

import numpy as np
import pandas as pd
import pytest
from helpers.preprocess_data import config, load_splits, long_table, rebuild_long_table, write_input

from sequifier.config.metadata import MISSING_CATEGORY
from sequifier.data.preprocess import run_preprocess
from sequifier.errors import SequifierError


def holey_table(seed=0) -> pd.DataFrame:
    """long_table with missing cells: 8 in value (real), 5 in colour (text), 3 in code (int)."""
    frame = long_table(seed=seed)
    frame.loc[frame.index[[1, 5, 9, 13, 20, 30, 40, 50]], "value"] = np.nan
    frame.loc[frame.index[[2, 6, 10, 14, 60]], "colour"] = None
    frame["code"] = frame["code"].astype("Int64")  # stays integer (categorical) in the CSV
    frame.loc[frame.index[[3, 7, 61]], "code"] = None
    return frame


def run(tmp_path, frame, **settings):
    path = write_input(frame, tmp_path / "items.csv")
    return run_preprocess(config(tmp_path, path, **settings))


def test_error_is_the_default_and_names_every_column(tmp_path):
    with pytest.raises(SequifierError) as e:
        run(tmp_path, holey_table())
    message = str(e.value)
    for fragment in ("'value' (8 rows)", "'colour' (5 rows)", "'code' (3 rows)", "set missing_values"):
        assert fragment in message
    assert glob.glob(str(tmp_path / "data" / "*")) + glob.glob(str(tmp_path / "data" / ".*")) == []


def test_drop_rows_leaves_out_exactly_the_rows_with_missing_cells(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sequifier")
    frame = holey_table()
    run(tmp_path, frame, missing_values="drop_rows")
    kept = frame.dropna()
    rebuilt = rebuild_long_table(tmp_path, "items")
    assert len(rebuilt) == len(kept)
    expected = kept.sort_values(["sequenceId", "itemPosition"]).reset_index(drop=True)
    np.testing.assert_array_equal(rebuilt["itemPosition"], expected["itemPosition"])
    err = caplog.text
    assert "missing values: 'value': 8 rows dropped" in err
    assert "missing values: 'colour': 5 rows dropped" in err
    assert f"{len(frame) - len(kept)} rows dropped in all" in err


def test_fill_uses_training_mean_and_a_missing_category(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sequifier")
    frame = holey_table()
    metadata = run(tmp_path, frame, missing_values="fill")
    err = caplog.text
    assert "'value': 8 cells filled with the training mean" in err
    assert f"'colour': 5 cells filled with the '{MISSING_CATEGORY}' category" in err
    assert f"'code': 3 cells filled with the '{MISSING_CATEGORY}' category" in err
    for column in ("colour", "code"):
        ids = metadata.id_maps[column]
        assert ids[MISSING_CATEGORY] == max(ids.values())
        assert metadata.n_classes[column] == len(ids) + 2
    assert metadata.inverse_id_map("code")[metadata.id_maps["code"][MISSING_CATEGORY]] == MISSING_CATEGORY
    # the mean and std leave the missing cells out; filled cells hold the mean (0.0 standardised)
    rebuilt = rebuild_long_table(tmp_path, "items")
    original = frame.sort_values(["sequenceId", "itemPosition"]).reset_index(drop=True)
    holes = original["value"].isna().to_numpy()
    stats = metadata.selected_columns_statistics["value"]
    np.testing.assert_allclose(rebuilt["value"][holes], stats["mean"], rtol=1e-6)
    np.testing.assert_allclose(rebuilt["value"][~holes], original["value"][~holes], rtol=1e-5)
    assert (rebuilt["colour"][original["colour"].isna().to_numpy()] == MISSING_CATEGORY).all()
    splits = load_splits(tmp_path, metadata)
    assert all(np.isfinite(w.values["value"]).all() for w in splits)


def test_training_mean_comes_from_known_training_cells(tmp_path):
    frame = long_table(lengths=(10,))
    frame = frame.sort_values("itemPosition").reset_index(drop=True)
    frame.loc[[0, 1], "value"] = np.nan
    metadata = run(tmp_path, frame, missing_values={"value": "fill"}, split_ratios=[0.6, 0.2, 0.2])
    known_training = frame["value"][2:6]
    assert metadata.selected_columns_statistics["value"]["mean"] == pytest.approx(known_training.mean())


def test_per_column_policies_and_given_values(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sequifier")
    frame = holey_table()
    metadata = run(tmp_path, frame, missing_values={"value": {"fill": -1.5}, "colour": {"fill": "none"},
                                                    "*": "drop_rows"})
    err = caplog.text
    assert "'value': 8 cells filled with -1.5" in err
    assert "'colour': 5 cells filled with 'none'" in err
    assert "'code': 3 rows dropped" in err
    assert "none" in metadata.id_maps["colour"] and MISSING_CATEGORY not in metadata.id_maps["colour"]
    rebuilt = rebuild_long_table(tmp_path, "items")
    assert len(rebuilt) == len(frame) - 3
    assert np.isclose(rebuilt["value"], -1.5).sum() == 8


@pytest.mark.parametrize("column,value,wanted", [
    ("value", "zero", "give a number"), ("code", 1.5, "give an integer"), ("colour", 3, "give text"),
])
def test_fill_value_of_the_wrong_type(tmp_path, column, value, wanted):
    with pytest.raises(SequifierError) as e:
        run(tmp_path, holey_table(), missing_values={column: {"fill": value}, "*": "drop_rows"})
    message = str(e.value)
    assert "\n" not in message
    assert f"missing_values.{column}: fill value" in message and wanted in message
    assert not glob.glob(str(tmp_path / "data" / "*split*")) and not glob.glob(str(tmp_path / "data" / ".*"))
    assert not glob.glob(str(tmp_path / "configs" / "*"))


def test_id_and_position_columns(tmp_path):
    frame = long_table()
    frame["sequenceId"] = frame["sequenceId"].astype("Int64")
    frame.loc[frame.index[:2], "sequenceId"] = None
    with pytest.raises(SequifierError, match="'sequenceId' .2 rows.; set missing_values: .COLUMN: drop_rows"):
        run(tmp_path, frame, missing_values="fill")
    run(tmp_path, frame, missing_values={"sequenceId": "drop_rows"})
    assert len(rebuild_long_table(tmp_path, "items")) == len(frame) - 2


@pytest.mark.parametrize("setting,message", [
    ("sometimes", "missing_values: 'sometimes' is not one of error, drop_rows, fill"),
    ({"value": {"fill": [1]}}, "missing_values.value: the fill value must be a number or text"),
    ({"sequenceId": "fill"}, "missing_values.sequenceId: the id/position column can only be"),
    ({"nosuch": "fill"}, "missing_values.nosuch: no such column"),
])
def test_bad_settings(tmp_path, setting, message):
    with pytest.raises(SequifierError, match=message.replace("(", ".").replace(")", ".")):
        run(tmp_path, long_table(), missing_values=setting)
    assert not glob.glob(str(tmp_path / "configs" / "*"))


def test_reused_metadata_keeps_the_missing_category(tmp_path):
    frame = holey_table()
    run(tmp_path, frame, missing_values="fill")
    new = write_input(holey_table(seed=1), tmp_path / "new.csv")
    metadata = run_preprocess(config(tmp_path, new, missing_values="fill", split_ratios=[1.0],
                                     stride_by_split=None, reuse_metadata_path="configs/metadata_configs/items.json"))
    assert MISSING_CATEGORY in metadata.id_maps["colour"]
    windows = load_splits(tmp_path, metadata)[0]
    assert (windows.values["colour"] == metadata.id_maps["colour"][MISSING_CATEGORY]).any()


# ---------------------------------------------------------------- warnings that save a run

def test_high_cardinality_and_date_like_columns_are_named(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="sequifier")
    frame = long_table()
    frame["session"] = [f"s{i}" for i in range(len(frame))]
    frame["when"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(len(frame)) % 7, unit="D")
    run(tmp_path, frame)
    err = caplog.text
    assert f"categorical column 'session' has {len(frame)} distinct values in {len(frame)} rows" in err
    assert "column 'when' looks like dates or times and is read as categorical" in err
    assert "drop it (selected_columns)" in err and "position_column: when" in err
    assert "'colour'" not in err and "'code'" not in err


def test_missing_category_only_for_columns_with_missing_cells(tmp_path):
    frame = holey_table()
    frame["colour"] = frame["colour"].fillna("red")
    metadata = run(tmp_path, frame, missing_values="fill")
    assert MISSING_CATEGORY not in metadata.id_maps["colour"]
    assert MISSING_CATEGORY in metadata.id_maps["code"]
