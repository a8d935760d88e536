"""The member's one error type: what it cannot do in its current state, with the fix."""

from confide.errors import BadInput


class MemberError(BadInput):
    """The member cannot do what was asked in its current state (its files, its key, its record)."""
