"""max_ram_gb: inputs larger than the budget are read in chunks of whole sequences, and
the outputs are byte for byte those of reading them whole."""

import glob
import os

import numpy as np
import pandas as pd
import pytest
from helpers.preprocess_data import config, long_table, rebuild_long_table, sorted_table, write_input

from sequifier.data import budget, partition, preprocess
from sequifier.errors import SequifierError


def output_bytes(root, name="items"):
    """Every output file of dataset `name` (splits, shards, metadata) -> its bytes."""
    paths = sorted(glob.glob(str(root / "data" / f"{name}-split*")))
    paths += sorted(glob.glob(str(root / "data" / f"{name}-split*" / "*")))
    paths.append(str(root / "configs" / "metadata_configs" / f"{name}.json"))
    out = {}
    for path in paths:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            out[os.path.relpath(path, root)] = data
    return out


def make_inputs_exceed_the_budget(monkeypatch) -> list:
    """Tiny inputs count as too large for the budget, so they are partitioned; returns
    the list that records into how many buckets each input was cut."""
    monkeypatch.setattr(budget, "READ_COST", 1e6)
    monkeypatch.setattr(partition, "CSV_BLOCK_BYTES", 512)  # several CSV blocks per file
    monkeypatch.setattr(partition, "BATCH_ROWS", 7)  # several parquet batches per file
    cuts = []
    real = partition.partition_file

    def spy(*args):
        paths = real(*args)
        cuts.append(len(paths))
        return paths

    monkeypatch.setattr(partition, "partition_file", spy)
    return cuts


@pytest.fixture
def chunking(monkeypatch):
    return make_inputs_exceed_the_budget(monkeypatch)


def run_both(tmp_path, monkeypatch, data_path, **overrides):
    """Preprocess `data_path` whole and in chunks (in two project folders, same dataset
    name); return both outputs and the cuts."""
    data_path = str(tmp_path / data_path)
    preprocess.run_preprocess(config(tmp_path / "whole", data_path, dataset_name="items", **overrides))
    cuts = make_inputs_exceed_the_budget(monkeypatch)
    preprocess.run_preprocess(config(tmp_path / "chunked", data_path, dataset_name="items", **overrides))
    return output_bytes(tmp_path / "whole"), output_bytes(tmp_path / "chunked"), cuts


def test_unsorted_csv_in_chunks_gives_the_same_bytes(tmp_path, monkeypatch):
    frame = long_table(lengths=tuple(range(1, 60)), seed=4)  # shuffled rows
    # a column that reads as integers in the first CSV block and needs floats later, and
    # one that turns into text: the chunked reader must widen them as reading whole does
    n = len(frame)
    frame["late_float"] = pd.Series([1] * (n - 4) + [2.5] * 4, dtype=object)
    frame["late_text"] = pd.Series([3] * (n - 1) + ["x"], dtype=object)
    write_input(frame, tmp_path / "items.csv")
    whole, chunked, cuts = run_both(tmp_path, monkeypatch, "items.csv")
    assert cuts and cuts[0] > 3
    assert whole == chunked
    assert len(whole) == 4


def test_sorted_parquet_with_text_ids_in_chunks_gives_the_same_bytes(tmp_path, monkeypatch):
    frame = sorted_table(long_table(lengths=tuple(range(3, 40)), seed=5))
    frame["sequenceId"] = "user-" + frame["sequenceId"].astype(str)  # text ids, sorted as text
    frame = frame.sort_values(["sequenceId", "itemPosition"])
    write_input(frame, tmp_path / "items.parquet", fmt="parquet")
    whole, chunked, cuts = run_both(tmp_path, monkeypatch, "items.parquet", read_format="parquet",
                                    write_format="csv")
    assert cuts and cuts[0] > 3
    assert whole == chunked


def test_folder_between_sequences_pt_with_missing_values_in_chunks(tmp_path, monkeypatch):
    frame = long_table(lengths=tuple(range(2, 50)), seed=6)
    frame.loc[frame.index % 7 == 0, "value"] = np.nan
    frame.loc[frame.index % 11 == 0, "colour"] = None
    for i in range(2):
        write_input(frame[frame["sequenceId"] % 2 == i], tmp_path / "in" / f"part{i}.csv")
    whole, chunked, cuts = run_both(
        tmp_path, monkeypatch, "in", write_format="pt", merge_output=False, batches_per_file=8,
        split_method="between_sequences", missing_values={"value": "fill", "colour": "fill"})
    assert len(cuts) == 2 and min(cuts) > 2
    assert whole == chunked
    assert sum(".pt" in name for name in whole) > 3


def test_chunked_round_trip_and_work_folder_removed(tmp_path, chunking):
    frame = long_table(lengths=tuple(range(1, 30)), seed=7)
    write_input(frame, tmp_path / "items.csv")
    preprocess.run_preprocess(config(tmp_path, "items.csv"))
    assert chunking and chunking[0] > 1
    pd.testing.assert_frame_equal(rebuild_long_table(tmp_path, "items")[frame.columns],
                                  sorted_table(frame), check_dtype=False, atol=1e-5)
    assert not (tmp_path / "data" / ".items-preprocess-work").exists()


def test_numbers_as_text_are_found_across_chunks(tmp_path, chunking):
    frame = long_table(lengths=tuple(range(5, 30)), seed=8)
    frame["weight"] = [f"{v:.1f}" for v in np.arange(len(frame)) / 10]
    frame.loc[3, "weight"] = "3 kg"
    write_input(frame, tmp_path / "items.parquet", fmt="parquet")
    with pytest.raises(SequifierError, match="column 'weight' holds numbers but 1 distinct"):
        preprocess.run_preprocess(config(tmp_path, "items.parquet", read_format="parquet"))
    assert chunking and chunking[0] > 1
    assert not glob.glob(str(tmp_path / "data" / "items-split*"))
    assert not (tmp_path / "data" / ".items-preprocess-work").exists()  # chunks and caches gone


def test_resume_reuses_the_chunks_of_a_partitioned_input(tmp_path, chunking, monkeypatch):
    frame = long_table(lengths=tuple(range(4, 30)), seed=9)
    good = write_input(frame[frame["sequenceId"] % 2 == 0], tmp_path / "in" / "a.csv")
    bad = frame[frame["sequenceId"] % 2 == 1].copy()
    bad.loc[bad.index[0], "value"] = np.nan
    write_input(bad, tmp_path / "in" / "b.csv")
    with pytest.raises(SequifierError, match="b.csv"):
        preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True))
    write_input(frame[frame["sequenceId"] % 2 == 1], tmp_path / "in" / "b.csv")
    partitioned = []
    real = partition.partition_file
    monkeypatch.setattr(partition, "partition_file",
                        lambda path, *a: partitioned.append(os.path.basename(path)) or real(path, *a))
    preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True))
    assert partitioned == ["b.csv"]
    assert good
    pd.testing.assert_frame_equal(rebuild_long_table(tmp_path, "in")[frame.columns],
                                  sorted_table(frame), check_dtype=False, atol=1e-5)


def test_budget_too_small_for_one_sequence_names_the_field(tmp_path):
    n = 300_000
    frame = pd.DataFrame({"sequenceId": np.zeros(n, dtype=np.int64), "itemPosition": np.arange(n),
                          "value": np.arange(n) / n, "code": np.arange(n) % 5})
    write_input(frame, tmp_path / "long.parquet", fmt="parquet")
    cfg = config(tmp_path, "long.parquet", read_format="parquet", seq_length=48,
                 split_ratios=[1.0], stride_by_split=[1], max_ram_gb=0.5)
    with pytest.raises(SequifierError, match=r"^max_ram_gb: 0.5 GB is too small for the windows "
                                             r"of sequence 0 \(300000 items"):
        preprocess.run_preprocess(cfg)
    assert not glob.glob(str(tmp_path / "data" / "long-split*"))


def test_budget_without_room_for_the_processes_is_refused_before_reading(tmp_path):
    with pytest.raises(SequifierError, match=r"max_ram_gb: 0.1 GB leaves no room for data: "
                                             r"the run's 3 processes \(n_cores: 2\)"):
        preprocess.run_preprocess(config(tmp_path, "missing.csv", max_ram_gb=0.1, n_cores=2))


@pytest.mark.parametrize("write_format", ["parquet", "csv", "pt", "parquet shards"])
def test_splits_read_back_in_pieces_give_the_same_bytes(tmp_path, monkeypatch, write_format):
    frame = long_table(lengths=tuple(range(1, 40)), seed=10)
    data_path = write_input(frame, tmp_path / "items.csv")
    sharded = write_format in ("pt", "parquet shards")
    write_format = write_format.split()[0]
    options = {"write_format": write_format, "merge_output": not sharded,
               "batches_per_file": 5, "dataset_name": "items"}
    preprocess.run_preprocess(config(tmp_path / "whole", data_path, **options))
    real = budget.Budget.write_piece_windows
    asked = []
    monkeypatch.setattr(budget.Budget, "write_piece_windows",
                        lambda self, b: asked.append(real(self, b)) or 15)  # 3 shards / 15 rows at once
    preprocess.run_preprocess(config(tmp_path / "pieces", data_path, **options))
    assert asked and min(asked) > 1000  # the real budget reads each split back at once
    whole, in_pieces = output_bytes(tmp_path / "whole"), output_bytes(tmp_path / "pieces")
    if write_format == "parquet" and not sharded:  # 15-row row groups: same content, other layout
        from sequifier.data.window_files import read_windows

        types = {"colour": "categorical", "code": "categorical", "value": "real"}
        for split in (k for k in whole if k.endswith(".parquet")):
            a = read_windows(str(tmp_path / "whole" / split), "parquet", types)
            b = read_windows(str(tmp_path / "pieces" / split), "parquet", types)
            for field in ("sequence_id", "subsequence_id", "padding", "target_start", "item_position"):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
            for c in types:
                np.testing.assert_array_equal(a.values[c], b.values[c])
        whole = {k: v for k, v in whole.items() if not k.endswith(".parquet")}
        in_pieces = {k: v for k, v in in_pieces.items() if not k.endswith(".parquet")}
    assert whole == in_pieces
    assert len(whole) >= (4 if sharded or write_format == "csv" else 1)


def legacy_bytes(windows, path, write_format, fingerprint, row_group_rows=None):
    """The file of the earlier writer: pandas' frame of the whole split, written at once."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    from sequifier.data.windows import FINGERPRINT_KEY, windows_to_frame

    table = pa.Table.from_pandas(windows_to_frame(windows), preserve_index=False)
    if write_format == "parquet":
        table = table.replace_schema_metadata({**table.schema.metadata,
                                               FINGERPRINT_KEY.encode(): fingerprint.encode()})
        pq.write_table(table, path, row_group_size=row_group_rows)
    else:
        pa_csv.write_csv(table, path)
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("write_format", ["parquet", "csv"])
@pytest.mark.parametrize("n", [0, 1, 23])
def test_tabular_writer_writes_the_bytes_of_pandas_frame(tmp_path, write_format, n):
    from sequifier.data.windows import Windows, write_tabular, write_windows

    rng = np.random.default_rng(n)
    width = 5
    windows = Windows(np.arange(n) // 3, np.arange(n) % 3, rng.integers(0, 3, n),
                      rng.integers(-1, 50, size=(n, width)),
                      {"a": rng.integers(2, 9, size=(n, width)), "b": rng.normal(size=(n, width))},
                      rng.integers(0, 4, n))
    new = str(tmp_path / f"new.{write_format}")
    write_windows(windows, new, write_format, "f00d")
    with open(new, "rb") as f:
        assert f.read() == legacy_bytes(windows, str(tmp_path / f"old.{write_format}"), write_format, "f00d")
    if write_format == "parquet" and n:  # several row groups, gathered across blocks
        def read(block, lo, hi):
            values = windows.item_position if block == "itemPosition" else windows.values[block]
            return {"sequenceId": windows.sequence_id[lo:hi], "subsequenceId": windows.subsequence_id[lo:hi],
                    "padding": windows.padding[lo:hi], "targetStart": windows.target_start[lo:hi]}, values[lo:hi]

        write_tabular(n, ["itemPosition", "a", "b"], width, read, new, "parquet", "f00d", row_group_rows=10)
        with open(new, "rb") as f:
            assert f.read() == legacy_bytes(windows, str(tmp_path / "old10.parquet"), "parquet", "f00d", 10)


@pytest.mark.parametrize("row", ["", "Row #2002: "])
def test_csv_widening_reads_the_error_with_and_without_a_row_number(tmp_path, row):
    """pyarrow's serial CSV reader puts the row into its conversion error; the column to
    widen must be found either way (it failed as an unreadable file under load)."""
    import pyarrow as pa

    path = tmp_path / "items.csv"
    path.write_text("sequenceId,late_float\n1,1\n1,2.5\n")
    error = pa.ArrowInvalid(f"In CSV column #1: {row}CSV conversion error to int64: invalid value '2.5'")
    types = partition._widened(error, str(path), ["sequenceId", "late_float"], {},
                               pa.schema([("late_float", pa.int64())]))
    assert types == {"late_float": pa.float64()}
