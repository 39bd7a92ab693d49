"""Per-target losses, masked so padded target slots count for nothing.

`training_spec.criterion` names a `torch.nn` loss class per target, optionally with
keyword arguments (`{name: CrossEntropyLoss, label_smoothing: 0.1}`). Every loss is built
with `reduction="none"` and reduced here as a (weighted) mean over the real target slots,
so that padding, class weights and batching all agree: a split's loss is
sum(losses) / sum(weights) whatever the batch size. Targets are combined as
sum_t loss_weights[t] * loss_t (default weight 1).

`{name: SampledSoftmax, num_negatives: N}` is the one loss that is not a torch.nn class:
for categorical targets with large catalogues (10^5 to 10^6 items) it scores each slot
against its target and N classes drawn per batch (not against every class), so training
never builds a [batch, positions, catalogue] table. Validation still reports the exact
full cross-entropy (computed in chunks of rows), so its losses compare with a
CrossEntropyLoss run's.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sequifier.config.metadata import Metadata
from sequifier.config.problems import Problems
from sequifier.config.schema import PAD_ID, TrainingSpec
from sequifier.errors import SequifierError, shown
from sequifier.train.class_blocks import argument_problems

# Losses that take class ids as targets; NLLLoss expects log-probabilities.
CATEGORICAL_CRITERIA = ("CrossEntropyLoss", "NLLLoss")
SAMPLED_SOFTMAX = "SampledSoftmax"


class SampledSoftmax:
    """Softmax cross-entropy over each slot's target and `num_negatives` sampled classes.

    Per batch, `num_negatives` class ids are drawn (with replacement, shared by every
    slot of the batch) from the proposal q = (1 - uniform_share) * popularity +
    uniform_share * uniform, popularity being the class shares among the training
    split's scored targets (`set_proposal`). Every logit, the target's and the
    negatives', is corrected by - log q(class) (the logQ correction: without it the
    loss would learn the proposal's popularity twice and rank popular items too high),
    and a negative that equals the slot's own target is left out (an accidental hit).
    The uniform share keeps rare items among the negatives: popularity alone would
    almost never draw the catalogue's tail, whose scores would then never be pushed down.
    PAD_ID is never drawn.
    """

    def __init__(self, num_negatives: int, uniform_share: float = 0.5):
        self.num_negatives = int(num_negatives)
        self.uniform_share = float(uniform_share)
        self.proposal: torch.Tensor | None = None
        self.log_proposal: torch.Tensor | None = None

    def set_proposal(self, class_counts: torch.Tensor) -> None:
        """The proposal from the training split's target counts (int64 [n_classes])."""
        counts = class_counts.double().clone()
        counts[PAD_ID] = 0.0
        uniform = torch.ones_like(counts)
        uniform[PAD_ID] = 0.0
        uniform /= uniform.sum()
        popularity = counts / counts.sum() if counts.sum() > 0 else uniform
        proposal = (1.0 - self.uniform_share) * popularity + self.uniform_share * uniform
        self.proposal = proposal.float()
        # classes the proposal never draws are never a negative; a target among them
        # gets log q = log(smallest positive) so its logit stays finite
        floor = proposal[proposal > 0].min()
        self.log_proposal = proposal.clamp_min(floor).log().float()

    def sums(self, query: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
             bias: torch.Tensor) -> torch.Tensor:
        """Sum of the per-slot losses of query vectors [N, width] with target ids [N];
        (weight [n_classes, width], bias [n_classes]) are the head's class vectors."""
        if self.proposal is None:
            raise RuntimeError("SampledSoftmax.set_proposal must run before the first batch")
        proposal = self.proposal.to(query.device)
        log_q = self.log_proposal.to(query.device)
        negatives = torch.multinomial(proposal, self.num_negatives, replacement=True)
        query = query.float()
        positive = ((query * weight.index_select(0, target).float()).sum(-1)
                    + bias.index_select(0, target).float() - log_q.index_select(0, target))
        sampled = (query @ weight.index_select(0, negatives).float().T
                   + bias.index_select(0, negatives).float() - log_q.index_select(0, negatives))
        sampled = sampled.masked_fill(negatives.unsqueeze(0) == target.unsqueeze(1), float("-inf"))
        logits = torch.cat([positive.unsqueeze(1), sampled], dim=1)
        return (torch.logsumexp(logits, dim=1) - positive).sum()


SAMPLED_SOFTMAX_ARGUMENTS = {"num_negatives": "a whole number >= 1 (required)",
                             "uniform_share": "a number in [0, 1] (default 0.5)"}


def sampled_softmax_problems(kwargs: dict[str, Any], column: str, column_type: str,
                             n_classes: int | None) -> list[str]:
    """The problems of a `{name: SampledSoftmax, ...}` entry (see SampledSoftmax)."""
    field = f"training_spec.criterion.{column}"
    if column_type != "categorical":
        return [f"{field}: SampledSoftmax samples classes, but '{column}' is real; use e.g. MSELoss"]
    problems = [f"{field}.{key}: SampledSoftmax takes no '{key}'; its arguments are "
                f"{', '.join(SAMPLED_SOFTMAX_ARGUMENTS)}" for key in kwargs
                if key not in SAMPLED_SOFTMAX_ARGUMENTS]
    negatives = kwargs.get("num_negatives")
    if negatives is None:
        problems.append(f"{field}.num_negatives: missing; give how many classes each batch samples "
                        "(e.g. {name: SampledSoftmax, num_negatives: 2048})")
    elif isinstance(negatives, bool) or not isinstance(negatives, int) or negatives < 1:
        problems.append(f"{field}.num_negatives: must be a whole number >= 1, got {shown(negatives)}")
    elif n_classes is not None and negatives >= n_classes - 1:
        problems.append(
            f"{field}.num_negatives: {negatives} is not below the catalogue of '{column}' "
            f"({n_classes - 2} items + 2 reserved ids): sampling as many classes as there are "
            "costs more than the exact loss; use CrossEntropyLoss, or fewer negatives")
    share = kwargs.get("uniform_share", 0.5)
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
        problems.append(f"{field}.uniform_share: must be a number in [0, 1], got {shown(share)}")
    return problems


@dataclass
class TargetLoss:
    column: str
    column_type: str
    criterion: nn.Module
    loss_weight: float
    class_weights: torch.Tensor | None  # [n_classes] or None
    log_probs: bool  # feed log_softmax(logits) instead of logits
    # the criterion without training-only regularisers (label smoothing), for validation
    eval_criterion: nn.Module | None = None
    # training scores against sampled classes (validation: `criterion`, the exact loss)
    sampled: SampledSoftmax | None = None

    def weight_sum(self, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What `sums` divides by, from the targets alone (before any forward): the number
        of real slots, each weighted by its class weight."""
        weight = mask.reshape(-1).float()
        if self.column_type == "categorical" and self.class_weights is not None:
            weight = weight * self.class_weights.index_select(0, target.reshape(-1))
        return weight.sum()

    def sums(self, output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
             training: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of weighted per-slot losses, sum of their weights) over real slots."""
        criterion = self.criterion if training or self.eval_criterion is None else self.eval_criterion
        mask = mask.reshape(-1)
        if self.column_type == "categorical":
            logits = output.float().reshape(-1, output.shape[-1])
            if self.log_probs:
                logits = F.log_softmax(logits, dim=-1)
            target = target.reshape(-1)
            per_slot = criterion(logits, target)  # already scaled by class weight
            weight = mask.float()
            if self.class_weights is not None:
                weight = weight * self.class_weights.index_select(0, target)
            return (per_slot * mask).sum(), weight.sum()
        per_slot = criterion(output.float().reshape(-1), target.reshape(-1).float())
        weight = mask.float()
        return (per_slot * weight).sum(), weight.sum()


# Arguments the loss module owns: the reduction is always "none" (see module docstring)
# and per-class weights come from training_spec.class_weights.
RESERVED_ARGUMENTS = {
    "reduction": "sequifier reduces every loss itself (a masked mean); remove it",
    "size_average": "sequifier reduces every loss itself (a masked mean); remove it",
    "reduce": "sequifier reduces every loss itself (a masked mean); remove it",
    "weight": "give per-class weights with training_spec.class_weights instead",
    "ignore_index": "padding is already left out of every loss; remove it",
}
# Arguments that only regularise training: validation losses are computed without them,
# so runs with and without them compare on the same scale.
TRAINING_ONLY_ARGUMENTS = ("label_smoothing",)


@dataclass
class CriterionSpec:
    """One `training_spec.criterion` entry: a loss class name and its keyword arguments."""

    name: str
    kwargs: dict[str, Any]

    @staticmethod
    def parse(entry: Any, column: str) -> "CriterionSpec":
        """'CrossEntropyLoss' or {name: CrossEntropyLoss, label_smoothing: 0.1}."""
        if isinstance(entry, str):
            return CriterionSpec(entry, {})
        if isinstance(entry, Mapping) and "name" in entry:
            kwargs = {str(k): _plain(v) for k, v in entry.items() if k != "name"}
            return CriterionSpec(str(entry["name"]), kwargs)
        raise SequifierError(
            f"training_spec.criterion.{column}: give a loss name or {{name: LossName, argument: value}}, "
            f"got {shown(entry)}"
        )


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, str):
        return [_plain(v) for v in value]
    return value


def _criterion_class(name: str, column: str, column_type: str) -> type:
    cls = getattr(nn, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.modules.loss._Loss)):
        raise SequifierError(
            f"training_spec.criterion.{column}: unknown loss '{name}'; use a torch.nn loss class "
            "(e.g. CrossEntropyLoss, MSELoss, L1Loss, HuberLoss)"
        )
    if column_type == "categorical" and name not in CATEGORICAL_CRITERIA:
        raise SequifierError(
            f"training_spec.criterion.{column}: categorical targets need a loss over class ids, "
            f"one of {CATEGORICAL_CRITERIA}; got '{name}'"
        )
    if column_type == "real" and name in CATEGORICAL_CRITERIA:
        raise SequifierError(
            f"training_spec.criterion.{column}: '{name}' needs class ids but '{column}' is real; "
            "use e.g. MSELoss, L1Loss or HuberLoss"
        )
    return cls


def _check_arguments(cls: type, kwargs: dict[str, Any], column: str) -> None:
    """Refuse arguments the loss class does not take, or that sequifier sets itself."""
    field = f"training_spec.criterion.{column}"
    for key in kwargs:
        if key in RESERVED_ARGUMENTS:
            raise SequifierError(f"{field}.{key}: {RESERVED_ARGUMENTS[key]}")
    problems = argument_problems(cls, kwargs, field)
    if problems:
        raise SequifierError(problems[0])
    smoothing = kwargs.get("label_smoothing", 0.0)
    # torch checks only the upper end; 1 would make every target uniform.
    if not 0.0 <= smoothing < 1.0:
        raise SequifierError(f"{field}.label_smoothing: must be in [0, 1), got {shown(smoothing)}")


def make_criterion(entry: Any, column: str, column_type: str,
                   class_weights: torch.Tensor | None = None, training: bool = True) -> nn.Module:
    """The loss module of one target, with reduction "none"; checks the entry fully.

    Values are checked too: the loss is built and run once on a two-slot dummy batch,
    so e.g. label_smoothing: 1.5 fails here, in the validation gate, with the field's
    name, not in the middle of the first epoch.
    """
    spec = CriterionSpec.parse(entry, column)
    cls = _criterion_class(spec.name, column, column_type)
    _check_arguments(cls, spec.kwargs, column)
    kwargs = dict(spec.kwargs)
    if not training:
        for key in TRAINING_ONLY_ARGUMENTS:
            kwargs.pop(key, None)
    if class_weights is not None:
        kwargs["weight"] = class_weights
    try:
        criterion = cls(reduction="none", **kwargs)
        if column_type == "categorical":
            n = 3 if class_weights is None else class_weights.numel()
            criterion(torch.zeros(2, n, device=getattr(class_weights, "device", None)),
                      torch.tensor([0, 1], device=getattr(class_weights, "device", None)))
        else:
            criterion(torch.zeros(2), torch.ones(2))
    except (TypeError, ValueError, RuntimeError) as e:
        raise SequifierError(
            f"training_spec.criterion.{column}: {spec.name} rejected its arguments {spec.kwargs}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    return criterion


def loss_rules(spec: TrainingSpec, target_columns: list[str], p: Problems) -> None:
    """Which targets the loss settings name (the validation gate's rule, before the data)."""
    for col in target_columns:
        if col not in spec.criterion:
            p.add(f"training_spec.criterion.{col}",
                  "missing: give a loss for every target (e.g. CrossEntropyLoss, MSELoss)")
    for col in spec.criterion:
        if col not in target_columns:
            p.add(f"training_spec.criterion.{col}", f"'{col}' is not in target_columns {target_columns}")
        p.check(not (spec.distributed and uses_sampled_softmax(spec.criterion[col])),
                f"training_spec.criterion.{col}", "SampledSoftmax trains in one process only (distributed: "
                "true is not supported with it); set distributed: false or use CrossEntropyLoss")
    for field, keys in (("loss_weights", spec.loss_weights), ("class_weights", spec.class_weights)):
        for col in keys or {}:
            p.check(col in target_columns, f"training_spec.{field}.{col}",
                    f"'{col}' is not in target_columns {target_columns}")


def criterion_rules(spec: TrainingSpec, target_columns: list[str], column_types: dict[str, str],
                    p: Problems, n_classes: dict[str, int] | None = None) -> None:
    """Each target's criterion entry against the data's type of the target (and, for
    SampledSoftmax, its catalogue: `n_classes`, reserved ids included)."""
    for col, entry in spec.criterion.items():
        if col in column_types and col in target_columns:
            if uses_sampled_softmax(entry):
                p.extend(sampled_entry_problems(entry, col, column_types[col], (n_classes or {}).get(col),
                                                col in (spec.class_weights or {})))
            else:
                p.call(make_criterion, entry, col, column_types[col])


def sampled_entry_problems(entry: Any, column: str, column_type: str, n_classes: int | None,
                           class_weights: bool) -> list[str]:
    """The problems of a `{name: SampledSoftmax, ...}` entry, class weights included."""
    problems = sampled_softmax_problems(CriterionSpec.parse(entry, column).kwargs, column, column_type, n_classes)
    if class_weights:
        problems.append(f"training_spec.class_weights.{column}: SampledSoftmax does not "
                        "weight classes; remove the class weights or use CrossEntropyLoss")
    return problems


def uses_sampled_softmax(entry: Any) -> bool:
    return isinstance(entry, Mapping) and entry.get("name") == SAMPLED_SOFTMAX


def class_weight_vector(column: str, raw, metadata: Metadata) -> torch.Tensor:
    """Per-class weights from a list (index = class id) or {original value: weight}."""
    field = f"training_spec.class_weights.{column}"
    n_classes = metadata.n_classes[column]
    if isinstance(raw, dict):
        weights = torch.ones(n_classes)
        id_map = metadata.id_maps[column]
        for value, weight in raw.items():
            key = str(value)
            if key not in id_map:
                raise SequifierError(
                    f"{field}: value '{value}' does not occur in column '{column}' of the metadata"
                )
            weights[id_map[key]] = float(weight)
    else:
        if len(raw) != n_classes:
            raise SequifierError(
                f"{field}: a list needs one weight per class id, {n_classes} (incl. the reserved "
                f"pad/unknown ids 0 and 1), got {len(raw)}; or give {{value: weight}}"
            )
        weights = torch.tensor([float(w) for w in raw])
    if (weights < 0).any():
        raise SequifierError(f"{field}: class weights must be >= 0")
    return weights


def build_target_losses(spec: TrainingSpec, target_columns: list[str],
                        target_column_types: dict[str, str], metadata: Metadata,
                        device: torch.device) -> list[TargetLoss]:
    criteria = dict(spec.criterion or {})
    loss_weights = dict(spec.loss_weights or {})
    class_weights = dict(spec.class_weights or {})
    for field, mapping in (("criterion", criteria), ("loss_weights", loss_weights),
                           ("class_weights", class_weights)):
        for key in mapping:
            if key not in target_columns:
                raise SequifierError(
                    f"training_spec.{field}.{key}: '{key}' is not one of target_columns {target_columns}"
                )
    losses = []
    for col in target_columns:
        col_type = target_column_types[col]
        if col not in criteria:
            raise SequifierError(f"training_spec.criterion.{col}: no loss given for target '{col}'")
        weights = None
        if col in class_weights:
            if col_type != "categorical":
                raise SequifierError(
                    f"training_spec.class_weights.{col}: class weights need a categorical target"
                )
            weights = class_weight_vector(col, class_weights[col], metadata).to(device)
        spec_entry = CriterionSpec.parse(criteria[col], col)
        sampled = None
        if spec_entry.name == SAMPLED_SOFTMAX:
            problems = sampled_entry_problems(criteria[col], col, col_type, metadata.n_classes.get(col),
                                              col in class_weights)
            if problems:
                raise SequifierError(problems[0])
            sampled = SampledSoftmax(**spec_entry.kwargs)
            # validation scores the exact loss over the whole catalogue
            criterion = eval_criterion = make_criterion("CrossEntropyLoss", col, col_type).to(device)
        else:
            criterion = make_criterion(criteria[col], col, col_type, weights).to(device)
            eval_criterion = make_criterion(criteria[col], col, col_type, weights, training=False).to(device)
        losses.append(TargetLoss(col, col_type, criterion, float(loss_weights.get(col, 1.0)), weights,
                                 log_probs=(spec_entry.name == "NLLLoss"), eval_criterion=eval_criterion,
                                 sampled=sampled))
    return losses
