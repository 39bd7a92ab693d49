"""One run per model at a time: an exclusive lock per `model_name`.

Two `train` runs with the same model_name would write each other's checkpoints and
exports. `model_lock` holds `checkpoints/.NAME.lock` for the whole run with `flock`,
which the kernel releases when the process ends, however it ends: a lock left by a run
that was killed is no lock at all, and the next run takes it over (and says so). The
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


@contextmanager
def model_lock(folder: str, model_name: str) -> Iterator[None]:
    """Hold the lock of `model_name` in `folder`; refuse with one line if a live run has it."""
    make_dirs(folder)
    path = lock_path(folder, model_name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SequifierError(
                f"model_name '{model_name}': another training run of this model is in progress "
                f"({_holder(fd)}, lock {path}); wait for it to finish or choose another model_name"
            ) from None
        previous = _holder(fd)
        if previous != "another process":  # a run that ended without releasing: killed
            log.warning("model_name '%s': taking over the lock of %s, which no longer runs",
                        model_name, previous)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        try:
            yield
        finally:
            os.ftruncate(fd, 0)  # an empty lock file: released cleanly
    finally:
        os.close(fd)
