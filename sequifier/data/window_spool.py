"""Windows parked on disk between building and writing, so that no process holds a split.

Each window task saves its windows of every split as `.npy` files of its own (one per
field) and returns only how many windows each of its sequences got per split. The main
process keeps, per split and sequence, where those windows lie (task, first window,
count): memory in proportion to the sequences, not the windows. Writing reads windows
back by their position in the output, in pieces that fit the budget: the files are
memory-mapped, the rows copied out and the maps dropped, so what was read does not stay
resident.

Output order is input order: file, then sequence id (text ids by their number, which
follows their sorted order), then the window's number within its sequence. Tasks of a
file read whole come in that order already; chunks of a partitioned file hold hash
buckets of ids, and `SplitLayout` sorts their sequences back into place.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from sequifier.data.windows import Windows, write_shard_files, write_shards, write_tabular
from sequifier.io_utils import atomic_dir

INDEX_FIELDS = ("sequenceId", "subsequenceId", "padding", "targetStart")
POSITION_FIELD = "itemPosition"


def _index_arrays(windows: Windows) -> Dict[str, np.ndarray]:
    return {"sequenceId": windows.sequence_id, "subsequenceId": windows.subsequence_id,
            "padding": windows.padding, "targetStart": windows.target_start,
            POSITION_FIELD: windows.item_position}


def save_task(folder: str, task: int, splits: List[Windows], sequence_index: List[np.ndarray],
              n_sequences: int) -> List[np.ndarray]:
    """Save a task's windows (one Windows per split; `sequence_index[k]` is each window's
    sequence within the task); return per split the number of windows of each sequence."""
    counts = []
    for k, windows in enumerate(splits):
        fields = _index_arrays(windows)
        fields.update({f"v{j}": v for j, v in enumerate(windows.values.values())})
        for name, array in fields.items():
            np.save(_path(folder, task, k, name), np.ascontiguousarray(array))
        counts.append(np.bincount(sequence_index[k], minlength=n_sequences).astype(np.int64))
    return counts


def _path(folder: str, task: int, split: int, field: str) -> str:
    return os.path.join(folder, f"task{task:05d}-split{split}-{field}.npy")


@dataclass
class SplitLayout:
    """Where the windows of one split lie, per run of one sequence's windows, in output order."""

    task: np.ndarray  # the task that saved the run
    first: np.ndarray  # the run's first window within the task's files
    start: np.ndarray  # the run's first position in the output (ascending), plus the total

    @property
    def n_windows(self) -> int:
        return int(self.start[-1])


def split_layout(tasks: Sequence[int], files: Sequence[int], sequence_ids: Sequence[np.ndarray],
                 counts: Sequence[np.ndarray]) -> SplitLayout:
    """The layout of one split from every task's sequences and window counts."""
    lengths = [len(c) for c in counts]
    task = np.repeat(np.asarray(tasks, dtype=np.int64), lengths)
    count = np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)
    first = np.concatenate([np.cumsum(c) - c for c in counts]) if counts else count
    file = np.repeat(np.asarray(files, dtype=np.int64), lengths)
    ids = np.concatenate(sequence_ids) if counts else count
    order = np.lexsort((ids, file))  # stable: runs already in order keep it
    start = np.r_[0, np.cumsum(count[order])].astype(np.int64)
    return SplitLayout(task[order], first[order], start)


class Spool:
    """The saved windows of every task, read back by output position."""

    def __init__(self, folder: str, layouts: List[SplitLayout], columns: List[str],
                 window_length: int):
        self.folder = folder
        self.layouts = layouts
        self.columns = columns  # value columns, in the order the tasks saved them
        self.window_length = window_length

    def n_windows(self, split: int) -> int:
        return self.layouts[split].n_windows

    def read(self, split: int, positions: np.ndarray, fields: Sequence[str]) -> Dict[str, np.ndarray]:
        """The given fields (INDEX_FIELDS, itemPosition, column names) of the windows at
        `positions` of the output of `split`."""
        layout = self.layouts[split]
        positions = np.asarray(positions, dtype=np.int64)
        run = np.searchsorted(layout.start, positions, side="right") - 1
        task = layout.task[run]
        row = layout.first[run] + positions - layout.start[run]
        names = {f: f if f in INDEX_FIELDS or f == POSITION_FIELD else f"v{self.columns.index(f)}"
                 for f in fields}
        out: Dict[str, np.ndarray] = {}
        by_task = np.argsort(task, kind="stable")
        bounds = np.flatnonzero(np.diff(task[by_task])) + 1
        for group in np.split(by_task, bounds) if len(by_task) else []:
            t = int(task[group[0]])
            for field, name in names.items():
                stored = np.load(_path(self.folder, t, split, name), mmap_mode="r")
                if field not in out:
                    out[field] = np.empty((len(positions),) + stored.shape[1:], dtype=stored.dtype)
                out[field][group] = stored[row[group]]
                del stored  # unmapped: the pages read do not stay resident
        if not out:  # no windows asked for
            for field, name in names.items():
                stored = self._any(split, name)
                out[field] = np.empty((0,) + stored.shape[1:], dtype=stored.dtype)
        return out

    def _any(self, split: int, name: str) -> np.ndarray:
        return np.load(_path(self.folder, 0, split, name), mmap_mode="r")

    def windows(self, split: int, positions: np.ndarray) -> Windows:
        """The windows at `positions` with every column."""
        got = self.read(split, positions, list(INDEX_FIELDS) + [POSITION_FIELD] + self.columns)
        return Windows(got["sequenceId"], got["subsequenceId"], got["padding"], got[POSITION_FIELD],
                       {c: got[c] for c in self.columns}, got["targetStart"])


# ---------------------------------------------------------------- writing a split

def write_table_split(spool: Spool, split: int, path: str, write_format: str,
                      fingerprint: Optional[str], row_group_rows: int) -> None:
    """One split as one parquet/csv file, read from the spool a row group at a time."""

    def read(block: str, lo: int, hi: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        got = spool.read(split, np.arange(lo, hi), list(INDEX_FIELDS) + [block])
        return got, got[block]

    write_tabular(spool.n_windows(split), [POSITION_FIELD] + spool.columns, spool.window_length,
                  read, path, write_format, fingerprint, row_group_rows)


def write_shard_split(spool: Spool, split: int, order: np.ndarray, folder: str, prefix: str,
                      per_shard: int, column_types: Dict[str, str], write_format: str,
                      fingerprint: Optional[str], piece_windows: int) -> None:
    """One split as a folder of shards (`write_format`) of the windows in `order` (output
    positions); a split of at most one piece in one go, else whole shards a group at a time."""
    if len(order) <= piece_windows:
        write_shards(spool.windows(split, order), folder, prefix, per_shard, column_types,
                     write_format, fingerprint)
        return
    group = max(per_shard, piece_windows // per_shard * per_shard)
    with atomic_dir(folder) as tmp:
        for lo in range(0, len(order), group):
            write_shard_files(spool.windows(split, order[lo:lo + group]), tmp, prefix, per_shard,
                              column_types, write_format, fingerprint, first=lo // per_shard)
