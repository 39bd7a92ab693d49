"""How infer and evaluate write (where: `sequifier/project.py`): pyarrow tables (csv or
parquet) and text files (metrics JSON, markdown), written as output sets: all files or none.

Every output row names its item in the user's terms: `key_columns` turns the windows'
internal sequence numbers and int64 positions back into the original ids and positions
(times, dates) under the user's column names. Every writer of outputs goes through it.
"""

import numpy as np

from sequifier.errors import SequifierError
from sequifier.io_utils import existing_outputs, output_set

WRITE_FORMATS = ("csv", "parquet")


def refuse_to_overwrite(paths: list[str]) -> None:
    existing = existing_outputs(paths)  # after sets interrupted by a crash are rolled back
    if existing:
        raise SequifierError(
            f"output '{existing[0]}' already exists; set overwrite=true to replace it "
            "or move it away"
        )


def key_columns(metadata, sequence_id: np.ndarray, item_position: np.ndarray) -> dict:
    """{sequence id column: original ids, position column: original positions} for
    output rows given the windows' `sequence_id` and `item_position` values."""
    from sequifier.data.read_table import positions_to_user

    sequence_id = np.asarray(sequence_id, dtype=np.int64)
    if metadata.sequence_ids is not None:
        known = len(metadata.sequence_ids)
        if len(sequence_id) and (sequence_id.min() < 0 or sequence_id.max() >= known):
            raise SequifierError(
                f"metadata_config_path: the data holds sequence numbers up to {sequence_id.max()} "
                f"but the metadata lists {known} sequence ids; use the metadata written by the "
                "preprocess run that made the data"
            )
        sequence_id = np.asarray(metadata.sequence_ids, dtype=object)[sequence_id]
    return {metadata.sequence_id_column: sequence_id,
            metadata.position_column: positions_to_user(item_position, metadata.position_type)}


def _column(values):
    import pyarrow as pa

    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return values
    if values.dtype == object:
        return pa.array(values, type=pa.string())
    return pa.array(values)


def write_tables(tables: dict[str, dict[str, np.ndarray]], write_format: str,
                 texts: dict[str, str] | None = None) -> None:
    """Write {path: named 1-d arrays} as tables (and {path: text} as text files) as one
    output set: all appear together, or none does (see io_utils.output_set)."""
    texts = texts or {}
    with output_set(list(tables) + list(texts)) as tmps:
        for path, columns in tables.items():
            write_table(columns, tmps[path], write_format)
        for path, text in texts.items():
            with open(tmps[path], "w", encoding="utf-8") as f:
                f.write(text)


def write_table(columns: dict[str, np.ndarray], path: str, write_format: str) -> None:
    """Write named 1-d arrays as one table to `path` (a temporary of `write_tables`)."""
    import pyarrow as pa

    table = pa.table({name: _column(values) for name, values in columns.items()})
    if write_format == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    elif write_format == "csv":
        import pyarrow.csv as pcsv

        plain_header = all(not any(ch in name for ch in ',"\n\r') for name in columns)
        options = pcsv.WriteOptions(quoting_header="none" if plain_header else "needed")
        pcsv.write_csv(table, path, write_options=options)
    else:
        raise SequifierError(f"write_format: '{write_format}' is not one of {WRITE_FORMATS}")
