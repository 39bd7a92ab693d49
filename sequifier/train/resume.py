"""Resume that never ignores a change: compare the checkpoint's config with this run's.

Every checkpoint records the config it was made with (`config_record`). Before a run
resumes, `compare` sorts the differences into two kinds:

* settings the checkpoint's weights and optimizer state depend on (architecture,
  columns, `seq_length`, the optimizer or scheduler class, layer dtypes): the run is
  refused with one line naming the changed fields and the two ways on;
* everything else (learning rate, epochs, batch size, optimizer/scheduler arguments,
  dropout, losses, ...): applied, and each change is logged. Loop settings take effect
  because the loop reads this run's config; optimizer and scheduler arguments are
  restored from the checkpoint with their states, so `apply_changes` sets the new ones.
"""

import json
from dataclasses import asdict, dataclass
from typing import Any

from sequifier.errors import SequifierError

# Dotted config paths (a path covers everything below it) that a checkpoint cannot follow.
FIXED = ("model_spec", "input_columns", "target_columns", "target_column_types", "seq_length",
         "training_spec.optimizer.name", "training_spec.scheduler.name", "training_spec.layer_type_dtypes")
# Not settings of the training itself: where the project is, what to do with old outputs.
IGNORED = ("project_root", "model_name", "overwrite", "training_spec.continue_training", "training_spec.lr")


@dataclass
class Change:
    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path}: {_show(self.old)} -> {_show(self.new)}"


def _show(value: Any) -> str:
    return "(unset)" if value is _ABSENT else json.dumps(value)


_ABSENT = object()


def config_record(cfg) -> dict:
    """The config as plain JSON values (a checkpoint must load with weights_only=True)."""
    return json.loads(json.dumps(asdict(cfg), default=str))


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one dict of dotted paths (`model_spec.dim_model`) to leaf values."""
    if isinstance(node, dict) and node:
        out = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _covered(path: str, prefixes) -> bool:
    return any(path == p or path.startswith(p + ".") for p in prefixes)


def compare(recorded: dict, current: dict) -> list[Change]:
    """Every difference between two config records, as dotted paths, sorted."""
    old, new = flatten(recorded), flatten(current)
    changes = []
    for path in sorted(set(old) | set(new)):
        before, after = old.get(path, _ABSENT), new.get(path, _ABSENT)
        if before != after and not _covered(path, IGNORED):
            changes.append(Change(path, before, after))
    return changes


def check_resumable(changes: list[Change], checkpoint_path: str, model_name: str) -> None:
    """Refuse to resume across a change the checkpoint cannot follow."""
    fixed = [c for c in changes if _covered(c.path, FIXED)]
    if fixed:
        listed = "; ".join(str(c) for c in fixed[:6]) + ("; ..." if len(fixed) > 6 else "")
        raise SequifierError(
            f"model_name '{model_name}': cannot resume {checkpoint_path} with a changed {listed}; "
            f"to train this config next to it set model_name=NEW_NAME, or to replace the earlier run set "
            "training_spec.continue_training=false overwrite=true"
        )


def applied_changes(changes: list[Change]) -> list[Change]:
    return [c for c in changes if not _covered(c.path, FIXED)]


def apply_changes(changes: list[Change], optimizer, scheduler) -> None:
    """Put changed learning rate and optimizer/scheduler arguments into the restored states.

    The learning rate scales each parameter group's rate (and the scheduler's base rates)
    by new/old, so a scheduler's progress and per-group multipliers are kept. An optimizer
    argument is set in the groups that had the old value (groups that deliberately
    differ, such as ones without weight decay, keep theirs).
    """
    for change in changes:
        if change.path == "training_spec.learning_rate":
            factor = change.new / change.old
            for group in optimizer.param_groups:
                group["lr"] *= factor
                if "initial_lr" in group:
                    group["initial_lr"] *= factor
            if scheduler is not None and hasattr(scheduler, "base_lrs"):
                scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
        elif change.path.startswith("training_spec.optimizer."):
            key = change.path.split(".", 2)[2]
            old = _default_argument(optimizer, key) if change.old is _ABSENT else change.old
            new = _default_argument(optimizer, key) if change.new is _ABSENT else change.new
            for group in optimizer.param_groups:
                if key in group and _same(group[key], old):
                    group[key] = _argument(new)
        elif change.path.startswith("training_spec.scheduler.") and scheduler is not None:
            key = change.path.split(".", 2)[2]
            new = _default_argument(scheduler, key) if change.new is _ABSENT else change.new
            if hasattr(scheduler, key):
                setattr(scheduler, key, _argument(new))


def _default_argument(obj, key: str) -> Any:
    """The constructor default of argument `key` of `obj`'s class (None if it has none)."""
    import inspect

    param = inspect.signature(type(obj).__init__).parameters.get(key)
    return None if param is None or param.default is inspect.Parameter.empty else param.default


def _argument(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b
