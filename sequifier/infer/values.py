"""Turning model inputs and outputs into the user's terms, vectorised with numpy.

Ids go back to original category values through one lookup array per column (an index
operation, not a per-row dict lookup); real values go back through the mean/std that
preprocess standardised them with.
"""

import logging
from dataclasses import dataclass

import numpy as np

from sequifier.config.metadata import MISSING_CATEGORY, Metadata
from sequifier.config.schema import PAD_ID, UNKNOWN_ID

logger = logging.getLogger(__name__)

RESERVED_LABELS = {PAD_ID: "<pad>", UNKNOWN_ID: "<unknown>"}


class CategoryDecoder:
    """id -> original value for one categorical column.

    Integer columns decode to int64 when no reserved id occurs in the result; when one
    does, the whole column becomes strings so that "<pad>"/"<unknown>" can be written
    next to the values (parquet needs one type per column).
    """

    def __init__(self, metadata: Metadata, column: str, n_classes: int):
        inverse = metadata.inverse_id_map(column)
        n = max([n_classes] + [i + 1 for i in inverse])
        # ids absent from the map (gaps, if any) decode like the reserved unknown id
        self.reserved = np.ones(n, dtype=bool)
        labels = np.full(n, RESERVED_LABELS[UNKNOWN_ID], dtype=object)
        for i, label in RESERVED_LABELS.items():
            labels[i] = label
        self.is_integer = metadata.original_dtypes.get(column) == "int64"
        if self.is_integer:  # an integer column's <missing> category is text, like <pad>
            for i in [i for i, v in inverse.items() if v == MISSING_CATEGORY]:
                labels[i] = inverse.pop(i)
        ids = np.fromiter(inverse.keys(), dtype=np.int64, count=len(inverse))
        self.reserved[ids] = False
        originals = list(inverse.values())
        if self.is_integer:
            self.int_values = np.zeros(n, dtype=np.int64)
            self.int_values[ids] = np.asarray(originals, dtype=np.int64)
            labels[ids] = [str(v) for v in originals]
        else:
            labels[ids] = originals
        self.labels = labels

    def decode(self, ids: np.ndarray) -> np.ndarray:
        if self.is_integer and not self.reserved[ids].any():
            return self.int_values[ids]
        return self.labels[ids]

    def class_names(self) -> list:
        """One distinct name per class id, for probability column headers."""
        return [
            (label if label == MISSING_CATEGORY else RESERVED_LABELS.get(i, f"<id {i}>"))
            if self.reserved[i] else str(label)
            for i, label in enumerate(self.labels)
        ]


def clamp_unknown_ids(column: str, ids: np.ndarray, n_classes: int) -> np.ndarray:
    """Map ids the model has no embedding for to UNKNOWN_ID and log how many there are.

    Preprocess already maps unseen categories to UNKNOWN_ID; ids outside the model's
    vocabulary (data preprocessed with another id map) are mapped here rather than
    indexing past the embedding table.
    """
    outside = (ids >= n_classes) | (ids < 0)
    n_unknown = int(np.count_nonzero(outside) + np.count_nonzero(ids == UNKNOWN_ID))
    if n_unknown:
        logger.warning(f"{column}: {n_unknown} values unknown to the model mapped to <unknown>")
    if outside.any():
        ids = np.where(outside, UNKNOWN_ID, ids)
    return ids


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted, dtype=np.float64)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Sampling:
    """How one categorical target is drawn: softmax(logits / temperature), cut to the
    `top_k` most likely ids and then to the smallest set whose probability reaches
    `top_p` (nucleus sampling); None switches a cut off."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None


SAMPLING_FIELDS = ("temperature", "top_k", "top_p")


def sampling_problems(sampled: list[str], per_column: dict[str, dict | None]) -> list[str]:
    """One line per bad sampling setting; `per_column` maps field -> {column: value}.

    A setting for a column that is not sampled would have no effect, so it is refused.
    """
    problems = []
    checks = {
        "temperature": (lambda v: v > 0, "must be > 0"),
        "top_k": (lambda v: isinstance(v, int) and v >= 1, "must be an integer >= 1"),
        "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    }
    for name in SAMPLING_FIELDS:
        ok, rule = checks[name]
        for column, value in (per_column.get(name) or {}).items():
            if column not in sampled:
                problems.append(
                    f"{name}.{column}: '{column}' is not sampled, so the setting would have no "
                    "effect; add it to sample_from_distribution_columns or remove the setting"
                )
            elif value is None or not ok(value):
                problems.append(f"{name}.{column}: {rule}, got {value}")
    return problems


def sampling_by_column(sampled: list[str], per_column: dict[str, dict | None]) -> dict[str, Sampling]:
    """{sampled column: its Sampling}, from the per-column maps of the config."""
    return {
        column: Sampling(**{
            name: (per_column.get(name) or {})[column]
            for name in SAMPLING_FIELDS if column in (per_column.get(name) or {})
        })
        for column in sampled
    }


def choose_ids(logits: np.ndarray, rng: np.random.Generator | None,
               sampling: Sampling | None = None) -> np.ndarray:
    """argmax of each row, or (with an rng) one draw from each row's softmax, shaped by
    `sampling`. A draw is never a reserved id (<pad>, <unknown>): they are not values
    a sequence can continue with."""
    if rng is None:
        return logits.argmax(axis=1).astype(np.int64)
    sampling = sampling or Sampling()
    scaled = logits.astype(np.float64) / sampling.temperature
    scaled[:, list(RESERVED_LABELS)] = -np.inf
    if sampling.top_k is not None and sampling.top_k < scaled.shape[1]:
        kth = np.partition(scaled, -sampling.top_k, axis=1)[:, -sampling.top_k][:, None]
        scaled = np.where(scaled < kth, -np.inf, scaled)
    probabilities = softmax(scaled)
    if sampling.top_p is not None and sampling.top_p < 1:
        order = np.argsort(-probabilities, axis=1, kind="stable")
        ranked = np.take_along_axis(probabilities, order, axis=1)
        # keep an id while the ids ranked before it hold less than top_p (the first always)
        keep_ranked = (np.cumsum(ranked, axis=1) - ranked) < sampling.top_p
        keep = np.empty_like(keep_ranked)
        np.put_along_axis(keep, order, keep_ranked, axis=1)
        probabilities = np.where(keep, probabilities, 0.0)
    cumulative = np.cumsum(probabilities, axis=1)
    # draws in (0, total]: an id of probability 0 can never be picked
    draws = (1.0 - rng.random((len(logits), 1))) * cumulative[:, -1:]
    ids = (cumulative < draws).sum(axis=1)
    return np.minimum(ids, logits.shape[1] - 1).astype(np.int64)


def destandardise(values: np.ndarray, statistics: dict[str, float]) -> np.ndarray:
    return values.astype(np.float64) * statistics["std"] + statistics["mean"]
