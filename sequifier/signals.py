"""Stopping on a signal (a scheduler's SIGTERM or SIGUSR1, Ctrl-C) without losing work or
leaving partial output.

`StopSignals` installs handlers (main thread only) and restores the earlier ones on exit:

* `graceful=False` (preprocess, infer, evaluate; train outside its loop): the signal raises
  `Stopped` where the program is, so the code that rolls back an output set or removes a
  work folder on an error runs as for any error; the CLI prints one line and exits with
  `STOPPED_STATUS`.
* `graceful=True` (train's loop): the first signal only sets `signum`; the loop finishes
  its optimizer step, writes a step checkpoint and the summary, and the command exits
  with `STOPPED_STATUS`; a second signal (more than `REPEAT_WINDOW_S` later) raises
  `Stopped` at once.

A handler that was installed before (submitit's requeue on SIGUSR2, for example) is
called by `hand_over` once the stop is saved, so a launcher's own requeue still happens.
"""

import logging
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from sequifier.config.schema import STOP_SIGNALS as DEFAULT_STOP_SIGNALS

logger = logging.getLogger(__name__)

# EX_TEMPFAIL: stopped by a signal after saving what it could; run the same command again
STOPPED_STATUS = 75
# A terminal's Ctrl-C, or SLURM, signals every process of a job, and a launcher (torchrun,
# the spawning parent) passes the signal on to its ranks as well: a repeat this soon after
# the first is that same stop, not a second one.
REPEAT_WINDOW_S = 2.0
# the signals a process cannot catch
_UNCATCHABLE = ("SIGKILL", "SIGSTOP")


class Stopped(BaseException):
    """Raised by a signal handler: not an `Exception`, so no `except Exception` swallows it
    on the way out, while `finally` and `except BaseException` clean-ups run."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal_name(signum)}")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def signal_problems(names: Sequence[str], field: str) -> List[str]:
    """`field: ...` lines for names that are not signals this process can catch."""
    problems = []
    for name in names:
        if not isinstance(name, str) or not name.startswith("SIG") or not hasattr(signal, name) \
                or name.startswith("SIG_") or name in _UNCATCHABLE:
            catchable = ", ".join(DEFAULT_STOP_SIGNALS + ("SIGHUP", "SIGQUIT"))
            problems.append(f"{field}: '{name}' is not a signal a process can catch; use names such as {catchable}")
    return problems


class StopSignals:
    """Handlers for `names` while the `with` block runs (see the module docstring)."""

    def __init__(self, names: Sequence[str], graceful: bool,
                 on_signal: Optional[Callable[[int], None]] = None):
        self.numbers = [int(getattr(signal, n)) for n in names]
        self.graceful = graceful
        self.on_signal = on_signal  # instead of stopping here (a launcher forwards to its ranks)
        self.signum: Optional[int] = None  # the first signal received
        self.first_at = 0.0
        self.handed_over = False
        self.previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for number in self.numbers:
                self.previous[number] = signal.signal(number, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}

    def _handle(self, signum: int, frame) -> None:
        first = self.signum is None
        now = time.monotonic()
        if first:
            self.signum, self.first_at = signum, now
        elif self.graceful and now - self.first_at < REPEAT_WINDOW_S:
            return  # the same stop delivered twice (to the process group, and passed on by a launcher)
        if self.on_signal is not None:
            self.on_signal(signum)
            return
        if self.graceful and first:
            logger.info(f"{signal_name(signum)} received: finishing the current optimizer step, then saving "
                        "a checkpoint and the summary (send it again to stop at once)")
            return
        raise Stopped(signum)

    def hand_over(self, signum: int) -> None:
        """Call the handler that was installed before ours (a launcher's requeue), if any."""
        if self.handed_over:
            return
        self.handed_over = True
        handler = self.previous.get(signum)
        outer = getattr(handler, "__self__", None)
        if isinstance(outer, StopSignals):  # ours, installed further out: it knows the launcher's
            outer.hand_over(signum)
        elif callable(handler) and handler is not signal.default_int_handler:
            handler(signum, None)
