"""File helpers shared by every command.

Atomic output: write to a temporary name beside the target, then rename; a crash or
error part-way leaves the old file (or nothing), never a half-written one. Config
paths resolve against `project_root`.
"""

import os
import shutil
import tempfile
from contextlib import contextmanager
from typing import Iterator


def resolve_path(project_root: str, path: str) -> str:
    """A config path: absolute as given, relative to `project_root` otherwise."""
    return path if os.path.isabs(path) else os.path.join(project_root, path)


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path; on success it is renamed to `path`, on error removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary folder; on success it replaces `path`, on error it is removed."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(path))
    try:
        yield tmp
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
