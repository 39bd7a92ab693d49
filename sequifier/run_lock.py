"""One run per model at a time: an exclusive lock per `model_name`.

Two `train` runs with the same model_name would write each other's checkpoints and
exports. `model_lock` holds `checkpoints/.NAME.lock` for the whole run with `flock`,
which the kernel releases when the process ends, however it ends: a lock file left by a
run that was killed is no lock at all, and the next run takes it over (and says so). The
file records the holder's pid and host so that a refused run can name them.
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

log = logging.getLogger(__name__)


def lock_path(folder: str, model_name: str) -> str:
    return os.path.join(folder, f".{model_name}.lock")


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"pid {info['pid']} on {info['host']}"
    except (OSError, ValueError, KeyError):
        return "another process"


def _acquire(path: str, model_name: str) -> int:
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
                f"model_name '{model_name}': another training run of this model is in progress "
                f"({holder}, lock {path}); wait for it to finish or choose another model_name"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def model_lock(folder: str, model_name: str) -> Iterator[None]:
    """Hold the lock of `model_name` in `folder`; refuse with one line if a live run has it.

    The lock file is removed when the run ends (and `folder`, if this created it and it
    stayed empty), so a run that fails early leaves nothing behind.
    """
    created = not os.path.isdir(folder)
    make_dirs(folder)
    path = lock_path(folder, model_name)
    fd = _acquire(path, model_name)
    try:
        previous = _holder(fd)
        if previous != "another process":  # a run that ended without releasing: killed
            log.warning("model_name '%s': taking over the lock of %s, which no longer runs",
                        model_name, previous)
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
            except OSError:  # not empty: the run wrote checkpoints
                pass
