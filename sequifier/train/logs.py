"""Run logging: console, a human-readable file, TensorBoard, and a progress bar.

Each run writes `logs/sequifier-NAME-TIMESTAMP.txt` and TensorBoard events under
`logs/tensorboard/NAME/TIMESTAMP/` with the same scalars (train loss every
`log_interval` batches and per epoch, validation loss total and per target, learning
rate, validation metrics per target as `epoch/validation/METRIC/TARGET` and the
baselines beside them as `epoch/baseline/BASELINE/METRIC/TARGET`). The tqdm bar is
shown only when stderr is a terminal, so redirected output and CI logs stay clean; log
lines are written above the bar, never over it.

Console lines go through `logging` (logger `sequifier.train`), so under the CLI they land
in Hydra's run folder too (`outputs/runs/train/.../train.log`) in Hydra's one format. A
resumed run appends to the text log and TensorBoard folder of the run it continues
(`continues`). At the end `hparams` records the run's settings and final metrics in
TensorBoard's HParams tab, so the jobs of a sweep compare side by side. With `tracking:
mlflow` the same scalars go to the run's MLflow run too (train/tracking.py).
"""

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable
from contextlib import contextmanager

from sequifier.config.schema import PAD_ID, UNKNOWN_ID
from sequifier.errors import user_os_error
from sequifier.metrics import BASELINE_DESCRIPTIONS
from sequifier.train.resume import flatten

RESERVED_LABELS = {PAD_ID: "<pad>", UNKNOWN_ID: "<unknown>"}


# the command's channel, not __name__: users read "[sequifier.train]" in every line
logger = logging.getLogger("sequifier.train")


class TrainLogger:
    def __init__(self, logs_dir: str, model_name: str, enabled: bool = True,
                 tensorboard: bool = True, continues: dict | None = None, tracker=None):
        """`continues`: the `paths` of the run a resumed run continues (from its checkpoint);
        `tracker`: the run's MLflow run (train/tracking.py), which gets the same scalars."""
        self.enabled = enabled
        self.tracker = tracker
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self.path = os.path.join(logs_dir, f"sequifier-{model_name}-{stamp}.txt")
        self.tensorboard_dir = os.path.join(logs_dir, "tensorboard", model_name, stamp)
        self._file = None
        self._writer = None
        if not enabled:
            return
        os.makedirs(logs_dir, exist_ok=True)
        resumed = _continued_paths(continues, logs_dir)
        if resumed is not None:
            self.path, self.tensorboard_dir = resumed
        # a second run in the same second must not append to the first one's file
        suffix = 1
        while resumed is None and os.path.exists(self.path):
            self.path = os.path.join(logs_dir, f"sequifier-{model_name}-{stamp}-{suffix}.txt")
            self.tensorboard_dir = os.path.join(logs_dir, "tensorboard", model_name, f"{stamp}-{suffix}")
            suffix += 1
        # open for the whole run, closed in close(); line-buffered so a crash keeps the log
        with _writing(self.path):
            self._file = open(self.path, "a", buffering=1)  # noqa: SIM115
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            _quiet_event_writer_threads()
            with _writing(self.tensorboard_dir):
                self._writer = SummaryWriter(log_dir=self.tensorboard_dir)

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        with _writing(self.path):
            self._file.write(line + "\n")
        logger.info(message)

    @property
    def paths(self) -> dict[str, str]:
        """The text log, TensorBoard folder and MLflow run, for the checkpoint (a resume
        continues them)."""
        paths = {"text": self.path, "tensorboard": self.tensorboard_dir}
        if self.tracker is not None:
            paths.update(self.tracker.record)
        return paths

    def hparams(self, settings: dict, metrics: dict[str, float]) -> None:
        """The run's settings (flattened dotted keys) and final metrics in the HParams tab."""
        if self._writer is None:
            return
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(settings).items()}
        with _writing(self.tensorboard_dir):
            self._writer.add_hparams(flat, {f"hparams/{k}": v for k, v in metrics.items()}, run_name=".")

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.tracker is not None:  # buffered: written in batches, never per step
            self.tracker.metrics(values, step)
        if self._writer is None:
            return
        # TensorBoard writes in a thread of its own and raises its failures on a later call
        with _writing(self.tensorboard_dir):
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def progress(self, iterable: Iterable, total: int, description: str):
        """tqdm over `iterable` on a terminal (log lines printed above it), the bare iterable otherwise."""
        if not (self.enabled and sys.stderr.isatty()):
            return iterable
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        def with_bar():
            with logging_redirect_tqdm(loggers=[logging.getLogger()]):
                yield from tqdm(iterable, total=total, desc=description, leave=False, file=sys.stderr)

        return with_bar()

    def close(self) -> None:
        writer, self._writer = self._writer, None
        file, self._file = self._file, None
        try:
            if writer is not None:
                with _writing(self.tensorboard_dir):
                    writer.flush()
                    writer.close()
        finally:
            if file is not None:
                with _writing(self.path):
                    file.close()


def _quiet_event_writer_threads() -> None:
    """TensorBoard writes events in a thread of its own; a failed write (a full disk) ends
    that thread with a printed traceback, and the next call in the run raises the same
    error, which `_writing` reports as one line. Only that thread's error is kept quiet."""
    if getattr(threading.excepthook, "_sequifier", False):
        return
    previous = threading.excepthook

    def hook(args) -> None:
        if not (type(args.thread).__name__ == "_AsyncWriterThread" and isinstance(args.exc_value, OSError)):
            previous(args)

    hook._sequifier = True
    threading.excepthook = hook


@contextmanager
def _writing(path: str):
    """A full disk or a read-only folder while logging: one line naming the log, not a
    traceback."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        error = user_os_error(e, path, name_this_path=True)
        if error is None:
            raise
        raise error from None


def _continued_paths(continues: dict | None, logs_dir: str) -> tuple[str, str] | None:
    """(text log, TensorBoard folder) of the continued run, if both are in `logs_dir`."""
    if not continues:
        return None
    text, board = continues.get("text"), continues.get("tensorboard")
    root = os.path.realpath(logs_dir)
    inside = all(isinstance(p, str) and os.path.realpath(p).startswith(root + os.sep) for p in (text, board))
    return (text, board) if inside and os.path.exists(text) else None


def format_losses(losses: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.5f}" for name, value in losses.items())


def class_share_lines(column: str, counts, inverse_id_map: dict[int, object] | None,
                      top: int = 20) -> str:
    """'value: share' of the most often predicted classes, largest first."""
    total = max(int(counts.sum()), 1)
    order = counts.argsort(descending=True)[:top]
    parts = []
    for class_id in order.tolist():
        if counts[class_id] == 0:
            break
        label = (inverse_id_map or {}).get(class_id, RESERVED_LABELS.get(class_id, class_id))
        parts.append(f"{label}: {counts[class_id].item() / total:.4f}")
    return f"predicted class shares for {column} (validation): " + ", ".join(parts)


def format_number(value: float) -> str:
    return f"{value:.5g}"


def format_metrics(values: dict[str, float], names) -> str:
    return ", ".join(f"{name} {format_number(values[name])}" for name in names)


def baseline_lines(targets, baselines: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """The baselines block logged before the first epoch."""
    lines = ["baselines on the validation split's scored slots (no model; read each epoch against them):"]
    for t in targets:
        for name, values in baselines[t.column].items():
            shown = [m for m in values if m != "count"]
            lines.append(f"  {t.column} {name}: {format_metrics(values, shown)} "
                         f"({values['count']} slots; {BASELINE_DESCRIPTIONS[name]})")
    return lines


def metric_lines(targets, scores: dict[str, dict[str, float]],
                 baselines: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One line per target: its validation metrics, each with the baselines' value in brackets."""
    lines = []
    for t in targets:
        parts = []
        for name in t.shown:
            beside = ", ".join(f"{b} {format_number(v[name])}" for b, v in baselines.get(t.column, {}).items())
            parts.append(f"{name} {format_number(scores[t.column][name])}" + (f" ({beside})" if beside else ""))
        lines.append(f"  validation {t.column}: " + ", ".join(parts))
    return lines


def metric_scalars(scores: dict[str, dict[str, float]],
                   baselines: dict[str, dict[str, dict[str, float]]]) -> dict[str, float]:
    """TensorBoard tags of an epoch's metrics; the baselines again, as flat reference lines."""
    scalars = {f"epoch/validation/{name}/{column}": value
               for column, values in scores.items() for name, value in values.items() if name != "count"}
    scalars.update({f"epoch/baseline/{baseline}/{name}/{column}": value
                    for column, by_baseline in baselines.items()
                    for baseline, values in by_baseline.items()
                    for name, value in values.items() if name != "count"})
    return scalars
