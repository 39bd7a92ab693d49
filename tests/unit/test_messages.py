"""Messages echo values as the user wrote them, and every problem is one line."""

import numpy as np
import pytest
import torch
from helpers.preprocess_data import config, expect_error, long_table, write_input
from helpers.train_data import make_config, make_project

from sequifier.config.problems import Problems
from sequifier.errors import SequifierError, shown
from sequifier.gate import validate


@pytest.mark.parametrize("value, text", [
    (np.int64(2), "2"), (np.float32(0.5), "0.5"), (np.float64(0.1), "0.1"), (torch.tensor(3), "3"),
    (np.bool_(True), "true"), ("u01", "'u01'"), ("a\nb", "'a\\nb'"), (None, "null"),
    ([np.int64(1), "x"], "[1, 'x']"), (np.array([1, 2]), "[1, 2]"), ({"a": np.int32(1)}, "{a: 1}"),
])
def test_shown_values_read_as_written(value, text):
    assert shown(value) == text


def test_sequence_id_in_two_files_is_shown_as_written(tmp_path):
    frame = long_table()  # integer sequence ids: numpy gives np.int64 scalars
    write_input(frame[frame["sequenceId"] <= 2], tmp_path / "in" / "a.csv")
    write_input(frame[frame["sequenceId"] >= 2], tmp_path / "in" / "b.csv")
    message = expect_error(tmp_path, config(tmp_path, "in"), "sequence id 2 appears in both")
    assert "np." not in message


def test_text_sequence_id_in_two_files_is_quoted(tmp_path):
    frame = long_table().assign(sequenceId=lambda f: "s" + f["sequenceId"].astype(str))
    write_input(frame[frame["sequenceId"] <= "s2"], tmp_path / "in" / "a.csv")
    write_input(frame[frame["sequenceId"] >= "s2"], tmp_path / "in" / "b.csv")
    expect_error(tmp_path, config(tmp_path, "in"), "sequence id 's2' appears in both")


def test_target_type_mismatch_is_one_line(tmp_path):
    root = make_project(tmp_path, n_train=16, n_val=16)
    cfg = make_config(root, target_column_types={"itemId": "real", "itemValue": "real"})
    with pytest.raises(SequifierError) as e:
        validate("train", cfg)
    assert str(e.value).splitlines() == [
        "target_column_types.itemId: 'real' but preprocess recorded 'categorical' for it; "
        "set it to 'categorical' or leave it out"]


def test_a_problem_quoting_multi_line_text_stays_one_line():
    p = Problems()
    p.add("model_path", "cannot read it (Error:\n  line two)")
    p.extend(["data_path: first\nsecond"])
    assert p.lines == ["model_path: cannot read it (Error: line two)", "data_path: first second"]
    with pytest.raises(SequifierError) as e:
        p.raise_if_any()
    assert len(str(e.value).splitlines()) == 2  # one per problem
