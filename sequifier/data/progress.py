"""Progress of a long preprocess stage: a tqdm bar on a terminal, periodic log lines otherwise.

The lines go through `logging` (logger `sequifier.preprocess`), like every other
command's output, so under the CLI they reach the console and the run folder's
`preprocess.log` in Hydra's one format. While a bar is shown, the console's log lines
are printed above it (tqdm's logging redirect) instead of over it.
"""

import logging
import sys
import time

# the command's channel, not __name__: users read "[sequifier.preprocess]" in every line
logger = logging.getLogger("sequifier.preprocess")


class Progress:
    """Counts finished steps of a named stage; `update()` after each, `close()` at the end."""

    def __init__(self, total: int, stage: str, stream=None, interval_seconds: float = 10.0):
        self.total, self.stage, self.done = total, stage, 0
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval_seconds
        self.started = self.last_line = time.monotonic()
        self.bar = self._redirect = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger()])
            self._redirect.__enter__()
            self.bar = tqdm(total=total, desc=stage, file=self.stream, leave=False)

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last_line >= self.interval or self.done == self.total:
            self.last_line = now
            self._line(f"{self.done}/{self.total}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self._redirect.__exit__(None, None, None)
            self.bar = self._redirect = None
            self._line(f"{self.done}/{self.total} done")

    def _line(self, text: str) -> None:
        logger.info(f"{self.stage}: {text} ({time.monotonic() - self.started:.1f} s)")
