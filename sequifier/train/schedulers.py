"""Learning-rate scheduler registry: `training_spec.scheduler` -> a scheduler or None.

`name` picks a class in `torch.optim.lr_scheduler` or sequifier's own (CUSTOM_SCHEDULERS;
"none": constant learning rate); the other keys are keyword arguments, checked against
the class by `block_problems` in the validation gate (see `class_blocks`).
`ReduceLROnPlateau` is stepped with the validation loss, so it can only be stepped per epoch.
"""

import inspect
from typing import Any

import torch

from sequifier.errors import SequifierError
from sequifier.train.class_blocks import argument_problems, keyword_arguments

FIELD = "training_spec.scheduler"
NO_SCHEDULER = (None, "", "none", "None", "null")
STEP_ON = ("epoch", "batch")
# sequifier's own scheduler classes (constructor: optimizer first, then keyword arguments)
CUSTOM_SCHEDULERS: dict[str, type] = {}
# Arguments a class gets when its block leaves them out. The schema's default block is
# only {name: StepLR}: presets replace whole blocks, but a block from the YAML merges over
# the schema default, and default arguments there would leak into other schedulers.
DEFAULT_ARGUMENTS = {"StepLR": {"step_size": 1, "gamma": 0.99}}


def _is_scheduler_class(cls: Any) -> bool:
    module = torch.optim.lr_scheduler
    base = getattr(module, "LRScheduler", None) or module._LRScheduler
    return (inspect.isclass(cls) and (issubclass(cls, base) or cls is module.ReduceLROnPlateau)
            and cls is not base)


def known_schedulers() -> list[str]:
    """Every scheduler class name `scheduler.name` accepts (besides 'none')."""
    return sorted([n for n, c in vars(torch.optim.lr_scheduler).items()
                   if _is_scheduler_class(c) and not n.startswith("_")] + list(CUSTOM_SCHEDULERS))


def scheduler_class(name: Any) -> type:
    if name in CUSTOM_SCHEDULERS:
        return CUSTOM_SCHEDULERS[name]
    cls = getattr(torch.optim.lr_scheduler, str(name), None)
    if not _is_scheduler_class(cls):
        raise SequifierError(
            f"{FIELD}.name: unknown scheduler '{name}'; use 'none' or one of {known_schedulers()}")
    return cls


def is_plateau(scheduler) -> bool:
    return isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)


def with_default_arguments(block: dict[str, Any]) -> dict[str, Any]:
    """The block with DEFAULT_ARGUMENTS of its class filled in where it leaves them out."""
    return {**DEFAULT_ARGUMENTS.get(block.get("name"), {}), **block}


def block_problems(block: dict[str, Any], step_on: str) -> list[str]:
    """Every problem of a scheduler block, one line each (called by the validation gate)."""
    name = block.get("name")
    if name in NO_SCHEDULER:
        extra = [k for k in block if k != "name"]
        return [f"{FIELD}: name '{name}' (constant learning rate) takes no arguments, got {extra}"] if extra else []
    if name not in known_schedulers():
        return [f"{FIELD}.name: unknown scheduler '{name}'; known: none, {', '.join(known_schedulers())}"]
    cls = scheduler_class(name)
    block = with_default_arguments(block)
    problems = argument_problems(cls, block, FIELD)
    if cls is torch.optim.lr_scheduler.ReduceLROnPlateau and step_on != "epoch":
        problems.append("training_spec.scheduler_step_on: ReduceLROnPlateau follows the validation loss "
                        "and can only be stepped on 'epoch'")
    if not problems:  # a dry build: the class's own range checks
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=1.0)
        try:
            cls(optimizer, **keyword_arguments(block))
        except (ValueError, TypeError, RuntimeError) as e:
            problems.append(f"{FIELD}: {name} rejected its arguments {keyword_arguments(block)}: {e}")
    return problems


def build_scheduler(optimizer, block: dict[str, Any] | None, step_on: str):
    """The scheduler of a block that passed `block_problems` (None: constant learning rate)."""
    block = dict(block or {"name": "none"})
    if step_on not in STEP_ON:
        raise SequifierError(f"training_spec.scheduler_step_on: '{step_on}' is not one of {STEP_ON}")
    problems = block_problems(block, step_on)
    if problems:
        raise SequifierError(problems[0])
    if block.get("name") in NO_SCHEDULER:
        return None
    block = with_default_arguments(block)
    return scheduler_class(block["name"])(optimizer, **keyword_arguments(block))
