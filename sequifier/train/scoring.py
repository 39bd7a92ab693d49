"""What training measures besides the loss: per-target metrics and their baselines.

`ScoredTarget` applies `sequifier.metrics` to one target of a batch (the same scored
slots as the loss: `Batch.target_mask`). `measure_baselines` makes the two passes the
baselines need before the first epoch - the training split for its class counts and
means, the validation split for the baselines' sums - and adds the sums of all DDP
ranks, so the numbers equal those of one process over the whole splits.
"""

from dataclasses import dataclass

import torch

from sequifier import metrics, ranking
from sequifier.config.metadata import Metadata
from sequifier.errors import SequifierError
from sequifier.train import distributed
from sequifier.train.batch import Batch

# Shown in the epoch lines (the rest, e.g. mse and count, go to TensorBoard and the summary).
SHOWN = {"categorical": ("cross_entropy", "accuracy"), "real": ("mae", "rmse")}
BASELINES = {"categorical": metrics.CATEGORICAL_BASELINES, "real": metrics.REAL_BASELINES}


@dataclass(frozen=True)
class ScoredTarget:
    column: str
    column_type: str
    top_k: int
    std: float = 1.0  # real: the column's standard deviation, to report original units
    n_classes: int = 0  # categorical: ids incl. the reserved ones
    ranking_k: tuple[int, ...] = ()  # categorical: the k of HR@k / NDCG@k (none: no ranking metrics)
    exclude_seen: bool = False  # rank without the items of each target's context

    def sums(self, output: torch.Tensor, batch: Batch) -> torch.Tensor:
        target = batch.targets[self.column]
        if self.column_type == "categorical":
            return metrics.ranked_categorical_sums(
                output, target, self.top_k, batch.target_mask, self.ranking_k,
                batch.previous[self.column] if self.exclude_seen else None)
        return metrics.real_sums(output, target, self.std, batch.target_mask)

    def empty_sums(self, device) -> torch.Tensor:
        return metrics.empty_sums(self.column_type, device, self.ranking_k)

    def seen_rows(self, batch: Batch) -> torch.Tensor | None:
        """[N, L] the context ids of each scored slot (exclude_seen), in `row_sums` order."""
        if not (self.exclude_seen and self.ranking_k):
            return None
        rows = torch.nonzero(batch.target_mask.reshape(-1)).squeeze(1)
        return ranking.seen_for_rows(batch.previous[self.column], rows)

    def row_sums(self, logits: torch.Tensor, targets: torch.Tensor,
                 seen: torch.Tensor | None = None) -> torch.Tensor:
        """What `sums` gives for scored rows scored a chunk at a time: logits [N,
        n_classes], target ids [N], `seen` [N, S] (`seen_rows`) with exclude_seen."""
        return metrics.ranked_row_sums(logits, targets, self.top_k, self.ranking_k,
                                       seen if self.exclude_seen else None)

    def metrics(self, sums: torch.Tensor) -> dict[str, float]:
        return metrics.metrics_from_sums(self.column_type, sums, self.top_k, self.ranking_k,
                                         self.n_classes or None)

    @property
    def shown(self) -> tuple[str, ...]:
        if self.column_type != "categorical":
            return SHOWN["real"]
        top_k = ((metrics.top_k_name(self.top_k),) if metrics.top_k_applies(self.top_k, self.n_classes)
                 else ())
        return SHOWN["categorical"] + top_k + tuple(ranking.metric_names(self.ranking_k)
                                                    if self.ranking_k else ())


def scored_targets(target_columns: list[str], target_column_types: dict[str, str],
                   metadata: Metadata, top_k: int, ranking_k=None, exclude_seen: bool = False) -> list[ScoredTarget]:
    """`ranking_k`: the setting (null: the defaults each catalogue allows; see
    `sequifier.ranking.resolve_ranking_k`)."""
    targets = []
    for column in target_columns:
        if target_column_types[column] == "categorical":
            n_classes = metadata.n_classes[column]
            targets.append(ScoredTarget(column, "categorical", top_k, n_classes=n_classes,
                                        ranking_k=ranking.resolve_ranking_k(ranking_k, n_classes),
                                        exclude_seen=exclude_seen))
        else:
            std = metadata.selected_columns_statistics[column]["std"]
            targets.append(ScoredTarget(column, "real", top_k, std=float(std)))
    return targets


def reduce_sums(sums: dict) -> dict:
    """Each vector summed over the DDP ranks, in one collective; CPU copies."""
    names = list(sums)
    if not names:
        return {}
    total = distributed.sum_across_ranks(torch.cat([sums[n] for n in names])).cpu()
    out, start = {}, 0
    for name in names:
        out[name] = total[start:start + sums[name].numel()]
        start += sums[name].numel()
    return out


def _refuse_empty(count: float, field: str, split: str) -> None:
    if count == 0:
        raise SequifierError(
            f"{field}: the {split} split has no scored target slot (every window's targetStart "
            "lies past its last slot); use more data or larger split_ratios for it in preprocess"
        )


def training_statistics(targets: list[ScoredTarget], train_batches, device: torch.device) -> dict[str, torch.Tensor]:
    """Per target what its baselines need from the training split: class counts or [count, sum]."""
    stats = {}
    transitions: dict[str, list[torch.Tensor]] = {}
    for t in targets:
        if t.column_type == "categorical":
            stats[t.column] = torch.zeros(t.n_classes, dtype=torch.int64, device=device)
            transitions[t.column] = []
        else:
            stats[t.column] = torch.zeros(2, dtype=metrics.sum_dtype(device), device=device)
    for batch in train_batches:
        for t in targets:
            values = batch.targets[t.column]
            if t.column_type == "categorical":
                stats[t.column] += metrics.class_counts(values, t.n_classes, batch.target_mask)
                # distinct pairs with their counts per batch keep the list short
                keys, counts = torch.unique(metrics.transition_keys(
                    batch.previous[t.column], values, t.n_classes, batch.target_mask), return_counts=True)
                transitions[t.column].append(torch.stack([keys, counts]).cpu())
            else:
                stats[t.column] += metrics.value_sums(values, batch.target_mask)
    stats = reduce_sums(stats)
    for t in targets:
        stat = stats[t.column]
        _refuse_empty(float(stat.sum() if t.column_type == "categorical" else stat[0]),
                      "training_data_path", "training")
    return stats, transitions


def _fit_markov(parts: list[torch.Tensor], n_classes: int, counts: torch.Tensor) -> metrics.MarkovBaseline:
    """The Markov baseline of the training split's transitions (of all DDP ranks);
    `parts` are [2, n] (transition key, count) per batch."""
    local = torch.cat(parts, dim=1) if parts else torch.zeros(2, 0, dtype=torch.int64)
    every = distributed.concat_across_ranks(local)
    return metrics.MarkovBaseline.fit(every[0], n_classes, counts.cpu(), weights=every[1])


def measure_baselines(targets: list[ScoredTarget], train_batches, val_batches, device: torch.device,
                      statistics: tuple | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{target: {baseline: metrics}} on the validation split's scored slots; `statistics`:
    `training_statistics` when the caller has them already (one pass less)."""
    stats, transitions = statistics if statistics is not None else training_statistics(
        targets, train_batches, device)
    stats = {c: s.to(device) for c, s in stats.items()}
    means = {t.column: metrics.mean_from_value_sums(stats[t.column])
             for t in targets if t.column_type == "real"}
    markov = {t.column: _fit_markov(transitions[t.column], t.n_classes, stats[t.column])
              for t in targets if t.column_type == "categorical"}
    # zeros up front: every rank reduces vectors of the same shapes, even one without batches
    sums = {(t.column, name): t.empty_sums(device)
            for t in targets for name in BASELINES[t.column_type]}
    for batch in val_batches:
        for t in targets:
            values = batch.targets[t.column]
            if t.column_type == "categorical":
                found = metrics.categorical_baseline_sums(
                    values, stats[t.column], t.top_k, batch.target_mask, previous=batch.previous[t.column],
                    markov=markov[t.column], ranking_k=t.ranking_k, exclude_seen=t.exclude_seen)
            else:
                found = metrics.real_baseline_sums(values, batch.previous[t.column], means[t.column],
                                                   t.std, batch.target_mask)
            for name, vector in found.items():
                sums[t.column, name] += vector
    sums = reduce_sums(sums)
    baselines: dict[str, dict[str, dict[str, float]]] = {}
    for t in targets:
        for name in BASELINES[t.column_type]:
            _refuse_empty(float(sums[t.column, name][0]), "validation_data_path", "validation")
            baselines.setdefault(t.column, {})[name] = t.metrics(sums[t.column, name])
    return baselines
