"""The one base class for "the user gave us something wrong".

Every package raises its own specific errors (a policy problem, a garbled envelope, a broken
ledger...). Those that mean bad input derive from `BadInput`, so the CLI can print them as one line
and exit 2 without knowing each class, while genuine bugs still surface as tracebacks.
"""

from __future__ import annotations


class BadInput(Exception):
    """Input that confide refuses: the message names the file, line or field, and says how to fix it.

    `BadInput(message, hint)` reads "message (hint)"; subclasses may format their own.
    """

    def __init__(self, message: str = "", hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        if hint or not hasattr(self, "hint"):  # a subclass that formats its own has set it already
            self.hint = hint

    def lines(self) -> list[str]:
        """One line per problem (most errors have exactly one)."""
        return [line for line in str(self).splitlines() if line.strip()] or [type(self).__name__]
