"""The one error type the CLI turns into a single line and exit code 2.

Library code raises :class:`UserError` for anything the user can fix (a missing path, a bad
ratio, a corrupt file); everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""

    exit_code = 2

