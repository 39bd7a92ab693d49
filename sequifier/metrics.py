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

Metric names: categorical `count`, `cross_entropy`, `accuracy`, `top{k}_accuracy` (left
out for a column with k values or fewer: it would be 1.0 by construction);
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
from typing import Sequence

import torch
import torch.nn.functional as F

from sequifier import ranking
from sequifier.config.schema import PAD_ID, UNKNOWN_ID

CATEGORICAL_SUMS = ("count", "cross_entropy_sum", "correct", "top_k_correct")
REAL_SUMS = ("count", "abs_error_sum", "squared_error_sum")
SUM_NAMES = {"categorical": CATEGORICAL_SUMS, "real": REAL_SUMS}
RESERVED_IDS = len({PAD_ID, UNKNOWN_ID})  # ids of every categorical column that are no value
CATEGORICAL_BASELINES = ("unigram", "markov")
REAL_BASELINES = ("training_mean", "previous_value")
BASELINE_DESCRIPTIONS = {
    "unigram": "the training split's class frequencies; its accuracy is the majority class's",
    "markov": "the training split's most frequent successor of the previous item (popularity breaks ties)",
    "training_mean": "always the training split's mean",
    "previous_value": "the value before each target, repeated",
}


def sum_dtype(device: torch.device | str) -> torch.dtype:
    """float64 for sums, except on Apple's mps backend, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def empty_sums(column_type: str, device: torch.device | str = "cpu", ranking_k: Sequence[int] = ()) -> torch.Tensor:
    """The zero sums vector of a target of `column_type` ('categorical' or 'real'); a
    categorical target with `ranking_k` carries the `sequifier.ranking` sums after its own."""
    size = len(SUM_NAMES[column_type]) + (ranking.n_sums(ranking_k) if ranking_k else 0)
    return torch.zeros(size, dtype=sum_dtype(device), device=device)


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


def top_k_applies(top_k: int, n_classes: int | None) -> bool:
    """Whether top-k accuracy says anything about a column of `n_classes` ids (the reserved
    PAD_ID and UNKNOWN_ID included): with k at least the number of values the column
    takes, every truth is among the k best and the metric is 1.0 by construction."""
    return n_classes is None or n_classes - RESERVED_IDS > top_k


def categorical_metrics(sums: torch.Tensor, top_k: int, ranking_k: Sequence[int] = (),
                        n_classes: int | None = None) -> dict[str, float]:
    """Named metrics; top-k accuracy is left out where `top_k_applies` says it is void."""
    own = len(CATEGORICAL_SUMS)
    count, cross_entropy, correct, top_k_correct = (float(v) for v in sums[:own].tolist())
    values = {
        "count": int(count),
        "cross_entropy": _ratio(cross_entropy, count),
        "accuracy": _ratio(correct, count),
    }
    if top_k_applies(top_k, n_classes):
        values[top_k_name(top_k)] = _ratio(top_k_correct, count)
    if ranking_k:
        values.update(ranking.ranking_metrics(sums[own:], ranking_k))
    return values


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


def metrics_from_sums(column_type: str, sums: torch.Tensor, top_k: int,
                      ranking_k: Sequence[int] = (), n_classes: int | None = None) -> dict[str, float]:
    """Named metrics of one target from its summed vector (`n_classes`: see `top_k_applies`)."""
    if column_type == "categorical":
        return categorical_metrics(sums, top_k, ranking_k, n_classes)
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


def ranked_categorical_sums(logits: torch.Tensor, targets: torch.Tensor, top_k: int,
                            mask: torch.Tensor | None = None, ranking_k: Sequence[int] = (),
                            seen_previous: torch.Tensor | None = None) -> torch.Tensor:
    """`categorical_sums`, followed by the `sequifier.ranking` sums when `ranking_k` is
    given (with `seen_previous` [B, L], the column's inputs, seen items are excluded)."""
    sums = categorical_sums(logits, targets, top_k, mask)
    if not ranking_k:
        return sums
    found = ranking.slot_ranking_sums(logits, targets, mask, ranking_k, seen_previous)
    return torch.cat([sums, found.to(sums.dtype)])


def ranked_row_sums(logits: torch.Tensor, targets: torch.Tensor, top_k: int, ranking_k: Sequence[int] = (),
                    seen: torch.Tensor | None = None) -> torch.Tensor:
    """`ranked_categorical_sums` of scored rows already picked out: logits [N, C], target
    ids [N], `seen` [N, S] each row's context ids (exclude_seen; `ranking.seen_for_rows`
    of the same slots). For rows scored a bounded chunk at a time
    (`sequifier.catalog`): the sums of the chunks add up to those of the whole."""
    sums = categorical_sums(logits, targets, top_k)
    if not ranking_k:
        return sums
    ranks = ranking.target_ranks(logits, targets, seen)
    return torch.cat([sums, ranking.ranking_sums(ranks, ranking_k).to(sums.dtype)])


# ---- the Markov-1 baseline -------------------------------------------------------------

def transition_keys(previous: torch.Tensor, targets: torch.Tensor, n_classes: int,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [N]: previous * n_classes + target of each scored slot (a transition's key).

    A sequence's first item follows PAD_ID, so the Markov baseline's successors of
    PAD_ID are the training split's first items."""
    return _scored(previous, mask, 0).long() * n_classes + _scored(targets, mask, 0).long()


class MarkovBaseline:
    """Next item = the most frequent successor of the previous item in the training split.

    As a distribution: p(x | prev) = (count(prev -> x) + u(x)) / (count(prev) + 1), with u
    the add-one smoothed unigram probabilities; so its arg-max is the most frequent
    successor, equal counts (and unseen previous items) fall back to popularity, and
    every item keeps a finite cross-entropy. Transitions are held sparse ([C, C] with
    one entry per distinct pair seen), so large catalogues fit.
    """

    def __init__(self, keys: torch.Tensor, counts: torch.Tensor, n_classes: int,
                 class_counts_: torch.Tensor):
        self.n_classes = n_classes
        keys = keys.long().cpu()
        index = torch.stack([keys // n_classes, keys % n_classes])
        self.transitions = torch.sparse_coo_tensor(index, counts.double().cpu(), (n_classes, n_classes),
                                                   check_invariants=True).coalesce()
        self.totals = torch.zeros(n_classes, dtype=torch.float64).index_add_(0, index[0], counts.double().cpu())
        self.unigram = unigram_log_probs(class_counts_.cpu()).exp()

    @staticmethod
    def fit(keys: torch.Tensor, n_classes: int, class_counts_: torch.Tensor,
            weights: torch.Tensor | None = None) -> "MarkovBaseline":
        """From the `transition_keys` of the training split's scored slots (each counted
        `weights` times: partial counts of batches or ranks add up)."""
        keys = keys.long().cpu()
        weights = torch.ones_like(keys) if weights is None else weights.long().cpu()
        unique, inverse = torch.unique(keys, return_inverse=True)
        counts = torch.zeros(unique.numel(), dtype=torch.int64).index_add_(0, inverse, weights)
        return MarkovBaseline(unique, counts, n_classes, class_counts_)

    def log_probs(self, previous: torch.Tensor) -> torch.Tensor:
        """float64 [N, C]: log p(x | previous) for previous item ids [N]."""
        rows = self.transitions.index_select(0, previous.long().cpu()).to_dense()
        probs = (rows + self.unigram) / (self.totals[previous.long().cpu()] + 1.0).unsqueeze(-1)
        return probs.log().to(previous.device)


def _scored_rows(mask: torch.Tensor | None, shape) -> torch.Tensor:
    rows = torch.arange(math.prod(shape))
    return rows if mask is None else rows[mask.reshape(-1).cpu()]


def categorical_baseline_sums(targets: torch.Tensor, training_counts: torch.Tensor, top_k: int,
                              mask: torch.Tensor | None = None, *, previous: torch.Tensor | None = None,
                              markov: MarkovBaseline | None = None, ranking_k: Sequence[int] = (),
                              exclude_seen: bool = False,
                              max_elements: int = 1 << 22) -> dict[str, torch.Tensor]:
    """{baseline name: categorical sums} on the scored `targets` [B, L] of the split evaluated.

    `previous` [B, L] (the column's item in the slot before each target) feeds the Markov
    baseline (given `markov`) and, with `exclude_seen`, the items seen before each target.
    With `ranking_k` each vector carries the ranking sums after the categorical ones."""
    log_probs = unigram_log_probs(training_counts)
    found = {"unigram": unigram_sums(targets, log_probs, top_k, mask)}
    if ranking_k:
        found["unigram"] = torch.cat([found["unigram"], _unigram_ranking_sums(
            targets, log_probs, mask, ranking_k, previous if exclude_seen else None).to(found["unigram"].dtype)])
    if markov is not None and previous is not None:
        found["markov"] = _markov_sums(targets, previous, markov, top_k, mask, ranking_k, exclude_seen,
                                       max_elements)
    return found


def _unigram_ranking_sums(targets, log_probs, mask, ranking_k, seen_previous) -> torch.Tensor:
    """Ranks under constant scores: the target's place in the popularity order, less the
    seen items ahead of it (no [N, C] table)."""
    device = targets.device
    scores = log_probs.to(device=device, dtype=torch.float32)
    order = torch.sort(-log_probs.to(device), stable=True).indices
    place = torch.empty_like(order)
    place[order] = torch.arange(order.numel(), device=device)
    # PAD_ID has score -inf: last, never ahead of a target
    rows = _scored_rows(mask, targets.shape).to(device)
    flat_targets = targets.reshape(-1).index_select(0, rows).long()
    ranks = place[flat_targets] + 1
    if seen_previous is not None:
        # in chunks: the seen items of every slot at once would be [N, L] per window
        step = max(1, (1 << 22) // seen_previous.shape[-1])
        for lo in range(0, rows.numel(), step):
            chunk, part = rows[lo:lo + step], slice(lo, lo + step)
            seen = ranking.seen_for_rows(seen_previous, chunk).long()
            ranks[part] -= ranking.seen_adjustment(seen, scores[seen], scores[flat_targets[part]], flat_targets[part])
    return ranking.ranking_sums(ranks, ranking_k)


def _markov_sums(targets, previous, markov: MarkovBaseline, top_k, mask, ranking_k, exclude_seen,
                 max_elements) -> torch.Tensor:
    device = targets.device
    flat_targets = targets.reshape(-1)
    flat_previous = previous.reshape(-1)
    seen = exclude_seen and bool(ranking_k)
    rows = _scored_rows(mask, targets.shape).to(device)
    sums = empty_sums("categorical", device, ranking_k)
    step = max(1, max_elements // max(markov.n_classes, 1))
    for lo in range(0, rows.numel(), step):
        chunk = rows[lo:lo + step]
        chunk_targets = flat_targets.index_select(0, chunk)
        logits = markov.log_probs(flat_previous.index_select(0, chunk)).to(device)
        part = categorical_sums(logits, chunk_targets, top_k)
        if ranking_k:
            ranks = ranking.target_ranks(logits, chunk_targets,
                                         ranking.seen_for_rows(previous, chunk) if seen else None)
            part = torch.cat([part, ranking.ranking_sums(ranks, ranking_k).to(part.dtype)])
        sums += part
    return sums


def real_baseline_sums(targets: torch.Tensor, previous: torch.Tensor, training_mean: float,
                       std: float, mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{baseline name: real sums}; `previous` holds the value in the slot before each target."""
    return {
        "training_mean": real_sums(constant_predictions(targets, training_mean), targets, std, mask),
        "previous_value": real_sums(previous, targets, std, mask),
    }
