"""Future rows: the known-ahead values of the positions a forecast predicts.

A forecast of H positions after a sequence's last observed item needs, for each of
them, the values of the model's known-ahead columns (data/known_ahead.py) there: the
weather forecast, the planned price, the workday flag of tomorrow. The user gives them
as rows of the same long table whose other feature cells are empty (the targets are
what is to be forecast):

    timestamp,        region, demand_gw, temperature_c
    2024-06-01 23:30, north,  31.2,      17.5
    2024-06-02 00:00, north,  ,          17.1     <- a future row
    ...

`preprocess` (with `known_ahead_columns`) takes each sequence's trailing rows whose
non-known-ahead feature cells are all empty out of the data (`read_table.split_future_rows`, before
missing values are handled) and writes them, in the user's terms, to
`data/NAME-future.parquet` (the metadata's `future_path`). A gap inside a sequence is a
missing reading, not a future row, and stays with `missing_values`.

`infer` with `forecast: true` reads that file and/or `future_data_path` (a csv/parquet
table of the same shape, e.g. tomorrow's weather forecast), encodes the known-ahead
columns with the metadata's id maps and statistics, derives the time features of each
position, and looks up every forecast position (`FutureRows.values_at`); a position
without its values is one error line before anything is written.
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.errors import SequifierError, shown


@dataclass
class FutureRows:
    """Future rows in the windows' terms: sequence numbers, int64 positions and the
    encoded known-ahead values (ids / standardised), sorted by (sequence, position)."""

    sequence_id: np.ndarray  # int64 [M]
    position: np.ndarray  # int64 [M]
    values: Dict[str, np.ndarray]  # column -> [M]
    known: Dict[str, np.ndarray]  # column -> bool [M]: the cell held a value

    def values_at(self, sequence_id: np.ndarray, positions: np.ndarray, columns: Sequence[str],
                  label) -> Dict[str, np.ndarray]:
        """{column: [N, H]} at each sequence's H forecast positions; `label(i, j)` names
        sequence i's position j for the error line of a position without its values."""
        import pandas as pd

        n, h = positions.shape
        table = pd.MultiIndex.from_arrays([self.sequence_id, self.position])
        wanted = pd.MultiIndex.from_arrays([np.repeat(np.asarray(sequence_id, dtype=np.int64), h),
                                            positions.reshape(-1)])
        found = np.asarray(table.get_indexer(wanted), dtype=np.int64)
        ok = found >= 0
        for c in columns:
            ok &= self.known[c][np.maximum(found, 0)] if len(self.position) else False
        if not ok.all():
            bad = np.flatnonzero(~ok)
            i, j = divmod(int(bad[0]), h)
            raise SequifierError(
                f"forecast: no future row with the known-ahead values of {list(columns)} for "
                f"{label(i, j)} ({len(bad)} of {n * h} forecast positions lack them); add rows "
                "for the forecast positions with those columns filled and the targets empty, to "
                "the table before preprocess or to a file named by future_data_path"
            )
        return {c: self.values[c][found].reshape(n, h) for c in columns}

    @staticmethod
    def combine(parts: List["FutureRows"]) -> "FutureRows":
        """One set of future rows; a later part's row replaces an earlier one's at the same
        (sequence, position) (future_data_path over the preprocessed table's rows)."""
        parts = [p for p in parts if p is not None]
        columns = set.intersection(*(set(p.values) for p in parts)) if parts else set()
        sequence = np.concatenate([p.sequence_id for p in parts])
        position = np.concatenate([p.position for p in parts])
        # the last of equal pairs: unique on the reversed order
        order = np.lexsort((position, sequence))[::-1]
        key = np.stack([sequence[order], position[order]], axis=1)
        _, first = np.unique(key, axis=0, return_index=True)
        keep = order[first]
        return FutureRows(sequence[keep], position[keep],
                          {c: np.concatenate([p.values[c] for p in parts])[keep] for c in columns},
                          {c: np.concatenate([p.known[c] for p in parts])[keep] for c in columns})


def read_future_rows(path: str, metadata, columns: Sequence[str], field: str) -> FutureRows:
    """Future rows of `path` (csv or parquet, in the user's terms: the id and position
    columns of the metadata and the known-ahead `columns`; time features are not read,
    they follow from the positions), encoded as the windows are."""
    from sequifier.data.encoding import metadata_encoding
    from sequifier.data.missing import missing_mask
    from sequifier.data.read_table import (
        canonical_position,
        canonical_sequence_id,
        read_error,
        read_header,
    )

    if not os.path.isfile(path):
        raise SequifierError(f"{field}: file '{path}' not found; point it at a csv or parquet table "
                             "of future rows (id, position and the known-ahead columns)")
    read_format = "parquet" if path.endswith(".parquet") else "csv"
    ids, position = metadata.sequence_id_column, metadata.position_column
    given = list(columns)
    header = read_header(path, read_format)
    lacking = [c for c in [ids, position] + given if c not in header]
    if lacking:
        raise SequifierError(f"{field}: '{path}' has no column {shown(lacking[0])} (its columns: "
                             f"{header[:12]}); future rows need {[ids, position] + given}")
    try:
        if read_format == "csv":
            from pyarrow import csv as pacsv

            from sequifier.data.read_table import NULL_VALUES

            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                include_columns=[ids, position] + given, null_values=NULL_VALUES,
                strings_can_be_null=True))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=[ids, position] + given)
    except (pa.ArrowException, OSError) as e:
        raise SequifierError(f"{field}: {read_error(path, read_format, e)}") from None
    keyed = ~(missing_mask(table.column(ids)) | missing_mask(table.column(position)))
    table = table.filter(pa.array(keyed))
    sequence = canonical_sequence_id(path, ids, table.column(ids))
    positions, position_type = canonical_position(path, position, table.column(position))
    if (position_type == "integer") != (metadata.position_type == "integer"):
        raise SequifierError(f"{field}: '{path}' holds {position_type} positions but the data "
                             f"was preprocessed with {metadata.position_type} ones; give the same kind")
    position_ticks = _ticks_as(np.asarray(positions.to_numpy(), dtype=np.int64), position_type,
                               metadata.position_type, field, path)
    if metadata.sequence_ids is None:
        if not pa.types.is_integer(sequence.type):
            raise SequifierError(f"{field}: '{path}' holds text sequence ids but the data has "
                                 "integer ones; use the ids of the preprocessed table")
        number = np.asarray(sequence.to_numpy(), dtype=np.int64)
        usable = np.ones(len(number), dtype=bool)
    else:
        index = pc.index_in(sequence.cast(pa.string()),
                            value_set=pa.array(metadata.sequence_ids, type=pa.string()))
        usable = np.asarray(pc.is_valid(index).to_numpy(zero_copy_only=False), dtype=bool)
        number = np.asarray(pc.fill_null(index, -1).to_numpy(), dtype=np.int64)
    values, known = {}, {}
    encoding = metadata_encoding(metadata, given)
    cast = {"real": pa.float64(), "int64": pa.int64(), "str": pa.string()}
    typed = {}
    for c in given:
        known[c] = ~missing_mask(table.column(c))
        try:
            typed[c] = table.column(c).cast(cast[encoding.kinds[c]])
        except pa.ArrowException:
            raise SequifierError(f"{field}: column '{c}' of '{path}' cannot be read as "
                                 f"{encoding.kinds[c]}, its type in the preprocessed data") from None
    if given:
        values.update(encoding.encode(pa.table(typed)))
    keep = usable
    pairs = np.stack([number[keep], position_ticks[keep]], axis=1)
    if len(np.unique(pairs, axis=0)) < len(pairs):
        raise SequifierError(f"{field}: '{path}' has two future rows for one ({ids}, {position}) "
                             "pair; keep one row per position")
    return FutureRows(number[keep], position_ticks[keep], {c: v[keep] for c, v in values.items()},
                      {c: k[keep] for c, k in known.items()})


def _ticks_as(ticks: np.ndarray, given: str, wanted: str, field: str, path: str) -> np.ndarray:
    """Positions read as `given` ticks, as ticks of the preprocessed `wanted` type."""
    from sequifier.data.read_table import position_arrow_type, positions_to_user

    if given == wanted:
        return ticks
    try:
        as_wanted = positions_to_user(ticks, given).cast(position_arrow_type(wanted))
    except pa.ArrowException:
        raise SequifierError(f"{field}: the positions of '{path}' ({given}) cannot be read as "
                             f"the preprocessed data's {wanted}; write them the same way") from None
    if pa.types.is_date32(as_wanted.type):
        as_wanted = as_wanted.cast(pa.int32())
    return np.asarray(as_wanted.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def calendar_values(metadata, columns: Sequence[str], positions: np.ndarray) -> Dict[str, np.ndarray]:
    """{time feature: [N, H] ids} of forecast positions (no future row needed)."""
    from sequifier.data.encoding import metadata_encoding
    from sequifier.data.read_table import positions_to_user
    from sequifier.data.time_features import derive

    if not columns:
        return {}
    flat = derive(columns, positions_to_user(positions.reshape(-1), metadata.position_type))
    encoded = metadata_encoding(metadata, columns).encode(pa.table({c: pa.array(v) for c, v in flat.items()}))
    return {c: v.reshape(positions.shape) for c, v in encoded.items()}
