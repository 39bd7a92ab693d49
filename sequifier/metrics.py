"""Quality metrics and baselines per target, as sums that add up exactly.

Every function here is a pure tensor function over the *scored slots* of a split (the
target slots from each window's `targetStart` on; see `sequifier.train.batch.make_batch`).
Scoring is split in two steps so that batches, data-loader shards and DDP ranks can be
combined without error:

1. `*_sums(...)` turns one batch into a small float64 vector of sums and counts. Sums
   of batches (or `all_reduce(SUM)` across ranks) equal the sums of the whole split,
   whatever the batch size or the number of ranks.
2. `categorical_metrics` / `real_metrics` turn the summed vector into named metrics.

Layouts (float64; float32 on `mps`, which has no float64):

* categorical, `CATEGORICAL_SUMS`: [count, cross-entropy sum (nats), correct,
  top-k correct]. Inputs: logits [..., C] and target ids [...]. The prediction is the
  arg-max over all C ids (as `infer` predicts); cross-entropy is the plain
  negative log-likelihood in nats, without the training's class weights.
* real, `REAL_SUMS`: [count, absolute-error sum, squared-error sum], errors in the
  column's original units. Inputs: predictions and targets on the standardised scale
  preprocess stored ((x - mean) / std) and the column's `std`; the mean cancels in
  an error, so it is not needed.

Metric names: categorical `count`, `cross_entropy`, `accuracy`, `top{k}_accuracy`;
real `count`, `mae`, `rmse`, `mse` (all in original units). With no scored slot every
metric but `count` is NaN; callers refuse such a split with a message naming it.

Baselines are predictors that need no model, scored with the same sums so that each
reads like the model's own line:

* categorical `unigram`: always predicts the training split's class frequencies
  (`class_counts` of its scored targets, add-one smoothed over every id except PAD_ID,
  which is never a scored target). Its cross-entropy is the unigram cross-entropy,
  its accuracy that of always predicting the majority class, its top-k accuracy that
  of the k most frequent classes. `unigram_sums` gives its categorical sums.
* real `training_mean`: predicts the mean of the training split's scored targets
  (`value_sums` -> `mean_from_value_sums`); score it with `real_sums` on a constant.
* real `previous_value`: repeats the column's value in the slot before each target
  (the model input at the same position). Before a sequence's first item that slot is
  padding, whose value is 0.0 on the standardised scale, i.e. the column's mean.
"""

import math

import torch
import torch.nn.functional as F

from sequifier.config.schema import PAD_ID

CATEGORICAL_SUMS = ("count", "cross_entropy_sum", "correct", "top_k_correct")
REAL_SUMS = ("count", "abs_error_sum", "squared_error_sum")
SUM_NAMES = {"categorical": CATEGORICAL_SUMS, "real": REAL_SUMS}
DEFAULT_TOP_K = 5
CATEGORICAL_BASELINES = ("unigram",)
REAL_BASELINES = ("training_mean", "previous_value")
BASELINE_DESCRIPTIONS = {
    "unigram": "the training split's class frequencies; its accuracy is the majority class's",
    "training_mean": "always the training split's mean",
    "previous_value": "the value before each target, repeated",
}


def sum_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for sums, except on Apple's mps backend, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def empty_sums(column_type: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The zero sums vector of a target of `column_type` ('categorical' or 'real')."""
    return torch.zeros(len(SUM_NAMES[column_type]), dtype=sum_dtype(device), device=device)


def _count(values: torch.Tensor) -> torch.Tensor:
    return torch.tensor(float(values.shape[0]), dtype=sum_dtype(values.device), device=values.device)


def _acc(values: torch.Tensor) -> torch.Tensor:
    """`values` in the sums' dtype."""
    return values.to(sum_dtype(values.device))


def top_k_name(top_k: int) -> str:
    return f"top{top_k}_accuracy"


def _scored(values: torch.Tensor, mask: torch.Tensor | None, trailing: int) -> torch.Tensor:
    """`values` flattened to the scored slots: [N, *trailing dims] (all slots without mask)."""
    flat = values.reshape(-1, *values.shape[values.dim() - trailing:]) if trailing else values.reshape(-1)
    if mask is None:
        return flat
    return flat[mask.reshape(-1)]


# ---- categorical -----------------------------------------------------------------------

def categorical_sums(logits: torch.Tensor, targets: torch.Tensor, top_k: int,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """[count, cross-entropy sum, correct, top-k correct] of logits [..., C] vs ids [...].

    `mask` (bool, shaped like `targets`) selects the scored slots; k larger than C
    counts as C.
    """
    logits = _scored(logits, mask, 1).float()
    targets = _scored(targets, mask, 0)
    k = min(top_k, logits.shape[-1])
    cross_entropy = _acc(F.cross_entropy(logits, targets, reduction="none")).sum()
    best = logits.topk(k, dim=-1).indices  # column 0 is the arg-max
    hits = best == targets.unsqueeze(-1)
    return torch.stack([_count(targets), cross_entropy, _acc(hits[:, 0].sum()),
                        _acc(hits.any(dim=-1).sum())])


def categorical_metrics(sums: torch.Tensor, top_k: int) -> dict[str, float]:
    count, cross_entropy, correct, top_k_correct = (float(v) for v in sums.tolist())
    return {
        "count": int(count),
        "cross_entropy": _ratio(cross_entropy, count),
        "accuracy": _ratio(correct, count),
        top_k_name(top_k): _ratio(top_k_correct, count),
    }


# ---- real ------------------------------------------------------------------------------

def real_sums(predictions: torch.Tensor, targets: torch.Tensor, std: float,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """[count, |error| sum, error^2 sum] in original units, from standardised values.

    `predictions` may carry a trailing axis of 1 (a model's real head); `mask` (bool,
    shaped like `targets`) selects the scored slots.
    """
    predictions = _scored(predictions.reshape(targets.shape), mask, 0)
    targets = _scored(targets, mask, 0)
    errors = (_acc(predictions) - _acc(targets)) * float(std)
    return torch.stack([_count(targets), errors.abs().sum(), errors.square().sum()])


def real_metrics(sums: torch.Tensor) -> dict[str, float]:
    count, abs_sum, squared_sum = (float(v) for v in sums.tolist())
    mse = _ratio(squared_sum, count)
    return {"count": int(count), "mae": _ratio(abs_sum, count), "rmse": math.sqrt(mse), "mse": mse}


def metrics_from_sums(column_type: str, sums: torch.Tensor, top_k: int) -> dict[str, float]:
    """Named metrics of one target from its summed vector."""
    if column_type == "categorical":
        return categorical_metrics(sums, top_k)
    return real_metrics(sums)


def _ratio(total: float, count: float) -> float:
    return total / count if count > 0 else math.nan


# ---- what baselines need from the training split ---------------------------------------

def class_counts(targets: torch.Tensor, n_classes: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [n_classes]: how often each id is a scored target."""
    return torch.bincount(_scored(targets, mask, 0), minlength=n_classes)


def value_sums(targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """float64 [count, sum] of the scored (standardised) values."""
    values = _acc(_scored(targets, mask, 0))
    return torch.stack([_count(values), values.sum()])


def mean_from_value_sums(sums: torch.Tensor) -> float:
    count, total = (float(v) for v in sums.tolist())
    return _ratio(total, count)


# ---- baselines -------------------------------------------------------------------------

def unigram_log_probs(counts: torch.Tensor) -> torch.Tensor:
    """float64 [C] log-frequencies of `class_counts`, add-one smoothed; PAD_ID gets -inf.

    Smoothing keeps the cross-entropy finite for a class that the validation split has
    and the training split lacks.
    """
    smoothed = _acc(counts) + 1.0
    smoothed[PAD_ID] = 0.0
    return (smoothed / smoothed.sum()).log()


def unigram_sums(targets: torch.Tensor, log_probs: torch.Tensor, top_k: int,
                 mask: torch.Tensor | None = None) -> torch.Tensor:
    """`categorical_sums` of always predicting `log_probs` (see `unigram_log_probs`).

    Computed from the ids alone (no [N, C] logits): the arg-max is the most frequent
    class, the top k the k most frequent; equal frequencies rank the lower id first.
    """
    targets = _scored(targets, mask, 0)
    log_probs = log_probs.to(device=targets.device, dtype=sum_dtype(targets.device))
    k = min(top_k, log_probs.numel())
    # stable sort: equal frequencies rank by id, on every device
    ranked = torch.sort(-log_probs, stable=True).indices[:k]
    return torch.stack([_count(targets), -log_probs.index_select(0, targets).sum(),
                        _acc((targets == ranked[0]).sum()), _acc(torch.isin(targets, ranked).sum())])


def constant_predictions(targets: torch.Tensor, value: float) -> torch.Tensor:
    """A prediction of `value` for every slot of `targets` (the training-mean baseline)."""
    return torch.full_like(targets, value, dtype=sum_dtype(targets.device))


def categorical_baseline_sums(targets: torch.Tensor, training_counts: torch.Tensor, top_k: int,
                              mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{baseline name: categorical sums} on the scored `targets` of the split evaluated."""
    return {"unigram": unigram_sums(targets, unigram_log_probs(training_counts), top_k, mask)}


def real_baseline_sums(targets: torch.Tensor, previous: torch.Tensor, training_mean: float,
                       std: float, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{baseline name: real sums}; `previous` holds the value in the slot before each target."""
    return {
        "training_mean": real_sums(constant_predictions(targets, training_mean), targets, std, mask),
        "previous_value": real_sums(previous, targets, std, mask),
    }
