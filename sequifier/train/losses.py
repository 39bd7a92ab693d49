"""Per-target losses, masked so padded target slots count for nothing.

`training_spec.criterion` names a `torch.nn` loss class per target. Every loss is built
with `reduction="none"` and reduced here as a (weighted) mean over the real target slots,
so that padding, class weights and batching all agree: a split's loss is
sum(losses) / sum(weights) whatever the batch size. Targets are combined as
sum_t loss_weights[t] * loss_t (default weight 1).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from sequifier.config.metadata import Metadata
from sequifier.config.schema import TrainingSpec
from sequifier.errors import SequifierError

# Losses that take class ids as targets; NLLLoss expects log-probabilities.
CATEGORICAL_CRITERIA = ("CrossEntropyLoss", "NLLLoss")


@dataclass
class TargetLoss:
    column: str
    column_type: str
    criterion: nn.Module
    loss_weight: float
    class_weights: torch.Tensor | None  # [n_classes] or None
    log_probs: bool  # feed log_softmax(logits) instead of logits

    def sums(self, output: torch.Tensor, target: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of weighted per-slot losses, sum of their weights) over real slots."""
        mask = mask.reshape(-1)
        if self.column_type == "categorical":
            logits = output.float().reshape(-1, output.shape[-1])
            if self.log_probs:
                logits = F.log_softmax(logits, dim=-1)
            target = target.reshape(-1)
            per_slot = self.criterion(logits, target)  # already scaled by class weight
            weight = mask.float()
            if self.class_weights is not None:
                weight = weight * self.class_weights.index_select(0, target)
            return (per_slot * mask).sum(), weight.sum()
        per_slot = self.criterion(output.float().reshape(-1), target.reshape(-1).float())
        weight = mask.float()
        return (per_slot * weight).sum(), weight.sum()


def _criterion_class(name: str, column: str, column_type: str) -> type:
    cls = getattr(nn, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.modules.loss._Loss)):
        raise SequifierError(
            f"training_spec.criterion.{column}: '{name}' is not a torch.nn loss class "
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
        cls = _criterion_class(criteria[col], col, col_type)
        weights = None
        if col in class_weights:
            if col_type != "categorical":
                raise SequifierError(
                    f"training_spec.class_weights.{col}: class weights need a categorical target"
                )
            weights = class_weight_vector(col, class_weights[col], metadata).to(device)
        kwargs = {"reduction": "none"}
        if weights is not None:
            kwargs["weight"] = weights
        losses.append(TargetLoss(col, col_type, cls(**kwargs).to(device),
                                 float(loss_weights.get(col, 1.0)), weights,
                                 log_probs=(criteria[col] == "NLLLoss")))
    return losses
