"""The service's one error base: bad input in the BadInput sense, with an optional hint."""

from __future__ import annotations

from confide.errors import BadInput


class ServiceError(BadInput):
    """Refused input or configuration of the networked federation; `hint` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.hint = hint
