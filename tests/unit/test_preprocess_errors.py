"""Bad input: each case gives one SequifierError line naming the file/column/field and the fix,
and leaves no split or metadata behind."""

import glob

import numpy as np
import pytest
from helpers.preprocess_data import config, expect_error, long_table, write_input

from sequifier.config.metadata import read_metadata
from sequifier.data import preprocess
from sequifier.data.preprocess import run_preprocess


@pytest.mark.parametrize("column", ["sequenceId", "itemPosition"])
def test_missing_key_column(tmp_path, column):
    path = write_input(long_table().drop(columns=[column]), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path), "items.csv", f"'{column}'",
                 "set sequence_id_column" if column == "sequenceId" else "set position_column")


def test_split_ratios_must_sum_to_one(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, split_ratios=[0.8, 0.1], stride_by_split=None), "split_ratios",
                 "sum to 1")


def test_stride_list_must_match_splits(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, stride_by_split=[2, 2]), "stride_by_split",
                 "needs one stride per split")


def test_exact_mode_stride_that_does_not_divide(tmp_path):
    path = write_input(long_table(lengths=(12,)), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, split_ratios=[1.0], stride_by_split=[3],
                                  subsequence_start_mode="exact"),
                 "stride_by_split[0]=3", "subsequence_start_mode", "sequence 0", "items.csv",
                 "leaves 1 items")


def test_nan_in_real_column_names_column_file_and_count(tmp_path):
    frame = long_table()
    frame.loc[[2, 5, 7], "value"] = np.nan
    path = write_input(frame, tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path), "items.csv", "'value' (3 rows)",
                 "fill or drop")


def test_empty_string_in_parquet_categorical(tmp_path):
    frame = long_table()
    frame.loc[4, "colour"] = ""
    path = write_input(frame, tmp_path / "items.parquet", "parquet")
    expect_error(tmp_path, config(tmp_path, path, read_format="parquet"),
                 "'colour' (1 rows)")


def test_empty_cell_in_csv(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:2] + [""] + lines[3].split(",")[3:])
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    expect_error(tmp_path, config(tmp_path, path), "'colour' (1 rows)")


@pytest.mark.parametrize("content", ["", "sequenceId,itemPosition,value\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "items.csv"
    path.write_text(content)
    expect_error(tmp_path, config(tmp_path, str(path)), "items.csv", "is empty")


def test_folder_with_mixed_schemas(tmp_path):
    frame = long_table()
    write_input(frame[frame["sequenceId"] < 3], tmp_path / "in" / "a.csv")
    write_input(frame[frame["sequenceId"] >= 3].drop(columns=["code"]), tmp_path / "in" / "b.csv")
    expect_error(tmp_path, config(tmp_path, "in"), "mix schemas", "a.csv", "b.csv")


def test_folder_with_column_of_two_types(tmp_path):
    frame = long_table()
    write_input(frame[frame["sequenceId"] < 3], tmp_path / "in" / "a.csv")
    write_input(frame[frame["sequenceId"] >= 3].assign(code=lambda f: f["code"] + 0.5),
                tmp_path / "in" / "b.csv")
    expect_error(tmp_path, config(tmp_path, "in"), "column 'code' is int64", "real", "b.csv")


def test_sequence_split_over_two_files(tmp_path):
    frame = long_table()
    write_input(frame.iloc[:40], tmp_path / "in" / "a.csv")
    write_input(frame.iloc[40:], tmp_path / "in" / "b.csv")
    expect_error(tmp_path, config(tmp_path, "in"), "appears in both", "keep each sequence")


def test_selected_column_that_does_not_exist(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, selected_columns=["value", "colur"]),
                 "selected_columns", "'colur'", "items.csv")


def test_missing_data_path(tmp_path):
    expect_error(tmp_path, config(tmp_path, "nowhere/items.csv"), "data_path",
                 "nowhere/items.csv", "does not exist")


def test_folder_without_input_files(tmp_path):
    (tmp_path / "in").mkdir()
    expect_error(tmp_path, config(tmp_path, "in", read_format="parquet"), "no .parquet files")


def test_duplicate_positions(tmp_path):
    frame = long_table()
    frame.loc[1, ["sequenceId", "itemPosition"]] = frame.loc[0, ["sequenceId", "itemPosition"]]
    path = write_input(frame, tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path), "duplicate", "items.csv")


def test_non_integer_positions(tmp_path):
    path = write_input(long_table().assign(itemPosition=lambda f: f["itemPosition"] + 0.5),
                       tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path), "position_column", "'itemPosition'",
                 "must hold integers, times or dates")


def test_pt_needs_sharded_output(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, write_format="pt"), "merge_output: false")


def test_unknown_start_mode(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, subsequence_start_mode="random"),
                 "subsequence_start_mode", "distribute, exact")


def test_bad_input_file_in_worker_process(tmp_path, monkeypatch):
    monkeypatch.setattr(preprocess, "PARALLEL_MIN_READ_BYTES", 0)
    frame = long_table()
    for i in range(3):
        part = frame[frame["sequenceId"] % 3 == i]
        if i == 1:
            part = part.assign(value=np.nan)
        write_input(part, tmp_path / "in" / f"p{i}.csv")
    expect_error(tmp_path, config(tmp_path, "in", n_cores=2), "p1.csv", "'value'")


def test_parquet_file_read_as_csv(tmp_path):
    path = write_input(long_table(), tmp_path / "items.parquet", fmt="parquet")
    expect_error(tmp_path, config(tmp_path, path), "items.parquet", "not a UTF-8 text (csv)",
                 "read_format")


def test_real_column_with_a_few_text_cells(tmp_path):
    frame = long_table().astype({"value": str})
    frame.loc[3, "value"] = "1,5"
    path = write_input(frame, tmp_path / "items.csv")
    expect_error(tmp_path, config(tmp_path, path), "items.csv", "'value'", "'1,5'", "real column")


def test_real_column_stored_as_text(tmp_path):
    path = write_input(long_table().astype({"value": str}), tmp_path / "items.parquet", "parquet")
    expect_error(tmp_path, config(tmp_path, path, read_format="parquet"), "items.parquet",
                 "'value'", "numbers stored as text")


def test_labels_that_include_some_numbers_stay_categorical(tmp_path):
    frame = long_table()
    frame["colour"] = frame["colour"].replace({"grey": "1.5"})
    run_preprocess(config(tmp_path, write_input(frame, tmp_path / "items.csv")))
    metadata = read_metadata(str(tmp_path / "configs" / "metadata_configs" / "items.json"))
    assert "1.5" in metadata.id_maps["colour"]


def test_failure_before_anything_is_cached_leaves_no_work_folder(tmp_path):
    path = write_input(long_table().drop(columns=["itemPosition"]), tmp_path / "data" / "items.csv")
    expect_error(tmp_path, config(tmp_path, path), "itemPosition")
    assert glob.glob(str(tmp_path / "data" / ".*")) == []
