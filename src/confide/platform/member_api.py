"""What a round driver needs from a member, as types: the member's side of the round, seen from outside.

The real `confide.platform.member.Member` satisfies `RoundMember`, and so does any test double;
the driver (`confide.platform.service.agent.Agent`) is written against this protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from confide.formats import DeclaredSpend, MemberRoundState


@dataclass(frozen=True)
class KeyBundle:
    """What the key holder publishes: key id, adapter layout, public context, one sealed key per member."""

    key_id: str
    layout_hash: str
    public_context: bytes
    sealed: dict[str, bytes]
    n_values: int | None = None
    """The adapter layout's size: lets the coordinator refuse an update of another size on arrival."""


@dataclass(frozen=True)
class Contribution:
    """A member's answer to an open round."""

    kind: Literal["upload", "decline"]
    envelope: bytes | None = None
    reason: str | None = None
    ledger_head: tuple[int, str] | None = None
    """Our ledger's `(seq, hash)` once the upload was recorded: what the coordinator signs into the receipt."""
    declared: DeclaredSpend | None = None
    """The round's DP-SGD spend as our ledger records it: the coordinator checks it and signs it too."""


@dataclass(frozen=True)
class Outcome:
    """How a member settled a finished round."""

    kind: Literal["applied", "aborted", "failed"]
    count: int
    detail: str = ""
    undecryptable: bool = False
    """The round's sum did not decrypt: the driver reports it to the coordinator."""


@runtime_checkable
class RoundMember(Protocol):
    """One institution in one federation, idempotent per round: a repeated call returns what the first did."""

    institution_id: str

    def is_key_holder(self) -> bool: ...

    def has_key(self) -> bool: ...

    def make_keys(self) -> KeyBundle: ...

    def install_key(self, sealed: bytes) -> None: ...

    def round_state(self, round_index: int) -> MemberRoundState | None: ...

    def take_part(self, round_index: int) -> Contribution: ...

    def note_declined(self, round_index: int) -> None: ...

    def note_missed(self, round_index: int) -> None: ...

    def record_receipt(self, round_index: int, receipt: dict, envelope: bytes | None,
                       coordinator_key: bytes) -> dict: ...

    def check_anchor(self, receipt: dict | None) -> None: ...

    def apply_sum(self, round_index: int, sum_envelope: bytes) -> Outcome: ...

    def note_failed_round(self, round_index: int, reason: str) -> Outcome: ...

    def save_adapter(self, out_dir: Path) -> str: ...
