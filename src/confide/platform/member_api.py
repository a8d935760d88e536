"""What a round driver needs from a member, as types: the member's side of the round, seen from outside.

The real `confide.platform.member.Member` satisfies `RoundMember`, and so does any test double;
the round driver (`confide.platform.driver.RoundDriver`) is written against this protocol only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    DeclaredSpend,
    KeyCertificate,
    MemberRoundState,
    RevealStatement,
)
from confide.platform.sum_evidence import SumEvidence


@dataclass(frozen=True)
class KeyBundle:
    """What the key holder publishes: key id, adapter layout, public context, one sealed key per member."""

    key_id: str
    layout_hash: str
    public_context: bytes
    sealed: dict[str, bytes]
    n_values: int
    """The adapter layout's size: lets the coordinator refuse an update of another size on arrival."""
    certificate: KeyCertificate
    """The key holder's signed certificate of the key, the public context and each sealed copy."""


@dataclass(frozen=True)
class Contribution:
    """A member's answer to an open round."""

    kind: Literal["upload", "decline"]
    envelope: bytes | None = None
    reason: str | None = None
    ledger_head: str | None = None
    """Our newest ledger entry's hash once the upload was recorded: what the coordinator signs into the receipt."""
    declared: DeclaredSpend | None = None
    """The round's DP-SGD spend as our ledger records it: the coordinator checks it and signs it too."""
    statement: ContributionStatement | None = None
    """Our signed statement of the upload with its integrity tags: the other members check the sum against it."""
    shares: bytes = b""
    """Our upload's mask shares, sealed to the committee (`confide.platform.secure_sum`): sent with the envelope."""


@dataclass(frozen=True)
class Outcome:
    """How a member settled a finished round."""

    kind: Literal["applied", "aborted", "failed"]
    count: int
    detail: str = ""
    undecryptable: bool = False
    """The round's sum was refused (it did not decrypt or failed a check): the driver reports it."""
    statement: AppliedStatement | None = None
    """Our signed statement of the sum we applied: the driver hands it to the coordinator for the others."""


@runtime_checkable
class RoundMember(Protocol):
    """One institution in one federation, idempotent per round: a repeated call returns what the first did."""

    institution_id: str

    def is_key_holder(self) -> bool: ...

    def has_key(self) -> bool: ...

    def make_keys(self) -> KeyBundle: ...

    def key_id(self) -> str | None: ...

    def install_key(self, sealed: bytes, certificate: KeyCertificate) -> str: ...

    def round_state(self, round_index: int) -> MemberRoundState | None: ...

    def take_part(self, round_index: int) -> Contribution: ...

    def note_declined(self, round_index: int) -> None: ...

    def note_missed(self, round_index: int) -> None: ...

    def record_receipt(self, round_index: int, receipt: dict, envelope: bytes | None,
                       coordinator_key: bytes) -> dict: ...

    def check_anchor(self, receipt: dict | None) -> None: ...

    def apply_sum(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence) -> Outcome: ...

    def witness_applied(self, statements: list[AppliedStatement]) -> str | None: ...

    def reveal(self, round_index: int, statements: list[ContributionStatement],
               shares: dict[str, bytes]) -> RevealStatement: ...

    def note_failed_round(self, round_index: int, reason: str) -> Outcome: ...

    def save_adapter(self, out_dir: Path) -> str: ...
