"""Atomic outputs and output sets: how every command writes its files.

Atomic output: write to a temporary name beside the target, then rename; a crash or
error part-way leaves the old file (or nothing), never a half-written one. Temporary
names carry this machine and process (`.tmp-sequifier-HOST-PID-...`), so a later run
recognises the leftovers of a killed one and removes them (`clean_leftovers`).

Output sets: outputs that belong together (splits + metadata, predictions +
probabilities, a model's exports) are written with `output_set`: all members go to
temporary names first, then a journal lists them and they are renamed in one go. A run
killed during the renames leaves its journal; the next run that looks at the folder
rolls the set back to what was there before (`clean_leftovers`), so a set is always
complete or absent and a rerun proceeds as if the crashed run never happened.

Files are created with the mode any normal write would give (0666 / 0777 minus the
umask), not the 0600 of `tempfile`.
"""

import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

from sequifier.errors import SequifierError, user_os_error

logger = logging.getLogger(__name__)

TMP_PREFIX = ".tmp-sequifier-"
JOURNAL_SUFFIX = ".set.json"


# ---------------------------------------------------------------- temporary names


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _tmp_name(directory: str, extension: str = "") -> str:
    return os.path.join(directory, f"{TMP_PREFIX}{_host_tag()}-{os.getpid()}-"
                                   f"{secrets.token_hex(4)}{extension}")


def _owner_is_dead(name: str) -> bool:
    """A temporary of this machine whose process no longer runs."""
    parts = name[len(TMP_PREFIX):].split("-")
    if len(parts) < 3 or parts[0] != _host_tag() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def _extension(path: str) -> str:
    return os.path.splitext(path)[1][:16]


def _make_file(directory: str, extension: str) -> str:
    while True:
        tmp = _tmp_name(directory, extension)
        try:  # os.open applies the umask, unlike tempfile.mkstemp's fixed 0600
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue


def _make_dir(directory: str) -> str:
    while True:
        tmp = _tmp_name(directory)
        try:
            os.mkdir(tmp, 0o777)
            return tmp
        except FileExistsError:
            continue


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def make_dirs(path: str) -> None:
    """`os.makedirs` with an OS error (read-only, no permission) as one line."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise user_os_error(e, path) from None


# ---------------------------------------------------------------- atomic files


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path; on success it is renamed to `path`, on error removed."""
    with output_set([path]) as tmps:
        yield tmps[path]


@contextmanager
def atomic_dir(path: str) -> Iterator[str]:
    """Yield a temporary folder; on success it replaces `path`, on error it is removed."""
    with output_set([], dirs=[path]) as tmps:
        yield tmps[path]


def atomic_write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


# ---------------------------------------------------------------- output sets


@contextmanager
def output_set(files: Sequence[str], dirs: Sequence[str] = ()) -> Iterator[Dict[str, str]]:
    """Temporary paths {final: tmp} for outputs that must appear together.

    The caller writes every member to its temporary path (files are created empty,
    folders empty). On success all members replace their targets together; on an
    error nothing changes. See the module docstring for crashes.
    """
    members = [(os.path.abspath(p), False) for p in files] + [(os.path.abspath(p), True) for p in dirs]
    tmps: Dict[str, str] = {}
    try:
        for final, is_dir in members:
            directory = os.path.dirname(final)
            make_dirs(directory)
            tmps[final] = _make_dir(directory) if is_dir else _make_file(directory, _extension(final))
    except OSError as e:
        for tmp in tmps.values():
            _remove(tmp)
        raise user_os_error(e, e.filename or members[len(tmps)][0]) from None
    given = {os.path.abspath(p): p for p in list(files) + list(dirs)}
    try:
        yield {given[final]: tmp for final, tmp in tmps.items()}
        _commit(tmps)
    except BaseException as e:
        for tmp in tmps.values():
            _remove(tmp)
        converted = (user_os_error(e, _culprit(e, tmps), name_this_path=True)
                     if isinstance(e, (OSError, RuntimeError)) else None)
        if isinstance(e, SequifierError):  # raised by a nested atomic write: name our target
            text = str(e)
            for final, tmp in tmps.items():
                text = text.replace(tmp, final)
            converted = SequifierError(text) if text != str(e) else None
        if converted is not None:
            raise converted from None
        raise


def _culprit(error: BaseException, tmps: Dict[str, str]) -> str:
    """The final path an OS error while writing temporaries is about."""
    name = getattr(error, "filename", None)
    for final, tmp in tmps.items():
        if name and os.path.abspath(str(name)).startswith(tmp):
            return final
    return str(name) if name else next(iter(tmps), "")


def _commit(tmps: Dict[str, str]) -> None:
    """Rename the temporaries over their targets; a journal makes it all-or-nothing."""
    if len(tmps) == 1:  # one rename is atomic on its own
        final, tmp = next(iter(tmps.items()))
        if os.path.isdir(tmp) and os.path.isdir(final):
            backup = _tmp_name(os.path.dirname(final))
            os.replace(final, backup)
            os.replace(tmp, final)
            _remove(backup)
        else:
            os.replace(tmp, final)
        return
    entries = [{"final": final, "tmp": tmp, "backup": _tmp_name(os.path.dirname(final))}
               for final, tmp in tmps.items()]
    journals = _write_journals(entries, committed=False)
    try:
        for entry in entries:
            if os.path.lexists(entry["final"]):
                os.replace(entry["final"], entry["backup"])
        for entry in entries:
            os.replace(entry["tmp"], entry["final"])
        _write_journals(entries, committed=True, paths=journals)
    except BaseException:
        _roll_back(entries, journals)
        raise
    _finish(entries, journals)


def _write_journals(entries: List[dict], committed: bool, paths: Optional[List[str]] = None) -> List[str]:
    """One journal per folder the set touches, so a run looking at any of them finds it."""
    if paths is None:
        folders = sorted({os.path.dirname(e["final"]) for e in entries})
        paths = [_tmp_name(folder, JOURNAL_SUFFIX) for folder in folders]
    text = json.dumps({"committed": committed, "entries": entries, "journals": paths})
    for path in paths:
        tmp = path + ".part"
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return paths


def _finish(entries: List[dict], journals: List[str]) -> None:
    for entry in entries:
        _remove(entry["backup"])
    for path in journals:
        _remove(path)


def _roll_back(entries: List[dict], journals: List[str]) -> None:
    """Undo an interrupted set: new members go, the previous outputs come back."""
    for entry in entries:
        if os.path.lexists(entry["tmp"]):
            _remove(entry["tmp"])
        elif os.path.lexists(entry["final"]):  # renamed by the interrupted run
            _remove(entry["final"])
        if os.path.lexists(entry["backup"]):
            os.replace(entry["backup"], entry["final"])
    for path in journals:
        _remove(path)


def clean_leftovers(directories: Sequence[str]) -> List[str]:
    """Finish or undo output sets of killed runs and remove their temporaries.

    Only leftovers of processes of this machine that no longer run are touched, so
    concurrent runs are safe. Returns what was cleaned (for a log line).
    """
    cleaned: List[str] = []
    for directory in directories:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            continue
        for name in names:  # journals first: they name temporaries that must not go yet
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and name.endswith(JOURNAL_SUFFIX) and _owner_is_dead(name):
                _recover_journal(path)
                cleaned.append(path)
        for name in os.listdir(directory):
            path = os.path.join(directory, name)
            if name.startswith(TMP_PREFIX) and _owner_is_dead(name):
                _remove(path)
                cleaned.append(path)
    if cleaned:
        shown = ", ".join(cleaned[:3]) + (f" and {len(cleaned) - 3} more" if len(cleaned) > 3 else "")
        logger.info(f"removed {len(cleaned)} leftover(s) of an interrupted earlier run "
                    f"(temporary files, unfinished output sets rolled back): {shown}")
    return cleaned


def _recover_journal(path: str) -> None:
    try:
        with open(path) as f:
            journal = json.load(f)
    except (OSError, ValueError):  # a half-written journal: the renames had not started
        _remove(path)
        return
    if journal.get("committed"):
        _finish(journal["entries"], journal["journals"])
    else:
        _roll_back(journal["entries"], journal["journals"])


def existing_outputs(paths: Sequence[str]) -> List[str]:
    """Which of `paths` exist, after leftovers of killed runs in their folders are cleaned."""
    clean_leftovers(sorted({os.path.dirname(os.path.abspath(p)) for p in paths}))
    return [p for p in paths if os.path.lexists(p)]
