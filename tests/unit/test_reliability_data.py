"""Bad data and names in preprocess: one line, nothing written outside project_root,
inf refused like NaN, a UTF-8 byte-order mark read as such, umask modes on outputs."""

import glob
import os

import numpy as np
import pytest
from helpers.preprocess_data import config, long_table, write_input

from sequifier.data.preprocess import run_preprocess
from sequifier.errors import SequifierError


def outputs(root):
    return glob.glob(os.path.join(str(root), "data", "*split*")) + \
        glob.glob(os.path.join(str(root), "configs", "metadata_configs", "*"))


@pytest.mark.parametrize("value", [np.inf, -np.inf])
def test_infinite_values_are_refused_naming_column_and_rows(tmp_path, value):
    frame = long_table()
    frame.loc[[3, 7], "value"] = value
    path = write_input(frame, tmp_path / "items.csv")
    with pytest.raises(SequifierError, match=r"infinite values \(inf/-inf\) in column 'value' \(2 rows\)") as e:
        run_preprocess(config(tmp_path, path))
    assert "\n" not in str(e.value) and outputs(tmp_path) == []


def test_a_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path):
    path = write_input(long_table(), tmp_path / "items.csv")
    with open(path, "rb") as f:
        text = f.read()
    with open(path, "wb") as f:
        f.write(b"\xef\xbb\xbf" + text)
    metadata = run_preprocess(config(tmp_path, path))
    assert "colour" in metadata.column_types


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "x" * 300, "a\0b"])
def test_dataset_name_must_be_a_plain_name(tmp_path, name):
    root = tmp_path / "project"
    path = write_input(long_table(), root / "items.csv")
    with pytest.raises(SequifierError, match="dataset_name") as e:
        run_preprocess(config(root, path, dataset_name=name))
    assert "\n" not in str(e.value)
    assert sorted(os.listdir(tmp_path)) == ["project"] and outputs(root) == []


def test_outputs_get_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_input(long_table(), tmp_path / "items.csv")
        run_preprocess(config(tmp_path, path))
    finally:
        os.umask(old)
    for p in outputs(tmp_path):
        assert os.stat(p).st_mode & 0o777 == 0o644, p


@pytest.mark.parametrize("write_format,merge_output", [("parquet", True), ("parquet", False), ("pt", False)])
def test_windows_of_another_id_map_are_refused_by_train_and_infer(tmp_path, write_format, merge_output):
    import shutil

    from sequifier.config.metadata import read_metadata
    from sequifier.data.window_files import check_fingerprint

    fmt = {"write_format": write_format, "merge_output": merge_output}
    path = write_input(long_table(), tmp_path / "items.csv")
    mine = run_preprocess(config(tmp_path, path, dataset_name="mine", **fmt))
    other_table = long_table(seed=5)
    other_table["colour"] = other_table["colour"].map({"red": "r", "green": "g", "blue": "b", "grey": "y"})
    other = run_preprocess(config(tmp_path, write_input(other_table, tmp_path / "o.csv"), dataset_name="other", **fmt))
    assert mine.id_map_fingerprint and mine.id_map_fingerprint != other.id_map_fingerprint
    mine_path = str(tmp_path / "configs" / "metadata_configs" / "mine.json")
    check_fingerprint(str(tmp_path / mine.split_paths[0]), write_format, read_metadata(mine_path), mine_path)
    with pytest.raises(SequifierError, match="preprocessed with other id maps than the metadata") as e:
        check_fingerprint(str(tmp_path / other.split_paths[0]), write_format, mine, mine_path)
    assert other.split_paths[0] in str(e.value) and mine_path in str(e.value)
    if not merge_output:  # one shard of another run dropped into a folder of mine: named
        stray = sorted(os.listdir(tmp_path / other.split_paths[0]))[0]
        shutil.copy(tmp_path / other.split_paths[0] / stray, tmp_path / mine.split_paths[0] / ("z" + stray))
        with pytest.raises(SequifierError, match=f"data '.*z{stray}' was preprocessed with other id maps"):
            check_fingerprint(str(tmp_path / mine.split_paths[0]), write_format, mine, mine_path)


def test_a_duplicate_column_in_the_header_is_one_line(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("sequenceId,itemPosition,colour,colour\n1,0,a,b\n1,1,b,c\n")
    with pytest.raises(SequifierError, match=r"header names column\(s\) \['colour'\] more than once") as e:
        run_preprocess(config(tmp_path, str(path)))
    assert "\n" not in str(e.value) and outputs(tmp_path) == []


def test_train_read_format_must_match_the_splits(tmp_path):
    from helpers.train_data import make_config, make_project

    from sequifier.train.run import run_train

    root = make_project(tmp_path)  # parquet splits
    with pytest.raises(SequifierError, match="read_format: 'csv' but the metadata's splits are written as parquet"):
        run_train(make_config(root, read_format="csv"), export=False)
    with open(os.path.join(root, "data", "cut.parquet"), "wb") as f:
        f.write(b"PAR1 x")
    with pytest.raises(SequifierError, match="could not be read as parquet"):
        run_train(make_config(root, training_data_path="data/cut.parquet"), export=False)
