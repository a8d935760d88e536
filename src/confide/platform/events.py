"""What a running federation tells whoever watches it: one type per kind of progress event.

Members emit theirs from the process that hosts them (through a queue: every event pickles), the
simulation and the demo emit the rest, and a display (`platform.display.FederationDisplay`) or a
test consumes them. Nothing here is a record: the ledger and the member's record are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Phase:
    """The federation's own stage (loading models, scoring the base model...)."""

    text: str


@dataclass(frozen=True)
class Plans:
    """Every member's participation plan, by institution (`Member.plan`)."""

    plans: dict


@dataclass(frozen=True)
class RoundOpened:
    round: int


@dataclass(frozen=True)
class TrainingStep:
    """One optimizer step of a member's round, with the epsilon its ledger holds after the round."""

    institution: str
    round: int
    step: int
    steps: int
    epsilon: float


@dataclass(frozen=True)
class MemberNote:
    """A line about one member (training, uploaded, declined, a reveal left out...)."""

    institution: str
    text: str


@dataclass(frozen=True)
class RoundSettled:
    """A round is over for every member: how it went, and its scores where they were taken."""

    round: int
    status: str
    accuracy: float | None = None
    declined: dict[str, str] = field(default_factory=dict)


ProgressEvent = Union[Phase, Plans, RoundOpened, TrainingStep, MemberNote, RoundSettled]
