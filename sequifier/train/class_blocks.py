"""Config blocks that name a class and its keyword arguments: `{name: X, key: value, ...}`.

`training_spec.optimizer` and `training_spec.scheduler` have this shape. The constructor
of the named class is the block's type: a key it does not take, a required argument left
out or a value of the wrong kind is reported with the block's field path by the
validation gate, before any file is touched.
"""

import inspect
from typing import Any

from sequifier.errors import shown

# constructor parameters a block never sets: the object itself and what sequifier passes
PASSED_BY_SEQUIFIER = ("self", "params", "optimizer", "lr", "total_steps")


def keyword_arguments(block: dict[str, Any] | None) -> dict[str, Any]:
    """Everything but `name`, with lists as tuples (torch wants `betas` as a tuple)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in (block or {}).items() if k != "name"}


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n not in PASSED_BY_SEQUIFIER and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# annotation name -> (check, what the message asks for)
_KINDS = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "a whole number"),
    "float": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def _kind_problem(value: Any, param: inspect.Parameter) -> str | None:
    """Why `value` cannot be given for `param`, or None (when in doubt the constructor decides).

    The annotation says the kind when it is one plain type (torch writes some as strings);
    a tuple default (`betas`) asks for a list of as many values.
    """
    annotation = param.annotation
    name = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if name in _KINDS:
        check, wanted = _KINDS[name]
        return None if check(value) else f"must be {wanted}, got {shown(value)}"
    default = param.default
    if isinstance(default, tuple) and not (isinstance(value, (list, tuple)) and len(value) == len(default)):
        return f"must be a list of {len(default)} values like {list(default)}, got {shown(value)}"
    return None


def argument_problems(cls: type, block: dict[str, Any], field: str) -> list[str]:
    """One line per key `cls` does not take, required argument missing or value of the wrong kind."""
    params = _parameters(cls)
    takes_any = any(p.kind is p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    problems = []
    for key, value in block.items():
        if key == "name":
            continue
        if key not in params:
            if not takes_any:
                problems.append(f"{field}.{key}: {cls.__name__} takes no argument '{key}'; "
                                f"accepted: {list(params)}")
            continue
        problem = _kind_problem(value, params[key])
        if problem:
            problems.append(f"{field}.{key}: {problem}")
    for key, param in params.items():
        if param.default is inspect.Parameter.empty and key not in block:
            problems.append(f"{field}.{key}: missing: {cls.__name__} needs it "
                            f"(e.g. {field}.{key}=VALUE)")
    return problems
