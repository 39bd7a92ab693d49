"""Reading the user's long table (CSV or Parquet) into a checked, sorted Arrow table.

Every problem with an input file becomes a one-line SequifierError naming the file and
the column. The result of `read_long_table` is the canonical form the rest of
preprocessing works on: the user's id and position columns (named by
`sequence_id_column` / `position_column`) renamed to `sequenceId` and `itemPosition`,
sorted by them; ids as int64 or strings, positions as int64 (times as ticks of their
unit, dates as days, see `position_type`); integer features as int64, real features as
float64, everything else as strings.
"""

import csv
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.data.missing import MissingReport, MissingValues, apply_missing_values, fill_series, missing_mask
from sequifier.errors import SequifierError

SEQUENCE_COLUMN = "sequenceId"
POSITION_COLUMN = "itemPosition"
KEY_COLUMNS = (SEQUENCE_COLUMN, POSITION_COLUMN)
# position_type of integer positions; times are "timestamp[UNIT]" or
# "timestamp[UNIT, tz=ZONE]", dates "date32[day]" (pyarrow's names of those types)
INTEGER_POSITIONS = "integer"


@dataclass(frozen=True)
class KeyColumns:
    """The user's names of the sequence id and position columns."""

    sequence_id: str = SEQUENCE_COLUMN
    position: str = POSITION_COLUMN

    @property
    def names(self) -> Tuple[str, str]:
        return (self.sequence_id, self.position)
EXTENSIONS = {"csv": ".csv", "parquet": ".parquet"}
# Cells read as missing. Deliberately short: "NA" and "None" can be real category names.
NULL_VALUES = ["", "NaN", "nan", "NULL", "null"]


def list_input_files(data_path: str, read_format: str) -> List[str]:
    """The input files: `data_path` itself, or the sorted `.csv`/`.parquet` files in it."""
    if read_format not in EXTENSIONS:
        raise SequifierError(f"read_format: '{read_format}' is not one of {', '.join(EXTENSIONS)}")
    if not os.path.exists(data_path):
        raise SequifierError(
            f"data_path: '{data_path}' does not exist; point data_path at a "
            f"{read_format} file or a folder of them (relative paths start at project_root)"
        )
    if os.path.isfile(data_path):
        return [data_path]
    ext = EXTENSIONS[read_format]
    files = sorted(
        os.path.join(data_path, name)
        for name in os.listdir(data_path)
        if name.endswith(ext) and not name.startswith(".")
    )
    if not files:
        raise SequifierError(
            f"data_path: folder '{data_path}' holds no {ext} files; check data_path and "
            f"read_format ({read_format})"
        )
    return files


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def empty_file_error(path: str) -> SequifierError:
    return SequifierError(
        f"input file '{path}' is empty (no data rows); remove it from data_path or fill it"
    )


def read_header(path: str, read_format: str) -> List[str]:
    """Column names of an input file, without reading its data."""
    if read_format == "csv":
        try:
            # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the first name
            with open(path, newline="", encoding="utf-8-sig") as f:
                line = f.readline()
        except UnicodeDecodeError:
            raise SequifierError(
                f"input file '{path}' is not a UTF-8 text (csv) file; check read_format "
                "(parquet?) or save the file as UTF-8 csv"
            ) from None
        if not line.strip():
            raise empty_file_error(path)
        return next(csv.reader([line]))
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise SequifierError(
            f"input file '{path}' is not a readable parquet file ({_first_line(e)}); "
            "check read_format"
        ) from None


def choose_columns(path: str, header: List[str], selected_columns: Optional[List[str]],
                   keys: KeyColumns = KeyColumns()) -> List[str]:
    """Key columns plus the feature columns to keep, checked against the file's header."""
    duplicated = sorted({c for c in header if header.count(c) > 1})
    if duplicated:
        raise SequifierError(f"input file '{path}': the header names column(s) {duplicated} more than "
                             "once; rename or drop the duplicates")
    for field, name, holds in (("sequence_id_column", keys.sequence_id, "sequence ids"),
                               ("position_column", keys.position, "item positions or times")):
        if name not in header:
            raise SequifierError(
                f"{field}: input file '{path}' has no column '{name}' (its columns: "
                f"{header[:10]}); set {field} to the column that holds your {holds}"
            )
    if selected_columns is None:
        features = [c for c in header if c not in keys.names]
    else:
        unknown = [c for c in selected_columns if c not in header]
        if unknown:
            raise SequifierError(
                f"selected_columns: {unknown} not in input file '{path}' (its columns: "
                f"{[c for c in header if c not in keys.names][:20]}); fix selected_columns"
            )
        features = [c for c in selected_columns if c not in keys.names]
    clash = [c for c in features if c in KEY_COLUMNS]
    if clash:
        raise SequifierError(
            f"input file '{path}': feature column '{clash[0]}' has the name sequifier uses for "
            "the id/position columns; drop it with selected_columns or rename it"
        )
    if not features:
        raise SequifierError(
            f"input file '{path}' has no feature column besides {keys.sequence_id}/"
            f"{keys.position}; add at least one column or fix selected_columns"
        )
    return list(keys.names) + features


def _first_rows(batches: Iterable[pa.RecordBatch], schema: pa.Schema, max_rows: int) -> pa.Table:
    """The first `max_rows` rows of a batch stream, reading no batch past them."""
    kept, n = [], 0
    for batch in batches:
        kept.append(batch)
        n += batch.num_rows
        if n >= max_rows:
            break
    return pa.Table.from_batches(kept, schema=schema).slice(0, max_rows)


def _read_csv(path: str, columns: List[str], max_rows: Optional[int]) -> pa.Table:
    from pyarrow import csv as pacsv

    convert = pacsv.ConvertOptions(
        include_columns=columns, null_values=NULL_VALUES, strings_can_be_null=True
    )
    if max_rows is None:
        return pacsv.read_csv(path, convert_options=convert)
    reader = pacsv.open_csv(path, convert_options=convert)
    return _first_rows(reader, reader.schema, max_rows)


def _read_parquet(path: str, columns: List[str], max_rows: Optional[int]) -> pa.Table:
    import pyarrow.parquet as pq

    if max_rows is None:
        return pq.read_table(path, columns=columns)
    file = pq.ParquetFile(path)
    schema = pa.schema([file.schema_arrow.field(c) for c in columns])
    return _first_rows(file.iter_batches(columns=columns), schema, max_rows)


def _canonical_feature(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """int -> int64, float -> float64, anything else (strings, bools, dates) -> string."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_integer(kind):
        return column.cast(pa.int64())
    if pa.types.is_floating(kind):
        return column.cast(pa.float64())
    return column.cast(pa.string())


def read_as(path: str, name: str, column: pa.ChunkedArray, wanted: str) -> pa.ChunkedArray:
    """A feature column read as the type `column_types` asks for, instead of the type its
    values suggest: `real` (integers, text numbers, times as ticks, dates as days) or
    `categorical` (floats as their values)."""
    if wanted not in ("real", "categorical"):
        raise SequifierError(f"column_types.{name}: '{wanted}' is not one of categorical, real")
    column = _plain(column)
    kind = column.type
    if wanted == "categorical":
        if not pa.types.is_floating(kind):
            return column
        try:
            return column.cast(pa.int64())  # whole numbers stay integer categories
        except pa.ArrowException:
            return column.cast(pa.string())
    if _is_time(kind):
        column = column.cast(pa.int32() if pa.types.is_date32(kind) else pa.int64())
    try:
        return column.cast(pa.float64())
    except pa.ArrowException:
        example = pc.drop_null(column)[:3].to_pylist()
        raise SequifierError(
            f"column_types.{name}: column '{name}' of input file '{path}' cannot be read as real "
            f"(values such as {example}); fix those cells or read it as categorical"
        ) from None


def _plain(column: pa.ChunkedArray) -> pa.ChunkedArray:
    return column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column


def _is_time(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date(kind) or pa.types.is_time(kind)


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def canonical_sequence_id(path: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Integer ids as int64, any other id (text, e.g. 'u_00017') as strings."""
    column = _plain(column)
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64())
    if pa.types.is_floating(column.type):
        try:
            return column.cast(pa.int64())  # safe cast: fails on fractional floats
        except pa.ArrowException:
            raise SequifierError(
                f"sequence_id_column: column '{name}' of input file '{path}' holds fractional "
                "numbers; give each sequence an integer or text id"
            ) from None
    return column.cast(pa.string())


def canonical_position(path: str, name: str, column: pa.ChunkedArray) -> Tuple[pa.ChunkedArray, str]:
    """Positions as int64 and their `position_type`: integers as they are, times as
    ticks of their unit since 1970, dates as days since 1970 (order is all that counts)."""
    column = _plain(column)
    kind = column.type
    if _is_text(kind):
        try:  # ISO 8601 text that the CSV reader did not take for a time (e.g. in parquet)
            column = column.cast(pa.timestamp("ns"))
            kind = column.type
        except pa.ArrowException:
            example = pc.drop_null(column)[:1].to_pylist()
            raise SequifierError(
                f"position_column: column '{name}' of input file '{path}' is neither numeric "
                f"nor a parseable time (e.g. {example}); give integer positions or ISO 8601 "
                "times such as 2024-05-01 13:45:00"
            ) from None
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        ticks = column.cast(pa.int32() if pa.types.is_date32(kind) else pa.int64())
        return ticks.cast(pa.int64()), str(kind)
    try:
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise pa.ArrowInvalid("not numeric")
        return column.cast(pa.int64()), INTEGER_POSITIONS  # safe cast: fails on fractions
    except pa.ArrowException:
        raise SequifierError(
            f"position_column: column '{name}' of input file '{path}' must hold integers, "
            f"times or dates (found {kind}); convert it to integer positions or ISO 8601 times"
        ) from None


def position_arrow_type(position_type: str) -> pa.DataType:
    """The pyarrow type a recorded `position_type` stands for (int64 for integers)."""
    if position_type == INTEGER_POSITIONS:
        return pa.int64()
    if position_type.startswith("date32"):
        return pa.date32()
    if position_type.startswith("date64"):
        return pa.date64()
    match = re.fullmatch(r"timestamp\[(\w+)(?:, tz=(.+))?\]", position_type)
    if match is None:
        raise SequifierError(f"metadata: unknown position_type '{position_type}'; re-run preprocess")
    return pa.timestamp(match.group(1), tz=match.group(2))


def positions_to_user(positions, position_type: str) -> pa.Array:
    """int64 positions (as stored in windows) back to the user's integers, times or dates."""
    ticks = pa.array(np.asarray(positions, dtype=np.int64), type=pa.int64())
    kind = position_arrow_type(position_type)
    if pa.types.is_date32(kind):
        return ticks.cast(pa.int32()).cast(kind)
    return ticks.cast(kind)


def sequence_order_keys(column: pa.ChunkedArray) -> np.ndarray:
    """int64 keys that sort like the ids: the ids themselves, or ranks of text ids."""
    if pa.types.is_integer(column.type):
        return column.to_numpy()
    encoded = pc.dictionary_encode(column).combine_chunks()
    rank = np.empty(len(encoded.dictionary), dtype=np.int64)
    rank[pc.sort_indices(encoded.dictionary).to_numpy()] = np.arange(len(rank))
    return rank[encoded.indices.to_numpy()]


# Text that reads as a number: with a decimal point or exponent (float-like), or any number.
FLOAT_TEXT = r"^\s*[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)\s*$"
NUMBER_TEXT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
# A text column is taken for a mistyped real column when at least this share of its
# distinct values are numbers and some have a decimal point or exponent.
NUMBER_TEXT_SHARE = 0.9


def _check_numbers_as_text(path: str, table: pa.Table, skip=()) -> None:
    """A real column that arrives as text (numbers stored as strings, or a few cells such
    as '1,5' or '3 kg' that keep a CSV column from reading as floats) would otherwise
    become a categorical column with one class per distinct value."""
    for name in table.column_names:
        column = table.column(name)
        if name in KEY_COLUMNS or name in skip or not pa.types.is_string(column.type):
            continue
        check_text_values(path, name, pc.unique(column))


def check_text_values(path: str, name: str, values: pa.Array) -> None:
    """`_check_numbers_as_text` for one column, given its distinct values (a null among
    them counts as one value); a file read in chunks is checked on the union of them."""
    if not pc.any(pc.match_substring_regex(values, FLOAT_TEXT)).as_py():
        return
    numeric = pc.match_substring_regex(values, NUMBER_TEXT)
    n_numeric = pc.sum(numeric).as_py() or 0
    if n_numeric < NUMBER_TEXT_SHARE * len(values):
        return  # a categorical column that happens to hold some numbers
    others = values.filter(pc.invert(numeric)).to_pylist()
    if not others:
        raise SequifierError(
            f"input file '{path}': column '{name}' holds numbers stored as text (e.g. "
            f"'{values[0].as_py()}'), which would make it categorical; store it as floats "
            "for a real feature, or as labels that are not numbers for a categorical one"
        )
    raise SequifierError(
        f"input file '{path}': column '{name}' holds numbers but {len(others)} distinct "
        f"values are not numbers (e.g. {others[:3]}), so it would be read as categorical; "
        "fix those cells (decimal point, no units or text) to make it a real column"
    )


def _sort_and_check_keys(path: str, table: pa.Table, keys: KeyColumns) -> pa.Table:
    seq = sequence_order_keys(table.column(SEQUENCE_COLUMN))
    pos = table.column(POSITION_COLUMN).to_numpy()
    in_order = (seq[1:] > seq[:-1]) | ((seq[1:] == seq[:-1]) & (pos[1:] >= pos[:-1]))
    if not in_order.all():  # most inputs arrive sorted; sorting is the costly part
        order = np.lexsort((pos, seq))
        table, seq, pos = table.take(order), seq[order], pos[order]
    dup = np.flatnonzero((seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1]))
    if len(dup):
        i = int(dup[0])
        example = (table.column(SEQUENCE_COLUMN)[i].as_py(), table.column(POSITION_COLUMN)[i].as_py())
        raise SequifierError(
            f"position_column: input file '{path}' has {len(dup)} duplicate ({keys.sequence_id}, "
            f"{keys.position}) pairs, e.g. {example}; each item of a sequence needs its own "
            f"{keys.position}"
        )
    return table


@dataclass
class LongTable:
    """One input file in canonical form (see the module docstring)."""

    table: pa.Table
    position_type: str
    missing: MissingReport
    date_like: List[str]  # feature columns read as times or dates (they become categorical)
    # each sequence's trailing rows with only known-ahead values (data/future_rows.py), in
    # the user's terms; None when there are none
    future: Optional[pa.Table] = None


def read_raw_table(path: str, read_format: str, columns: List[str],
                   max_rows: Optional[int] = None) -> pa.Table:
    """The file's `columns` as stored (before any check or conversion)."""
    try:
        if read_format == "csv":
            table = _read_csv(path, columns, max_rows)
        else:
            table = _read_parquet(path, columns, max_rows)
    except (pa.ArrowException, OSError) as e:
        raise read_error(path, read_format, e) from None
    if table.num_rows == 0:
        raise empty_file_error(path)
    return table


def read_error(path: str, read_format: str, error: Exception) -> SequifierError:
    return SequifierError(
        f"input file '{path}' could not be read as {read_format} ({_first_line(error)}); "
        "check the file and read_format"
    )


def read_long_table(path: str, read_format: str, selected_columns: Optional[List[str]],
                    max_rows: Optional[int] = None, keys: KeyColumns = KeyColumns(),
                    missing_values: Optional[MissingValues] = None,
                    column_types: Optional[Dict[str, str]] = None) -> LongTable:
    """Read, check and sort one input file (see the module docstring for the result)."""
    if os.path.getsize(path) == 0:
        raise empty_file_error(path)
    columns = choose_columns(path, read_header(path, read_format), selected_columns, keys)
    raw = read_raw_table(path, read_format, columns, max_rows)
    return long_table_from_raw(path, raw, columns, keys, missing_values, column_types)


def long_table_from_raw(path: str, table: pa.Table, columns: List[str], keys: KeyColumns,
                        missing_values: Optional[MissingValues],
                        column_types: Optional[Dict[str, str]],
                        whole_file: bool = True, known_ahead: Sequence[str] = (),
                        time_features: Sequence[str] = ()) -> LongTable:
    """Check, convert and sort rows of `path` as read (the whole file, or one chunk of
    whole sequences of it: then the numbers-as-text check, which needs all of a column's
    distinct values, is left to the caller: `check_text_values`). With `known_ahead`
    columns, trailing rows holding only their values are set aside as future rows;
    `time_features` are derived from the positions as int64 columns."""
    from sequifier.data import time_features as calendar

    table = table.combine_chunks()
    table, future = split_future_rows(path, table, columns, keys, known_ahead)
    if table.num_rows == 0 and future is not None and future.num_rows:
        raise SequifierError(
            f"input file '{path}': every row is a future row (only the known-ahead columns "
            f"{list(known_ahead)} filled), so there is no history to learn from; preprocess the "
            "table with the observed rows, and give rows like these to infer as future_data_path")
    table, missing = apply_missing_values(path, table, missing_values or MissingValues(), keys.names)
    if table.num_rows == 0:
        raise SequifierError(f"input file '{path}': missing_values dropped every row; check the "
                             "file or the missing_values policy")
    column_types = column_types or {}
    date_like = [c for c in columns[2:] if _is_time(table.column(c).type) and c not in column_types]
    arrays = [canonical_sequence_id(path, keys.sequence_id, table.column(keys.sequence_id))]
    positions, position_type = canonical_position(path, keys.position, table.column(keys.position))
    arrays.append(positions)
    for name in columns[2:]:
        column = table.column(name)
        if name in column_types:
            column = read_as(path, name, column, column_types[name])
        arrays.append(_canonical_feature(column))
    problem = calendar.position_problem(time_features, position_type, keys.position, path)
    if problem:
        raise SequifierError(problem)
    derived = calendar.derive(time_features, positions_to_user(positions.to_numpy(), position_type))
    table = pa.table(arrays + [pa.array(v) for v in derived.values()],
                     names=list(KEY_COLUMNS) + columns[2:] + list(derived))
    _check_infinite(path, table)
    if whole_file:
        _check_numbers_as_text(path, table, skip=column_types)
    if future is not None:
        future = _future_in_user_terms(path, future, keys, column_types)
    table = fill_series(path, _sort_and_check_keys(path, table, keys), missing_values or MissingValues())
    return LongTable(table, position_type, missing, date_like, future)


def split_future_rows(path: str, table: pa.Table, columns: List[str], keys,
                      known_ahead: Sequence[str]) -> Tuple[pa.Table, Optional[pa.Table]]:
    """(observed rows, future rows or None) of a raw table: future rows are each
    sequence's rows after its last row with any non-known-ahead feature cell filled."""
    others = [c for c in columns[2:] if c not in known_ahead]
    if not others or not known_ahead:
        return table, None
    empty = np.ones(table.num_rows, dtype=bool)
    for c in others:
        empty &= missing_mask(table.column(c))
    keyed = ~(missing_mask(table.column(keys.sequence_id)) | missing_mask(table.column(keys.position)))
    empty &= keyed
    if not empty.any():
        return table, None
    rows = np.flatnonzero(keyed)
    valid = table.take(pa.array(rows))
    seq = sequence_order_keys(canonical_sequence_id(path, keys.sequence_id, valid.column(keys.sequence_id)))
    pos = canonical_position(path, keys.position, valid.column(keys.position))[0].to_numpy()
    groups, inverse = np.unique(seq, return_inverse=True)
    last = np.full(len(groups), np.iinfo(np.int64).min, dtype=np.int64)
    observed = ~empty[rows]
    np.maximum.at(last, inverse[observed], pos[observed])
    future = np.zeros(table.num_rows, dtype=bool)
    future[rows] = empty[rows] & (pos > last[inverse])
    if not future.any():
        return table, None
    keep = [keys.sequence_id, keys.position] + [c for c in columns[2:] if c in known_ahead]
    return table.filter(pa.array(~future)), table.filter(pa.array(future)).select(keep)


def _future_in_user_terms(path: str, future: pa.Table, keys: KeyColumns,
                          column_types: Dict[str, str]) -> pa.Table:
    """Future rows with the canonical types of the observed rows (ids, features) and the
    positions as times/dates/integers, under the user's column names."""
    arrays = [canonical_sequence_id(path, keys.sequence_id, future.column(keys.sequence_id))]
    positions, position_type = canonical_position(path, keys.position, future.column(keys.position))
    arrays.append(positions_to_user(positions.to_numpy(), position_type))
    for name in future.column_names[2:]:
        column = future.column(name)
        if name in column_types:
            column = read_as(path, name, column, column_types[name])
        arrays.append(_canonical_feature(column))
    return pa.table(arrays, names=future.column_names)


def _check_infinite(path: str, table: pa.Table) -> None:
    """inf/-inf in a real column would make its mean and std infinite (and the loss NaN)."""
    counts = {name: pc.sum(pc.is_inf(table.column(name))).as_py() or 0
              for name in table.column_names if pa.types.is_floating(table.column(name).type)}
    counts = {name: n for name, n in counts.items() if n}
    if counts:
        listed = ", ".join(f"'{c}' ({n} rows)" for c, n in counts.items())
        raise SequifierError(f"input file '{path}': infinite values (inf/-inf) in column {listed}; "
                             "replace or drop those rows before preprocessing")


def feature_kind(column_type: pa.DataType) -> str:
    """'real' for floats; for categoricals the original dtype 'int64' or 'str'."""
    if pa.types.is_floating(column_type):
        return "real"
    if pa.types.is_integer(column_type):
        return "int64"
    return "str"
