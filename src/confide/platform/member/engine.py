"""The member's round engine: one durable record of every round, explicit states, pure decisions.

Nothing here reads a file, a ledger or a model: each function takes the record and what the member
found (a `RoundFacts` view of its ledger and files) and returns the new record or the step to take.
`confide.platform.member.member` performs the steps; the rules live here, tested without a model.

Each round a member takes part in moves through these states (`confide.formats.MemberRoundState`):

    declining  it decided to sit the round out (the reason is kept); the coordinator is not told yet
    declined   the coordinator has the decline
    reserved   the round's spend is in the ledger (write-ahead); training has not finished
    trained    the envelope is written and the upload recorded in the ledger (its head is kept)
    receipted  the coordinator's receipt for the upload is checked and kept
    missed     the round closed before our answer counted
    applied | failed | aborted   settled: the sum applied, nothing applied, or the member left

    (none) -> declining | reserved | missed | settled
    declining -> declined | missed | settled       reserved -> trained | declining | missed | settled
    trained -> receipted | missed | settled        declined, receipted, missed -> settled

A member does the work of a transition first (ledger entry, envelope, adapter file, each written
atomically) and then records the new state, so after a kill the record names the last state whose
work is complete, and the member redoes or adopts the rest without training, spending or applying
twice (`resume` says how for each state). The record is `member.json`, written whole and atomically
on every transition (`confide.platform.member.store`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from confide.formats import MEMBER_ROUND_SETTLED, MemberRoundState, Receipt
from confide.platform.member.errors import MemberError

MEMBER_RECORD_VERSION = 1

_SETTLE = set(MEMBER_ROUND_SETTLED)
TRANSITIONS: dict[MemberRoundState | None, set[MemberRoundState]] = {
    None: {"declining", "reserved", "missed"} | _SETTLE,
    "declining": {"declined", "missed"} | _SETTLE,
    "reserved": {"trained", "declining", "missed"} | _SETTLE,
    "trained": {"receipted", "missed"} | _SETTLE,
    "declined": set(_SETTLE),
    "receipted": set(_SETTLE),
    "missed": set(_SETTLE),
    "applied": set(),
    "failed": set(),
    "aborted": set(),
}


class MemberRecordError(MemberError):
    """The member's record is unreadable, from a newer confide, or asked for a transition it does not allow."""


@dataclass(frozen=True)
class RoundRecord:
    """One round as this member has got through it."""

    round: int
    state: MemberRoundState
    reason: str = ""
    """Why we declined, or what the settled outcome says (the failure, the abort)."""
    envelope_sha256: str | None = None
    ledger_head: str | None = None
    """Our ledger's head (its hash) once the upload was recorded: what the coordinator signs into the receipt."""
    receipt: dict | None = None
    count: int = 0
    """Contributions in the sum we settled with."""
    undecryptable: bool = False

    @property
    def settled(self) -> bool:
        return self.state in MEMBER_ROUND_SETTLED


@dataclass(frozen=True)
class MemberRecord:
    """Everything a member must remember about one federation, besides its ledger and its files."""

    dataset_id: str
    last_applied_round: int = 0
    """The last round whose outcome our adapter includes (applied, or failed and carried forward)."""
    aborted: str | None = None
    """Why we left the federation, if we did."""
    consecutive_failures: int = 0
    """Rounds in a row whose sums did not decrypt."""
    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    version: int = MEMBER_RECORD_VERSION

    def round(self, index: int) -> RoundRecord | None:
        return self.rounds.get(index)

    def state_of(self, index: int) -> MemberRoundState | None:
        r = self.rounds.get(index)
        return r.state if r is not None else None

    def to_dict(self) -> dict[str, Any]:
        return {"version": MEMBER_RECORD_VERSION, "dataset_id": self.dataset_id,
                "last_applied_round": self.last_applied_round,
                "aborted": self.aborted, "consecutive_failures": self.consecutive_failures,
                "rounds": {str(i): dataclasses.asdict(r) for i, r in sorted(self.rounds.items())}}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "MemberRecord":
        """Read a record of this format. MemberRecordError if it is of another format or unusable."""
        try:
            version = data.get("version")
            if version != MEMBER_RECORD_VERSION:
                raise MemberRecordError(f"{where} has format {version!r}, this confide reads format "
                                        f"{MEMBER_RECORD_VERSION}", "run the confide that wrote it (see CHANGELOG.md)")
            rounds = {}
            for key, entry in (data.get("rounds") or {}).items():
                r = RoundRecord(**entry)
                if r.state not in TRANSITIONS or r.round != int(key):
                    raise ValueError(f"round {key}: state {r.state!r}")
                rounds[r.round] = r
            return cls(str(data["dataset_id"]), int(data["last_applied_round"]), data["aborted"],
                       int(data["consecutive_failures"]), rounds)
        except MemberRecordError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise MemberRecordError(f"{where} is damaged ({exc})",
                                    "restore the federation's state directory from a backup") from None


def can_miss(record: MemberRecord, index: int) -> bool:
    """The round may still be marked missed (the round closed before our answer counted). Pure."""
    return "missed" in TRANSITIONS[record.state_of(index)]


def own_envelope(record: MemberRecord, index: int) -> str | None:
    """The SHA-256 of our upload of the round, when it is ours to find in the sum. Pure."""
    r = record.round(index)
    return r.envelope_sha256 if r is not None and r.state in ("trained", "receipted") else None


def advance(record: MemberRecord, index: int, state: MemberRoundState, **changes: Any) -> MemberRecord:
    """`record` with round `index` moved to `state` (and `changes` to its fields). Pure.

    Raises MemberRecordError if the round's current state does not allow that transition.
    """
    current = record.rounds.get(index)
    before = current.state if current is not None else None
    if state not in TRANSITIONS[before]:
        raise MemberRecordError(f"round {index}: cannot go from {before or 'nothing'} to {state}")
    updated = dataclasses.replace(current or RoundRecord(index, state), state=state, **changes)
    return dataclasses.replace(record, rounds={**record.rounds, index: updated})


def failures_after(record: MemberRecord, state: MemberRoundState, undecryptable: bool) -> int:
    """The run of undecryptable sums once a round settles as `state`: reset by `applied`, extended by an
    undecryptable sum, unchanged otherwise. Pure."""
    return 0 if state == "applied" else record.consecutive_failures + int(undecryptable)


def settle(record: MemberRecord, index: int, state: MemberRoundState, count: int = 0, reason: str = "",
           undecryptable: bool = False, leave: str | None = None) -> MemberRecord:
    """`record` with round `index` settled as `state`. Pure.

    `applied` and `failed` move `last_applied_round` to `index` when it is the next round (a failed
    round's adapter is the previous one, carried forward). `applied` resets the run of
    undecryptable sums, an undecryptable failure extends it. `leave` records why the member
    leaves the federation. Raises MemberRecordError for a transition the round's state forbids.
    """
    new = advance(record, index, state, count=count, reason=reason, undecryptable=undecryptable)
    latest = record.last_applied_round
    if state in ("applied", "failed") and index == latest + 1:
        latest = index
    failures = failures_after(record, state, undecryptable)
    return dataclasses.replace(new, last_applied_round=latest, consecutive_failures=failures,
                               aborted=record.aborted or leave)


def leave_federation(record: MemberRecord, reason: str) -> MemberRecord:
    """`record` of a member that leaves the federation for `reason` (the first reason stays). Pure."""
    return dataclasses.replace(record, aborted=record.aborted or reason)


# ------------------------------------------------------------------------------------ resuming
@dataclass(frozen=True)
class RoundFacts:
    """What the member's files and ledger say about one round, besides the record (a kill may have
    left work done that the record does not name yet)."""

    envelope_written: bool
    """Our encrypted update for the round is on disk (trained once: never retrained)."""
    spend_recorded: bool
    """The ledger has the round's spend (or its non-private record)."""


Action = Literal["start", "decline", "upload", "refuse"]


@dataclass(frozen=True)
class Resume:
    """What to do when asked to take part in a round: the record to commit first, then the action.

    `start`: nothing is done yet, go ahead (decide, reserve, train); `decline`: answer with a decline
    (`reason`; `record_decline`: write a decline entry first, for a round spent but never trained);
    `upload`: answer with the written envelope (`adopt`: record its upload in the ledger first);
    `refuse`: the round is past answering.
    """

    action: Action
    record: MemberRecord
    reason: str = ""
    adopt: bool = False
    record_decline: bool = False


INTERRUPTED = "interrupted after its spend was recorded; the spend counts, the round is not retrained"


def resume(record: MemberRecord, index: int, facts: RoundFacts) -> Resume:
    """How a member answers round `index` again, from its record and the facts on disk. Pure.

    A written envelope is adopted (trained once, so it is uploaded, not retrained); a spend in the
    ledger without an envelope means the member was killed while training: the spend counts and the
    round is declined, never retrained with a fresh noise draw; a decline is returned again.
    """
    r = record.round(index)
    if (r is None or r.state == "reserved") and facts.envelope_written:
        if r is None:  # killed between reserving and recording it
            record = advance(record, index, "reserved")
        return Resume("upload", record, adopt=True)
    if r is None and facts.spend_recorded:
        record, r = advance(record, index, "reserved"), RoundRecord(index, "reserved")
    if r is None:
        return Resume("start", record)
    if r.state in ("declining", "declined"):
        return Resume("decline", record, r.reason)
    if r.state in ("trained", "receipted"):
        return Resume("upload", record)
    if r.state == "reserved":
        return Resume("decline", record, INTERRUPTED, record_decline=True)
    return Resume("refuse", record, f"round {index} is already {r.state}; there is nothing to answer")


# ------------------------------------------------------------------------------------ receipts
def receipt_problem(receipt: Receipt, expected: tuple[str, int, str], envelope_sha256: str | None,
                    head: str | None, spend_differences: list[str] | None) -> str | None:
    """What is wrong with the coordinator's receipt for our upload (signature aside), or None. Pure.

    It must name our federation, round and institution (`expected`) and our envelope (when we hold
    it), carry the ledger head we recorded with the upload (when we recorded one), and sign the spend
    our ledger holds: `spend_differences` lists how they differ (None: our ledger has no spend).
    """
    if (receipt.federation, receipt.round, receipt.institution) != expected or (
            envelope_sha256 is not None and receipt.envelope_sha256 != envelope_sha256):
        return "the receipt does not describe our upload"
    if head is not None and receipt.ledger_head != head:
        return (f"the receipt names ledger head {receipt.ledger_head[:12]}..., not the head {head[:12]}... we "
                "recorded with the upload")
    found = "our ledger has no spend" if spend_differences is None else "; ".join(spend_differences)
    return f"the receipt's spend does not match our ledger ({found})" if found else None


# ------------------------------------------------------------------------------------ settling
def fail(record: MemberRecord, index: int, reason: str, undecryptable: bool, patience: int) -> MemberRecord:
    """`record` with round `index` settled as failed. Pure.

    A member leaves once `patience` sums in a row were refused (`faults.patience`: long enough for
    the fault search to find a culprit, so honest members never give up first); the reason says so.
    """
    failures = failures_after(record, "failed", undecryptable)
    leave = None
    if undecryptable and failures >= patience and record.aborted is None:
        leave = f"{failures} rounds in a row whose sums did not decrypt: leaving the federation (last: {reason})"
    return settle(record, index, "failed", 0, leave or reason, undecryptable, leave=leave)


def too_small(index: int, count: int, min_cohort: int) -> str | None:
    """Why a sum of `count` contributions must not be opened (below our min_cohort), or None. Pure."""
    if count >= min_cohort:
        return None
    return (f"round {index} sum has {count} contribution(s), below min_cohort {min_cohort}: "
            "leaving the federation")
