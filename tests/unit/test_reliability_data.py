"""Bad data and names in preprocess: one line, nothing written outside project_root,
inf refused like NaN, a UTF-8 byte-order mark read as such, umask modes on outputs."""

import glob
import os

import numpy as np
import pytest
from preprocess_data import config, long_table, write_input

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
