"""split_method: leave_last_out - the last n items of every sequence are the test split,
the n before validation, each a target with its history as context."""

import logging
import os

import numpy as np
import pytest
from helpers.preprocess_data import config, load_splits, long_table, write_input

from sequifier.data.preprocess import run_preprocess
from sequifier.data.splits import leave_last_out_bounds
from sequifier.data.windows import first_predicted_slot
from sequifier.errors import SequifierError
from sequifier.gate import validate

LENGTHS = (23, 3, 9, 40, 1, 12, 2, 5)
SEQ_LENGTH = 4


def run(tmp_path, lengths=LENGTHS, **settings):
    frame = long_table(lengths=lengths)
    path = write_input(frame, tmp_path / "items.csv")
    values = {"split_method": "leave_last_out", "split_ratios": [0.8, 0.1, 0.1], "stride_by_split": None}
    values.update(settings)
    return frame, run_preprocess(config(tmp_path, path, **values))


def predicted(windows):
    """{(sequence, position): positions of its context} of every item the split predicts."""
    first = first_predicted_slot(windows)
    out = {}
    for w in range(len(windows)):
        for slot in range(int(first[w]), windows.window_length):
            context = windows.item_position[w, :slot]
            out[int(windows.sequence_id[w]), int(windows.item_position[w, slot])] = context[context >= 0].tolist()
    return out


@pytest.mark.parametrize("holdout", [None, 2])
def test_the_last_items_are_test_the_ones_before_validation_with_their_history(tmp_path, holdout, caplog):
    settings = {} if holdout is None else {"holdout_items": holdout}
    with caplog.at_level(logging.INFO):
        frame, metadata = run(tmp_path, **settings)
    n = holdout or 1
    assert metadata.split_method == "leave_last_out"
    splits = load_splits(tmp_path, metadata)
    positions = {s: sorted(g["itemPosition"]) for s, g in frame.groupby("sequenceId")}
    long_enough = {s for s, p in positions.items() if len(p) >= 2 * n + 1}
    for k, held in ((2, slice(-n, None)), (1, slice(-2 * n, -n))):
        got = predicted(splits[k])
        want = {(s, p) for s in long_enough for p in positions[s][held]}
        assert set(got) == want  # every held-out item is a target once, nothing else
        for (s, p), context in got.items():
            before = [q for q in positions[s] if q < p]
            assert context == before[-SEQ_LENGTH:]  # its history, up to seq_length items
    # training keeps the rest of each sequence, and every item of a sequence too short
    train = splits[0]
    in_train = {(int(s), int(p)) for s, row in zip(train.sequence_id, train.item_position) for p in row if p >= 0}
    for s, p in positions.items():
        kept = p if s not in long_enough else p[:-2 * n]
        assert {q for (t, q) in in_train if t == s} == set(kept)
    short = len(LENGTHS) - len(long_enough)
    assert (f"{short} of {len(LENGTHS)} sequences have fewer than {2 * n + 1} items and go to training whole"
            in caplog.text)


def test_two_splits_hold_out_test_only_and_statistics_come_from_training_rows(tmp_path):
    frame, metadata = run(tmp_path, split_ratios=[0.9, 0.1])
    assert len(metadata.split_paths) == 2
    test = predicted(load_splits(tmp_path, metadata)[1])
    ordered = frame.sort_values(["sequenceId", "itemPosition"])
    last = ordered.groupby("sequenceId").tail(1)
    assert set(test) == {(s, p) for s, p, n in zip(last.sequenceId, last.itemPosition,
                                                   last.sequenceId.map(ordered.groupby("sequenceId").size()))
                         if n >= 2}
    counts = ordered.groupby("sequenceId").cumcount(ascending=False)
    sizes = ordered.sequenceId.map(ordered.groupby("sequenceId").size())
    train_values = ordered.loc[(counts >= 1) | (sizes < 2), "value"]
    assert metadata.selected_columns_statistics["value"]["mean"] == pytest.approx(train_values.mean())


def test_bounds_are_vectorised_and_short_sequences_stay_whole():
    bounds = leave_last_out_bounds(np.array([10, 3, 2, 0]), 3, 1)
    assert bounds.tolist() == [[0, 8, 9, 10], [0, 1, 2, 3], [0, 2, 2, 2], [0, 0, 0, 0]]


@pytest.mark.parametrize("settings, message", [
    ({"split_method": "within_sequence", "holdout_items": 2},
     "holdout_items: only used by split_method: leave_last_out (it is 'within_sequence'); remove "
     "holdout_items or set split_method: leave_last_out"),
    ({"holdout_items": 0}, "holdout_items: must be >= 1, got 0"),
    ({"split_ratios": [0.7, 0.1, 0.1, 0.1], "stride_by_split": None},
     "split_ratios: leave_last_out makes 2 splits (training, test) or 3 (training, validation, test), "
     "got 4; e.g. split_ratios: [0.8, 0.1, 0.1]"),
])
def test_bad_holdout_settings_are_one_line(tmp_path, settings, message):
    values = {"split_method": "leave_last_out", "split_ratios": [0.8, 0.1, 0.1], "stride_by_split": None}
    values.update(settings)
    with pytest.raises(SequifierError) as error:
        validate("preprocess", config(tmp_path, tmp_path / "x.csv", **values))
    assert str(error.value) == message


def test_holdout_too_large_for_every_sequence_is_one_line_and_writes_nothing(tmp_path):
    with pytest.raises(SequifierError) as error:
        run(tmp_path, holdout_items=20)
    assert str(error.value) == (
        "holdout_items: 20 is too large for every sequence: leave_last_out with 3 splits needs sequences "
        "of at least 41 items, and the longest has 40; use holdout_items: 19 or fewer")
    assert not os.path.exists(tmp_path / "configs" / "metadata_configs")
    assert not (tmp_path / "data").exists()  # no split, no work folder
