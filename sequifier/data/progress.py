"""Progress reporting: a tqdm bar on a terminal, periodic plain lines otherwise (logs, CI)."""

import sys
import time


class Progress:
    """Counts finished steps of a named stage; `update()` after each, `close()` at the end."""

    def __init__(self, total: int, stage: str, stream=None, interval_seconds: float = 10.0):
        self.total, self.stage, self.done = total, stage, 0
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval_seconds
        self.started = self.last_line = time.monotonic()
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm

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
            self._line(f"{self.done}/{self.total} done")

    def _line(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[preprocess] {self.stage}: {text} ({elapsed:.1f} s)", file=self.stream, flush=True)
