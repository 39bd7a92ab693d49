"""How preprocess keeps its memory within `max_ram_gb`.

The budget covers every process of the run: the main process and its `n_cores` workers.
Each process first costs its own interpreter and libraries (`PROCESS_BYTES`); the rest
is shared out equally, and every stage sizes its units of work to fit one share:

* reading: an input file whose Arrow table, times `READ_COST`, fits a share is read
  whole; a larger one is cut into chunks of whole sequences that do (partition.py);
* windows: a task holds whole sequences whose windows, times `WINDOW_COST`, fit;
* writing (the workers are idle by then): a split is read back and written in pieces
  (shards, parquet row groups) that fit the room of all processes.

The factors are measured peaks (bench/bench_scale.py) per byte of data, with room to
spare. Chunking never changes the output: tasks and chunks only decide what is held at
once, and the windows are written in input order whatever the chunks were.
"""

import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence

GB = 1 << 30
PROCESS_BYTES = 120 << 20  # an idle process: Python, numpy, pyarrow
MIN_SHARE_BYTES = 16 << 20  # below this a share holds too little to work with
READ_COST = 8.0  # peak bytes of reading, checking and sorting a chunk per byte of its table
WINDOW_COST = 3.0  # peak bytes of building windows per byte of the windows
# peak bytes of writing a piece of windows (or rows) per byte of it is about 3; twice
# that keeps the writing stage's peak near the other stages' (peak memory stays flat)
WRITE_COST = 6.0
INDEX_BYTES = 4 * 8  # sequenceId, subsequenceId, padding, targetStart of a window


def default_workers() -> int:
    """Worker processes when n_cores is not set: the cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def n_processes(n_workers: int) -> int:
    return n_workers + 1 if n_workers > 1 else 1


def budget_problem(max_ram_gb: float, n_workers: int) -> Optional[str]:
    """Why `max_ram_gb` cannot work with `n_workers` workers (None when it can)."""
    if not max_ram_gb > 0:
        return f"must be > 0, got {max_ram_gb}"
    processes = n_processes(n_workers)
    need = processes * (PROCESS_BYTES + MIN_SHARE_BYTES) / GB
    if max_ram_gb < need:
        plural = "es" if processes > 1 else ""
        fix = "raise max_ram_gb or lower n_cores" if processes > 1 else "raise max_ram_gb"
        return (f"{max_ram_gb} GB leaves no room for data: the run's {processes} process{plural} "
                f"(n_cores: {n_workers}) need at least {need:.2f} GB; {fix}")
    return None


@dataclass(frozen=True)
class Budget:
    """`max_ram_gb` as the bytes of data one process may hold at once."""

    max_ram_gb: float
    share_bytes: int  # per process
    room_bytes: int  # of all processes together

    @staticmethod
    def of(max_ram_gb: float, n_workers: int) -> "Budget":
        processes = n_processes(n_workers)
        room = max(int(max_ram_gb * GB - processes * PROCESS_BYTES), processes * MIN_SHARE_BYTES)
        return Budget(max_ram_gb, room // processes, room)

    @staticmethod
    def needed_gb(share_bytes: float, n_workers: int) -> float:
        """The max_ram_gb that gives every process `share_bytes`."""
        return n_processes(n_workers) * (share_bytes + PROCESS_BYTES) / GB

    def read_chunks(self, table_bytes: int) -> int:
        """Into how many chunks to cut an input file whose Arrow table has `table_bytes`."""
        return max(1, math.ceil(table_bytes * READ_COST / self.share_bytes))

    def window_task_rows(self, window_bytes_per_row: float) -> int:
        """Input rows per window task."""
        return max(1, int(self.share_bytes / (WINDOW_COST * window_bytes_per_row)))

    def write_piece_windows(self, bytes_per_window: int) -> int:
        """Windows (or rows) read back and written at once."""
        return max(1, int(self.room_bytes / (WRITE_COST * bytes_per_window)))


def window_bytes(window_length: int, n_columns: int) -> int:
    """Bytes of one window held as arrays: positions and every column, plus its index."""
    return window_length * (n_columns + 1) * 8 + INDEX_BYTES


def windows_per_row(split_ratios: Sequence[float], strides: Sequence[int]) -> float:
    """Windows per input item of a long sequence, over all splits."""
    return sum(r / s for r, s in zip(split_ratios, strides))


def sequence_window_bytes(n_items: int, split_ratios: Sequence[float], strides: Sequence[int],
                          bytes_per_window: int) -> float:
    """About the bytes of the windows of one sequence of `n_items` (every split gets at
    least one window, and the windows of a stride cover the segment)."""
    n_windows = sum(n_items * r / s + 1 for r, s in zip(split_ratios, strides))
    return n_windows * bytes_per_window
