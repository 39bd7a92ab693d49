"""split_method: between_sequences puts whole sequences into the splits."""

import numpy as np
import pytest
from helpers.preprocess_data import config, load_splits, long_table, write_input

from sequifier.data.preprocess import run_preprocess
from sequifier.data.splits import assign_sequences
from sequifier.errors import SequifierError

LENGTHS = tuple(range(3, 43))  # 40 sequences of 3..42 items


def run(tmp_path, name="items", **settings):
    path = write_input(long_table(lengths=LENGTHS), tmp_path / f"{name}.csv")
    return run_preprocess(config(tmp_path, path, **settings))


def sequences_per_split(root, metadata):
    return [set(np.unique(w.sequence_id).tolist()) for w in load_splits(root, metadata)]


def test_no_sequence_appears_in_two_splits(tmp_path):
    metadata = run(tmp_path, split_method="between_sequences")
    assert metadata.split_method == "between_sequences"
    splits = sequences_per_split(tmp_path, metadata)
    for i in range(len(splits)):
        for j in range(i + 1, len(splits)):
            assert not splits[i] & splits[j]
    assert set().union(*splits) == set(range(len(LENGTHS)))
    # 40 sequences cut 0.6 / 0.2 / 0.2
    assert [len(s) for s in splits] == [24, 8, 8]
    # whole sequences: every window starts a sequence's item run from its own beginning
    for windows in load_splits(tmp_path, metadata):
        assert (windows.target_start == windows.padding).all()


def test_within_sequence_is_the_default_and_shares_sequences(tmp_path):
    metadata = run(tmp_path)
    assert metadata.split_method == "within_sequence"
    splits = sequences_per_split(tmp_path, metadata)
    assert splits[0] & splits[1]


def test_assignment_is_deterministic_by_seed(tmp_path):
    a = sequences_per_split(tmp_path / "a", run(tmp_path / "a", split_method="between_sequences", seed=3))
    b = sequences_per_split(tmp_path / "b", run(tmp_path / "b", split_method="between_sequences", seed=3,
                                               n_cores=2))
    c = sequences_per_split(tmp_path / "c", run(tmp_path / "c", split_method="between_sequences", seed=4))
    assert a == b and a != c
    np.testing.assert_array_equal(assign_sequences(40, [0.6, 0.2, 0.2], 3), assign_sequences(40, [0.6, 0.2, 0.2], 3))


def test_statistics_come_from_the_training_sequences_only(tmp_path):
    frame = long_table(lengths=LENGTHS)
    path = write_input(frame, tmp_path / "items.csv")
    metadata = run_preprocess(config(tmp_path, path, split_method="between_sequences"))
    train = sorted(sequences_per_split(tmp_path, metadata)[0])
    values = frame.loc[frame["sequenceId"].isin(train), "value"]
    stats = metadata.selected_columns_statistics["value"]
    assert stats["mean"] == pytest.approx(values.mean())
    assert stats["std"] == pytest.approx(values.std(ddof=0))


def test_unknown_split_method(tmp_path):
    with pytest.raises(SequifierError, match="split_method: 'by_user' is not one of within_sequence, between_sequences"):
        run(tmp_path, split_method="by_user")
