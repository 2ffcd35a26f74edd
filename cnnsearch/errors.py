"""The one exception type cnnsearch raises for problems a user can fix."""

from __future__ import annotations

USAGE = 2
"""Exit code for bad input: an option, a file or a storage the user named."""

RUNTIME = 1
"""Exit code for failures while running."""


class CnnSearchError(Exception):
    """A problem worth a one-line message rather than a traceback.

    Args:
        message: One line naming the bad value and what is allowed.
        exit_code: ``USAGE`` (2) for bad input, ``RUNTIME`` (1) for failures at run time.
    """

    def __init__(self, message: str, *, exit_code: int = USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
