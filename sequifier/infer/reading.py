"""Reading the windows infer and evaluate run on, checked before any model runs.

`read_model_windows` reads a window file (or shard folder) with the columns a model needs
and checks that it holds windows of the model's length encoded with the metadata's id
maps; `model_inputs` cuts the model's input slots out of them.
"""

import os

import numpy as np

from sequifier.config.metadata import Metadata
from sequifier.data.known_ahead import window_inputs
from sequifier.data.window_files import check_fingerprint, read_windows
from sequifier.data.windows import TABULAR_FORMATS, Windows, last_window_per_sequence
from sequifier.errors import SequifierError
from sequifier.infer.model_info import ModelInfo
from sequifier.infer.values import clamp_unknown_ids


def default_split(metadata: Metadata, index: int, field_name: str) -> str:
    """The metadata's split `index` (relative to project_root), for an unset `field_name`."""
    if not metadata.split_paths:
        raise SequifierError(f"{field_name}: not set and the metadata records no splits; set {field_name}")
    return metadata.split_paths[index]


def _is_empty_tabular(path: str, read_format: str) -> bool:
    if read_format == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows == 0
        except (OSError, ValueError):  # pyarrow.ArrowInvalid is a ValueError
            raise SequifierError(f"data_path: '{path}' is not a readable parquet file") from None
    with open(path, "rb") as f:  # csv: a header and nothing else (bytes: any file is safe)
        f.readline()
        return not f.readline().strip()


def read_model_windows(read_format: str, metadata: Metadata, path: str, columns: list[str],
                       seq_length: int, metadata_path: str) -> Windows:
    """The windows of `path` with `columns`, checked to be windows of `seq_length` and to
    be encoded with the id maps of `metadata` (read from `metadata_path`)."""
    empty = SequifierError(f"data_path: '{path}' holds no windows; nothing to infer on")
    tabular = read_format in TABULAR_FORMATS
    is_file = tabular and os.path.isfile(path)
    if is_file and (os.path.getsize(path) == 0 or _is_empty_tabular(path, read_format)):
        raise empty
    check_fingerprint(path, read_format, metadata, metadata_path)
    try:
        windows = read_windows(path, read_format, metadata.column_types, columns)
    except SequifierError as e:
        raise SequifierError(f"data_path: {e}") from None
    except (ValueError, OSError) as e:  # parser errors of pandas/pyarrow: wrong format
        first_line = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        if not first_line.isprintable():  # a parser quoting the binary bytes it choked on
            first_line = type(e).__name__
        raise SequifierError(
            f"data_path: '{path}' could not be read as {read_format} ({first_line}); "
            "check read_format"
        ) from None
    if len(windows) == 0:
        raise empty
    if windows.window_length != seq_length + 1:
        raise SequifierError(
            f"seq_length: the data '{path}' holds windows of seq_length "
            f"{windows.window_length - 1}, the model expects {seq_length}; preprocess "
            "with the model's seq_length"
        )
    return windows


def check_forecast_input(data_path: str, windows: Windows, seq_length: int) -> None:
    """A forecast continues each sequence's last item: a window without one has nothing
    to continue (preprocess never writes one; a hand-made or foreign file can)."""
    empty = windows.padding > seq_length
    if empty.any():
        raise SequifierError(
            f"data_path: {int(empty.sum())} windows of '{data_path}' hold no item (e.g. of "
            f"sequence {windows.sequence_id[empty][0]}): a forecast needs sequences of at "
            "least one item; preprocess the data again"
        )


def model_inputs(metadata: Metadata, info: ModelInfo, windows: Windows,
                 first_slot: int = 0) -> dict[str, np.ndarray]:
    """Each input column's model input when the ordinary inputs are slots
    first_slot..first_slot+L-1 (known-ahead columns: one slot later, data/known_ahead.py),
    typed as the export expects."""
    return typed_inputs(metadata, window_inputs(windows.values, info.input_columns,
                                                info.known_ahead_columns, info.seq_length,
                                                first_slot))


def typed_inputs(metadata: Metadata, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int64 ids (unknown ones clamped) for categorical columns, float32 for real ones."""
    inputs = {}
    for column, array in values.items():
        if metadata.column_types[column] == "categorical":
            array = clamp_unknown_ids(column, array.astype(np.int64), metadata.n_classes[column])
        else:
            array = array.astype(np.float32)
        inputs[column] = array
    return inputs


def forecast_windows(windows: Windows) -> Windows:
    """The window of each sequence that ends with its last item (a forecast continues it)."""
    return windows.select(last_window_per_sequence(windows))


def forecast_positions(windows: Windows, steps: int, step: int | None) -> np.ndarray:
    """[N, steps] positions after each window's last item: last + step * (1..steps).

    The step is `forecast_position_step` when set, else the sequence's most recent step
    (last position minus the one before; 1 for a sequence of one item).
    """
    last = windows.item_position[:, -1]
    if step is None:
        before = windows.item_position[:, -2]
        # slot L-1 is an item unless the window is all padding up to its last slot
        has_before = windows.padding < windows.window_length - 1
        step = np.where(has_before, last - before, 1)
    step = np.broadcast_to(np.asarray(step, dtype=np.int64), last.shape)
    return last[:, None] + step[:, None] * np.arange(1, steps + 1)
