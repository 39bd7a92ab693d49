"""The files of one split, and reading any range of their windows, in every window format.

A split is one file (parquet or csv, `merge_output: true`) or a folder of files: `.pt`
shards, or parquet/csv shards (`merge_output: false`). `split_files` lists a split's
files with their window counts (from file headers and one streamed pass over the
`inputCol` column, never the whole table), and `read_rows` reads windows
`[start, stop)` of one file. `train` (in RAM, lazily, per DDP rank), `infer` and
`evaluate` all read through these two functions, so every reader accepts every format.

What a range read costs:
* `.pt`: the shard is memory-mapped; only the rows asked for are copied.
* parquet: the layout holds column blocks (all windows' `itemPosition`, then each
  column), so a range of windows is one row range per block; only the row groups that
  hold those rows are read.
* csv: no random access; the file is streamed and only the rows in range are kept.

`check_fingerprint` refuses a split whose files were encoded with other id maps than
the metadata's (parquet files carry the fingerprint in their schema metadata, `.pt`
shards as a key; csv has no place for it).
"""

import csv
import glob
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from sequifier.data.windows import (
    FINGERPRINT_KEY,
    INDEX_COLUMNS,
    POSITION_COLUMN,
    TARGET_START_COLUMN,
    WINDOW_FORMATS,
    Windows,
    load_shard,
    shard_to_windows,
)
from sequifier.errors import SequifierError

EXTENSIONS = {"parquet": ".parquet", "csv": ".csv", "pt": ".pt"}
SCAN_BATCH_ROWS = 1 << 16
# a split written whole (merge_output: true) is NAME-splitK.ext; its shards are NAME-splitK-SSSSS.ext
WHOLE_SPLIT_FILE = re.compile(r"-split\d+\.[a-z]+$")


@dataclass(frozen=True)
class WindowFile:
    """One file of a split: its windows, the window length and the column order."""

    path: str
    read_format: str
    n_windows: int
    window_length: int
    # columns in file order; tabular files hold one block of rows per entry, itemPosition first
    columns: Tuple[str, ...]
    has_target_start: bool


def split_files(path: str, read_format: str) -> List[WindowFile]:
    """The files of the split at `path` (a file or a folder of shards), described."""
    files = [describe(p, read_format) for p in split_paths(path, read_format)]
    _check_same_schema(files)
    return files


def split_paths(path: str, read_format: str) -> List[str]:
    """The file names of the split at `path`: the file itself, or a folder's shards."""
    if read_format not in WINDOW_FORMATS:
        raise SequifierError(f"read_format: '{read_format}' is not one of {', '.join(WINDOW_FORMATS)}")
    ext = EXTENSIONS[read_format]
    if os.path.isdir(path):
        paths = sorted(glob.glob(os.path.join(glob.escape(path), "*" + ext)))
        if not paths:
            raise SequifierError(f"data folder '{path}' holds no {ext} files; check read_format "
                                 f"('{read_format}') or run preprocess with write_format: {read_format}")
        whole = [os.path.basename(p) for p in paths if WHOLE_SPLIT_FILE.search(os.path.basename(p))]
        if whole:  # e.g. the data/ folder itself: its splits would be read as one
            raise SequifierError(
                f"data folder '{path}' holds whole split files ({', '.join(whole[:3])}), not the "
                "shards of one split; point the path at one split file or shard folder")
    elif os.path.isfile(path):
        if read_format == "pt":
            raise SequifierError(f"data path '{path}' is not a folder of .pt shards; check "
                                 "read_format or the split path")
        paths = [path]
    else:
        raise SequifierError(f"data path '{path}' not found; check the path or run preprocess")
    return paths


def _check_same_schema(files: Sequence[WindowFile]) -> None:
    """Shards of one split must agree on columns and window length (empty shards aside)."""
    described = [f for f in files if f.n_windows > 0]
    for f in described[1:]:
        first = described[0]
        if (f.columns, f.window_length) != (first.columns, first.window_length):
            raise SequifierError(
                f"data file '{f.path}' has columns {list(f.columns)} and windows of "
                f"{f.window_length} items, but '{first.path}' has {list(first.columns)} and "
                f"{first.window_length}: the folder mixes shards of different preprocess runs; "
                "keep one run's shards per folder")


def describe(path: str, read_format: str) -> WindowFile:
    with unreadable_as(path, read_format):
        return _describe(path, read_format)


@contextmanager
def unreadable_as(path: str, read_format: str):
    """Parser errors of pyarrow/csv (another format, a cut file) as one line naming the file."""
    try:
        yield
    except (ValueError, OSError) as e:
        reason = " ".join(str(e).split())[:160]
        if not reason.isprintable():  # a parser quoting the bytes it choked on
            reason = type(e).__name__
        raise SequifierError(f"data file '{path}' could not be read as {read_format} ({reason}); "
                             "check read_format and the file (re-run preprocess if it is cut short)") from None


def _describe(path: str, read_format: str) -> WindowFile:
    if read_format == "pt":
        raw = _load_pt(path)
        return WindowFile(path, "pt", int(raw["sequenceId"].shape[0]),
                          int(raw[POSITION_COLUMN].shape[1]),
                          (POSITION_COLUMN,) + tuple(raw["columns"]), TARGET_START_COLUMN in raw)
    names = _tabular_names(path, read_format)
    missing = [c for c in INDEX_COLUMNS + ["inputCol"] if c not in names]
    if missing:
        raise SequifierError(f"data file '{path}' is not in sequifier's window format (missing "
                             f"{missing}); check read_format or run preprocess")
    blocks, n_rows = _scan_blocks(path, read_format)
    if not blocks:
        return WindowFile(path, read_format, 0, 0, (), TARGET_START_COLUMN in names)
    n_windows = n_rows // len(blocks)
    if blocks[0][0] != POSITION_COLUMN or any(n != n_windows for _, n in blocks):
        raise SequifierError(f"data file '{path}' is not in sequifier's window format (column "
                             "blocks of unequal length); rerun preprocess")
    return WindowFile(path, read_format, n_windows, len(_position_names(names)),
                      tuple(name for name, _ in blocks), TARGET_START_COLUMN in names)


def _position_names(names: Sequence[str]) -> List[str]:
    return [n for n in names if n not in INDEX_COLUMNS + ["inputCol", TARGET_START_COLUMN]]


def _tabular_names(path: str, read_format: str) -> List[str]:
    if read_format == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).schema_arrow.names
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _load_pt(path: str):
    # mmap: only the rows and columns copied out later are read from disk.
    return load_shard(path, mmap=True)


# ---- streaming tabular files -----------------------------------------------------------

def _csv_batches(path: str, columns: Sequence[str]) -> Iterator:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    names = _tabular_names(path, "csv")
    types = {n: pa.int64() for n in INDEX_COLUMNS + [TARGET_START_COLUMN]}
    types.update({n: pa.float64() for n in _position_names(names)})
    types["inputCol"] = pa.string()
    reader = pa_csv.open_csv(path, convert_options=pa_csv.ConvertOptions(
        column_types=types, include_columns=list(columns)))
    yield from reader


def _scan_blocks(path: str, read_format: str) -> Tuple[List[Tuple[str, int]], int]:
    """Runs of equal `inputCol` in file order, [(column, rows)], read in bounded batches."""
    if read_format == "parquet":
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=SCAN_BATCH_ROWS, columns=["inputCol"])
    else:
        batches = _csv_batches(path, ["inputCol"])
    runs: List[List] = []
    n_rows = 0
    for batch in batches:
        encoded = batch.column(0).dictionary_encode()
        codes = encoded.indices.to_numpy(zero_copy_only=False)
        names = encoded.dictionary.to_pylist()
        starts = np.flatnonzero(np.diff(codes, prepend=-1))
        ends = np.append(starts[1:], len(codes))
        for s, e in zip(starts.tolist(), ends.tolist()):
            name = names[codes[s]]
            if runs and runs[-1][0] == name:
                runs[-1][1] += e - s
            else:
                runs.append([name, e - s])
        n_rows += len(codes)
    seen = [name for name, _ in runs]
    if len(set(seen)) != len(seen):
        raise SequifierError(f"data file '{path}' is not in sequifier's window format (the rows "
                             "of a column are not in one block); rerun preprocess")
    return [(name, int(n)) for name, n in runs], n_rows


def _table_rows(batches: Iterator[Tuple[int, object]], ranges: Sequence[Tuple[int, int]]):
    """The rows of `ranges` (global [lo, hi), ascending) from (offset, record batch) pairs,
    as one table per range."""
    import pyarrow as pa

    pieces: List[List] = [[] for _ in ranges]
    for offset, batch in batches:
        end = offset + batch.num_rows
        for k, (lo, hi) in enumerate(ranges):
            a, b = max(lo, offset), min(hi, end)
            if b > a:
                pieces[k].append(batch.slice(a - offset, b - a))
        if end >= ranges[-1][1]:
            break
    return [pa.Table.from_batches(p) if p else None for p in pieces]


def _offset_batches(batches) -> Iterator[Tuple[int, object]]:
    offset = 0
    for batch in batches:
        yield offset, batch
        offset += batch.num_rows


def _parquet_batches(path: str, columns: Sequence[str],
                     ranges: Sequence[Tuple[int, int]]) -> Iterator[Tuple[int, object]]:
    """(global offset, batch) of only the row groups that overlap `ranges`."""
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    offset = 0
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if any(lo < offset + n and hi > offset for lo, hi in ranges):
            table = pf.read_row_group(g, columns=list(columns))
            for batch_offset, batch in _offset_batches(table.to_batches()):
                yield offset + batch_offset, batch
        offset += n


def _block_array(table, names: Sequence[str], dtype) -> np.ndarray:
    columns = [table.column(n).to_numpy() for n in names]
    return np.stack(columns, axis=1).astype(dtype, copy=False) if columns else np.zeros((0, 0), dtype)


def _read_tabular(file: WindowFile, start: int, stop: int, columns: Sequence[str],
                  column_types: Dict[str, str]) -> Windows:
    names = _tabular_names(file.path, file.read_format)
    positions = _position_names(names)
    blocks = [POSITION_COLUMN] + list(columns)
    index = [file.columns.index(c) for c in blocks]
    ranges = sorted((b * file.n_windows + start, b * file.n_windows + stop) for b in index)
    wanted = INDEX_COLUMNS + ([TARGET_START_COLUMN] if file.has_target_start else []) + positions
    if file.read_format == "parquet":
        batches = _parquet_batches(file.path, wanted, ranges)
    else:
        batches = _offset_batches(_csv_batches(file.path, wanted))
    tables = dict(zip((lo for lo, _ in ranges), _table_rows(batches, ranges)))
    values = {}
    for col, b in zip(blocks, index):
        table = tables[b * file.n_windows + start]
        dtype = np.float32 if column_types.get(col) == "real" else np.int64
        values[col] = _block_array(table, positions, dtype)
    first = tables[index[0] * file.n_windows + start]
    ids = {c: first.column(c).to_numpy().astype(np.int64) for c in INDEX_COLUMNS}
    target_start = (first.column(TARGET_START_COLUMN).to_numpy().astype(np.int64)
                    if file.has_target_start else None)
    item_position = values.pop(POSITION_COLUMN)
    return Windows(ids["sequenceId"], ids["subsequenceId"], ids["padding"], item_position,
                   values, target_start)


def read_rows(file: WindowFile, start: int, stop: int, columns: Sequence[str],
              column_types: Dict[str, str]) -> Windows:
    """Windows [start, stop) of `file`, holding only `columns` (plus the index columns)."""
    missing = [c for c in columns if c not in file.columns]
    if missing:
        raise SequifierError(
            f"data file '{file.path}' has no column(s) {missing}; its columns are "
            f"{[c for c in file.columns if c != POSITION_COLUMN]}; check input_columns/"
            "target_columns or use data preprocessed with these columns")
    if file.read_format == "pt":
        rows = slice(start, stop)
        return shard_to_windows(_load_pt(file.path), columns,
                                lambda t: np.array(t[rows].numpy(), copy=True))
    with unreadable_as(file.path, file.read_format):
        return _read_tabular(file, start, stop, columns, column_types)


def read_windows(path: str, read_format: str, column_types: Dict[str, str],
               columns: Sequence[str] = None) -> Windows:
    """All windows of a split (file or folder), holding `columns` (default: all)."""
    columns = list(column_types) if columns is None else list(columns)
    files = [f for f in split_files(path, read_format) if f.n_windows > 0]
    if not files:
        return _no_windows(columns, column_types)
    parts = [read_rows(f, 0, f.n_windows, columns, column_types) for f in files]
    return parts[0] if len(parts) == 1 else Windows.concat(parts)


def _no_windows(columns: Sequence[str], column_types: Dict[str, str]) -> Windows:
    empty = np.zeros(0, dtype=np.int64)
    return Windows(empty, empty, empty, np.zeros((0, 0), dtype=np.int64),
                   {c: np.zeros((0, 0), np.float32 if column_types.get(c) == "real" else np.int64)
                    for c in columns})


# ---- id-map fingerprint -----------------------------------------------------------------

def read_fingerprint(path: str, read_format: str) -> Optional[str]:
    """The id-map fingerprint one file carries (None: csv, written before fingerprints, or
    unreadable; the reader that follows names that problem)."""
    try:
        if read_format == "parquet":
            import pyarrow.parquet as pq

            value = (pq.read_schema(path).metadata or {}).get(FINGERPRINT_KEY.encode())
            return value.decode() if value else None
        if read_format == "pt":
            value = _load_pt(path).get(FINGERPRINT_KEY)
            return value if isinstance(value, str) else None
    except (OSError, ValueError, SequifierError):
        return None
    return None


def check_fingerprint(path: str, read_format: str, metadata, metadata_path: str) -> None:
    """Refuse a split (file or shard folder) with a file encoded with other id maps than
    `metadata`'s (its ids would be decoded as the wrong values without a word)."""
    expected = getattr(metadata, "id_map_fingerprint", None)
    if not expected or read_format == "csv":
        return
    try:
        paths = split_paths(path, read_format)
    except SequifierError:
        return  # no such split: the reader that follows names the problem
    for file in paths:
        found = read_fingerprint(file, read_format)
        if found and found != expected:
            raise SequifierError(
                f"data '{file}' was preprocessed with other id maps than the metadata "
                f"'{metadata_path}'; use the metadata written together with that data, or "
                "preprocess the data again with reuse_metadata_path pointing at this metadata")
