"""Output tables in the user's terms: {column name: 1-d array}, one row per prediction.

Every table starts with the key columns (`outputs.key_columns`: the user's sequence ids
and positions); predictions follow as original values (ids decoded with `map_to_id`,
real values on their original scale). `outputs.py` decides where tables go and writes
them.
"""

import numpy as np

from sequifier.config.metadata import Metadata
from sequifier.config.schema import UNKNOWN_ID
from sequifier.infer.model_info import ModelInfo
from sequifier.infer.values import CategoryDecoder, destandardise


def to_user_values(metadata: Metadata, info: ModelInfo, column: str, values: np.ndarray,
                   map_to_id: bool) -> np.ndarray:
    """Ids -> original values (with map_to_id), standardised -> original scale."""
    if info.target_column_types[column] == "real":
        return destandardise(values, metadata.selected_columns_statistics[column])
    return _decoder(metadata, column).decode(values) if map_to_id else values


def prediction_table(metadata: Metadata, info: ModelInfo, keys: dict[str, np.ndarray],
                     predictions: dict[str, np.ndarray], map_to_id: bool,
                     extra: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """The keys, one column per target (ids / standardised values, one per row of `keys`,
    in the user's terms), then the `extra` columns (e.g. evaluate's truth)."""
    table = dict(keys)
    for column in info.target_columns:
        table[column] = to_user_values(metadata, info, column, predictions[column], map_to_id)
    table.update(extra or {})
    return table


def probability_table(metadata: Metadata, column: str, keys: dict[str, np.ndarray],
                      probabilities: np.ndarray, map_to_id: bool) -> dict[str, np.ndarray]:
    """The keys and one column per class of `column` (named by value, or by id without map_to_id)."""
    n_classes = probabilities.shape[1]
    names = (_decoder(metadata, column).class_names()[:n_classes] if map_to_id
             else [str(i) for i in range(n_classes)])
    return {**keys, **{name: probabilities[:, j] for j, name in enumerate(names)}}


def recommendation_table(keys: dict[str, np.ndarray], column: str, ids: np.ndarray,
                         probabilities: np.ndarray, decode, top_k_format: str) -> dict[str, np.ndarray]:
    """The table of the top-k `ids` ([rows, k]; -1: no item) in long or wide format, the
    items in the user's values (`decode`: ids -> values)."""
    rows, k = ids.shape
    valid = ids >= 0
    if top_k_format == "wide":
        items = decode(np.where(valid, ids, UNKNOWN_ID).reshape(-1)).reshape(rows, k)
        table = dict(keys)
        table.update({f"{column}_{r + 1}": _with_nulls(items[:, r], valid[:, r]) for r in range(k)})
        table.update({f"probability_{r + 1}": np.where(valid[:, r], probabilities[:, r], np.nan)
                      for r in range(k)})
        return table
    flat = valid.reshape(-1)
    table = {name: np.repeat(values, k)[flat] for name, values in keys.items()}
    table["rank"] = np.tile(np.arange(1, k + 1, dtype=np.int64), rows)[flat]
    table[column] = decode(ids.reshape(-1)[flat])
    table["probability"] = probabilities.reshape(-1)[flat]
    return table


def _with_nulls(values: np.ndarray, valid: np.ndarray):
    """`values`, null where not `valid` (a row with fewer than k items to recommend)."""
    if valid.all():
        return values
    import pyarrow as pa

    return pa.array(values, mask=~valid, type=pa.string() if values.dtype == object else None)


def embedding_table(keys: dict[str, np.ndarray], embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """The keys and one column per embedding dimension ("0", "1", ...)."""
    return {**keys, **{str(j): embeddings[:, j] for j in range(embeddings.shape[1])}}


def _decoder(metadata: Metadata, column: str) -> CategoryDecoder:
    return CategoryDecoder(metadata, column, metadata.n_classes[column])
