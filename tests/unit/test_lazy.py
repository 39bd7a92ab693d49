"""Lazy shard loading: bounded cache, every window once per epoch, rank/worker split."""

import numpy as np
import pytest

from sequifier.data.lazy import (
    GB,
    LazyWindowLoader,
    Piece,
    PieceCache,
    batch_sizes,
    batches_per_worker,
    plan_pieces,
    split_range,
    windows_nbytes,
)
from sequifier.data.window_files import split_files
from sequifier.data.windows import Windows, write_shards
from sequifier.errors import SequifierError

L = 5  # window length (seq_length + 1)
TYPES = {"itemId": "categorical", "itemValue": "real"}


def make_shards(folder, n_windows, per_shard):
    """Shards whose windows carry their global index in sequenceId and itemId."""
    idx = np.arange(n_windows, dtype=np.int64)
    windows = Windows(idx, np.zeros_like(idx), np.zeros_like(idx),
                      np.tile(np.arange(L), (n_windows, 1)),
                      {"itemId": np.repeat(idx[:, None], L, axis=1),
                       "itemValue": np.random.default_rng(0).normal(size=(n_windows, L))})
    write_shards(windows, str(folder), "d-split0", per_shard, TYPES)
    return str(folder)


def seen_ids(loader):
    return np.concatenate([b["sequenceId"].numpy() for b in loader])


def test_split_files_count_shard_windows(tmp_path):
    folder = make_shards(tmp_path / "d", 23, 10)
    assert [f.n_windows for f in split_files(folder, "pt")] == [10, 10, 3]


def test_split_range_is_contiguous_balanced_and_complete():
    pieces = [Piece(0, 0, 10), Piece(1, 0, 10), Piece(2, 0, 3)]
    parts = split_range(pieces, 3)
    sizes = [sum(len(p) for p in part) for part in parts]
    assert sizes == [7, 8, 8]
    rows = [(p.shard, r) for part in parts for p in part for r in range(p.start, p.stop)]
    assert rows == [(s, r) for p in pieces for s, r in [(p.shard, r) for r in range(p.stop)]]


def test_batch_sizes_full_first_then_tail():
    assert batch_sizes(10, 3, 4).tolist() == [4, 4, 2]
    assert batch_sizes(8, 3, 4).tolist() == [4, 3, 1]  # one more batch than natural
    assert batch_sizes(8, 2, 4).tolist() == [4, 4]


def test_every_rank_gets_the_same_number_of_batches():
    counts = np.array([10, 10, 10, 1])  # 31 windows: ranks get 15 and 16
    plan = plan_pieces(counts, world_size=2, workers=2)
    per_worker = batches_per_worker(plan, batch_size=4)
    assert per_worker.sum(axis=1).tolist()[0] == per_worker.sum(axis=1).tolist()[1]


def test_cache_evicts_least_recently_used_within_budget(tmp_path):
    folder = make_shards(tmp_path / "d", 40, 10)
    paths = split_files(folder, "pt")
    one = windows_nbytes(PieceCache(paths, ["itemId"], TYPES, GB).get(Piece(0, 0, 10)))
    cache = PieceCache(paths, ["itemId"], TYPES, max_bytes=2.5 * one)
    for s in (0, 1, 0, 2, 3):  # 0 is used again before 2 and 3 arrive, so 1 goes first
        cache.get(Piece(s, 0, 10))
    assert cache.loads == 4 and cache.hits == 1
    assert cache.peak_bytes <= 3 * one and cache.bytes <= 2.5 * one
    cache.get(Piece(3, 0, 10))
    assert cache.loads == 4  # still cached
    cache.get(Piece(1, 0, 10))
    assert cache.loads == 5  # was evicted


def test_cache_reads_only_the_requested_columns_and_rows(tmp_path):
    folder = make_shards(tmp_path / "d", 20, 10)
    w = PieceCache(split_files(folder, "pt"), ["itemId"], TYPES, GB).get(Piece(1, 2, 5))
    assert list(w.values) == ["itemId"]
    assert w.sequence_id.tolist() == [12, 13, 14]


def test_missing_column_is_a_user_error(tmp_path):
    folder = make_shards(tmp_path / "d", 20, 10)
    with pytest.raises(SequifierError, match="no column"):
        PieceCache(split_files(folder, "pt"), ["sup1"], TYPES, GB).get(Piece(0, 0, 10))


@pytest.mark.parametrize("shuffle", [True, False])
def test_epoch_sees_every_window_once_with_bounded_memory(tmp_path, shuffle):
    folder = make_shards(tmp_path / "d", 200, 10)  # 20 shards
    shard_bytes = windows_nbytes(PieceCache(split_files(folder, "pt"), ["itemId", "itemValue"], TYPES, GB)
                                 .get(Piece(0, 0, 10)))
    budget = 3 * shard_bytes  # far below the 20 shards of the split
    loader = LazyWindowLoader(folder, ["itemId", "itemValue"], batch_size=8, shuffle=shuffle,
                              max_ram_gb=budget / GB)
    for epoch in range(2):
        loader.set_epoch(epoch)
        ids = seen_ids(loader)
        assert np.sort(ids).tolist() == list(range(200))
        assert len(ids) == 200
    # Bounded: never more than the budget plus the piece being loaded.
    assert loader.cache.peak_bytes <= budget + shard_bytes
    assert loader.cache.loads >= 20  # data was read on demand, not all at once


def test_batches_carry_matching_rows_across_columns(tmp_path):
    folder = make_shards(tmp_path / "d", 50, 10)
    loader = LazyWindowLoader(folder, ["itemId"], batch_size=7, seed=3)
    loader.set_epoch(1)
    for b in loader:
        assert (b["columns"]["itemId"][:, 0] == b["sequenceId"]).all()
        assert b["columns"]["itemId"].shape[1] == L


def test_shuffle_changes_order_between_epochs_but_is_reproducible(tmp_path):
    folder = make_shards(tmp_path / "d", 60, 10)
    loader = LazyWindowLoader(folder, ["itemId"], batch_size=8, seed=5)
    orders = []
    for epoch in (0, 1, 0):
        loader.set_epoch(epoch)
        orders.append(seen_ids(loader).tolist())
    assert orders[0] != orders[1] and orders[0] == orders[2]
    assert orders[0] != sorted(orders[0])


def test_num_workers_processes_see_every_window_once(tmp_path):
    folder = make_shards(tmp_path / "d", 90, 10)
    loader = LazyWindowLoader(folder, ["itemId"], batch_size=8, num_workers=2, max_ram_gb=1e-5)
    for epoch in range(2):  # persistent workers must pick up the new epoch
        loader.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == len(loader)
        ids = np.concatenate([b["sequenceId"].numpy() for b in batches])
        assert np.sort(ids).tolist() == list(range(90))
        if epoch == 0:
            first = ids.tolist()
    assert ids.tolist() != first


def test_ranks_split_the_windows_and_make_equal_batch_counts(tmp_path):
    folder = make_shards(tmp_path / "d", 73, 10)
    loaders = [LazyWindowLoader(folder, ["itemId"], batch_size=8, rank=r, world_size=2)
               for r in range(2)]
    ids = []
    for lo in loaders:
        lo.set_epoch(0)
        batches = list(lo)
        assert len(batches) == len(lo)
        ids.append(np.concatenate([b["sequenceId"].numpy() for b in batches]))
    assert len(loaders[0]) == len(loaders[1])
    assert not set(ids[0]) & set(ids[1])
    assert np.sort(np.concatenate(ids)).tolist() == list(range(73))
    # each rank reads its own shards (only the boundary shard is shared)
    shards = [set((i // 10).tolist()) for i in ids]
    assert len(shards[0] & shards[1]) <= 1


def test_not_a_shard_folder_is_a_user_error(tmp_path):
    with pytest.raises(SequifierError, match="not found"):
        LazyWindowLoader(str(tmp_path / "nope"), ["itemId"], batch_size=4)
    with pytest.raises(SequifierError, match="too few windows"):
        LazyWindowLoader(make_shards(tmp_path / "d", 3, 10), ["itemId"], batch_size=4,
                         world_size=4)
