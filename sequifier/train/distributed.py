"""Distributed-training hooks used by the loop (single process for now).

The loop calls only these functions for anything multi-process: wrapping the model,
summing metrics across ranks, and deciding who writes files. A DDP implementation
replaces their bodies; the loop stays as it is.
"""

import torch

from sequifier.config.schema import TrainingSpec
from sequifier.errors import SequifierError


def check_supported(spec: TrainingSpec) -> None:
    if spec.distributed:
        raise SequifierError(
            "training_spec.distributed: true (multi-GPU DDP) is not supported yet; set it to false"
        )


def wrap_model(model: torch.nn.Module, spec: TrainingSpec) -> torch.nn.Module:
    """The module to run forward/backward through (DDP wrapper under distribution)."""
    return model


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks of a metric tensor (loss sums, counts)."""
    return values


def is_main_process() -> bool:
    return True
