"""Whole-catalogue scoring in bounded chunks: the one home of the chunk size.

A categorical target with a large catalogue (10^5 to 10^6 items) cannot be scored as
one dense [rows, positions, catalogue] table: at 10^6 items one window of 50 positions
alone is 200 MB of float32 logits. Validation (train), `evaluate` and `infer` therefore
score the query vectors of the slots they need (see `SequifierModel.query`) against
the whole catalogue a few rows at a time, so that rows x catalogue never exceeds
`SCORE_CHUNK_ELEMENTS`, and keep per row only what they report (sums of metrics, the
top k). Torch-free: ONNX inference scores with numpy.
"""


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
