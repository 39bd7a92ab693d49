"""The prediction engines: an opened model run over model inputs, batch by batch.

* `predict_last`: one prediction after each window (the window's last input slot), with
  `steps > 1` fed back in for autoregression and forecasts (`infer/forecasting.py`: drop
  the oldest slot, append the prediction, predict the next, with the known-ahead inputs
  of each step's own position);
* `predict_every_position`: one forward pass per window predicting every slot from the
  window's first predicted slot on (the model is causal: its output after input slot j
  is the prediction for slot j+1);
* `embed`: the embedding of each window.

They return ids / standardised values as arrays; `tables.py` turns them into the user's
terms. A `Chooser` decides how a categorical target's id is picked (argmax, or a seeded
draw for the sampled columns). A categorical target's rows are scored a bounded chunk
at a time (`sequifier.catalog`: from the runner's query vectors and class vectors when
the export has them, else from its dense logits), and with `TopK` each row's k most
likely items are kept too (`recommend.py` writes them).
"""

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from sequifier.catalog import logit_chunks
from sequifier.catalog import top_k as catalogue_top_k
from sequifier.config.metadata import Metadata
from sequifier.export_format import EMBEDDING_OUTPUT
from sequifier.infer import forecasting
from sequifier.infer.models import ModelJob, check_n_classes
from sequifier.infer.recommend import RESERVED_IDS, seen_ids
from sequifier.infer.values import SAMPLING_FIELDS, Sampling, choose_ids, sampling_by_column, softmax


@dataclass
class Chooser:
    """argmax for every categorical target, except the `sampling` columns: a draw from
    `rng` shaped by their Sampling."""

    rng: np.random.Generator
    sampling: dict[str, Sampling] = field(default_factory=dict)

    @classmethod
    def from_options(cls, seed: int, sampled, per_column: dict[str, dict | None]) -> "Chooser":
        """From infer's sample_from_distribution_columns and {field: {column: value}}."""
        return cls(np.random.default_rng(seed), sampling_by_column(list(sampled or []), per_column))

    @classmethod
    def argmax(cls, seed: int = 0) -> "Chooser":
        return cls(np.random.default_rng(seed))

    def choose(self, column: str, logits: np.ndarray) -> np.ndarray:
        sampled = column in self.sampling
        return choose_ids(logits, self.rng if sampled else None, self.sampling.get(column))


@dataclass(frozen=True)
class TopK:
    """Keep each predicted row's k most likely items (output_top_k); with exclude_seen,
    not the items of the row's input window."""

    k: int
    exclude_seen: bool = False


def score_rows(job: ModelJob, metadata: Metadata, column: str, rows: np.ndarray, chooser: Chooser,
               with_probabilities: bool, top_k: Optional[TopK], seen: Optional[np.ndarray]):
    """(ids [N], probabilities [N, n_classes] or None, (top ids, top probabilities) [N, k]
    or None) of N rows of a categorical target: `rows` are the runner's outputs (query
    vectors, or logits), scored a bounded chunk of rows at a time; `seen` [N, m] ids
    each row's top k leaves out."""
    vectors = getattr(job.runner, "class_vectors", {}).get(column)
    n_classes = len(vectors[1]) if vectors is not None else rows.shape[1]
    check_n_classes(metadata, column, n_classes, job.path)
    n = len(rows)
    ids = np.empty(n, dtype=np.int64)
    probabilities = np.empty((n, n_classes), dtype=np.float32) if with_probabilities else None
    best = (np.empty((n, top_k.k), np.int64), np.empty((n, top_k.k), np.float32)) if top_k else None
    for start, end, logits in logit_chunks(rows, vectors):
        ids[start:end] = chooser.choose(column, logits)
        if probabilities is not None:
            probabilities[start:end] = softmax(logits)
        if best is not None:  # last: it masks the logits in place
            best[0][start:end], best[1][start:end] = catalogue_top_k(
                logits, top_k.k, RESERVED_IDS, None if seen is None else seen[start:end])
    return ids, probabilities, best


def _store(scored, predictions: dict, probabilities: dict, top: dict, column: str, shape: tuple, where) -> None:
    """Put `score_rows`' results into the run's buffers (of `shape` rows) at `where`."""
    ids, probs, best = scored
    _buffer(predictions, column, shape, np.int64)[where] = ids
    if probs is not None:
        _buffer(probabilities, column, shape + probs.shape[1:], np.float32)[where] = probs
    if best is not None:
        if column not in top:
            top[column] = tuple(np.empty(shape + b.shape[1:], b.dtype) for b in best)
        top[column][0][where], top[column][1][where] = best


def sampling_settings(cfg) -> dict[str, dict | None]:
    """{temperature|top_k|top_p: {column: value}} of an infer config."""
    return {name: getattr(cfg, name) for name in SAMPLING_FIELDS}


def batches(n: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, batch_size):
        yield start, min(start + batch_size, n)


def _slice(inputs: dict[str, np.ndarray], start: int, end: int) -> dict[str, np.ndarray]:
    return {c: np.ascontiguousarray(v[start:end]) for c, v in inputs.items()}


def embed(job: ModelJob, inputs: dict[str, np.ndarray], n: int, batch_size: int) -> np.ndarray:
    """[n, dim] embeddings: each window summarised up to its last input slot."""
    parts = [np.asarray(job.runner.run(_slice(inputs, start, end))[EMBEDDING_OUTPUT], dtype=np.float32)
             for start, end in batches(n, batch_size)]
    return np.concatenate(parts)


def predict_last(job: ModelJob, metadata: Metadata, history: dict[str, np.ndarray],
                 future_known: dict[str, np.ndarray], steps: int, batch_size: int, chooser: Chooser,
                 with_probabilities: bool, top_k: Optional[TopK] = None):
    """`steps` predictions after each window's history (the forecast engine,
    infer/forecasting.py): history [n, L] per input column in window alignment,
    future_known [n, >= steps] per known-ahead input.

    Returns ({target: [n, steps] ids or standardised values},
             {categorical target: [n, steps, n_classes] probabilities} if asked for,
             {categorical target: (ids, probabilities) [n, steps, k]} with `top_k`).
    """
    info = job.info
    n = len(next(iter(history.values())))
    categorical = [c for c in info.target_columns if info.target_column_types[c] == "categorical"]
    probabilities: dict[str, np.ndarray] = {}
    top: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    scored: dict = {}  # per categorical target: score_rows of the current step's rows

    every = getattr(job.runner, "every_position", False)  # opened for a direct forecast

    def run(inputs: dict[str, np.ndarray]) -> dict:
        raw = job.runner.run(inputs)
        if every:
            raw = {k: np.asarray(v)[:, -1] for k, v in raw.items()}
        for column in categorical:  # bounded chunks: never a dense [rows, catalogue] table kept
            seen = seen_ids(inputs[column]) if top_k is not None and top_k.exclude_seen else None
            scored[column] = score_rows(job, metadata, column, raw[column], chooser, with_probabilities,
                                        top_k, seen)
        return raw

    def keep(start: int, end: int, step: int, raw: dict) -> None:
        for column in categorical:
            _, probs, best = scored[column]
            if probs is not None:
                _buffer(probabilities, column, (n, steps, probs.shape[1]), np.float32)[start:end, step] = probs
            if best is not None:
                if column not in top:
                    top[column] = tuple(np.empty((n, steps) + b.shape[1:], b.dtype) for b in best)
                top[column][0][start:end, step], top[column][1][start:end, step] = best

    def run_tail(inputs: dict[str, np.ndarray], n: int) -> dict:
        return {k: np.asarray(v)[:, -n:] for k, v in job.runner.run(inputs).items()}

    predictions = forecasting.forecast(
        run, forecasting.ForecastModel.of(info), history, future_known, steps,
        choose=lambda column, out: scored[column][0], on_step=keep, batch_size=batch_size,
        run_tail=run_tail if every else None)
    return predictions, probabilities, top


def forecasts_directly(info, steps: int) -> bool:
    """Whether infer forecasts `steps` in one forward pass (infer/forecasting.py)."""
    return forecasting.method_for(forecasting.ForecastModel.of(info), steps) == "direct"


def every_position_batches(job: ModelJob, inputs: dict[str, np.ndarray], first_slot: np.ndarray,
                           batch_size: int):
    """One forward pass per window, batch by batch: yields (start, end, outputs, mask),
    outputs per target [b, L, n_classes] / [b, L] and mask [b, L] True where the output
    (the prediction for slot j + 1) is one to keep."""
    target_slots = np.arange(1, job.info.seq_length + 1)
    for start, end in batches(len(first_slot), batch_size):
        mask = target_slots[None, :] >= first_slot[start:end, None]
        yield start, end, job.runner.run(_slice(inputs, start, end)), mask


def predict_every_position(job: ModelJob, metadata: Metadata, inputs: dict[str, np.ndarray],
                           first_slot: np.ndarray, batch_size: int, chooser: Chooser,
                           with_probabilities: bool, on_batch: Optional[Callable] = None,
                           top_k: Optional[TopK] = None):
    """Predictions for every slot from `first_slot` on, one row per predicted slot.

    Returns (window index [M], slot [M], {target: [M] ids or standardised values},
    {categorical target: [M, n_classes] probabilities} if asked for, {categorical
    target: (ids, probabilities) [M, k]} with `top_k`). `on_batch(outputs, mask, start,
    end)` sees each batch's raw outputs (evaluate scores them).
    """
    info = job.info
    target_slots = np.arange(1, info.seq_length + 1)
    rows, positions = np.nonzero(target_slots[None, :] >= first_slot[:, None])
    n_rows = len(rows)
    predictions: dict[str, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    top: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    done = 0
    for start, end, raw, mask in every_position_batches(job, inputs, first_slot, batch_size):
        if on_batch is not None:
            on_batch(raw, mask, start, end)
        k = int(mask.sum())
        for column in info.target_columns:
            out = raw[column][mask]
            if info.target_column_types[column] == "categorical":
                seen = None
                if top_k is not None and top_k.exclude_seen:  # the inputs up to each predicted slot
                    window, position = np.nonzero(mask)
                    seen = seen_ids(inputs[column][start:end][window], position + 1)
                scored = score_rows(job, metadata, column, out, chooser, with_probabilities, top_k, seen)
                _store(scored, predictions, probabilities, top, column, (n_rows,), np.s_[done:done + k])
            else:
                _buffer(predictions, column, (n_rows,), np.float32)[done:done + k] = out
        done += k
    return rows, positions + 1, predictions, probabilities, top


def _buffer(store: dict, column: str, shape, dtype) -> np.ndarray:
    if store.get(column) is None:
        store[column] = np.empty(shape, dtype=dtype)
    return store[column]
