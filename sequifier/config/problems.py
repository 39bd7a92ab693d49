"""The problem collector every rule of the validation gate writes to.

A rule is a function `rule(cfg, p)` that appends one line per problem (`field: what is
wrong and the fix`); the gate (`sequifier.gate`) raises all lines of a config together
as one SequifierError, so a user sees every problem at once. The rules live with the
code that owns the value they check (data/rules.py, model/rules.py, train/rules.py,
optimizers, schedulers, losses, infer/options.py ...).
"""

from typing import Iterable, List, Optional

from sequifier.errors import SequifierError


def one_line(message: str) -> str:
    """A problem is one line whatever it quotes (an exception's text, a value with a
    newline): the CLI prints each line as its own `sequifier: error:`."""
    return " ".join(message.split()) if "\n" in message or "\r" in message else message


class Problems:
    """Collects one line per problem; `raise_if_any` raises them as one error."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def add(self, field: str, message: str) -> None:
        self.lines.append(one_line(f"{field}: {message}"))

    def extend(self, lines: Iterable[str]) -> None:
        """Lines already in the `field: message` form."""
        self.lines.extend(one_line(line) for line in lines)

    def check(self, ok: bool, field: str, message: str) -> None:
        if not ok:
            self.add(field, message)

    def one_of(self, value, options, field: str) -> None:
        self.check(value in options, field, f"'{value}' is not one of {', '.join(map(str, options))}")

    def positive(self, value, field: str, allow_none: bool = False, minimum=1) -> None:
        if value is None and allow_none:
            return
        self.check(value is not None and value >= minimum, field, f"must be >= {minimum}, got {value}")

    def problem(self, field: str, message: Optional[str]) -> None:
        """A check that returns why a value is wrong (None: it is fine)."""
        if message:
            self.add(field, message)

    def call(self, check, *args) -> None:
        """Run a check that raises a SequifierError (e.g. a builder's own) and keep its lines."""
        try:
            check(*args)
        except SequifierError as e:
            self.lines.extend(str(e).splitlines())

    def raise_if_any(self) -> None:
        if self.lines:
            raise SequifierError("\n".join(self.lines))
