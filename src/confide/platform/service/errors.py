"""The service's one error base: bad input in the BadInput sense, with an optional hint."""

from __future__ import annotations

from confide.errors import BadInput
from confide.platform.protocol import Refusal


class ServiceError(BadInput):
    """Refused input or configuration of the networked federation; `hint` says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.hint = hint


HTTP_STATUS: dict[Refusal, int] = {
    Refusal.MALFORMED: 400, Refusal.FORBIDDEN: 403, Refusal.UNKNOWN: 404, Refusal.CONFLICT: 409,
    Refusal.TOO_LARGE: 413, Refusal.INVALID: 422, Refusal.BROKEN: 500,
}
"""How the HTTP service says each protocol refusal (`platform.protocol.Refusal`)."""
REFUSAL_OF_STATUS: dict[int, Refusal] = {status: refusal for refusal, status in HTTP_STATUS.items()}
