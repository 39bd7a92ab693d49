"""The multi-step forecast engine: H autoregressive steps for a batch of sequences.

`forecast` is the one place that rolls a model forward: infer's `autoregression` and
`forecast` use it, and evaluate's backtest builds on it. It works on numpy arrays in
the model's own terms (categorical ids, standardised real values), batched over
sequences; the only Python loop is over the H steps (and over batches of
`batch_size` sequences).

For each sequence the caller gives

* `history[c]`, `[N, L]` for every input column `c` of the model: the values at the
  last L positions before the forecast origin, oldest first, in window alignment
  (the same slots for every column, known-ahead or not; left-padded with PAD_ID / 0.0
  like windows when a sequence is shorter);
* `future_known[k]`, `[N, H]` for every known-ahead input `k`: its values at the H
  positions to forecast (the known-ahead values of each future step).

Step s predicts the position s + 1 after the origin: the ordinary inputs are the L
positions before it (history, then the predictions of the earlier steps), the
known-ahead inputs the L positions up to and including it (data/known_ahead.py), so a
forecast sees exactly what training showed the model. Each target that is also an
input is fed back as the next step's input; every other input must be known ahead
(the engine refuses ordinary non-target inputs when H > 1, since nothing gives their
future values).

A model trained with `direct_horizon` (data/masked_future.py) forecasts up to that many
steps in one forward pass instead: the window of the last step, with the fed-back
inputs masked, and the outputs of its last H positions. The engine takes that path when
the caller gives `run_tail` (every-position outputs) and the horizon fits the model's
direct horizon; `method` can force either path.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from sequifier.data import masked_future
from sequifier.data.known_ahead import KNOWN_AHEAD_SHIFT
from sequifier.errors import SequifierError

# run(inputs {column: [b, L]}) -> {target: logits [b, n_classes] | values [b]}
Run = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]
# run_tail(inputs {column: [b, L]}, n) -> {target: outputs of the last n positions [b, n, ...]}
RunTail = Callable[[Dict[str, np.ndarray], int], Dict[str, np.ndarray]]
# choose(column, logits [b, n_classes]) -> ids [b]
Choose = Callable[[str, np.ndarray], np.ndarray]
# on_step(start, end, step, raw outputs of that step for sequences start..end-1)
OnStep = Callable[[int, int, int, Dict[str, np.ndarray]], None]


@dataclass
class ForecastModel:
    """What the engine needs to know about a model (an infer `ModelInfo` has it all)."""

    input_columns: Sequence[str]
    target_columns: Sequence[str]
    target_column_types: Dict[str, str]
    seq_length: int
    known_ahead_columns: Sequence[str] = ()
    direct_horizon: Optional[int] = None

    @staticmethod
    def of(info) -> "ForecastModel":
        """From anything with these attributes (infer's ModelInfo, a ColumnLayout)."""
        return ForecastModel(list(info.input_columns), list(info.target_columns),
                             dict(info.target_column_types), int(info.seq_length),
                             list(getattr(info, "known_ahead_columns", None) or []),
                             getattr(info, "direct_horizon", None))


def method_for(model: ForecastModel, horizon: int, method: str = "auto") -> str:
    """'direct' or 'autoregressive': how `forecast` rolls `model` over `horizon` steps.
    auto: direct when the model was trained for at least this horizon (real targets only:
    training refuses direct_horizon with categorical targets, which infer scores a step
    at a time)."""
    fits = (model.direct_horizon is not None and horizon <= model.direct_horizon
            and all(kind == "real" for kind in model.target_column_types.values()))
    if method == "direct" and not fits:
        raise SequifierError(
            f"forecast: method 'direct' needs a model trained with model_spec.direct_horizon >= "
            f"{horizon} (this one: {model.direct_horizon}); use 'autoregressive' or 'auto', or train "
            f"with direct_horizon: {horizon}")
    if method == "autoregressive" or horizon == 1 or not fits:
        return "autoregressive"
    return "direct"


def horizon_problems(horizon: Optional[int], forecast: bool, autoregression: bool,
                     extra_steps: Optional[int]) -> list:
    """infer's `forecast_horizon` against the other options (its upper limit, the model's
    seq_length, is `horizon_limit_problems`)."""
    if horizon is None:
        return []
    if not forecast:
        return ["forecast_horizon: is set but forecast is false; set forecast: true (a horizon "
                "continues after each sequence's last item) or remove forecast_horizon"]
    if horizon < 1:
        return [f"forecast_horizon: must be at least 1 (and at most the model's seq_length), "
                f"got {horizon}"]
    if autoregression and extra_steps is not None and extra_steps != horizon - 1:
        return [f"forecast_horizon: {horizon} disagrees with autoregression_extra_steps "
                f"{extra_steps} (a horizon of H is 1 + H-1 extra steps); set only forecast_horizon"]
    return []


def horizon_limit_problems(horizon: Optional[int], seq_length: int) -> list:
    """A horizon longer than the context would leave no observed item in the model's input."""
    if horizon is None or horizon <= seq_length:
        return []
    return [f"forecast_horizon: must be 1..{seq_length} (the model's seq_length), got {horizon}: "
            "a longer horizon would leave no observed item in the model's context; train with "
            "a longer seq_length to forecast further"]


def argmax_ids(column: str, logits: np.ndarray) -> np.ndarray:
    """The default choice of a categorical prediction: the most likely id."""
    return np.asarray(logits).argmax(axis=-1).astype(np.int64)


def unforecastable_inputs(model: ForecastModel) -> list:
    """Inputs whose future values neither the model predicts nor the caller gives."""
    return [c for c in model.input_columns
            if c not in model.target_columns and c not in model.known_ahead_columns]


def forecast(run: Run, model: ForecastModel, history: Dict[str, np.ndarray],
             future_known: Dict[str, np.ndarray], horizon: int,
             choose: Optional[Choose] = None, on_step: Optional[OnStep] = None,
             batch_size: Optional[int] = None, run_tail: Optional[RunTail] = None,
             method: str = "auto") -> Dict[str, np.ndarray]:
    """Forecast `horizon` steps after each sequence's history.

    `run` is a model runner's `run` (ONNX or .pt; last-position outputs), `model` its
    columns (`ForecastModel.of(runner.info)`), `history` and `future_known` as in the
    module docstring. Returns {target: [N, horizon]}: int64 ids for categorical targets
    (`choose`, default argmax), float32 standardised values for real ones. `on_step`
    sees each step's raw outputs (logits for probabilities or intervals). With `run_tail`,
    a model trained for the horizon forecasts directly (`method_for`).
    """
    length = int(model.seq_length)
    if horizon < 1:
        raise ValueError(f"forecast: horizon must be >= 1, got {horizon}")
    missing = [c for c in model.input_columns if c not in history]
    if missing:
        raise ValueError(f"forecast: history lacks input columns {missing}")
    if horizon > 1 and unforecastable_inputs(model):
        raise SequifierError(
            f"forecast: input columns {unforecastable_inputs(model)} are neither targets nor "
            "known-ahead columns of the model, so their future values are unknown; train a "
            "model that predicts them, preprocess them as known_ahead_columns, or forecast "
            "one step"
        )
    known = [c for c in model.input_columns if c in model.known_ahead_columns]
    for column in known:
        given = future_known.get(column)
        if given is None or given.ndim != 2 or given.shape[1] < horizon:
            raise ValueError(f"forecast: future_known['{column}'] must be [N, >= {horizon}]")
    n = len(next(iter(history.values())))
    for column, values in history.items():
        if values.shape != (n, length):
            raise ValueError(f"forecast: history['{column}'] is {values.shape}, expected {(n, length)}")
    choose = choose or argmax_ids
    size = n if batch_size is None else max(1, int(batch_size))
    direct = run_tail is not None and method_for(model, horizon, method) == "direct"
    masked = masked_future.masked_columns(model.input_columns, model.target_columns, known)
    out: Dict[str, np.ndarray] = {}

    def keep(start: int, end: int, step: int, raw: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Store one step's forecasts of sequences start..end-1; returns them."""
        if on_step is not None:
            on_step(start, end, step, raw)
        chosen_by_column = {}
        for column in model.target_columns:
            if model.target_column_types[column] == "categorical":
                chosen = np.asarray(choose(column, raw[column]), dtype=np.int64)
            else:
                chosen = np.asarray(raw[column], dtype=np.float32).reshape(-1)
            if column not in out:
                out[column] = np.empty((n, horizon), dtype=chosen.dtype)
            out[column][start:end, step] = chosen
            chosen_by_column[column] = chosen
        return chosen_by_column
    for start in range(0, n, size):
        end = min(start + size, n)
        # one buffer per input: the history, then the future positions (predicted or given)
        buffers = {}
        for column in model.input_columns:
            past = history[column][start:end]
            if column in known:
                ahead = future_known[column][start:end, :horizon].astype(past.dtype, copy=False)
            else:
                ahead = np.zeros((end - start, horizon), dtype=past.dtype)
            buffers[column] = np.concatenate([past, ahead], axis=1)
        def step_inputs(step: int, buffers=buffers) -> Dict[str, np.ndarray]:
            return {c: np.ascontiguousarray(
                buffers[c][:, step + (KNOWN_AHEAD_SHIFT if c in known else 0):][:, :length])
                for c in model.input_columns}

        if direct:  # the last step's window, fed-back inputs masked: one pass for all steps
            inputs = masked_future.mask_tail(step_inputs(horizon - 1), masked,
                                             masked_future.first_masked_position(length, horizon))
            tail = run_tail(inputs, horizon)
            for step in range(horizon):
                keep(start, end, step, {k: v[:, step] for k, v in tail.items()})
            continue
        for step in range(horizon):
            chosen = keep(start, end, step, run(step_inputs(step)))
            for column in model.target_columns:
                if column in buffers and column not in known:
                    buffers[column][:, length + step] = chosen[column]
    return out
