"""The one exception type users see.

Anything raised as `SequifierError` is a problem with the user's input (config, files,
data). The CLI prints its message as a single line and exits non-zero; any other
exception is a bug and keeps its traceback. `user_os_error` turns the environment's
failures (a full disk, a read-only folder) into one.
"""

import errno
from typing import Any, Optional


class SequifierError(Exception):
    """A user-facing error: one line naming the field or file and the fix."""


def shown(value: Any) -> str:
    """`value` in a message as the user wrote it: numpy scalars as plain numbers (`2`, not
    `np.int64(2)`), text quoted ('u01', control characters escaped so a message stays
    one line), None/true/false as in YAML, lists and maps element by element."""
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalar
        value = value.item()
    elif hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # arrays
        value = value.tolist()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bytes):
        return repr(value.decode("utf-8", "backslashreplace"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{shown(k) if not isinstance(k, str) else k}: {shown(v)}"
                               for k, v in value.items()) + "}"
    return " ".join(str(value).split())  # one line whatever the object prints


_FIXES = {
    errno.EROFS: "the file system is read-only; choose a writable project_root",
    errno.EACCES: "permission denied; make the folder writable or choose another project_root",
    errno.EPERM: "operation not permitted; make the folder writable or choose another project_root",
    errno.ENOSPC: "no space left on the device; free some space and run again",
    errno.EDQUOT: "disk quota exceeded; free some space and run again",
    errno.ENAMETOOLONG: "the name is too long for the file system; choose a shorter name",
    errno.EFBIG: "the file is too large for the file system",
}
# torch's zip writer checks each record's position after writing it: a short write (a
# full disk or quota) surfaces as "[enforce fail at inline_container.cc:NNN] . unexpected
# pos 14912 vs 14800", a RuntimeError without errno
_SHORT_WRITE = -1
_FIXES[_SHORT_WRITE] = ("it could not be written whole (no space left on the device, or a quota); "
                        "free some space and run again")
_MESSAGES = {  # libraries that lose errno (torch's writer, some pyarrow paths)
    "No space left on device": errno.ENOSPC,
    "file write failed": errno.ENOSPC,  # torch: "PytorchStreamWriter failed writing file"
    "unexpected pos": _SHORT_WRITE,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "File name too long": errno.ENAMETOOLONG,
    "Disk quota exceeded": errno.EDQUOT,
}


def user_os_error(error: BaseException, path: str, name_this_path: bool = False) -> Optional[SequifierError]:
    """The one-line user error for an environment failure writing `path`, or None
    (for anything else, which is then a bug and keeps its traceback)."""
    text = str(error)
    code = getattr(error, "errno", None) if isinstance(error, OSError) else None
    if code not in _FIXES and (isinstance(error, OSError) or "enforce fail" in text
                               or "PytorchStreamWriter" in text):
        code = next((c for m, c in _MESSAGES.items() if m in text), None)
    if code not in _FIXES:
        return None
    where = path if name_this_path else (getattr(error, "filename", None) or path)
    return SequifierError(f"cannot write '{where}': {_FIXES[code]}")
