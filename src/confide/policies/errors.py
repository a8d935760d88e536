"""Errors raised while reading policy files: every problem found, each with its file, line and field."""

from __future__ import annotations

from dataclasses import dataclass

from confide.errors import BadInput


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a policy file, pinned to a line."""

    file: str
    line: int
    field: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        field = f"{self.field}: " if self.field else ""
        hint = f" ({self.hint})" if self.hint else ""
        return f"{where}{field}{self.message}{hint}"


class PolicyError(BadInput):
    """A policy file could not be accepted. `problems` lists every problem found, not just the first."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))
