"""The user's table as it is: own column names, text ids, times as positions (issue 12)."""

import functools

import numpy as np
import pandas as pd
import pytest
from helpers.preprocess_data import (
    config,
    expect_error,
    load_splits,
    long_table,
    rebuild_long_table,
    write_input,
)

from sequifier.data.preprocess import run_preprocess


def user_table(seed=0) -> pd.DataFrame:
    """long_table with the user's names, text ids and event times with gaps."""
    frame = long_table(seed=seed)
    start = pd.Timestamp("2024-03-01 08:00:00")
    return pd.DataFrame({
        "event_pos": start + pd.to_timedelta(frame["itemPosition"] * 37, unit="s"),
        "colour": frame["colour"], "user_id": [f"u_{i:05d}" for i in frame["sequenceId"] * 7 + 3],
        "value": frame["value"],
    })


def test_mapped_columns_give_the_windows_of_the_default_names(tmp_path):
    frame = long_table()
    plain = write_input(frame, tmp_path / "a" / "items.csv")
    renamed = write_input(frame.rename(columns={"sequenceId": "user id", "itemPosition": "pos"}),
                          tmp_path / "b" / "items.csv")
    expected = run_preprocess(config(tmp_path / "a", plain))
    metadata = run_preprocess(config(tmp_path / "b", renamed, sequence_id_column="user id",
                                     position_column="pos"))
    assert (metadata.sequence_id_column, metadata.position_column) == ("user id", "pos")
    assert expected.sequence_id_column == "sequenceId"
    assert metadata.position_type == "integer" and metadata.sequence_ids is None
    for got, want in zip(load_splits(tmp_path / "b", metadata), load_splits(tmp_path / "a", expected)):
        np.testing.assert_array_equal(got.sequence_id, want.sequence_id)
        np.testing.assert_array_equal(got.item_position, want.item_position)
        for column in want.values:
            np.testing.assert_array_equal(got.values[column], want.values[column])


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_ids_and_times_map_back_to_the_users_rows(tmp_path, fmt):
    frame = user_table()
    path = write_input(frame, tmp_path / f"events.{fmt}", fmt)
    metadata = run_preprocess(config(tmp_path, path, read_format=fmt, sequence_id_column="user_id",
                                     position_column="event_pos"))
    ids = sorted(frame["user_id"].unique())
    assert metadata.sequence_ids == ids
    assert metadata.position_type.startswith("timestamp[")
    rebuilt = rebuild_long_table(tmp_path, "events")
    # windows hold each id's index in metadata.sequence_ids and positions as time ticks
    from sequifier.infer.outputs import key_columns

    keys = key_columns(metadata, rebuilt["sequenceId"].to_numpy(), rebuilt["itemPosition"].to_numpy())
    got = pd.DataFrame({"user_id": keys["user_id"],
                        "event_pos": keys["event_pos"].to_pandas().dt.tz_localize(None),
                        "colour": rebuilt["colour"]})
    want = frame[["user_id", "event_pos", "colour"]].copy()
    want["event_pos"] = pd.to_datetime(want["event_pos"])
    sort = ["user_id", "event_pos"]
    got = got.sort_values(sort).reset_index(drop=True)
    want = want.sort_values(sort).reset_index(drop=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)


def test_dates_as_positions(tmp_path):
    frame = long_table(lengths=(6, 9))
    frame["itemPosition"] = pd.Timestamp("2023-12-30") + pd.to_timedelta(frame["itemPosition"], unit="D")
    frame["itemPosition"] = frame["itemPosition"].dt.strftime("%Y-%m-%d")
    path = write_input(frame, tmp_path / "daily.csv")
    metadata = run_preprocess(config(tmp_path, path))
    assert metadata.position_type == "date32[day]"
    windows = load_splits(tmp_path, metadata)[0]
    days = windows.item_position[windows.item_position >= 0]
    assert days.min() == (pd.Timestamp("2023-12-30") + pd.Timedelta(days=5) - pd.Timestamp("1970-01-01")).days


def test_text_ids_in_several_files_are_numbered_together(tmp_path):
    frame = user_table()
    users = sorted(frame["user_id"].unique())
    write_input(frame[frame["user_id"].isin(users[3:])], tmp_path / "in" / "a.csv")
    write_input(frame[frame["user_id"].isin(users[:3])], tmp_path / "in" / "b.csv")
    metadata = run_preprocess(config(tmp_path, tmp_path / "in", sequence_id_column="user_id",
                                     position_column="event_pos"))
    assert metadata.sequence_ids == users
    seen = np.unique(np.concatenate([w.sequence_id for w in load_splits(tmp_path, metadata)]))
    assert seen.tolist() == list(range(len(users)))


# ---------------------------------------------------------------- bad input: one line, nothing written

# these inputs live outside data/ and configs/: a refused run leaves both empty
expect_error = functools.partial(expect_error, nothing_written=True)


def test_unknown_column_in_the_mapping(tmp_path):
    path = write_input(user_table(), tmp_path / "in" / "events.csv")
    expect_error(tmp_path, config(tmp_path, path, sequence_id_column="userid", position_column="event_pos"),
                 "sequence_id_column", "'userid'", "events.csv")
    expect_error(tmp_path, config(tmp_path, path, sequence_id_column="user_id", position_column="pos"),
                 "position_column", "'pos'", "events.csv")


def test_position_neither_numeric_nor_time(tmp_path):
    frame = user_table()
    frame["event_pos"] = frame["event_pos"].dt.strftime("%d/%m/%Y %H:%M:%S")
    path = write_input(frame, tmp_path / "in" / "events.csv")
    expect_error(tmp_path, config(tmp_path, path, sequence_id_column="user_id", position_column="event_pos"),
                 "position_column", "'event_pos'", "neither numeric nor a parseable time")


def test_duplicate_positions_after_parsing(tmp_path):
    frame = user_table()
    text = frame["event_pos"].dt.strftime("%Y-%m-%d %H:%M:%S")
    # row 0's moment written another way on another row of the same user: one position
    other = np.flatnonzero(frame["user_id"].eq(frame["user_id"].iloc[0]).to_numpy())[1]
    text.iloc[other] = frame["event_pos"].iloc[0].strftime("%Y-%m-%dT%H:%M:%S")
    frame["event_pos"] = text
    path = write_input(frame, tmp_path / "in" / "events.parquet", "parquet")
    expect_error(tmp_path, config(tmp_path, path, read_format="parquet", sequence_id_column="user_id",
                                  position_column="event_pos"),
                 "position_column", "duplicate (user_id, event_pos) pairs", "events.parquet")


def test_column_types_read_a_column_as_asked(tmp_path):
    frame = long_table()
    frame["when"] = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(len(frame)), unit="h")
    frame["score"] = np.round(np.linspace(0, 2, len(frame)), 1)
    path = write_input(frame, tmp_path / "items.csv")
    metadata = run_preprocess(config(tmp_path, path, column_types={
        "code": "real", "when": "real", "score": "categorical"}))
    assert metadata.column_types["code"] == "real" and metadata.column_types["when"] == "real"
    assert metadata.column_types["score"] == "categorical" and "1.5" in metadata.id_maps["score"]
    rebuilt = rebuild_long_table(tmp_path, "items")
    want = frame.sort_values(["sequenceId", "itemPosition"]).reset_index(drop=True)
    np.testing.assert_allclose(rebuilt["code"], want["code"], rtol=1e-6)
    seconds = (want["when"] - pd.Timestamp("1970-01-01")).dt.total_seconds()
    np.testing.assert_allclose(rebuilt["when"], seconds, rtol=1e-6)  # windows hold float32


def test_column_types_bad_input(tmp_path):
    path = write_input(long_table(), tmp_path / "in" / "items.csv")
    expect_error(tmp_path, config(tmp_path, path, column_types={"colour": "real"}),
                 "column_types.colour", "cannot be read as real", "items.csv")
    expect_error(tmp_path, config(tmp_path, path, column_types={"colr": "real"}),
                 "column_types.colr: no such column")
