"""missing_values interpolate and carry_forward: filled within each sequence, in position order."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from helpers.preprocess_data import config, rebuild_long_table, write_input

from sequifier.data.missing import MissingValues, Policy, fill_series, parse_missing_values
from sequifier.data.preprocess import run_preprocess
from sequifier.errors import SequifierError


def sorted_table(sequence, position, **columns) -> pa.Table:
    return pa.table({"sequenceId": pa.array(sequence, pa.int64()),
                     "itemPosition": pa.array(position, pa.int64()), **columns})


def test_interpolate_is_linear_in_position_within_each_sequence():
    table = sorted_table([0, 0, 0, 0, 0, 1, 1, 1], [0, 1, 4, 5, 9, 0, 2, 3],
                         x=pa.array([None, 1.0, None, 4.0, None, 10.0, None, None], pa.float64()))
    filled = fill_series("t.csv", table, MissingValues({"x": Policy("interpolate")}))
    # position 4 lies 3/4 of the way from (1, 1.0) to (5, 4.0); the ends take the nearest
    # known value of their own sequence, never the other sequence's
    assert filled.column("x").to_pylist() == [1.0, 1.0, 3.25, 4.0, 4.0, 10.0, 10.0, 10.0]


def test_carry_forward_takes_the_last_known_value_of_the_sequence_for_any_type():
    table = sorted_table([0, 0, 0, 1, 1, 1, 2], [0, 1, 2, 0, 1, 2, 0],
                         x=pa.array([None, 2.0, None, None, None, 7.0, None], pa.float64()),
                         s=pa.array(["a", None, "b", None, "c", None, None], pa.string()))
    setting = MissingValues({}, Policy("carry_forward"))
    filled = fill_series("t.csv", table, setting)
    assert filled.column("x").to_pylist() == [2.0, 2.0, 2.0, 7.0, 7.0, 7.0, None]
    assert filled.column("s").to_pylist() == ["a", "a", "b", "c", "c", "c", None]


def test_interpolate_on_a_categorical_column_with_gaps_is_one_line():
    table = sorted_table([0, 0], [0, 1], s=pa.array(["a", None], pa.string()))
    with pytest.raises(SequifierError, match=r"^missing_values.s: interpolate works on real columns"):
        fill_series("t.csv", table, MissingValues({"s": Policy("interpolate")}))


def test_the_series_policies_are_refused_for_id_and_position_columns():
    _, problems = parse_missing_values({"itemPosition": "interpolate"}, ("sequenceId", "itemPosition"))
    assert problems and problems[0].startswith("missing_values.itemPosition: the id/position column")


def test_preprocess_interpolates_in_time_order_from_a_shuffled_table_with_time_positions(tmp_path):
    times = pd.date_range("2024-01-01", periods=6, freq="30min")
    frame = pd.DataFrame({"id": ["a"] * 6 + ["b"] * 3, "t": list(times) + list(times[:3]),
                          "temp": [1.0, np.nan, np.nan, 4.0, 5.0, np.nan, np.nan, 2.0, np.nan],
                          "state": ["on", None, "off", None, "on", "on", None, None, None]})
    path = write_input(frame.sample(frac=1.0, random_state=1), tmp_path / "d.csv")
    metadata = run_preprocess(config(tmp_path, path, sequence_id_column="id", position_column="t",
                                     split_ratios=[1.0], stride_by_split=[1], seq_length=2,
                                     missing_values={"temp": "interpolate", "state": "carry_forward"}))
    table = rebuild_long_table(tmp_path, "d").sort_values(["sequenceId", "itemPosition"])
    assert np.allclose(table["temp"], [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 2.0, 2.0, 2.0])
    # sequence b never has a state: its cells get the <missing> category, a has none left
    assert table["state"].tolist() == ["on", "on", "off", "off", "on", "on"] + ["<missing>"] * 3
    assert "<missing>" in metadata.id_maps["state"]
