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
draw for the sampled columns).
"""

from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np

from sequifier.config.metadata import Metadata
from sequifier.export_format import EMBEDDING_OUTPUT
from sequifier.infer import forecasting
from sequifier.infer.models import ModelJob, check_n_classes
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
                 with_probabilities: bool):
    """`steps` predictions after each window's history (the forecast engine,
    infer/forecasting.py): history [n, L] per input column in window alignment,
    future_known [n, >= steps] per known-ahead input.

    Returns ({target: [n, steps] ids or standardised values},
             {categorical target: [n, steps, n_classes] probabilities} if asked for).
    """
    info = job.info
    n = len(next(iter(history.values())))
    categorical = [c for c in info.target_columns if info.target_column_types[c] == "categorical"]
    probabilities: dict[str, np.ndarray] = {}

    def choose(column: str, logits: np.ndarray) -> np.ndarray:
        check_n_classes(metadata, column, logits.shape[1], job.path)
        return chooser.choose(column, logits)

    def keep_probabilities(start: int, end: int, step: int, raw: dict) -> None:
        for column in categorical:
            shape = (n, steps, raw[column].shape[1])
            _buffer(probabilities, column, shape, np.float32)[start:end, step] = softmax(raw[column])

    predictions = forecasting.forecast(
        job.runner.run, forecasting.ForecastModel.of(info), history, future_known, steps,
        choose=choose, on_step=keep_probabilities if with_probabilities else None,
        batch_size=batch_size)
    return predictions, probabilities


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
                           with_probabilities: bool, on_batch: Optional[Callable] = None):
    """Predictions for every slot from `first_slot` on, one row per predicted slot.

    Returns (window index [M], slot [M], {target: [M] ids or standardised values},
    {categorical target: [M, n_classes] probabilities} if asked for). `on_batch(outputs,
    mask, start, end)` sees each batch's raw outputs (evaluate scores them).
    """
    info = job.info
    target_slots = np.arange(1, info.seq_length + 1)
    rows, positions = np.nonzero(target_slots[None, :] >= first_slot[:, None])
    n_rows = len(rows)
    predictions: dict[str, np.ndarray] = {}
    probabilities: dict[str, np.ndarray] = {}
    done = 0
    for start, end, raw, mask in every_position_batches(job, inputs, first_slot, batch_size):
        if on_batch is not None:
            on_batch(raw, mask, start, end)
        k = int(mask.sum())
        for column in info.target_columns:
            out = raw[column][mask]
            if info.target_column_types[column] == "categorical":
                check_n_classes(metadata, column, out.shape[1], job.path)
                _buffer(predictions, column, (n_rows,), np.int64)[done:done + k] = chooser.choose(column, out)
                if with_probabilities:
                    _buffer(probabilities, column, (n_rows, out.shape[1]), np.float32)[done:done + k] = softmax(out)
            else:
                _buffer(predictions, column, (n_rows,), np.float32)[done:done + k] = out
        done += k
    return rows, positions + 1, predictions, probabilities


def _buffer(store: dict, column: str, shape, dtype) -> np.ndarray:
    if store.get(column) is None:
        store[column] = np.empty(shape, dtype=dtype)
    return store[column]
