"""Whole-catalogue scoring in bounded chunks: the one home of the chunk size.

A categorical target with a large catalogue (10^5 to 10^6 items) cannot be scored as
one dense [rows, positions, catalogue] table: at 10^6 items one window of 50 positions
alone is 200 MB of float32 logits. Validation (train), `evaluate` and `infer` therefore
score the query vectors of the slots they need (see `SequifierModel.query`) against
the whole catalogue a few rows at a time, so that rows x catalogue never exceeds
`SCORE_CHUNK_ELEMENTS`, and keep per row only what they report (sums of metrics, the
top k). Torch-free: ONNX inference scores with numpy.
"""

import numpy as np

# logits held at once by a scoring pass: 2^24 float32 = 64 MiB (plus a few temporaries
# of the same size, e.g. a softmax)
SCORE_CHUNK_ELEMENTS = 1 << 24


def rows_per_chunk(n_classes: int, chunk_elements: int | None = None) -> int:
    """How many rows are scored against `n_classes` classes in one pass (at least 1)."""
    limit = SCORE_CHUNK_ELEMENTS if chunk_elements is None else chunk_elements
    return max(1, limit // max(1, int(n_classes)))


def row_chunks(n_rows: int, n_classes: int):
    """(start, end) of consecutive row chunks covering `n_rows` rows."""
    step = rows_per_chunk(n_classes)
    for start in range(0, n_rows, step):
        yield start, min(start + step, n_rows)


def logit_chunks(rows: np.ndarray, class_vectors: tuple[np.ndarray, np.ndarray] | None):
    """(start, end, float32 logits [end - start, n_classes]) over `rows`, a bounded chunk
    at a time: `rows` are query vectors [N, width] scored against `class_vectors`
    (weights [n_classes, width], biases [n_classes]), or, without class vectors, dense
    logits [N, n_classes] already (an export without query outputs)."""
    if class_vectors is None:
        n_classes = rows.shape[1] if rows.ndim == 2 else 1
        for start, end in row_chunks(len(rows), n_classes):
            yield start, end, np.asarray(rows[start:end], dtype=np.float32)
        return
    weights, bias = class_vectors
    for start, end in row_chunks(len(rows), len(bias)):
        yield start, end, np.asarray(rows[start:end], dtype=np.float32) @ weights.T + bias


def log_normaliser(logits: np.ndarray) -> np.ndarray:
    """[rows] log of each row's softmax denominator (logsumexp)."""
    top = logits.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]


def top_k(logits: np.ndarray, k: int, excluded: list[int] | np.ndarray = (),
          seen: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids [rows, k], probabilities [rows, k]) of each row's k highest logits, best
    first; -1 (probability 0) where a row has fewer than k classes left to choose.

    Probabilities are the model's softmax over the whole catalogue. Ids in `excluded`
    (for every row) and in `seen` ([rows, m] ids per row, e.g. the items the sequence
    already holds) are never chosen; `logits` is modified in place for that.
    """
    log_z = log_normaliser(logits)
    if len(excluded):
        logits[:, np.asarray(excluded)] = -np.inf
    if seen is not None and seen.size:
        np.put_along_axis(logits, seen, -np.inf, axis=1)
    k = min(k, logits.shape[1])
    # argpartition picks the k best in O(C); a stable sort of those orders them
    part = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(logits, part, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1)
    values = np.take_along_axis(values, order, axis=1)
    probabilities = np.exp(values - log_z[:, None])
    # a row with fewer than k allowed classes: the remaining places hold no id (-1)
    ids[np.isneginf(values)] = -1
    return ids, probabilities.astype(np.float32)
