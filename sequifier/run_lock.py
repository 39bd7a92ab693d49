"""One run per model, and one preprocess per dataset, at a time: exclusive locks.

Two `train` runs with the same model_name would write each other's checkpoints and
exports; two `preprocess` runs of one dataset_name would share (and delete) one work
folder and replace each other's splits. `model_lock` holds `checkpoints/.NAME.lock` and
`dataset_lock` `data/.NAME.preprocess.lock` for the whole run with `flock`, which the
kernel releases when the process ends, however it ends: a lock file left by a run that
was killed is no lock at all, and the next run takes it over (and says so). The file
records the holder's pid and host so that a refused run can name them.
"""

import fcntl
import json
import logging
import os
import socket
from contextlib import contextmanager
from typing import Iterator

from sequifier.errors import SequifierError
from sequifier.io_utils import make_dirs

logger = logging.getLogger(__name__)


def lock_path(folder: str, model_name: str) -> str:
    return os.path.join(folder, f".{model_name}.lock")


def dataset_lock_path(folder: str, dataset_name: str) -> str:
    return os.path.join(folder, f".{dataset_name}.preprocess.lock")


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def _acquire(path: str, busy: str, fix: str) -> int:
    """An open, flock-ed descriptor of the lock file at `path` (retried if a finishing
    holder removed the file between our open and our lock)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise SequifierError(
                f"{busy} is in progress ({holder}, lock {path}); wait for it to finish or {fix}"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def model_lock(folder: str, model_name: str):
    """Hold the lock of `model_name` in `folder` (checkpoints/) while training."""
    return _run_lock(lock_path(folder, model_name), f"model_name '{model_name}'",
                     "another training run of this model", "choose another model_name")


def dataset_lock(folder: str, dataset_name: str):
    """Hold the lock of `dataset_name` in `folder` (data/) while preprocessing."""
    return _run_lock(dataset_lock_path(folder, dataset_name), f"dataset_name '{dataset_name}'",
                     "another preprocess run of this dataset", "choose another dataset_name")


@contextmanager
def _run_lock(path: str, field: str, busy: str, fix: str) -> Iterator[None]:
    """Hold the lock file at `path`; refuse with one line if a live run has it.

    The lock file is removed when the run ends (and its folder, if this created it and
    it stayed empty), so a run that fails early leaves nothing behind.
    """
    folder = os.path.dirname(path)
    created = not os.path.isdir(folder)
    make_dirs(folder)
    fd = _acquire(path, f"{field}: {busy}", fix)
    try:
        previous = _holder(fd)
        if previous != "another process":  # a run that ended without releasing: killed
            logger.warning("%s: taking over the lock of %s, which no longer runs", field, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield
    finally:
        try:
            os.remove(path)  # still holding the lock: a waiting opener retries (_acquire)
        except FileNotFoundError:
            pass
        os.close(fd)
        if created:
            try:
                os.rmdir(folder)
            except OSError:  # not empty: the run wrote its outputs there
                pass
