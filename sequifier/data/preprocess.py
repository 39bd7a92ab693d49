"""`sequifier preprocess`: long table -> windows per split + metadata.

The run has three stages, each parallel over `n_cores` worker processes, each cut into
units of work that fit `max_ram_gb` (budget.py):

1. read: every input file is read, checked and sorted (read_table.py), cached as an
   Arrow file in the work folder `data/.NAME-preprocess-work/`, and summarised
   (encoding.py); a file too large for the budget is first cut on disk into chunks of
   whole sequences (partition.py), each read like a file of its own. With
   `continue_preprocessing: true` files cached by an interrupted run are not read again.
2. windows: the summaries are merged into id maps and statistics; then tasks of whole
   sequences are encoded and cut into windows (splits.py) with numpy index arithmetic,
   and the windows parked on disk (window_spool.py).
3. write: each split is read back in input order, a piece at a time, and written to a
   temporary name; all are renamed together with the metadata file at the end, so a
   failed run leaves no partial split. The work folder is removed after the run, whether
   it succeeded or failed (with `continue_preprocessing: true` a failed run keeps its
   read caches, to resume from); one left by a killed run is removed by the next.

The output depends neither on `n_cores` nor on the budget: tasks and chunks are cut at
sequence boundaries, every sequence's windows depend on that sequence alone, and the
windows are written in input order.
"""

import json
import logging
import math
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from dataclasses import field as default_field
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from sequifier.config.metadata import Metadata, read_metadata, write_metadata
from sequifier.config.schema import PAD_ID, PreprocessConfig
from sequifier.data import known_ahead, partition, read_table, window_spool
from sequifier.data.budget import (
    GB,
    WINDOW_COST,
    Budget,
    default_workers,
    n_processes,
    sequence_window_bytes,
    window_bytes,
    windows_per_row,
)
from sequifier.data.encoding import (
    ColumnEncoding,
    FileSummary,
    column_warnings,
    encoding_from_metadata,
    merge_summaries,
    number_sequences,
    summarize_table,
)
from sequifier.data.missing import SERIES, MissingReport, MissingValues, parse_missing_values, report_lines
from sequifier.data.progress import Progress
from sequifier.data.read_table import KeyColumns, LongTable
from sequifier.data.splits import (
    StrideMismatch,
    assign_sequences,
    covered_from,
    holdout_problem,
    holdout_window_starts,
    split_bounds,
    too_short_for_holdout,
    whole_sequence_bounds,
    window_starts,
)
from sequifier.data.window_spool import Spool
from sequifier.data.windows import DEFAULT_ROW_GROUP_ROWS, Windows, id_map_fingerprint
from sequifier.errors import SequifierError, shown
from sequifier.gate import validate
from sequifier.io_utils import atomic_path, existing_outputs, output_set
from sequifier.project import (
    dataset_name,
    future_rows_path,
    metadata_path,
    preprocess_work_dir,
    resolve_path,
    split_path,
)
from sequifier.run_lock import dataset_lock

# the command's channel, not __name__: users read "[sequifier.preprocess]" in every line
logger = logging.getLogger("sequifier.preprocess")

# rows per window-building task: small enough to bound worker memory, large enough that
# per-task overhead does not matter
MAX_TASK_ROWS = 1_000_000
MIN_TASK_ROWS = 20_000
# Starting workers costs about half a second (a fresh interpreter imports numpy/pyarrow);
# below these sizes the main process finishes the stage sooner on its own.
PARALLEL_MIN_READ_BYTES = 64 * 2**20  # input bytes still to read
PARALLEL_MIN_WINDOW_ROWS = 1_000_000  # rows to cut into windows


@dataclass
class Plan:
    """Everything a run needs, resolved and checked before any work starts."""

    name: str
    project_root: str
    inputs: List[str]
    window_length: int
    split_ratios: List[float]
    strides: List[int]
    split_paths: List[str]  # relative to project_root
    metadata_path: str
    work_dir: str
    n_workers: int
    keys: KeyColumns
    missing_values: MissingValues
    columns: List[List[str]]  # per input: the key columns and the features read
    budget: Budget
    holdout_items: int = 0  # leave_last_out: items held out per sequence and split; else 0
    # known_ahead_columns and time_features (those of reuse_metadata_path when unset)
    known_ahead: List[str] = default_field(default_factory=list)
    time_features: List[str] = default_field(default_factory=list)

    def absolute(self, relative: str) -> str:
        return os.path.join(self.project_root, relative)

    @property
    def spool_dir(self) -> str:
        return os.path.join(self.work_dir, "windows")

    def cache_path(self, index: int, chunk: Optional[int] = None) -> str:
        """The cache of an input read whole, or of its chunk number `chunk`."""
        # keyed by file name, so files added to the folder between runs do not shift others
        base = os.path.join(self.work_dir, os.path.basename(self.inputs[index]))
        return base + ".arrow" if chunk is None else f"{base}.{chunk:04d}.arrow"


def holdout_items(cfg: PreprocessConfig) -> int:
    """Items per sequence each held-out split takes: leave_last_out's n (default 1), else 0."""
    if cfg.split_method != "leave_last_out":
        return 0
    return 1 if cfg.holdout_items is None else int(cfg.holdout_items)


def _ratios_and_strides(cfg: PreprocessConfig) -> Tuple[List[float], List[int]]:
    """split_ratios and the stride of every split (the gate has checked them)."""
    ratios = [float(r) for r in cfg.split_ratios]
    strides = [cfg.seq_length] * len(ratios) if cfg.stride_by_split is None else cfg.stride_by_split
    return ratios, [int(s) for s in strides]


def make_plan(cfg: PreprocessConfig) -> Plan:
    ratios, strides = _ratios_and_strides(cfg)
    root = cfg.project_root
    data_path = resolve_path(root, cfg.data_path)
    inputs = read_table.list_input_files(data_path, cfg.read_format)
    keys = KeyColumns(cfg.sequence_id_column, cfg.position_column)
    missing_values, problems = parse_missing_values(cfg.missing_values, keys.names)
    if problems:
        raise SequifierError(problems[0])
    known, features = forecast_settings(cfg)
    columns = []
    for path in inputs:  # column names are checked before anything is written
        header = read_table.read_header(path, cfg.read_format)
        columns.append(read_table.choose_columns(path, header, cfg.selected_columns, keys))
        problems = known_ahead.header_problems(known, header, path)
        problems += [f"time_features: '{f}' is also the name of a column of input file '{path}'; "
                     "rename that column or leave the feature out" for f in features if f in header]
        if problems:
            raise SequifierError(problems[0])
        for field, named in (("missing_values", missing_values.by_column), ("column_types", cfg.column_types or {})):
            unknown = [c for c in named if c not in header]
            if unknown:
                raise SequifierError(f"{field}.{unknown[0]}: no such column in input file "
                                     f"'{path}' (its columns: {header[:10]}); fix the column name")
    name = dataset_name(cfg)
    n_workers = cfg.n_cores or default_workers()
    # a file per split, or (merge_output: false) a folder of shards per split
    split_paths = [split_path(name, k, cfg.write_format if cfg.merge_output else None) for k in range(len(ratios))]
    return Plan(
        name=name, project_root=root, inputs=inputs, window_length=cfg.seq_length + 1,
        split_ratios=ratios, strides=strides, split_paths=split_paths,
        metadata_path=metadata_path(root, name), work_dir=preprocess_work_dir(root, name),
        n_workers=n_workers, keys=keys, missing_values=missing_values, columns=columns,
        budget=Budget.of(cfg.max_ram_gb, n_workers),
        holdout_items=holdout_items(cfg), known_ahead=known, time_features=features,
    )


def _check_overwrite(plan: Plan, overwrite: bool) -> None:
    paths = [plan.absolute(p) for p in plan.split_paths] + [plan.metadata_path,
                                                            plan.absolute(future_rows_path(plan.name))]
    existing = [os.path.relpath(p, plan.project_root) for p in existing_outputs(paths)]
    if existing and not overwrite:
        raise SequifierError(
            f"outputs of dataset '{plan.name}' already exist ({', '.join(existing)}); set "
            "overwrite: true to replace them, or dataset_name to write new ones"
        )


# ---------------------------------------------------------------- work folder (resume)

def _settings_fingerprint(plan: Plan, cfg: PreprocessConfig, data_path: str) -> dict:
    """The settings every cached input depends on; a resumed run must use the same."""
    return {"data_path": os.path.abspath(data_path), "read_format": cfg.read_format,
            "selected_columns": None if cfg.selected_columns is None else list(cfg.selected_columns),
            "max_rows": cfg.max_rows, "sequence_id_column": cfg.sequence_id_column,
            "position_column": cfg.position_column,
            "missing_values": plan.missing_values.as_setting(),
            "column_types": dict(cfg.column_types or {}), "split_method": cfg.split_method,
            "known_ahead_columns": list(plan.known_ahead), "time_features": list(plan.time_features)}


def _source_stamp(path: str) -> str:
    """Identifies one version of an input file: a cache is only reused for that version."""
    stat = os.stat(path)
    return json.dumps([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])


def _cache_is_current(cache_path: str, source: str) -> Optional[int]:
    """The number of chunks the input was cached in, if `cache_path` is a cache of this
    version of `source` written by this version of sequifier."""
    if not os.path.isfile(cache_path):
        return None
    try:
        schema = pa.ipc.open_file(pa.memory_map(cache_path)).schema
    except pa.ArrowException:
        return None
    metadata = schema.metadata or {}
    if (b"sequifier_found" not in metadata
            or metadata.get(b"sequifier_source", b"").decode() != _source_stamp(source)):
        return None
    return int(metadata.get(b"sequifier_chunks", b"1"))


def cached_chunks(plan: Plan, index: int) -> Optional[List[str]]:
    """The caches of input `index` when all of them are current, else None."""
    source = plan.inputs[index]
    if _cache_is_current(plan.cache_path(index), source) == 1:
        return [plan.cache_path(index)]
    n = _cache_is_current(plan.cache_path(index, 0), source)
    if n is None:
        return None
    paths = [plan.cache_path(index, k) for k in range(n)]
    return paths if all(_cache_is_current(p, source) == n for p in paths) else None


def prepare_work_dir(plan: Plan, cfg: PreprocessConfig) -> List[Optional[List[str]]]:
    """Set up the work folder; return, per input, its caches that can be reused."""
    marker = os.path.join(plan.work_dir, "settings.json")
    settings = _settings_fingerprint(plan, cfg, resolve_path(plan.project_root, cfg.data_path))
    if cfg.continue_preprocessing and os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f) != settings:
                raise SequifierError(
                    f"continue_preprocessing: the unfinished run in '{plan.work_dir}' used other "
                    "settings (data_path, read_format, selected_columns, max_rows, "
                    "missing_values, column_types, split_method, known_ahead_columns, "
                    "time_features or the id/position columns); "
                    "set continue_preprocessing: false to start over"
                )
        # windows of the unfinished run are rebuilt: only the read caches are reused
        shutil.rmtree(plan.spool_dir, ignore_errors=True)
        return [cached_chunks(plan, i) for i in range(len(plan.inputs))]
    if os.path.isdir(plan.work_dir):  # left by a killed run (the dataset lock is ours now)
        logger.info(f"removed the work folder of an unfinished earlier run: "
                    f"{os.path.relpath(plan.work_dir, plan.project_root)} (continue_preprocessing: false)")
        shutil.rmtree(plan.work_dir)
    os.makedirs(plan.work_dir)
    with atomic_path(marker) as tmp, open(tmp, "w") as f:
        json.dump(settings, f)
    return [None] * len(plan.inputs)


def _clean_work_dir_after_failure(plan: Plan, cfg: PreprocessConfig) -> None:
    """After a failure nothing stays behind, unless the user asked to resume: with
    `continue_preprocessing: true` the read caches stay (the parked windows go)."""
    names = os.listdir(plan.work_dir) if os.path.isdir(plan.work_dir) else []
    cached = sum(name.endswith(".arrow") for name in names)
    if cfg.continue_preprocessing and cached:
        shutil.rmtree(plan.spool_dir, ignore_errors=True)
        logger.info(f"kept {cached} cached input file(s) in {os.path.relpath(plan.work_dir, plan.project_root)} "
                    "for continue_preprocessing: true (a run with continue_preprocessing: false removes them)")
    else:
        shutil.rmtree(plan.work_dir, ignore_errors=True)


def _future_cache(cache_path: str) -> str:
    return cache_path + ".future.parquet"


def _write_cache(long: LongTable, path: str, source: str, n_chunks: int = 1) -> None:
    if long.future is not None:  # before the cache: a current cache implies its future rows
        import pyarrow.parquet as pq

        with atomic_path(_future_cache(path)) as tmp:
            pq.write_table(long.future, tmp)
    # what reading found besides the table, so that a resumed run reports it again
    found = {"position_type": long.position_type, "date_like": long.date_like,
             "dropped_rows": long.missing.dropped_rows, "missing": long.missing.counts}
    table = long.table.replace_schema_metadata({"sequifier_source": _source_stamp(source),
                                                "sequifier_found": json.dumps(found),
                                                "sequifier_chunks": str(n_chunks)})
    with atomic_path(path) as tmp, pa.OSFile(tmp, "wb") as sink, \
            pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def _read_cache(path: str) -> pa.Table:
    # memory-mapped: a task slicing out its sequences touches only those pages
    return pa.ipc.open_file(pa.memory_map(path)).read_all()


def _read_cached_long_table(path: str) -> LongTable:
    table = _read_cache(path)
    found = json.loads(table.schema.metadata[b"sequifier_found"])
    missing = MissingReport(found["dropped_rows"], {c: tuple(v) for c, v in found["missing"].items()})
    return LongTable(table, found["position_type"], missing, found["date_like"])


# ---------------------------------------------------------------- worker tasks

@dataclass
class Chunk:
    """Whole sequences of one input file, read, checked, sorted and cached (an input
    within the memory budget is one chunk)."""

    file_index: int
    cache_path: str
    summary: FileSummary

    @property
    def future_path(self) -> Optional[str]:
        """The chunk's future rows (data/future_rows.py), if it had any."""
        path = _future_cache(self.cache_path)
        return path if os.path.isfile(path) else None


@dataclass
class ReadTask:
    file_index: int
    path: str
    cached: Optional[List[str]]  # caches of an interrupted run to reuse
    read_format: str
    columns: List[str]
    max_rows: Optional[int]
    split_ratios: List[float]
    keys: KeyColumns
    missing_values: MissingValues
    column_types: Dict[str, str]
    split_method: str
    plan: Plan
    known_ahead: List[str]
    time_features: List[str]


@dataclass
class BucketTask:
    """One bucket of a partitioned input, to be read as chunk `chunk` of `n_chunks`."""

    read: ReadTask
    bucket_path: str
    chunk: int
    n_chunks: int


def _chunk(task: ReadTask, long: LongTable, cache_path: str) -> Chunk:
    summary = summarize_table(task.path, long, task.split_ratios, task.split_method, task.plan.holdout_items)
    return Chunk(task.file_index, cache_path, summary)


def read_input(task: ReadTask) -> Tuple[List[Chunk], List[BucketTask]]:
    """Stage 1 for one input file: read, check, sort, cache and summarise it as one chunk,
    or, when it exceeds the memory budget, cut it into buckets of whole sequences, each
    read as a chunk of its own (`read_bucket`)."""
    plan = task.plan
    if task.cached is not None:
        return [_chunk(task, _read_cached_long_table(p), p) for p in task.cached], []
    if os.path.getsize(task.path) == 0:
        raise read_table.empty_file_error(task.path)
    table_bytes = partition.estimate_table_bytes(task.path, task.read_format, task.columns,
                                                 task.max_rows)
    n_buckets = plan.budget.read_chunks(table_bytes)
    if n_buckets == 1:
        raw = read_table.read_raw_table(task.path, task.read_format, task.columns, task.max_rows)
        long = read_table.long_table_from_raw(task.path, raw, task.columns, task.keys,
                                              task.missing_values, task.column_types,
                                              known_ahead=task.known_ahead,
                                              time_features=task.time_features)
        cache_path = plan.cache_path(task.file_index)
        _write_cache(long, cache_path, task.path)
        return [_chunk(task, long, cache_path)], []
    prefix = os.path.join(plan.work_dir, os.path.basename(task.path))
    buckets = partition.partition_file(task.path, task.read_format, task.columns, task.max_rows,
                                       task.keys.sequence_id, n_buckets, prefix)
    return [], [BucketTask(task, path, k, len(buckets)) for k, path in enumerate(buckets)]


def read_bucket(task: BucketTask) -> Chunk:
    """Stage 1 for one bucket of a partitioned input."""
    read = task.read
    raw = partition.read_bucket(task.bucket_path)
    long = read_table.long_table_from_raw(read.path, raw, read.columns, read.keys,
                                          read.missing_values, read.column_types, whole_file=False,
                                          known_ahead=read.known_ahead,
                                          time_features=read.time_features)
    del raw
    os.remove(task.bucket_path)
    cache_path = read.plan.cache_path(read.file_index, task.chunk)
    _write_cache(long, cache_path, read.path, task.n_chunks)
    return _chunk(read, long, cache_path)


def check_chunked_text(chunks: List[Chunk], column_types: Dict[str, str]) -> None:
    """The numbers-as-text check (read_table) of each input read in chunks, on the
    distinct values of all its chunks (an input read whole was checked as it was read)."""
    by_file: Dict[str, List[FileSummary]] = {}
    for chunk in chunks:
        by_file.setdefault(chunk.summary.path, []).append(chunk.summary)
    for path, summaries in by_file.items():
        if len(summaries) == 1:
            continue
        first = summaries[0]
        for c in first.columns:
            if first.kinds[c] != "str" or c in column_types:
                continue
            values = np.unique(np.concatenate([s.uniques[c] for s in summaries])).tolist()
            if any(c in s.null_columns for s in summaries):
                values.append(None)
            read_table.check_text_values(path, c, pa.array(values, type=pa.string()))


@dataclass
class WindowTask:
    path: str  # the input file, for messages
    cache_path: str
    row_start: int
    row_stop: int
    sequence_ids: np.ndarray
    sequence_labels: np.ndarray  # the ids as the user wrote them, for messages
    offsets: np.ndarray  # sequence starts relative to row_start, plus the row count
    encoding: ColumnEncoding
    window_length: int
    split_ratios: List[float]
    strides: List[int]
    start_mode: str
    sequence_split: Optional[np.ndarray]  # between_sequences: the split of each sequence
    file_index: int
    index: int  # the task's number, names its files in the spool
    spool_dir: str
    holdout_items: int = 0  # leave_last_out's n; 0 for the other methods


def gather_windows(sequence_ids: np.ndarray, offsets: np.ndarray, starts, positions: np.ndarray,
                   values: Dict[str, np.ndarray], window_length: int,
                   encoding: ColumnEncoding, segment_start: np.ndarray) -> Windows:
    """All windows of one split in one fancy-index gather; slots before a sequence are padding.

    `segment_start` (per sequence) is where this split's items begin: earlier slots of a
    window are context from earlier splits, recorded in `target_start` so that they are
    not scored as this split's targets.
    """
    padding = np.clip(-starts.start, 0, window_length)
    target_start = np.maximum(padding, segment_start[starts.sequence_index] - starts.start)
    slots = np.arange(window_length)
    rows = (offsets[starts.sequence_index] + starts.start)[:, None] + slots[None, :]
    pad = slots[None, :] < padding[:, None]
    has_padding = bool(padding.any())
    if has_padding:
        rows = np.where(pad, 0, rows)

    def take(column: np.ndarray, fill) -> np.ndarray:
        out = column[rows]
        if has_padding:
            out[pad] = fill
        return out

    return Windows(
        sequence_id=sequence_ids[starts.sequence_index],
        subsequence_id=starts.subsequence_id,
        padding=padding.astype(np.int64),
        item_position=take(positions, -1),
        values={c: take(v, 0.0 if encoding.is_real(c) else PAD_ID) for c, v in values.items()},
        target_start=target_start.astype(np.int64),
    )


def build_windows(task: WindowTask) -> List[np.ndarray]:
    """Stage 2 for one chunk of whole sequences: encode, cut windows for every split and
    park them in the spool; returns per split the number of windows of each sequence."""
    splits, sequence_index = cut_windows(task)
    return window_spool.save_task(task.spool_dir, task.index, splits, sequence_index,
                                  len(task.sequence_ids))


def cut_windows(task: WindowTask) -> Tuple[List[Windows], List[np.ndarray]]:
    """The windows of every split, and each window's sequence (index into the task's)."""
    table = _read_cache(task.cache_path).slice(task.row_start, task.row_stop - task.row_start)
    values = task.encoding.encode(table)
    positions = table.column(read_table.POSITION_COLUMN).to_numpy()
    if task.sequence_split is None:
        bounds = split_bounds(np.diff(task.offsets), task.split_ratios, task.holdout_items)
    else:
        bounds = whole_sequence_bounds(np.diff(task.offsets), task.sequence_split, len(task.split_ratios))
    out, sequence_index = [], []
    for k, stride in enumerate(task.strides):
        if task.holdout_items and k > 0:
            starts = holdout_window_starts(bounds[:, k], bounds[:, k + 1], task.window_length)
            windows = gather_windows(task.sequence_ids, task.offsets, starts, positions, values,
                                     task.window_length, task.encoding, bounds[:, k])
            windows.target_start[:] = task.window_length - 1  # each window: its one held-out item
            out.append(windows)
            sequence_index.append(starts.sequence_index)
            continue
        cover_start = covered_from(bounds[:, k], bounds[:, k + 1])
        try:
            starts = window_starts(cover_start, bounds[:, k + 1], task.window_length, stride,
                                   task.start_mode)
        except StrideMismatch as e:
            raise SequifierError(
                f"stride_by_split[{k}]={stride} does not fit with subsequence_start_mode: exact: "
                f"the windows of split {k} of sequence {task.sequence_labels[e.sequence_index]} in "
                f"'{task.path}' cover {e.segment_length} items (a later split's segment plus the "
                f"item before it), which leaves {e.leftover} items after the last window of "
                f"{task.window_length}; use subsequence_start_mode: distribute or a stride that "
                "divides every covered length - seq_length - 1"
            ) from None
        out.append(gather_windows(task.sequence_ids, task.offsets, starts, positions, values,
                                  task.window_length, task.encoding, bounds[:, k]))
        sequence_index.append(starts.sequence_index)
    return out, sequence_index


# ---------------------------------------------------------------- running the stages

class Workers:
    """An ordered `map` over up to `n` worker processes, started on first parallel use.

    Workers come from a fork server that has imported this module once (spawn where
    there is none), not from forking this process: pyarrow's thread pools do not
    survive a fork, and the fork server starts each worker without a new import.
    """

    def __init__(self, n: int):
        self.n = n
        self._pool = None

    def map(self, fn: Callable, tasks: List, parallel: bool) -> Iterator:
        if self.n <= 1 or not parallel or len(tasks) < 2:
            return map(fn, tasks)
        if self._pool is None:
            import multiprocessing

            if "forkserver" in multiprocessing.get_all_start_methods():
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload([__name__])
            else:
                context = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.n, mp_context=context)
        return self._pool.map(fn, tasks)

    def __enter__(self) -> "Workers":  # noqa: PYI034
        return self

    def __exit__(self, *exc) -> None:
        # not multiprocessing.Pool: its terminate() can deadlock (its task thread blocked on
        # the queue lock) when a worker's error ends the run early, hanging preprocess
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


def read_inputs(plan: Plan, cfg: PreprocessConfig, cached: List[Optional[List[str]]],
                workers: Workers) -> List[Chunk]:
    tasks = [
        ReadTask(i, path, cached[i], cfg.read_format, plan.columns[i], cfg.max_rows,
                 plan.split_ratios, plan.keys, plan.missing_values, dict(cfg.column_types or {}),
                 cfg.split_method, plan, list(plan.known_ahead), list(plan.time_features))
        for i, path in enumerate(plan.inputs)
    ]
    n_cached = sum(c is not None for c in cached)
    if n_cached:
        logger.info(f"continue_preprocessing: {n_cached} of {len(tasks)} input files "
                 "already read, reading the rest")
    progress = Progress(len(tasks), "read files")
    results = []
    if cfg.max_rows is None:
        # a single file gains nothing from a worker: pyarrow reads it with several threads
        to_read = sum(os.path.getsize(t.path) for t in tasks if t.cached is None)
        parallel = to_read >= PARALLEL_MIN_READ_BYTES
        for result in workers.map(read_input, tasks, parallel):
            results.append(result)
            progress.update()
    else:
        # the row budget runs through the files in order, so they are read one by one
        budget = cfg.max_rows
        for task in tasks:
            task.max_rows = budget
            results.append(read_input(task))
            chunks, buckets = results[-1]
            rows = [read_bucket(b) for b in buckets]  # read here: the rows count
            results[-1] = (chunks + rows, [])
            budget -= sum(c.summary.n_rows for c in results[-1][0])
            progress.update()
            if budget <= 0:
                break
    progress.close()
    buckets = [b for _, file_buckets in results for b in file_buckets]
    by_bucket = []
    if buckets:
        progress = Progress(len(buckets), "read chunks")
        for chunk in workers.map(read_bucket, buckets, parallel=True):
            by_bucket.append(chunk)
            progress.update()
        progress.close()
    read = iter(by_bucket)
    chunks = []
    for file_chunks, file_buckets in results:
        chunks += file_chunks + [next(read) for _ in file_buckets]
    check_chunked_text(chunks, dict(cfg.column_types or {}))
    return chunks


def check_sequences_fit(plan: Plan, chunks: List[Chunk], encoding: ColumnEncoding) -> None:
    """The longest sequence's windows must fit in one process's share of max_ram_gb."""
    per_window = window_bytes(plan.window_length, len(encoding.columns))
    longest = max(chunks, key=lambda c: np.diff(c.summary.sequence_offsets).max()).summary
    index = int(np.argmax(np.diff(longest.sequence_offsets)))
    n_items = int(np.diff(longest.sequence_offsets)[index])
    need = WINDOW_COST * sequence_window_bytes(n_items, plan.split_ratios, plan.strides, per_window)
    if need > plan.budget.share_bytes:
        labels = longest.sequence_ids if longest.sequence_labels is None else longest.sequence_labels
        suggest = Budget.needed_gb(need, plan.n_workers)
        raise SequifierError(
            f"max_ram_gb: {plan.budget.max_ram_gb} GB is too small for the windows of sequence "
            f"{shown(labels[index:index + 1].tolist()[0])} ({n_items} items in '{longest.path}'; with "
            f"seq_length {plan.window_length - 1} and stride_by_split {plan.strides} they need "
            f"about {need / GB:.2f} GB, and each of the run's {n_processes(plan.n_workers)} "
            f"processes may hold {plan.budget.share_bytes / GB:.2f} GB); raise max_ram_gb to at "
            f"least {math.ceil(suggest * 10) / 10} or lower n_cores")


def _window_tasks(plan: Plan, cfg: PreprocessConfig, chunks: List[Chunk],
                  encoding: ColumnEncoding) -> List[WindowTask]:
    total_rows = sum(c.summary.n_rows for c in chunks)
    per_row = windows_per_row(plan.split_ratios, plan.strides) * window_bytes(
        plan.window_length, len(encoding.columns))
    target = min(max(math.ceil(total_rows / (2 * plan.n_workers)), MIN_TASK_ROWS), MAX_TASK_ROWS,
                 plan.budget.window_task_rows(per_row))
    tasks = []
    for chunk in chunks:
        s = chunk.summary
        offsets = s.sequence_offsets
        labels = s.sequence_ids if s.sequence_labels is None else s.sequence_labels
        cuts = np.searchsorted(offsets, np.arange(target, s.n_rows, target))
        bounds = np.unique(np.r_[0, cuts, len(offsets) - 1])
        for lo, hi in zip(bounds[:-1], bounds[1:]):  # noqa: RUF007 (numpy pairs)
            tasks.append(WindowTask(
                s.path, chunk.cache_path, int(offsets[lo]), int(offsets[hi]),
                s.sequence_ids[lo:hi], labels[lo:hi], offsets[lo:hi + 1] - offsets[lo], encoding,
                plan.window_length, plan.split_ratios, plan.strides, cfg.subsequence_start_mode,
                None if s.sequence_split is None else s.sequence_split[lo:hi], chunk.file_index,
                len(tasks), plan.spool_dir, plan.holdout_items,
            ))
    return tasks


def make_windows(plan: Plan, cfg: PreprocessConfig, chunks: List[Chunk],
                 encoding: ColumnEncoding, workers: Workers) -> Spool:
    check_sequences_fit(plan, chunks, encoding)
    tasks = _window_tasks(plan, cfg, chunks, encoding)
    os.makedirs(plan.spool_dir, exist_ok=True)
    parallel = sum(c.summary.n_rows for c in chunks) >= PARALLEL_MIN_WINDOW_ROWS
    counts: List[List[np.ndarray]] = [[] for _ in plan.split_ratios]
    progress = Progress(len(tasks), "build windows")
    for result in workers.map(build_windows, tasks, parallel):
        for k, per_sequence in enumerate(result):
            counts[k].append(per_sequence)
        progress.update()
    progress.close()
    layouts = [window_spool.split_layout([t.index for t in tasks], [t.file_index for t in tasks],
                                         [t.sequence_ids for t in tasks], counts[k])
               for k in range(len(plan.split_ratios))]
    return Spool(plan.spool_dir, layouts, list(encoding.columns), plan.window_length)


def check_holdout(summaries: List[FileSummary], n_splits: int, holdout: int) -> None:
    """leave_last_out: refuse an n too large for every sequence; count the sequences too
    short for it, which go to training whole."""
    lengths = np.concatenate([np.diff(s.sequence_offsets) for s in summaries])
    problem = holdout_problem(lengths, n_splits, holdout)
    if problem:
        raise SequifierError(problem)
    short = int(too_short_for_holdout(lengths, n_splits, holdout).sum())
    held = "the last item" if holdout == 1 else f"the last {holdout} items"
    logger.info(f"leave_last_out: {held} of each sequence for split {n_splits - 1}"
             + (f", the {holdout} before for split 1" if n_splits == 3 else "")
             + f"; {short} of {len(lengths)} sequences have fewer than {(n_splits - 1) * holdout + 1} "
             "items and go to training whole (split_ratios' values are not used, only their number; "
             "each held-out item gets a window of its own, so stride_by_split applies to training only)")


def split_whole_sequences(summaries: List[FileSummary], split_ratios: List[float], seed: int) -> None:
    """Give each sequence its split (between_sequences), by a seeded shuffle of all ids
    in sorted order, so the result depends on the ids and the seed alone."""
    ids = np.concatenate([s.sequence_ids for s in summaries])
    order = np.argsort(ids, kind="stable")
    split = np.empty(len(ids), dtype=np.int64)
    split[order] = assign_sequences(len(ids), split_ratios, seed)
    starts = np.cumsum([0] + [len(s.sequence_ids) for s in summaries])
    for s, lo, hi in zip(summaries, starts[:-1], starts[1:]):
        s.sequence_split = split[lo:hi]


def choose_encoding(plan: Plan, cfg: PreprocessConfig, summaries: List[FileSummary]) -> ColumnEncoding:
    """New id maps and statistics from the data, or those of `reuse_metadata_path`."""
    if cfg.reuse_metadata_path is None:
        # only a column that has missing cells gets a <missing> category
        had_missing = {c for s in summaries for c in s.missing.counts}
        still_null = {c for s in summaries for c in s.null_columns}  # after interpolate, carry_forward
        filled_later = {c for c in summaries[0].columns
                        if plan.missing_values.policy(c).fills_later and c in had_missing
                        and (plan.missing_values.policy(c).action not in SERIES or c in still_null)}
        return merge_summaries(summaries, filled_later)
    source = resolve_path(cfg.project_root, cfg.reuse_metadata_path)
    if not os.path.isfile(source):
        raise SequifierError(f"reuse_metadata_path: file '{source}' not found; point it at the "
                             "configs/metadata_configs/NAME.json of the run whose encoding to reuse")
    encoding, unknown = encoding_from_metadata(read_metadata(source), source, summaries)
    for column, values in unknown.items():
        if len(values):
            examples = ", ".join(shown(v) for v in values[:3].tolist())
            logger.warning(f"{column}: {len(values)} values not in the id map of "
                        f"{cfg.reuse_metadata_path} ({examples}{', ...' if len(values) > 3 else ''}) "
                        "get the unknown id")
    return encoding


def make_metadata(plan: Plan, cfg: PreprocessConfig, encoding: ColumnEncoding,
                  summaries: List[FileSummary], sequence_ids: Optional[List[str]],
                  future_paths: List[str]) -> Metadata:
    categorical = [c for c in encoding.columns if not encoding.is_real(c)]
    id_maps = {c: encoding.id_map(c) for c in categorical}
    return Metadata(
        name=plan.name,
        seq_length=cfg.seq_length,
        write_format=cfg.write_format,
        column_types={c: "real" if encoding.is_real(c) else "categorical" for c in encoding.columns},
        id_maps=id_maps,
        id_map_fingerprint=id_map_fingerprint(id_maps),
        n_classes={c: len(id_maps[c]) + 2 for c in categorical},
        selected_columns_statistics={
            c: {"mean": encoding.mean[c], "std": encoding.std[c]}
            for c in encoding.columns if encoding.is_real(c)
        },
        original_dtypes={c: encoding.kinds[c] for c in categorical},
        split_paths=list(plan.split_paths),
        split_ratios=list(plan.split_ratios),
        stride_by_split=list(plan.strides),
        split_method=cfg.split_method,
        sequence_id_column=plan.keys.sequence_id,
        position_column=plan.keys.position,
        position_type=summaries[0].position_type,
        sequence_ids=sequence_ids,
        known_ahead_columns=list(plan.known_ahead) + list(plan.time_features),
        time_features=list(plan.time_features),
        future_path=future_rows_path(plan.name) if future_paths else None,
    )


def write_outputs(plan: Plan, cfg: PreprocessConfig, spool: Spool, metadata: Metadata,
                  future_paths: List[str]) -> None:
    """Write every split, the future rows and the metadata to temporary names, then
    rename them all."""
    progress = Progress(len(plan.split_paths), "write splits")
    sharded = not cfg.merge_output  # a folder of shards per split
    targets = [plan.absolute(relative) for relative in plan.split_paths]
    window_length, n_columns = plan.window_length, len(spool.columns)
    future = [plan.absolute(metadata.future_path)] if metadata.future_path else []
    with output_set([plan.metadata_path] + future + ([] if sharded else targets),
                    dirs=targets if sharded else []) as tmps:
        if future:
            _write_future_rows(future_paths, tmps[future[0]])
        for k, target in enumerate(targets):
            n = spool.n_windows(k)
            if n == 0:
                logger.warning(f"split {k} has no windows (sequences too short for "
                            "its share in split_ratios)")
            if sharded:
                # lazy loading reads shard by shard; a seeded shuffle makes every shard a
                # sample of the whole split instead of a run of neighbouring sequences
                order = np.random.default_rng([cfg.seed, k]).permutation(n)
                piece = plan.budget.write_piece_windows(window_bytes(window_length, n_columns))
                window_spool.write_shard_split(spool, k, order, tmps[target], f"{plan.name}-split{k}",
                                               cfg.batches_per_file, metadata.column_types,
                                               cfg.write_format, metadata.id_map_fingerprint, piece)
            else:
                row_bytes = window_bytes(window_length, 0)  # a row: one block of one window
                rows = plan.budget.write_piece_windows(row_bytes)
                window_spool.write_table_split(spool, k, tmps[target], cfg.write_format,
                                               metadata.id_map_fingerprint,
                                               min(rows, DEFAULT_ROW_GROUP_ROWS))
            progress.update()
        write_metadata(metadata, tmps[plan.metadata_path])
    progress.close()


def _write_future_rows(paths: List[str], target: str) -> None:
    """The chunks' future rows as one parquet table (in input order)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(p) for p in paths]
    pq.write_table(pa.concat_tables(tables, promote_options="permissive"), target)


def forecast_settings(cfg: PreprocessConfig) -> Tuple[List[str], List[str]]:
    """(known_ahead_columns, time_features) of the run. New data for a trained model
    (`reuse_metadata_path`) that names neither takes the reused run's: the model's
    known-ahead inputs and calendar columns must be there again, and its future rows set
    aside."""
    if cfg.reuse_metadata_path is None or cfg.known_ahead_columns or cfg.time_features:
        return list(cfg.known_ahead_columns), list(cfg.time_features)
    source = resolve_path(cfg.project_root, cfg.reuse_metadata_path)
    if not os.path.isfile(source):
        return [], []  # choose_encoding reports it
    reused = read_metadata(source)
    features = list(reused.time_features)
    known = [c for c in reused.known_ahead_columns if c not in features]
    if known or features:
        logger.info(f"known_ahead_columns {known} and time_features {features} as in "
                    f"{cfg.reuse_metadata_path}")
    return known, features


def run_preprocess(cfg: PreprocessConfig) -> Metadata:
    """Run `sequifier preprocess` for a composed config; return the metadata."""
    validate("preprocess", cfg)
    plan = make_plan(cfg)
    with dataset_lock(os.path.dirname(plan.work_dir), plan.name):  # the work folder is per dataset
        return _preprocess(plan, cfg)


def _preprocess(plan: Plan, cfg: PreprocessConfig) -> Metadata:
    _check_overwrite(plan, cfg.overwrite)
    cached = prepare_work_dir(plan, cfg)
    try:
        with Workers(plan.n_workers) as workers:
            chunks = read_inputs(plan, cfg, cached, workers)
            summaries = [c.summary for c in chunks]
            if cfg.split_method == "between_sequences":
                split_whole_sequences(summaries, plan.split_ratios, cfg.seed)
            if plan.holdout_items:
                check_holdout(summaries, len(plan.split_ratios), plan.holdout_items)
            encoding = choose_encoding(plan, cfg, summaries)
            for line in report_lines([s.missing for s in summaries]):
                logger.info(f"missing values: {line}")
            for line in column_warnings(summaries, encoding):
                logger.warning(line)
            sequence_ids = number_sequences(summaries)
            spool = make_windows(plan, cfg, chunks, encoding, workers)
        future_paths = [c.future_path for c in chunks if c.future_path]
        metadata = make_metadata(plan, cfg, encoding, summaries, sequence_ids, future_paths)
        write_outputs(plan, cfg, spool, metadata, future_paths)
    except BaseException:
        _clean_work_dir_after_failure(plan, cfg)
        raise
    shutil.rmtree(plan.work_dir, ignore_errors=True)
    total = ", ".join(f"split{k}: {spool.n_windows(k)}" for k in range(len(plan.split_paths)))
    logger.info(f"wrote {plan.name} windows ({total}) and "
             f"{os.path.relpath(plan.metadata_path, plan.project_root)}")
    return metadata
