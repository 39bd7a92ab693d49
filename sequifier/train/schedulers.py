"""Learning-rate scheduler registry: `training_spec.scheduler` -> a scheduler or None.

`name` picks a class in `torch.optim.lr_scheduler` or sequifier's own (CUSTOM_SCHEDULERS;
"none": constant learning rate); the other keys are keyword arguments, checked against
the class by `scheduler_rules` in the validation gate (see `class_blocks`); `resolve`
fills the class's default arguments so the run records what it trains with.
`ReduceLROnPlateau` is stepped with the validation loss, so it can only be stepped per epoch.
"""

import inspect
import math
from typing import Any, Optional

import torch

from sequifier.config.problems import Problems
from sequifier.config.schema import TrainingSpec
from sequifier.errors import SequifierError
from sequifier.train.class_blocks import argument_problems, keyword_arguments

FIELD = "training_spec.scheduler"
NO_SCHEDULER = (None, "", "none", "None", "null")
STEP_ON = ("epoch", "batch")


class WarmupCosineLR(torch.optim.lr_scheduler.LRScheduler):
    """Linear warm-up to the learning rate, then cosine decay to `min_lr_ratio` of it.

    Step s of `total_steps` (scheduler steps: batches with scheduler_step_on: batch,
    else epochs; passed by sequifier) gets
    lr * (s + 1) / (W + 1) during the W warm-up steps, then
    lr * (r + (1 - r) * (1 + cos(pi * p)) / 2), p = (s - W) / (total_steps - W).
    W is `warmup_steps`, or `warmup_fraction` of the run. Only the position is kept
    in the checkpoint (`state_dict`): a resumed run continues the same curve, and a run
    resumed with more epochs stretches the rest of it.
    """

    def __init__(self, optimizer, total_steps: int, warmup_steps: Optional[int] = None,
                 warmup_fraction: Optional[float] = None, min_lr_ratio: float = 0.1,
                 last_epoch: int = -1):
        if warmup_steps is not None and warmup_fraction is not None:
            raise ValueError("give warmup_steps or warmup_fraction, not both")
        if warmup_fraction is not None and not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if warmup_steps is not None and warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.total_steps = int(total_steps)
        self.warmup_steps = (int(warmup_steps) if warmup_steps is not None
                             else int(round((warmup_fraction or 0.0) * self.total_steps)))
        if self.warmup_steps >= self.total_steps > 0:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be shorter than the run "
                             f"({self.total_steps} scheduler steps)")
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The learning rate of scheduler step `step` (0-based) over the base rate."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count, "_last_lr": self._last_lr}

    def load_state_dict(self, state_dict: dict) -> None:
        self.__dict__.update({k: state_dict[k] for k in ("last_epoch", "_step_count", "_last_lr")})


# sequifier's own scheduler classes (constructor: optimizer first, then keyword arguments;
# a `total_steps` parameter is filled in by sequifier: the run's number of scheduler steps)
CUSTOM_SCHEDULERS: dict[str, type] = {"WarmupCosineLR": WarmupCosineLR}
PASSED_STEPS = "total_steps"


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


def _passed_arguments(cls: type, total_steps: int | None) -> dict[str, Any]:
    """What sequifier passes besides the block: the run's length, to classes that take it.
    Unknown (None) before the data is read: then a length no warm-up reaches."""
    if PASSED_STEPS not in inspect.signature(cls.__init__).parameters:
        return {}
    return {PASSED_STEPS: total_steps if total_steps is not None else 2**62}


def scheduler_rules(spec: TrainingSpec, p: Problems) -> None:
    """`scheduler_step_on` and the scheduler block (the validation gate's rule)."""
    p.one_of(spec.scheduler_step_on, STEP_ON, "training_spec.scheduler_step_on")
    if spec.scheduler_step_on in STEP_ON:
        # per-epoch stepping: the run's length is known here; per batch, once the data is read
        known_steps = spec.epochs if spec.scheduler_step_on == "epoch" else None
        p.extend(block_problems(spec.scheduler, spec.scheduler_step_on, known_steps))


def resolve(spec: TrainingSpec) -> None:
    """Fill the block's default arguments: the run records (and a resume compares) what it trains with."""
    spec.scheduler = with_default_arguments(spec.scheduler)


def block_problems(block: dict[str, Any], step_on: str, total_steps: int | None = None) -> list[str]:
    """Every problem of a scheduler block, one line each: `scheduler_rules` before any file
    is touched, and `build_scheduler` again once the run's length is known.

    `total_steps`: the run's number of scheduler steps, when known (with per-epoch
    stepping the gate knows it; per batch it is known once the data is read)."""
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
            cls(optimizer, **keyword_arguments(block), **_passed_arguments(cls, total_steps))
        except (ValueError, TypeError, RuntimeError) as e:
            problems.append(f"{FIELD}: {name} rejected its arguments {keyword_arguments(block)}: {e}")
    return problems


def total_scheduler_steps(epochs: int, batches_per_epoch: int, step_on: str) -> int:
    return epochs * batches_per_epoch if step_on == "batch" else epochs


def build_scheduler(optimizer, block: dict[str, Any] | None, step_on: str, total_steps: int | None = None):
    """The scheduler of a block that passed `scheduler_rules` (None: constant learning rate).

    `total_steps` (`total_scheduler_steps`) is required by classes that take it."""
    block = dict(block or {"name": "none"})
    if step_on not in STEP_ON:
        raise SequifierError(f"training_spec.scheduler_step_on: '{step_on}' is not one of {STEP_ON}")
    problems = block_problems(block, step_on, total_steps)
    if problems:
        raise SequifierError(problems[0])
    if block.get("name") in NO_SCHEDULER:
        return None
    block = with_default_arguments(block)
    cls = scheduler_class(block["name"])
    return cls(optimizer, **keyword_arguments(block), **_passed_arguments(cls, total_steps))
