"""Reading the user's long table (CSV or Parquet) into a checked, sorted Arrow table.

Every problem with an input file becomes a one-line SequifierError naming the file and
the column. The result of `read_long_table` is the canonical form the rest of
preprocessing works on: `sequenceId` and `itemPosition` as int64, sorted by them, no
missing values, integer features as int64, real features as float64, everything else
as strings.
"""

import csv
import os
from typing import Iterable, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.errors import SequifierError

SEQUENCE_COLUMN = "sequenceId"
POSITION_COLUMN = "itemPosition"
KEY_COLUMNS = (SEQUENCE_COLUMN, POSITION_COLUMN)
EXTENSIONS = {"csv": ".csv", "parquet": ".parquet"}
# Cells read as missing. Deliberately short: "NA" and "None" can be real category names.
NULL_VALUES = ["", "NaN", "nan", "NULL", "null"]


def list_input_files(data_path: str, read_format: str) -> List[str]:
    """The input files: `data_path` itself, or the sorted `.csv`/`.parquet` files in it."""
    if read_format not in EXTENSIONS:
        raise SequifierError(f"read_format: '{read_format}' is not one of csv, parquet")
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


def _empty_file_error(path: str) -> SequifierError:
    return SequifierError(
        f"input file '{path}' is empty (no data rows); remove it from data_path or fill it"
    )


def read_header(path: str, read_format: str) -> List[str]:
    """Column names of an input file, without reading its data."""
    if read_format == "csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                line = f.readline()
        except UnicodeDecodeError:
            raise SequifierError(
                f"input file '{path}' is not a UTF-8 text (csv) file; check read_format "
                "(parquet?) or save the file as UTF-8 csv"
            ) from None
        if not line.strip():
            raise _empty_file_error(path)
        return next(csv.reader([line]))
    import pyarrow.parquet as pq

    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as e:
        raise SequifierError(
            f"input file '{path}' is not a readable parquet file ({_first_line(e)}); "
            "check read_format"
        ) from None


def choose_columns(path: str, header: List[str], selected_columns: Optional[List[str]]) -> List[str]:
    """Key columns plus the feature columns to keep, checked against the file's header."""
    missing_keys = [c for c in KEY_COLUMNS if c not in header]
    if missing_keys:
        raise SequifierError(
            f"input file '{path}' has no column {' or '.join(repr(c) for c in missing_keys)}; "
            f"every input needs {SEQUENCE_COLUMN} and {POSITION_COLUMN} columns (found {header[:10]})"
        )
    if selected_columns is None:
        features = [c for c in header if c not in KEY_COLUMNS]
    else:
        unknown = [c for c in selected_columns if c not in header]
        if unknown:
            raise SequifierError(
                f"selected_columns: {unknown} not in input file '{path}' (its columns: "
                f"{[c for c in header if c not in KEY_COLUMNS][:20]}); fix selected_columns"
            )
        features = [c for c in selected_columns if c not in KEY_COLUMNS]
    if not features:
        raise SequifierError(
            f"input file '{path}' has no feature column besides {SEQUENCE_COLUMN}/"
            f"{POSITION_COLUMN}; add at least one column or fix selected_columns"
        )
    return list(KEY_COLUMNS) + features


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


def _canonical_key(path: str, name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    try:
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise pa.ArrowInvalid("not numeric")
        return column.cast(pa.int64())  # safe cast: fails on fractional floats
    except pa.ArrowException:
        raise SequifierError(
            f"input file '{path}': column '{name}' must hold integers (found {column.type}); "
            f"convert {name} to integer ids/positions"
        ) from None


def _check_missing(path: str, table: pa.Table) -> None:
    counts = {}
    for name in table.column_names:
        column = table.column(name)
        n = column.null_count
        if pa.types.is_floating(column.type):
            n += pc.sum(pc.is_nan(column)).as_py() or 0
        elif pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            n += pc.sum(pc.equal(column, "")).as_py() or 0
        if n:
            counts[name] = n
    if counts:
        listed = ", ".join(f"'{c}' ({n} rows)" for c, n in counts.items())
        raise SequifierError(
            f"input file '{path}': NaN or empty values in column {listed}; "
            "fill or drop those rows before preprocessing"
        )


# Text that reads as a number: with a decimal point or exponent (float-like), or any number.
FLOAT_TEXT = r"^\s*[-+]?(\d+\.\d*|\.\d+|\d+(\.\d*)?[eE][-+]?\d+)\s*$"
NUMBER_TEXT = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
# A text column is taken for a mistyped real column when at least this share of its
# distinct values are numbers and some have a decimal point or exponent.
NUMBER_TEXT_SHARE = 0.9


def _check_numbers_as_text(path: str, table: pa.Table) -> None:
    """A real column that arrives as text (numbers stored as strings, or a few cells such
    as '1,5' or '3 kg' that keep a CSV column from reading as floats) would otherwise
    become a categorical column with one class per distinct value."""
    for name in table.column_names:
        column = table.column(name)
        if name in KEY_COLUMNS or not pa.types.is_string(column.type):
            continue
        values = pc.unique(column)
        if not pc.any(pc.match_substring_regex(values, FLOAT_TEXT)).as_py():
            continue
        numeric = pc.match_substring_regex(values, NUMBER_TEXT)
        n_numeric = pc.sum(numeric).as_py() or 0
        if n_numeric < NUMBER_TEXT_SHARE * len(values):
            continue  # a categorical column that happens to hold some numbers
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


def _sort_and_check_keys(path: str, table: pa.Table) -> pa.Table:
    seq = table.column(SEQUENCE_COLUMN).to_numpy()
    pos = table.column(POSITION_COLUMN).to_numpy()
    in_order = (seq[1:] > seq[:-1]) | ((seq[1:] == seq[:-1]) & (pos[1:] >= pos[:-1]))
    if not in_order.all():  # most inputs arrive sorted; sorting is the costly part
        order = np.lexsort((pos, seq))
        table, seq, pos = table.take(order), seq[order], pos[order]
    dup = np.flatnonzero((seq[1:] == seq[:-1]) & (pos[1:] == pos[:-1]))
    if len(dup):
        i = dup[0]
        raise SequifierError(
            f"input file '{path}': {len(dup)} duplicate ({SEQUENCE_COLUMN}, {POSITION_COLUMN}) "
            f"pairs, e.g. ({seq[i]}, {pos[i]}); each item needs its own {POSITION_COLUMN}"
        )
    return table


def read_long_table(path: str, read_format: str, selected_columns: Optional[List[str]],
                    max_rows: Optional[int] = None) -> pa.Table:
    """Read, check and sort one input file (see the module docstring for the result)."""
    if os.path.getsize(path) == 0:
        raise _empty_file_error(path)
    columns = choose_columns(path, read_header(path, read_format), selected_columns)
    try:
        if read_format == "csv":
            table = _read_csv(path, columns, max_rows)
        else:
            table = _read_parquet(path, columns, max_rows)
    except (pa.ArrowException, OSError) as e:
        raise SequifierError(
            f"input file '{path}' could not be read as {read_format} ({_first_line(e)}); "
            "check the file and read_format"
        ) from None
    if table.num_rows == 0:
        raise _empty_file_error(path)
    table = table.combine_chunks()
    _check_missing(path, table)
    arrays = []
    for name in columns:
        column = table.column(name)
        if name in KEY_COLUMNS:
            arrays.append(_canonical_key(path, name, column))
        else:
            arrays.append(_canonical_feature(column))
    table = pa.table(arrays, names=columns)
    _check_numbers_as_text(path, table)
    return _sort_and_check_keys(path, table)


def feature_kind(column_type: pa.DataType) -> str:
    """'real' for floats; for categoricals the original dtype 'int64' or 'str'."""
    if pa.types.is_floating(column_type):
        return "real"
    if pa.types.is_integer(column_type):
        return "int64"
    return "str"
