"""Ranking metrics of next-item prediction: HR@k, NDCG@k and MRR, as sums that add up.

Every function works on any set of rows (scored slots) at once, so a caller may score a
split in row chunks of any size - batches, DDP ranks, or the bounded chunks of a large
catalogue - and add the sums; `ranking_metrics` turns the total into metrics.

The rank of a target is 1 + the number of candidate items that outrank it. An item
outranks the target when its score is higher, or equal with a lower id (the tie rule
of the unigram baseline in `sequifier.metrics`, so that constant scores give one
deterministic ranking). The candidates are every id of the column except PAD_ID, which
is never a target; with `seen` given, the items the row's sequence already contains are
removed from the candidates too ("exclude seen", the convention of full-ranking
evaluation in recommender libraries) - except the target itself: a target the user
had already met is ranked among the unseen items, never dropped or counted as a miss.

For one target per row (the next item): HR@k = share of rows with rank <= k (recall@k),
NDCG@k = mean of 1 / log2(rank + 1) over rows with rank <= k (0 otherwise; the ideal
DCG of a single relevant item is 1), MRR = mean of 1 / rank over all ranks (no cut-off).

Sums layout, float64 (float32 on mps): [count, reciprocal-rank sum, hits@k for each k,
DCG@k sum for each k], in the order of `ks`.
"""

import math
from typing import Sequence

import torch

from sequifier.config.schema import PAD_ID

DEFAULT_RANKING_K = (10, 20)


def _sum_dtype(device) -> torch.dtype:
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def catalogue_size(n_classes: int) -> int:
    """The items a column can rank: its ids but the reserved PAD_ID and UNKNOWN_ID."""
    return n_classes - 2


def resolve_ranking_k(setting, n_classes: int) -> tuple[int, ...]:
    """The k of a categorical target: the setting as given (checked by `ranking_k_problems`),
    or for null the defaults (10, 20) that do not exceed the catalogue."""
    if setting is None:
        return tuple(k for k in DEFAULT_RANKING_K if k <= catalogue_size(n_classes))
    return tuple(int(k) for k in setting)


def ranking_k_problems(field: str, setting, n_classes: dict[str, int], column_types: dict[str, str],
                       exclude_seen: bool, exclude_field: str) -> list[str]:
    """The rules of `ranking_k` and `exclude_seen` against the targets ({column: type})
    and the catalogue of each categorical one (`n_classes`, reserved ids included)."""
    problems = []
    categorical = [c for c, kind in column_types.items() if kind == "categorical"]
    if setting is not None:
        ks = list(setting)
        if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
            problems.append(f"{field}: needs positive integers (e.g. [10, 20]), got {ks}")
        elif not categorical:
            problems.append(f"{field}: ranking metrics are for categorical targets, and every target "
                            f"({', '.join(column_types)}) is real; remove {field}")
        else:
            for column in categorical:
                size = catalogue_size(n_classes[column])
                if max(ks) > size:
                    problems.append(f"{field}: {max(ks)} is larger than the {size} items of '{column}'; "
                                    f"use k values up to {size}")
    if exclude_seen and not categorical:
        problems.append(f"{exclude_field}: removes seen items from the ranking of a categorical target, "
                        f"and every target ({', '.join(column_types)}) is real; remove {exclude_field}")
    return problems


def metric_names(ks: Sequence[int]) -> list[str]:
    """The metric names of `ranking_metrics`, in their order: hr@k..., ndcg@k..., mrr."""
    return [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


def n_sums(ks: Sequence[int]) -> int:
    return 2 + 2 * len(ks)


def empty_sums(ks: Sequence[int], device="cpu") -> torch.Tensor:
    return torch.zeros(n_sums(ks), dtype=_sum_dtype(device), device=device)


def outranks(scores: torch.Tensor, ids: torch.Tensor, target_scores: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor:
    """bool, shaped like `scores`: whether the item of each score beats the row's target.

    `scores` [N, M] holds the scores of items `ids` ([M] or [N, M]) - a whole catalogue,
    a chunk of it, or a row's seen items; `target_scores` and `targets` are [N].
    """
    t_score = target_scores.unsqueeze(-1)
    return (scores > t_score) | ((scores == t_score) & (ids < targets.unsqueeze(-1)))


def seen_for_rows(previous: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """[n, L] the ids seen before the flat target slots `rows` (b * L + j) of windows
    whose inputs are `previous` [B, L]: target j has seen previous[b, :j + 1] (the window's
    context, up to seq_length items); later slots hold PAD_ID. Built per chunk of rows,
    never as a [B, L, L] table."""
    length = previous.shape[-1]
    flat = previous.reshape(-1, length)
    seen = flat.index_select(0, torch.div(rows, length, rounding_mode="floor"))
    later = torch.arange(length, device=previous.device)[None, :] > (rows % length)[:, None]
    return seen.masked_fill(later, PAD_ID)


def seen_adjustment(seen: torch.Tensor, seen_scores: torch.Tensor, target_scores: torch.Tensor,
                    targets: torch.Tensor) -> torch.Tensor:
    """int64 [N]: how many of the rows' distinct seen items (PAD_ID and the target itself
    left out) outrank the target; subtract from the count over the whole catalogue.

    `seen` [N, S] ids, `seen_scores` [N, S] their scores (gathered by the caller, which
    may hold the catalogue's scores in chunks)."""
    order = seen.sort(dim=-1)
    ids = order.values
    scores = seen_scores.gather(-1, order.indices)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    counted = first & (ids != PAD_ID) & (ids != targets.unsqueeze(-1))
    return (outranks(scores, ids, target_scores, targets) & counted).sum(dim=-1)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor,
                 seen: torch.Tensor | None = None) -> torch.Tensor:
    """int64 [N]: the 1-based rank of each row's target among all ids but PAD_ID.

    `scores` [N, C] (logits, log-probabilities or any monotone score), `targets` [N] ids,
    `seen` optional [N, S] ids already in each row's sequence (PAD_ID fills), removed
    from the candidates except the target (see the module docstring).
    """
    scores = scores.float()
    targets = targets.long()
    target_scores = scores.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ids = torch.arange(scores.shape[-1], device=scores.device)
    beats = outranks(scores, ids, target_scores, targets)
    beats[:, PAD_ID] = False
    above = beats.sum(dim=-1)
    if seen is not None:
        seen = seen.long()
        above = above - seen_adjustment(seen, scores.gather(-1, seen), target_scores, targets)
    return above + 1


def ranking_sums(ranks: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
    """[count, reciprocal-rank sum, hits@k..., DCG@k sum...] of 1-based `ranks` [N]."""
    dtype = _sum_dtype(ranks.device)
    ranks = ranks.to(dtype)
    cut = [ranks <= k for k in ks]
    gain = 1.0 / torch.log2(ranks + 1.0)
    parts = [torch.tensor(float(ranks.numel()), dtype=dtype, device=ranks.device), (1.0 / ranks).sum()]
    parts += [c.to(dtype).sum() for c in cut]
    parts += [torch.where(c, gain, torch.zeros_like(gain)).sum() for c in cut]
    return torch.stack(parts)


def ranking_metrics(sums: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """{hr@k, ndcg@k for each k, mrr} of summed `ranking_sums` (NaN with no row)."""
    values = [float(v) for v in sums.tolist()]
    count = values[0]

    def mean(total: float) -> float:
        return total / count if count > 0 else math.nan

    n = len(ks)
    out = {f"hr@{k}": mean(values[2 + i]) for i, k in enumerate(ks)}
    out.update({f"ndcg@{k}": mean(values[2 + n + i]) for i, k in enumerate(ks)})
    out["mrr"] = mean(values[1])
    return out


def slot_ranking_sums(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None,
                      ks: Sequence[int], previous: torch.Tensor | None = None,
                      max_elements: int = 1 << 24) -> torch.Tensor:
    """`ranking_sums` of a model's output over windows: `scores` [B, L, C], `targets`
    [B, L], `mask` [B, L] the scored slots; with `previous` [B, L] (the column's input at
    each slot) the items of each target's context are excluded (`seen_for_rows`).

    Rows are ranked in chunks of at most `max_elements` scores, so the comparison tables
    stay bounded whatever the batch.
    """
    n_classes = scores.shape[-1]
    flat_scores = scores.reshape(-1, n_classes)
    flat_targets = targets.reshape(-1)
    rows = torch.arange(flat_targets.numel(), device=scores.device)
    if mask is not None:
        rows = rows[mask.reshape(-1)]
    sums = empty_sums(ks, scores.device)
    step = max(1, max_elements // max(n_classes, 1))
    for lo in range(0, rows.numel(), step):
        chunk = rows[lo:lo + step]
        ranks = target_ranks(flat_scores.index_select(0, chunk), flat_targets.index_select(0, chunk),
                             None if previous is None else seen_for_rows(previous, chunk))
        sums += ranking_sums(ranks, ks)
    return sums
