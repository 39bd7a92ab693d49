"""Cutting an input file that is too large for the memory budget into chunks of whole
sequences, on disk.

The file is streamed in record batches and every row is appended to one of `n_chunks`
bucket files chosen by a hash of its sequence id, so each sequence lands whole in one
bucket whatever the row order of the file (sorted or not). A bucket is then read,
checked and sorted like a small input file of its own
(`read_table.long_table_from_raw`). Buckets are Arrow IPC streams in the work folder.

Reading CSV in a stream differs from reading it whole in one way: the streaming reader
fixes each column's type from the first block, where the whole-file reader widens it
when a later block needs it. `_widened` repeats that widening: a conversion error
restarts the stream with the column read as the next type, in the order the CSV reader
infers types, that can hold the offending value.
"""

import io
import os
import re
import zlib
from typing import Dict, Iterator, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sequifier.data import read_table
from sequifier.data.missing import missing_mask

BATCH_ROWS = 1 << 16
CSV_BLOCK_BYTES = 1 << 20
# the order in which pyarrow's CSV reader tries types for a column
CSV_TYPE_ORDER = [pa.null(), pa.int64(), pa.bool_(), pa.date32(), pa.time32("s"),
                  pa.timestamp("s"), pa.timestamp("ns"), pa.timestamp("s", "UTC"),
                  pa.timestamp("ns", "UTC"), pa.float64(), pa.string()]
# pyarrow names the row only when it reads serially ("Row #N: "), so that part is optional
CONVERSION_ERROR = re.compile(r"In CSV column #(\d+): (?:Row #\d+: )?CSV conversion error to "
                              r"[^:]+: invalid value '(.*)'", re.S)


def _csv_options(columns: List[str], types: Dict[str, pa.DataType]):
    from pyarrow import csv as pacsv

    return (pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
            pacsv.ConvertOptions(include_columns=columns, null_values=read_table.NULL_VALUES,
                                 strings_can_be_null=True, column_types=types))


def _plain_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """Dictionary columns decoded: batches of one file then share one schema."""
    if not any(pa.types.is_dictionary(f.type) for f in batch.schema):
        return batch
    arrays = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c
              for c in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def stream_batches(path: str, read_format: str, columns: List[str], max_rows: Optional[int],
                   csv_types: Optional[Dict[str, pa.DataType]] = None) -> Iterator[pa.RecordBatch]:
    """The file's `columns` as stored, in record batches (the first `max_rows` rows)."""
    if read_format == "csv":
        from pyarrow import csv as pacsv

        read, convert = _csv_options(columns, csv_types or {})
        batches = pacsv.open_csv(path, read_options=read, convert_options=convert)
    else:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns)
    left = max_rows
    for batch in batches:
        if left is not None:
            batch = batch.slice(0, left)
            left -= batch.num_rows
        if batch.num_rows:
            yield _plain_batch(batch)
        if left is not None and left <= 0:
            return


def _widened(error: pa.ArrowInvalid, path: str, columns: List[str],
             types: Dict[str, pa.DataType], current: pa.Schema) -> Dict[str, pa.DataType]:
    """The CSV column types with the column of a conversion error read as the next type
    that holds the offending value (raises the error as a read error when none does)."""
    from pyarrow import csv as pacsv

    match = CONVERSION_ERROR.search(str(error))
    header = read_table.read_header(path, "csv")
    if match is None or int(match.group(1)) >= len(header):
        raise read_table.read_error(path, "csv", error) from None
    name = header[int(match.group(1))]
    now = types.get(name, current.field(name).type if name in current.names else pa.null())
    later = CSV_TYPE_ORDER[CSV_TYPE_ORDER.index(now) + 1:] if now in CSV_TYPE_ORDER else []
    cell = '"' + match.group(2).replace('"', '""') + '"'
    for candidate in later:
        probe = ("x\n" + cell + "\n").encode()
        try:
            pacsv.read_csv(io.BytesIO(probe), convert_options=pacsv.ConvertOptions(
                column_types={"x": candidate}, null_values=read_table.NULL_VALUES,
                strings_can_be_null=True))
        except pa.ArrowInvalid:
            continue
        return {**types, name: candidate}
    raise read_table.read_error(path, "csv", error) from None


def sequence_buckets(path: str, name: str, column: pa.Array, n_buckets: int) -> np.ndarray:
    """The bucket of each row: a hash of its (canonical) sequence id; missing ids go to
    bucket 0, where reading the bucket drops them or names them, as the policy says."""
    missing = missing_mask(column)
    column = column.cast(column.type.value_type) if pa.types.is_dictionary(column.type) else column
    if missing.any():
        column = pc.if_else(pa.array(missing), pa.scalar(None, column.type), column)
    ids = read_table.canonical_sequence_id(path, name, pa.chunked_array([column])).combine_chunks()
    if pa.types.is_integer(ids.type):
        keys = pc.fill_null(ids, 0).to_numpy().astype(np.uint64)
        # multiplicative hashing: neighbouring ids land in different buckets
        hashed = (keys * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(32)
    else:
        encoded = ids.dictionary_encode()
        per_value = np.array([zlib.crc32(v.encode()) for v in encoded.dictionary.to_pylist()],
                             dtype=np.uint64)
        hashed = per_value[pc.fill_null(encoded.indices, 0).to_numpy()] if len(per_value) \
            else np.zeros(len(ids), dtype=np.uint64)
    bucket = (hashed % np.uint64(n_buckets)).astype(np.int64)
    bucket[missing] = 0
    return bucket


def partition_file(path: str, read_format: str, columns: List[str], max_rows: Optional[int],
                   id_column: str, n_buckets: int, prefix: str) -> List[str]:
    """Write the rows of `path` into `n_buckets` files `prefix.BUCKET.arrows` by sequence;
    return the paths of the buckets that got rows, in bucket order."""
    csv_types: Dict[str, pa.DataType] = {}
    while True:
        paths = [f"{prefix}.{b:04d}.arrows" for b in range(n_buckets)]
        writers: Dict[int, tuple] = {}  # bucket -> (file, writer)
        schema = None
        try:
            for batch in stream_batches(path, read_format, columns, max_rows, csv_types):
                schema = batch.schema
                bucket = sequence_buckets(path, id_column, batch.column(id_column), n_buckets)
                order = np.argsort(bucket, kind="stable")
                ordered = batch.take(pa.array(order))
                bounds = np.searchsorted(bucket[order], np.arange(n_buckets + 1))
                for b in np.flatnonzero(np.diff(bounds)):
                    if b not in writers:
                        sink = pa.OSFile(paths[b], "wb")
                        writers[b] = (sink, pa.ipc.new_stream(sink, schema))
                    writers[b][1].write_batch(ordered.slice(bounds[b], bounds[b + 1] - bounds[b]))
        except pa.ArrowInvalid as e:
            _close(writers)
            if read_format != "csv" or CONVERSION_ERROR.search(str(e)) is None:
                raise read_table.read_error(path, read_format, e) from None
            csv_types = _widened(e, path, columns, csv_types, schema or pa.schema([]))
            continue
        except (pa.ArrowException, OSError) as e:
            _close(writers)
            raise read_table.read_error(path, read_format, e) from None
        _close(writers)
        if not writers:
            raise read_table.empty_file_error(path)
        return [paths[b] for b in sorted(writers)]


def _close(writers: Dict[int, tuple]) -> None:
    for sink, writer in writers.values():
        writer.close()
        sink.close()


def read_bucket(path: str) -> pa.Table:
    with pa.OSFile(path, "rb") as source:
        return pa.ipc.open_stream(source).read_all()


def estimate_table_bytes(path: str, read_format: str, columns: List[str],
                         max_rows: Optional[int]) -> int:
    """Roughly the size of the file's `columns` as one Arrow table: bytes per row of the
    first batch times the rows (parquet: from its footer; csv: from the share of lines in
    the first block)."""
    try:
        first = next(stream_batches(path, read_format, columns, max_rows), None)
    except (pa.ArrowException, OSError):
        return 0  # reading the whole file names the problem
    if first is None:
        return 0
    per_row = first.nbytes / first.num_rows
    if read_format == "parquet":
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(path).metadata.num_rows
    else:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(CSV_BLOCK_BYTES)
        rows = size * max(head.count(b"\n"), 1) / max(len(head), 1)
    if max_rows is not None:
        rows = min(rows, max_rows)
    return int(per_row * rows)
