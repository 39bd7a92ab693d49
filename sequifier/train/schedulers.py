"""Learning-rate scheduler registry: `training_spec.scheduler` -> a scheduler or None.

`name` picks a class in `torch.optim.lr_scheduler` ("none" or null: constant learning
rate); the other keys are keyword arguments. `ReduceLROnPlateau` is stepped with the
validation loss, so it can only be stepped per epoch.
"""

import inspect
from typing import Any

import torch

from sequifier.errors import SequifierError
from sequifier.train.optimizers import _plain, check_kwargs

FIELD = "training_spec.scheduler"
NO_SCHEDULER = (None, "", "none", "None", "null")
STEP_ON = ("epoch", "batch")


def _is_scheduler_class(cls: Any) -> bool:
    module = torch.optim.lr_scheduler
    base = getattr(module, "LRScheduler", None) or module._LRScheduler
    return (inspect.isclass(cls) and (issubclass(cls, base) or cls is module.ReduceLROnPlateau)
            and cls is not base)


def known_schedulers() -> list[str]:
    """Every scheduler class name `scheduler.name` accepts (besides 'none')."""
    return sorted(n for n, c in vars(torch.optim.lr_scheduler).items()
                  if _is_scheduler_class(c) and not n.startswith("_"))


def scheduler_class(name: Any) -> type:
    cls = getattr(torch.optim.lr_scheduler, str(name), None)
    if not _is_scheduler_class(cls):
        raise SequifierError(
            f"{FIELD}.name: unknown scheduler '{name}'; use 'none' or one of {known_schedulers()}")
    return cls


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def build_scheduler(optimizer, spec: dict[str, Any] | None, step_on: str):
    spec = dict(spec or {})
    name = spec.pop("name", None)
    if step_on not in STEP_ON:
        raise SequifierError(f"training_spec.scheduler_step_on: '{step_on}' is not one of {STEP_ON}")
    if name in NO_SCHEDULER:
        return None
    cls = scheduler_class(name)
    check_kwargs(cls, spec, FIELD)
    if cls is torch.optim.lr_scheduler.ReduceLROnPlateau and step_on != "epoch":
        raise SequifierError(
            "training_spec.scheduler_step_on: ReduceLROnPlateau follows the validation loss "
            "and can only be stepped on 'epoch'"
        )
    kwargs = {k: _plain(v) for k, v in spec.items()}
    try:
        return cls(optimizer, **kwargs)
    except (ValueError, TypeError) as e:
        raise SequifierError(f"{FIELD}: {cls.__name__} rejected its arguments {kwargs}: {e}") from None
