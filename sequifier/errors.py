"""The one exception type users see.

Anything raised as `SequifierError` is a problem with the user's input (config, files,
data). The CLI prints its message as a single line and exits non-zero; any other
exception is a bug and keeps its traceback.
"""


class SequifierError(Exception):
    """A user-facing error: one line naming the field or file and the fix."""
