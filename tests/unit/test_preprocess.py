"""`run_preprocess` end to end on tiny tables: outputs, metadata, round trip, options."""

import glob
import io
import logging
import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from helpers.preprocess_data import (
    config,
    load_splits,
    long_table,
    rebuild_long_table,
    sorted_table,
    write_input,
)

from sequifier.config.metadata import read_metadata
from sequifier.config.schema import PAD_ID
from sequifier.data import preprocess, window_spool
from sequifier.data.progress import Progress
from sequifier.data.splits import segment_bounds
from sequifier.data.window_files import read_windows, split_files
from sequifier.errors import SequifierError


@pytest.mark.parametrize("read_format", ["csv", "parquet"])
@pytest.mark.parametrize("write_format", ["parquet", "csv", "pt"])
def test_round_trip_rebuilds_the_original_table(tmp_path, read_format, write_format):
    frame = long_table()
    path = write_input(frame, tmp_path / "in" / f"items.{read_format}", read_format)
    metadata = preprocess.run_preprocess(config(
        tmp_path, path, read_format=read_format, write_format=write_format,
        merge_output=write_format != "pt"))
    rebuilt = rebuild_long_table(tmp_path, "items")
    expected = sorted_table(frame)
    pd.testing.assert_frame_equal(rebuilt[expected.columns], expected, check_dtype=False,
                                  atol=1e-5, rtol=1e-5)
    assert metadata.column_types == {"colour": "categorical", "code": "categorical",
                                     "value": "real"}
    assert metadata.original_dtypes == {"colour": "str", "code": "int64"}
    assert not os.path.exists(tmp_path / "data" / ".items-preprocess-work")


def test_outputs_and_metadata_layout(tmp_path):
    path = write_input(long_table(), tmp_path / "in" / "items.csv")
    metadata = preprocess.run_preprocess(config(tmp_path, "in/items.csv"))
    assert metadata.split_paths == [f"data/items-split{k}.parquet" for k in range(3)]
    assert all(os.path.isfile(tmp_path / p) for p in metadata.split_paths)
    on_disk = read_metadata(str(tmp_path / "configs" / "metadata_configs" / "items.json"))
    assert on_disk == metadata
    assert metadata.split_ratios == [0.6, 0.2, 0.2] and metadata.stride_by_split == [2, 3, 5]
    # relative data_path resolves against project_root; the name comes from its stem
    assert path.endswith("items.csv") and metadata.name == "items"


def test_id_maps_reserve_pad_and_unknown_and_sort_values(tmp_path):
    write_input(long_table(), tmp_path / "items.csv")
    metadata = preprocess.run_preprocess(config(tmp_path, "items.csv"))
    assert metadata.id_maps["colour"] == {"blue": 2, "green": 3, "grey": 4, "red": 5}
    # integers sort numerically, not as strings
    assert metadata.id_maps["code"] == {"7": 2, "9": 3, "30": 4, "100": 5}
    assert metadata.n_classes == {"colour": 6, "code": 6}


def test_id_maps_stable_across_runs_and_row_orders(tmp_path):
    frame = long_table(seed=1)
    write_input(frame, tmp_path / "a" / "one.csv")
    write_input(frame.sample(frac=1.0, random_state=5), tmp_path / "b" / "one.csv")
    first = preprocess.run_preprocess(config(tmp_path, "a/one.csv", dataset_name="first"))
    second = preprocess.run_preprocess(config(tmp_path, "b/one.csv", dataset_name="second"))
    assert first.id_maps == second.id_maps
    a, b = load_splits(tmp_path, first), load_splits(tmp_path, second)
    for wa, wb in zip(a, b):
        np.testing.assert_array_equal(wa.values["colour"], wb.values["colour"])


def test_statistics_come_from_the_training_split(tmp_path):
    frame = long_table()
    write_input(frame, tmp_path / "items.csv")
    metadata = preprocess.run_preprocess(config(tmp_path, "items.csv"))
    table = sorted_table(frame)
    lengths = table.groupby("sequenceId").size().to_numpy()
    split0_end = segment_bounds(lengths, [0.6, 0.2, 0.2])[:, 1]
    within = table.groupby("sequenceId").cumcount().to_numpy()
    train = table["value"].to_numpy()[within < np.repeat(split0_end, lengths)]
    stats = metadata.selected_columns_statistics["value"]
    assert stats["mean"] == pytest.approx(train.mean())
    assert stats["std"] == pytest.approx(train.std())
    assert stats["mean"] != pytest.approx(table["value"].mean())


def test_windows_respect_split_segments_and_padding(tmp_path):
    frame = long_table()
    write_input(frame, tmp_path / "items.csv")
    metadata = preprocess.run_preprocess(config(tmp_path, "items.csv"))
    table = sorted_table(frame)
    lengths = table.groupby("sequenceId").size()
    bounds = segment_bounds(lengths.to_numpy(), [0.6, 0.2, 0.2])
    index_of = {sid: i for i, sid in enumerate(lengths.index)}
    for k, windows in enumerate(load_splits(tmp_path, metadata)):
        assert windows.window_length == 5
        rows = np.array([index_of[s] for s in windows.sequence_id])
        # item index within the sequence from the stored positions (5, 8, 11, ...)
        last_item = (windows.item_position[:, -1] - 5) // 3
        assert np.all(last_item >= bounds[rows, k]) and np.all(last_item < bounds[rows, k + 1])
        if k == 0:
            first_real = (windows.item_position[:, 0] - 5) // 3
            assert np.all((windows.padding > 0) | (first_real >= 0))
        pad = np.arange(5)[None, :] < windows.padding[:, None]
        assert np.all((windows.item_position == -1) == pad)
        assert np.all(windows.values["colour"][pad] == PAD_ID)
        assert np.all(windows.values["value"][pad] == 0.0)
    # the one-item sequence (id 4) has a single, fully padded-but-one window in split 2
    split2 = load_splits(tmp_path, metadata)[2]
    assert split2.padding[split2.sequence_id == 4].tolist() == [4]


def test_sequence_shorter_than_window_gives_one_padded_window(tmp_path):
    frame = long_table(lengths=(3,))
    write_input(frame, tmp_path / "short.csv")
    metadata = preprocess.run_preprocess(config(tmp_path, "short.csv", split_ratios=[1.0],
                                                stride_by_split=[1]))
    (windows,) = load_splits(tmp_path, metadata)
    assert len(windows) == 1 and windows.padding.tolist() == [2]
    assert windows.item_position.tolist() == [[-1, -1, 5, 8, 11]]


def test_exact_mode_accepts_dividing_stride(tmp_path):
    frame = long_table(lengths=(11, 5))  # segment of 11: (11 - 5) % 3 == 0
    write_input(frame, tmp_path / "even.csv")
    metadata = preprocess.run_preprocess(config(
        tmp_path, "even.csv", split_ratios=[1.0], stride_by_split=[3],
        subsequence_start_mode="exact"))
    (windows,) = load_splits(tmp_path, metadata)
    assert windows.subsequence_id.tolist() == [0, 1, 2, 0]
    assert ((windows.item_position[:, 0] - 5) // 3).tolist() == [0, 3, 6, 0]


def test_default_stride_is_seq_length(tmp_path):
    write_input(long_table(lengths=(40,)), tmp_path / "one.csv")
    metadata = preprocess.run_preprocess(config(tmp_path, "one.csv", split_ratios=[1.0],
                                                stride_by_split=None))
    assert metadata.stride_by_split == [4]
    (windows,) = load_splits(tmp_path, metadata)
    starts = (windows.item_position[:, 0] - 5) // 3
    # distribute: 10 windows spread evenly over the 35 possible start items
    assert starts.tolist() == [0, 4, 8, 12, 16, 19, 23, 27, 31, 35]


def test_selected_columns_and_max_rows(tmp_path):
    table = sorted_table(long_table())  # sequences of 23, 3, 9 | 40, 1, 12 items
    write_input(table[table["sequenceId"] < 3], tmp_path / "in" / "a.csv")
    write_input(table[table["sequenceId"] >= 3], tmp_path / "in" / "b.csv")
    # the row budget runs through the files in order: all 35 rows of a, 15 of b
    metadata = preprocess.run_preprocess(config(tmp_path, "in", selected_columns=["value", "code"],
                                                max_rows=50))
    assert list(metadata.column_types) == ["value", "code"]
    rebuilt = rebuild_long_table(tmp_path, "in")
    expected = table.iloc[:50].reset_index(drop=True)
    assert list(rebuilt.columns) == ["sequenceId", "itemPosition", "value", "code"]
    pd.testing.assert_frame_equal(rebuilt, expected[rebuilt.columns], check_dtype=False,
                                  atol=1e-5)


def test_pt_shards_hold_batches_per_file_windows(tmp_path):
    write_input(long_table(), tmp_path / "items.csv")
    cfg = config(tmp_path, "items.csv", write_format="pt", merge_output=False, batches_per_file=4)
    metadata = preprocess.run_preprocess(cfg)
    assert metadata.split_paths == ["data/items-split0", "data/items-split1", "data/items-split2"]
    shards = split_files(str(tmp_path / "data" / "items-split0"), "pt")
    names = [os.path.basename(s.path) for s in shards]
    assert names[:2] == ["items-split0-00000.pt", "items-split0-00001.pt"]
    sizes = [s.n_windows for s in shards]
    assert all(n == 4 for n in sizes[:-1]) and 1 <= sizes[-1] <= 4
    raw = torch.load(shards[0].path)
    assert raw["columns"]["colour"].dtype == torch.int64
    assert raw["columns"]["value"].dtype == torch.float32


@pytest.mark.parametrize("write_format", ["parquet", "csv"])
def test_sharded_tabular_output_holds_the_merged_windows(tmp_path, write_format):
    write_input(long_table(), tmp_path / "items.csv")
    merged = preprocess.run_preprocess(config(tmp_path, "items.csv", write_format=write_format,
                                              dataset_name="merged"))
    sharded = preprocess.run_preprocess(config(tmp_path, "items.csv", write_format=write_format,
                                               merge_output=False, batches_per_file=4,
                                               dataset_name="sharded"))
    assert sharded.split_paths[0] == "data/sharded-split0"
    files = split_files(str(tmp_path / "data/sharded-split0"), write_format)
    assert len(files) > 1 and all(f.n_windows <= 4 for f in files)
    for a, b in zip(merged.split_paths, sharded.split_paths):
        whole = read_windows(str(tmp_path / a), write_format, merged.column_types)
        parts = read_windows(str(tmp_path / b), write_format, sharded.column_types)
        order = np.lexsort((parts.subsequence_id, parts.sequence_id))
        np.testing.assert_array_equal(parts.item_position[order], whole.item_position)
        for c in whole.values:
            np.testing.assert_array_equal(parts.values[c][order], whole.values[c])


def test_seed_shuffles_pt_windows_reproducibly(tmp_path):
    write_input(long_table(lengths=(40, 30, 35)), tmp_path / "items.csv")

    def order(seed, name):
        metadata = preprocess.run_preprocess(config(tmp_path, "items.csv", write_format="pt",
                                                    merge_output=False, seed=seed, dataset_name=name))
        s = read_windows(str(tmp_path / "data" / f"{name}-split0"), "pt", metadata.column_types)
        return [(int(a), int(b)) for a, b in zip(s.sequence_id, s.subsequence_id)]

    a, again, other = order(1, "a"), order(1, "b"), order(2, "c")
    assert a == again and a != other and sorted(a) == sorted(other)


def test_n_cores_does_not_change_the_output(tmp_path, monkeypatch):
    # small tasks, so one and two workers cut the sequences into different chunks, and
    # worker processes even for tiny inputs
    monkeypatch.setattr(preprocess, "MIN_TASK_ROWS", 10)
    monkeypatch.setattr(preprocess, "PARALLEL_MIN_READ_BYTES", 0)
    monkeypatch.setattr(preprocess, "PARALLEL_MIN_WINDOW_ROWS", 0)
    frame = long_table(lengths=tuple(range(1, 30)), seed=3)
    for i in range(3):
        part = frame[frame["sequenceId"] % 3 == i]
        write_input(part, tmp_path / "in" / f"part{i}.csv")
    outputs = []
    for n_cores in (1, 2):
        name = f"cores{n_cores}"
        preprocess.run_preprocess(config(tmp_path, "in", n_cores=n_cores, dataset_name=name))
        outputs.append([pd.read_parquet(tmp_path / "data" / f"{name}-split{k}.parquet")
                        for k in range(3)])
    for one, two in zip(*outputs):
        pd.testing.assert_frame_equal(one, two)


def test_small_inputs_stay_in_the_main_process(tmp_path, monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("worker processes started for a tiny input")

    monkeypatch.setattr(preprocess, "ProcessPoolExecutor", no_pool)  # what Workers starts
    frame = long_table()
    for i in range(2):
        write_input(frame[frame["sequenceId"] % 2 == i], tmp_path / "in" / f"p{i}.csv")
    preprocess.run_preprocess(config(tmp_path, "in", n_cores=2))


def test_overwrite_protection(tmp_path):
    write_input(long_table(), tmp_path / "items.csv")
    preprocess.run_preprocess(config(tmp_path, "items.csv"))
    split0 = tmp_path / "data" / "items-split0.parquet"
    before = split0.stat().st_mtime_ns
    with pytest.raises(SequifierError, match="already exist.*overwrite: true"):
        preprocess.run_preprocess(config(tmp_path, "items.csv"))
    assert split0.stat().st_mtime_ns == before
    preprocess.run_preprocess(config(tmp_path, "items.csv", overwrite=True))
    assert split0.stat().st_mtime_ns != before


def test_failure_while_writing_leaves_no_partial_output(tmp_path, monkeypatch):
    write_input(long_table(), tmp_path / "items.csv")
    real_write = window_spool.write_tabular
    calls = []

    def failing_write(*args):
        calls.append(args)
        if len(calls) == 3:  # the third split
            raise OSError("disk full")
        real_write(*args)

    monkeypatch.setattr(window_spool, "write_tabular", failing_write)
    with pytest.raises(OSError):
        preprocess.run_preprocess(config(tmp_path, "items.csv"))
    assert glob.glob(str(tmp_path / "data" / "*split*")) == []
    assert glob.glob(str(tmp_path / "data" / ".tmp-*")) == []
    assert not os.path.exists(tmp_path / "configs" / "metadata_configs" / "items.json")


def test_continue_preprocessing_skips_finished_files(tmp_path, monkeypatch):
    frame = long_table(lengths=(10, 12, 14, 9, 11, 13))
    paths = [write_input(frame[frame["sequenceId"] % 3 == i], tmp_path / "in" / f"p{i}.csv")
             for i in range(3)]
    good_last = pd.read_csv(paths[2])
    broken = good_last.copy()
    broken.loc[0, "value"] = np.nan
    write_input(broken, paths[2])
    with pytest.raises(SequifierError, match="p2.csv"):  # without continue_preprocessing: nothing left
        preprocess.run_preprocess(config(tmp_path, "in"))
    work = tmp_path / "data" / ".in-preprocess-work"
    assert not work.exists()
    with pytest.raises(SequifierError, match="p2.csv"):  # asked to resume: the read caches stay
        preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True))
    assert sorted(os.listdir(work)) == ["p0.csv.arrow", "p1.csv.arrow", "settings.json"]

    write_input(good_last, paths[2])  # the user fixes the bad file and resumes
    read = []
    real_read = preprocess.read_table.read_raw_table
    monkeypatch.setattr(preprocess.read_table, "read_raw_table",
                        lambda path, *a: read.append(os.path.basename(path)) or real_read(path, *a))
    preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True))
    assert read == ["p2.csv"]
    assert not work.exists()
    pd.testing.assert_frame_equal(rebuild_long_table(tmp_path, "in")[frame.columns],
                                  sorted_table(frame), check_dtype=False, atol=1e-5)


def test_continue_preprocessing_rereads_changed_files_and_checks_settings(tmp_path, monkeypatch):
    frame = long_table(lengths=(10, 12))
    a = write_input(frame[frame["sequenceId"] == 0], tmp_path / "in" / "a.csv")
    write_input(frame[frame["sequenceId"] == 1].assign(value=np.nan), tmp_path / "in" / "b.csv")
    with pytest.raises(SequifierError):
        preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True))
    with pytest.raises(SequifierError, match="continue_preprocessing.*other settings"):
        preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True,
                                         selected_columns=["value"]))
    write_input(frame[frame["sequenceId"] == 1], tmp_path / "in" / "b.csv")
    write_input(frame[frame["sequenceId"] == 0].assign(value=1.5), a)  # changed since cached
    read = []
    real_read = preprocess.read_table.read_raw_table
    monkeypatch.setattr(preprocess.read_table, "read_raw_table",
                        lambda path, *a: read.append(os.path.basename(path)) or real_read(path, *a))
    preprocess.run_preprocess(config(tmp_path, "in", continue_preprocessing=True))
    assert sorted(read) == ["a.csv", "b.csv"]


def test_progress_lines_without_terminal_go_through_logging(tmp_path, caplog):
    write_input(long_table(), tmp_path / "items.csv")
    with caplog.at_level(logging.INFO, logger="sequifier"):
        preprocess.run_preprocess(config(tmp_path, "items.csv"))
    lines = [r.getMessage() for r in caplog.records if r.name == "sequifier.preprocess"]
    assert any(line.startswith("read files: 1/1") for line in lines), lines
    assert any(line.startswith("write splits: 3/3") for line in lines), lines
    assert any(line.startswith("wrote items windows") for line in lines), lines


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_on_terminal_keeps_log_lines_above_it(caplog):
    console = Terminal()
    handler = logging.StreamHandler(sys.stderr)  # a console handler, as Hydra's
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="sequifier"):
            progress = Progress(3, "build windows", stream=console)
            assert progress.bar is not None
            # while the bar is shown, the console handler writes through tqdm (above the bar)
            assert handler not in root.handlers
            progress.update()
            logging.getLogger("sequifier.preprocess").info("a line while the bar runs")
            progress.update(2)
            progress.close()
        assert handler in root.handlers  # the console handler is back after the bar
    finally:
        root.removeHandler(handler)
    assert "build windows" in console.getvalue()  # the bar
    assert any(r.getMessage().startswith("build windows: 3/3 done") for r in caplog.records)
