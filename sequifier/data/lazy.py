"""Lazy loading of a split's files: train on more windows than fit in RAM, and give
each DDP rank only its own part.

With `load_full_data_to_ram: false`, or under DDP, the windows stay on disk in the files
`preprocess` wrote (a parquet/csv file, or a folder of parquet/csv/`.pt` shards; see
`window_files.py`). This module plans each epoch from the files' window counts alone,
reads a piece of a file only when a batch needs it, and keeps loaded rows in an LRU
cache bounded by `max_ram_gb`.

How the windows of one split are divided (all of it is index arithmetic on the
per-file window counts, so every rank and worker computes the same plan):

* each file is cut into pieces of at most `piece_windows` windows (a quarter of one
  stream's budget), so a single large file is still read a part at a time;

* the windows, in file order, are cut into `world_size` contiguous ranges of equal size
  (+-1): rank r's *shard group*. It is the same every epoch, so each rank reads its own
  files (a file on a boundary is read by both neighbours, each its own rows);
* a rank's range is cut the same way into one part per loader worker (`num_workers`,
  or one part in-process when 0);
* per epoch, a worker visits its pieces in a shuffled order, shuffles the rows of each
  piece and cuts that stream into batches. Every window is seen exactly once per epoch.

Under DDP every rank must take the same number of optimizer steps or the gradient
all-reduce hangs; `batches_per_worker` gives all ranks the same count by splitting a
few batches where a rank has fewer windows (the last batches of a worker may be smaller
than `batch_size`).

Shuffling is per piece, not global: a batch holds windows of one or two shards. That is
the usual price of streaming data larger than RAM; write smaller shards in preprocess
(`batches_per_file`) for better mixing.

Memory: each worker holds at most `max_ram_gb / max(num_workers, 1)` of cached rows,
but never fewer than the piece in use and the one a batch straddles into; DataLoader
prefetching adds `2 * num_workers` batches.
"""

import copy
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from sequifier.data.window_files import WindowFile, read_rows, split_files
from sequifier.data.windows import TARGET_START_COLUMN, Windows
from sequifier.errors import SequifierError

logger = logging.getLogger(__name__)

GB = 1024**3


@dataclass(frozen=True)
class Piece:
    """Rows [start, stop) of shard number `shard` (file order)."""

    shard: int
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start


def windows_nbytes(w: Windows) -> int:
    arrays = [w.sequence_id, w.subsequence_id, w.target_start, w.item_position, *w.values.values()]
    return int(sum(a.nbytes for a in arrays))


class PieceCache:
    """Loaded pieces, least recently used evicted first once over `max_bytes`.

    The piece just requested is never evicted, so a budget smaller than one piece still
    works (holding one piece). `peak_bytes` and `loads` are kept for tests and logs.
    """

    def __init__(self, files: Sequence[WindowFile], columns: Sequence[str],
                 column_types: Dict[str, str], max_bytes: float):
        self.files = list(files)
        self.columns = list(columns)
        self.column_types = column_types
        self.max_bytes = max_bytes
        self._entries: "OrderedDict[Piece, Windows]" = OrderedDict()
        self._sizes: Dict[Piece, int] = {}
        self.bytes = 0
        self.peak_bytes = 0
        self.loads = 0
        self.hits = 0

    def get(self, piece: Piece) -> Windows:
        if piece in self._entries:
            self._entries.move_to_end(piece)
            self.hits += 1
            return self._entries[piece]
        windows = read_rows(self.files[piece.shard], piece.start, piece.stop, self.columns,
                            self.column_types)
        self.loads += 1
        self._entries[piece] = windows
        self._sizes[piece] = windows_nbytes(windows)
        self.bytes += self._sizes[piece]
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        while self.bytes > self.max_bytes and len(self._entries) > 1:
            old, _ = self._entries.popitem(last=False)
            self.bytes -= self._sizes.pop(old)
        return windows


def split_range(pieces: Sequence[Piece], parts: int) -> List[List[Piece]]:
    """Cut a sequence of pieces into `parts` contiguous runs of equal window count (+-1)."""
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    total = int(lengths.sum())
    bounds = (np.arange(parts + 1, dtype=np.int64) * total) // parts
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(pieces) else lengths
    out: List[List[Piece]] = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        # pieces overlapping the global range [lo, hi)
        first = int(np.searchsorted(starts + lengths, lo, side="right"))
        run = []
        for k in range(first, len(pieces)):
            s = int(starts[k])
            if s >= hi:
                break
            a, b = max(lo, s) - s, min(hi, s + lengths[k]) - s
            if b > a:
                p = pieces[k]
                run.append(Piece(p.shard, p.start + int(a), p.start + int(b)))
        out.append(run)
    return out


def plan_pieces(counts: np.ndarray, world_size: int, workers: int,
                piece_windows: Optional[int] = None) -> List[List[List[Piece]]]:
    """pieces[rank][worker]: the fixed division of a split over ranks and loader workers,
    files cut into pieces of at most `piece_windows` windows (None: whole files)."""
    whole = [Piece(i, start, int(min(start + (piece_windows or n), n)))
             for i, n in enumerate(counts) if n > 0
             for start in range(0, int(n), piece_windows or int(n))]
    return [split_range(group, workers) for group in split_range(whole, world_size)]


def batches_per_worker(plan: List[List[List[Piece]]], batch_size: int) -> np.ndarray:
    """Batches each worker of each rank makes, so that all ranks make the same total.

    A rank's natural count is sum(ceil(windows / batch_size)) over its workers; ranks
    below the maximum split some batches, spread over their workers.
    """
    sizes = np.array([[sum(len(p) for p in w) for w in rank] for rank in plan], dtype=np.int64)
    natural = -(-sizes // batch_size)
    target = int(natural.sum(axis=1).max())
    counts = natural.copy()
    workers = sizes.shape[1]
    for r in range(len(plan)):
        deficit = target - int(natural[r].sum())
        extra = deficit // workers + (np.arange(workers) < deficit % workers)
        counts[r] += extra
    if (counts > sizes).any():
        raise SequifierError(
            f"too few windows ({int(sizes.sum())}) to give each of {sizes.size} "
            "rank/worker streams the same number of batches; lower world_size or num_workers")
    return counts


def batch_sizes(n_windows: int, n_batches: int, batch_size: int) -> np.ndarray:
    """Sizes of `n_batches` batches over `n_windows`: full batches first, then a tail of
    smaller ones (each at least 1) when there are more batches than full ones."""
    if n_batches == 0:
        return np.zeros(0, dtype=np.int64)
    j = np.arange(n_batches, dtype=np.int64)
    # Batch j gets batch_size unless the rest would leave some later batch empty.
    reserve = n_batches - 1 - j
    sizes = np.empty(n_batches, dtype=np.int64)
    remaining = n_windows
    for k in range(n_batches):  # per batch, not per window
        sizes[k] = min(batch_size, remaining - reserve[k])
        remaining -= sizes[k]
    return sizes


def _piece_rng(seed: int, epoch: int, piece: Piece) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, piece.shard, piece.start])


def iterate_batches(pieces: Sequence[Piece], sizes: np.ndarray, cache: PieceCache,
                    shuffle: bool, seed: int, epoch: int, stream_id: int) -> Iterator[Windows]:
    """Cut the (shuffled) rows of `pieces` into batches of the given sizes."""
    order = list(pieces)
    if shuffle:
        perm = np.random.default_rng([seed, epoch, stream_id, 7919]).permutation(len(order))
        order = [order[i] for i in perm]
    sizes_iter = iter(sizes.tolist())
    size = next(sizes_iter, None)
    parts: List[Windows] = []
    filled = 0
    for piece in order:
        windows = cache.get(piece)
        rows = (_piece_rng(seed, epoch, piece).permutation(len(piece)) if shuffle
                else np.arange(len(piece)))
        pos = 0
        while pos < len(rows) and size is not None:
            take = min(size - filled, len(rows) - pos)
            parts.append(windows.select(rows[pos:pos + take]))
            pos += take
            filled += take
            if filled == size:
                yield parts[0] if len(parts) == 1 else Windows.concat(parts)
                parts, filled = [], 0
                size = next(sizes_iter, None)


def windows_to_tensors(windows: Windows) -> Dict[str, object]:
    """Default batch form: plain tensors (cheap to pass from worker processes)."""
    return {
        "sequenceId": torch.from_numpy(windows.sequence_id),
        "subsequenceId": torch.from_numpy(windows.subsequence_id),
        "padding": torch.from_numpy(windows.padding),
        TARGET_START_COLUMN: torch.from_numpy(windows.target_start),
        "itemPosition": torch.from_numpy(windows.item_position),
        "columns": {c: torch.from_numpy(v) for c, v in windows.values.items()},
    }


class WorkerBatchStream(torch.utils.data.IterableDataset):
    """One rank's batches for one epoch, as a DataLoader dataset: each loader worker
    process iterates its own part of the plan. Module-level so that spawned processes
    (DDP ranks, loader workers) can pickle it."""

    def __init__(self, loader: "LazyWindowLoader"):
        self.loader = loader

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = 0 if info is None else info.id
        return self.loader.worker_batches(worker)


class LazyWindowLoader:
    """Batches of one split (file or folder of shards, any read format), read lazily.

    Iterate it once per epoch after `set_epoch(epoch)`; `len()` is the number of batches
    this rank yields per epoch (the same on every rank).
    """

    def __init__(self, path: str, columns: Sequence[str], batch_size: int, *,
                 read_format: str = "pt", column_types: Optional[Dict[str, str]] = None,
                 shuffle: bool = True, seed: int = 0, max_ram_gb: float = 16.0,
                 num_workers: int = 0, rank: int = 0, world_size: int = 1, pin_memory: bool = False,
                 to_batch: Callable[[Windows], object] = windows_to_tensors):
        if batch_size < 1:
            raise SequifierError(f"training_spec.batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise SequifierError(f"training_spec.num_workers must be >= 0, got {num_workers}")
        if max_ram_gb <= 0:
            raise SequifierError(f"training_spec.max_ram_gb must be > 0, got {max_ram_gb}")
        self.files = split_files(path, read_format)
        self.counts = np.array([f.n_windows for f in self.files], dtype=np.int64)
        self.columns = list(columns)
        self.column_types = column_types or {}
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        # with workers: batches arrive in page-locked memory (DataLoader's pinning thread),
        # for asynchronous copies to a GPU
        self.pin_memory = pin_memory
        self.rank = rank
        self.world_size = world_size
        self.to_batch = to_batch
        self.streams = max(num_workers, 1)
        self.max_bytes_per_stream = max_ram_gb * GB / self.streams
        self.plan = plan_pieces(self.counts, world_size, self.streams, self._piece_windows())
        try:
            self.stream_batches = batches_per_worker(self.plan, batch_size)
        except SequifierError as e:
            raise SequifierError(f"'{path}' holds {e}") from None
        self._cache: Optional[PieceCache] = None
        self._epoch = _shared_epoch()
        self._dataloader = None

    def _piece_windows(self) -> Optional[int]:
        """Largest piece: a quarter of a stream's budget (an unbounded cache: whole files)."""
        if not np.isfinite(self.max_bytes_per_stream):
            return None
        described = [f for f in self.files if f.n_windows > 0]
        if not described:
            return None
        # int64/float32 per value: count 8 bytes, the larger
        window_bytes = 8 * described[0].window_length * (len(self.columns) + 1) + 32
        return max(self.batch_size, int(self.max_bytes_per_stream / 4 / window_bytes))

    @property
    def window_length(self) -> int:
        return max(f.window_length for f in self.files)

    @property
    def n_windows(self) -> int:
        """Windows this rank sees per epoch."""
        return sum(len(p) for w in self.plan[self.rank] for p in w)

    def __len__(self) -> int:
        return int(self.stream_batches[self.rank].sum())

    def __getstate__(self):
        # Worker processes get the plan, not this process's cache or DataLoader.
        state = dict(self.__dict__)
        state["_cache"] = None
        state["_dataloader"] = None
        return state

    def set_epoch(self, epoch: int) -> None:
        # A shared-memory tensor, so persistent worker processes see the new epoch too.
        self._epoch[0] = epoch

    @property
    def cache(self) -> PieceCache:
        """The cache of the current process (each worker process has its own)."""
        if self._cache is None:
            self._cache = PieceCache(self.files, self.columns, self.column_types,
                                     self.max_bytes_per_stream)
        return self._cache

    def worker_batches(self, worker: int) -> Iterator[object]:
        pieces = self.plan[self.rank][worker]
        n = int(self.stream_batches[self.rank][worker])
        sizes = batch_sizes(sum(len(p) for p in pieces), n, self.batch_size)
        stream_id = self.rank * self.streams + worker
        for windows in iterate_batches(pieces, sizes, self.cache, self.shuffle, self.seed,
                                       int(self._epoch[0]), stream_id):
            yield self.to_batch(windows)

    def __iter__(self) -> Iterator[object]:
        if self.num_workers == 0:
            return self.worker_batches(0)
        if self._dataloader is None:
            # The dataset gets a copy without the DataLoader: no reference cycle, so the
            # worker processes stop as soon as this loader is dropped.
            plan_only = copy.copy(self)
            plan_only._dataloader = None
            self._dataloader = torch.utils.data.DataLoader(
                WorkerBatchStream(plan_only), batch_size=None, num_workers=self.num_workers,
                persistent_workers=True, pin_memory=self.pin_memory)
        return iter(self._dataloader)


def _shared_epoch():
    return torch.zeros(1, dtype=torch.int64).share_memory_()
