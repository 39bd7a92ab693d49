"""The window format: what `preprocess` writes and `train`/`infer` read.

A window is `seq_length + 1` consecutive items of one sequence (inputs plus the item
shifted by one that the model learns to predict). Short windows at a sequence's start
are left-padded; `padding` counts the pad slots (categorical PAD_ID, real 0.0,
itemPosition -1). A window of a later split may also start with items of earlier
splits as context; `targetStart` is the first slot whose item belongs to the window's
own split, and training scores only targets from that slot on (so validation loss is
never computed on training items). Files without it (older runs) score from `padding`.

Tabular layout (parquet/csv, one file per split), readable with pandas:

    sequenceId | subsequenceId | padding | targetStart | inputCol    | "0" | ... | "L"
    0          | 0             | 3       | 3           | itemPosition| -1  | ... | 45
    0          | 0             | 3       | 3           | itemId      |  0  | ... | 17
    ...

One row per window and column; rows come in column blocks (all windows of the first
column, then the next, in the same window order). The `itemPosition` block holds the
original positions, so windows map back to the user's table exactly. Values are ids for
categorical columns and standardised values for real ones.

Sharded layouts (`merge_output: false`): a folder `NAME-splitK/` of files
`NAME-splitK-SSSSS.{parquet,csv,pt}` of at most `batches_per_file` windows each. Parquet
and csv shards are small tables in the layout above; `.pt` shards are dicts of plain
tensors (loadable with torch.load's default weights_only=True):
    {"sequenceId": [N], "subsequenceId": [N], "padding": [N], "targetStart": [N],
     "itemPosition": [N, L+1] int64, "columns": {col: [N, L+1]}}
categorical columns int64, real columns float32.

Reading (a file or a folder, any range of windows) lives in `window_files.py`.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sequifier.errors import SequifierError
from sequifier.io_utils import atomic_dir, atomic_path
from sequifier.tensor_files import load_tensor_file

POSITION_COLUMN = "itemPosition"
INDEX_COLUMNS = ["sequenceId", "subsequenceId", "padding"]
TARGET_START_COLUMN = "targetStart"
TABULAR_FORMATS = ("parquet", "csv")
WINDOW_FORMATS = TABULAR_FORMATS + ("pt",)  # read_format of train/infer, write_format of preprocess


@dataclass
class Windows:
    """A set of windows held as arrays; `values[col]` is [N, seq_length + 1]."""

    sequence_id: np.ndarray  # int64 [N]
    subsequence_id: np.ndarray  # int64 [N]
    padding: np.ndarray  # int64 [N]
    item_position: np.ndarray  # int64 [N, L+1]
    values: Dict[str, np.ndarray]
    # int64 [N]: first slot of the window's own split, the first target scored (earlier
    # slots are padding or context from earlier splits). None when built: from `padding`.
    target_start: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.target_start is None:  # windows of files written before targetStart existed
            self.target_start = self.padding.copy()

    def __len__(self) -> int:
        return len(self.sequence_id)

    @property
    def window_length(self) -> int:
        return self.item_position.shape[1]

    def select(self, index: np.ndarray) -> "Windows":
        return Windows(
            self.sequence_id[index],
            self.subsequence_id[index],
            self.padding[index],
            self.item_position[index],
            {c: v[index] for c, v in self.values.items()},
            self.target_start[index],
        )

    @staticmethod
    def concat(parts: List["Windows"]) -> "Windows":
        cols = parts[0].values.keys()
        return Windows(
            np.concatenate([p.sequence_id for p in parts]),
            np.concatenate([p.subsequence_id for p in parts]),
            np.concatenate([p.padding for p in parts]),
            np.concatenate([p.item_position for p in parts]),
            {c: np.concatenate([p.values[c] for p in parts]) for c in cols},
            np.concatenate([p.target_start for p in parts]),
        )


def first_predicted_slot(windows: Windows) -> np.ndarray:
    """int64 [N]: the first slot each window predicts when every target of the split is
    to be predicted exactly once (every-position inference, evaluate).

    A window predicts its slots from `target_start` on (its own split's items), never a
    sequence's first item (only padding precedes it; training does score that one) nor
    slot 0 (no input precedes it), and not the items an earlier window of the same
    sequence already ends with: windows of one sequence may overlap (`distribute` spreads them at
    most `stride` apart), and an item is predicted by the first window that has it.
    """
    n = len(windows)
    last = windows.item_position[:, -1]
    order = np.lexsort((last, windows.sequence_id))
    before = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    same = windows.sequence_id[order[1:]] == windows.sequence_id[order[:-1]]
    before[order[1:][same]] = last[order[:-1][same]]
    # positions rise along a window (pad slots hold -1 and come first), so the slots an
    # earlier window covered are a prefix: count them
    covered = (windows.item_position <= before[:, None]).sum(axis=1)
    return np.maximum(np.maximum(windows.target_start, windows.padding + 1), covered).astype(np.int64)


def last_window_per_sequence(windows: Windows) -> np.ndarray:
    """Indices (in file order) of each sequence's window that ends with its last item."""
    last = windows.item_position[:, -1]
    order = np.lexsort((last, windows.sequence_id))
    ends = np.r_[windows.sequence_id[order[1:]] != windows.sequence_id[order[:-1]], True]
    return np.sort(order[ends])


def _position_names(window_length: int) -> List[str]:
    return [str(j) for j in range(window_length)]


def windows_to_frame(windows: Windows):
    """Column-block long frame of the tabular layout (see module docstring)."""
    import pandas as pd

    n, width = windows.item_position.shape
    blocks = [(POSITION_COLUMN, windows.item_position)] + list(windows.values.items())
    data = np.concatenate([b.astype(np.float64) for _, b in blocks], axis=0)
    frame = pd.DataFrame(data, columns=_position_names(width))
    k = len(blocks)
    frame.insert(0, "inputCol", np.repeat([name for name, _ in blocks], n))
    frame.insert(0, TARGET_START_COLUMN, np.tile(windows.target_start, k))
    frame.insert(0, "padding", np.tile(windows.padding, k))
    frame.insert(0, "subsequenceId", np.tile(windows.subsequence_id, k))
    frame.insert(0, "sequenceId", np.tile(windows.sequence_id, k))
    return frame


FINGERPRINT_KEY = "idMapFingerprint"  # in a shard dict; parquet: schema metadata


def id_map_fingerprint(id_maps: Dict[str, Dict[str, int]]) -> str:
    """A short hash of the id maps windows were encoded with."""
    text = json.dumps(id_maps, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_windows(windows: Windows, path: str, write_format: str, fingerprint: Optional[str] = None) -> None:
    """Write one split atomically (`path` is a file for parquet/csv)."""

    def read(block: str, lo: int, hi: int) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
        values = windows.item_position if block == POSITION_COLUMN else windows.values[block]
        index = {"sequenceId": windows.sequence_id, "subsequenceId": windows.subsequence_id,
                 "padding": windows.padding, TARGET_START_COLUMN: windows.target_start}
        return {name: v[lo:hi] for name, v in index.items()}, values[lo:hi]

    write_tabular(len(windows), [POSITION_COLUMN, *windows.values], windows.window_length, read,
                  path, write_format, fingerprint)


# pyarrow's row group length for pq.write_table
DEFAULT_ROW_GROUP_ROWS = 1024 * 1024
# (block, first window, stop) -> the windows' index columns and their [n, L] block values
BlockReader = Callable[[str, int, int], Tuple[Dict[str, np.ndarray], np.ndarray]]


def tabular_schema(window_length: int, write_format: str, fingerprint: Optional[str]):
    """The Arrow schema of the tabular layout: pandas' conversion of `windows_to_frame`,
    whose metadata lets pandas read the file back with the same dtypes; parquet carries
    the id-map fingerprint in it too (csv has no place for it)."""
    import pyarrow as pa

    empty = np.zeros(0, dtype=np.int64)
    frame = windows_to_frame(Windows(empty, empty, empty, np.zeros((0, window_length), np.int64), {}))
    schema = pa.Table.from_pandas(frame, preserve_index=False).schema
    if write_format == "parquet" and fingerprint:
        schema = schema.with_metadata({**(schema.metadata or {}), FINGERPRINT_KEY.encode(): fingerprint.encode()})
    return schema


def write_tabular(n_windows: int, blocks: Sequence[str], window_length: int, read: BlockReader,
                  path: str, write_format: str, fingerprint: Optional[str] = None,
                  row_group_rows: int = DEFAULT_ROW_GROUP_ROWS) -> None:
    """Write one split atomically in the tabular layout, `row_group_rows` rows at a time.

    Each group of rows (parquet: a row group) is gathered from `read` into one
    contiguous table; with pyarrow's default length the file is the one pq.write_table
    writes for the whole table (the tests compare the bytes).
    """
    if write_format not in TABULAR_FORMATS:
        raise ValueError(f"write_tabular: tabular format expected, got {write_format}")
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    schema = tabular_schema(window_length, write_format, fingerprint)
    total = n_windows * len(blocks)
    with atomic_path(path) as tmp:
        if write_format == "parquet":
            writer = pq.ParquetWriter(tmp, schema)
        else:  # pyarrow's writer is ~10x faster than DataFrame.to_csv here
            writer = pa_csv.CSVWriter(tmp, schema)
        with writer:
            for start in range(0, max(total, 1), row_group_rows):  # an empty split: one empty table
                table = _rows(schema, n_windows, blocks, window_length, read, start,
                              min(start + row_group_rows, total))
                if write_format == "parquet":
                    writer.write_table(table, row_group_size=row_group_rows)
                else:
                    writer.write_table(table)


def _rows(schema, n_windows: int, blocks: Sequence[str], window_length: int, read: BlockReader,
          start: int, stop: int):
    """Rows [start, stop) of the tabular layout as one table of contiguous arrays."""
    import pyarrow as pa

    m = stop - start
    index = {name: np.empty(m, dtype=np.int64) for name in INDEX_COLUMNS + [TARGET_START_COLUMN]}
    values = np.empty((m, window_length), dtype=np.float64, order="F")  # columns contiguous
    names = []
    for b, block in enumerate(blocks):
        lo, hi = max(start, b * n_windows), min(stop, (b + 1) * n_windows)
        if hi <= lo:
            continue
        got, block_values = read(block, lo - b * n_windows, hi - b * n_windows)
        at = slice(lo - start, hi - start)
        for name in index:
            index[name][at] = got[name]
        values[at] = block_values
        names.append(pa.repeat(pa.scalar(block, schema.field("inputCol").type), hi - lo))
    input_col = pa.concat_arrays(names) if names else pa.array([], schema.field("inputCol").type)
    arrays = [pa.array(index[name]) for name in INDEX_COLUMNS + [TARGET_START_COLUMN]] + [input_col]
    # from_pandas: NaN counts as missing, as in pandas' own conversion of the frame
    arrays += [pa.array(values[:, j], from_pandas=True) for j in range(window_length)]
    return pa.Table.from_arrays(arrays, schema=schema)


def shard_dict(windows: Windows, column_types: Dict[str, str]):
    import torch

    return {
        "sequenceId": torch.from_numpy(windows.sequence_id.astype(np.int64)),
        "subsequenceId": torch.from_numpy(windows.subsequence_id.astype(np.int64)),
        "padding": torch.from_numpy(windows.padding.astype(np.int64)),
        TARGET_START_COLUMN: torch.from_numpy(windows.target_start.astype(np.int64)),
        "itemPosition": torch.from_numpy(windows.item_position.astype(np.int64)),
        "columns": {
            c: torch.from_numpy(
                v.astype(np.int64 if column_types[c] == "categorical" else np.float32)
            )
            for c, v in windows.values.items()
        },
    }


def write_shards(windows: Windows, folder: str, prefix: str, per_shard: int,
                 column_types: Dict[str, str], write_format: str = "pt",
                 fingerprint: Optional[str] = None) -> None:
    """Write one split as a folder of files of `per_shard` windows each, atomically:
    `.pt` shards, or parquet/csv files in the tabular layout; each file that can carries
    the id-map `fingerprint`."""
    with atomic_dir(folder) as tmp:
        write_shard_files(windows, tmp, prefix, per_shard, column_types, write_format, fingerprint)


def write_shard_files(windows: Windows, folder: str, prefix: str, per_shard: int,
                      column_types: Dict[str, str], write_format: str = "pt",
                      fingerprint: Optional[str] = None, first: int = 0) -> None:
    """The shards of `windows` into an existing folder, numbered from `first`."""
    import torch

    for k, start in enumerate(range(0, max(len(windows), 1), per_shard)):
        part = windows.select(np.arange(start, min(start + per_shard, len(windows))))
        path = os.path.join(folder, f"{prefix}-{first + k:05d}.{write_format}")
        if write_format == "pt":
            shard = shard_dict(part, column_types)
            if fingerprint:
                shard[FINGERPRINT_KEY] = fingerprint
            torch.save(shard, path)
        else:
            write_windows(part, path, write_format, fingerprint)


def shard_to_windows(raw: dict, columns: Sequence[str],
                     take: Callable = lambda tensor: tensor.numpy()) -> Windows:
    """Windows from a loaded shard dict (the inverse of `shard_dict`); `take` turns each
    tensor into the array kept (e.g. a copied slice of rows)."""
    return Windows(
        take(raw["sequenceId"]), take(raw["subsequenceId"]), take(raw["padding"]),
        take(raw["itemPosition"]), {c: take(raw["columns"][c]) for c in columns},
        take(raw[TARGET_START_COLUMN]) if TARGET_START_COLUMN in raw else None,
    )


SHARD_KEYS = ("sequenceId", "subsequenceId", "padding", "itemPosition", "columns")


def load_shard(path: str, mmap: bool = False) -> dict:
    """A shard's dict of tensors, loaded without running any code the file may carry.

    With `mmap` only the rows later copied out are read from disk.
    """
    fix = "re-run preprocess with write_format: pt, or remove the file from the folder"
    raw = load_tensor_file(path, "shard", fix, mmap=mmap)
    if not (isinstance(raw, dict) and all(k in raw for k in SHARD_KEYS) and isinstance(raw["columns"], dict)):
        raise SequifierError(f"shard '{path}' is not a sequifier shard (expected a dict with "
                             f"{list(SHARD_KEYS)}); {fix}")
    return raw
