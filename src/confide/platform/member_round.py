"""A member's rounds as one durable record: explicit states, pure transitions, one file.

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
twice (`confide.platform.member` says how for each state). The record is `member.json`, written
whole and atomically on every transition; files of format 2 (outcomes only) read as settled rounds.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from confide.errors import BadInput
from confide.formats import MEMBER_ROUND_SETTLED, MemberRoundState

MEMBER_RECORD_VERSION = 3

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


class MemberRecordError(BadInput):
    """The member's record is unreadable, from a newer confide, or asked for a transition it does not allow."""


@dataclass(frozen=True)
class RoundRecord:
    """One round as this member has got through it."""

    round: int
    state: MemberRoundState
    reason: str = ""
    """Why we declined, or what the settled outcome says (the failure, the abort)."""
    envelope_sha256: str | None = None
    ledger_seq: int | None = None
    ledger_head: str | None = None
    """Our ledger's head once the upload was recorded: what the coordinator signs into the receipt."""
    receipt: dict | None = None
    count: int = 0
    """Contributions in the sum we settled with."""
    undecryptable: bool = False

    @property
    def head(self) -> tuple[int, str] | None:
        return (self.ledger_seq, self.ledger_head) if self.ledger_seq is not None and self.ledger_head else None

    @property
    def settled(self) -> bool:
        return self.state in MEMBER_ROUND_SETTLED


@dataclass(frozen=True)
class MemberRecord:
    """Everything a member must remember about one federation, besides its ledger and its files."""

    dataset_id: str
    synced_round: int = 0
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
        return {"version": MEMBER_RECORD_VERSION, "dataset_id": self.dataset_id, "synced_round": self.synced_round,
                "aborted": self.aborted, "consecutive_failures": self.consecutive_failures,
                "rounds": {str(i): dataclasses.asdict(r) for i, r in sorted(self.rounds.items())}}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "MemberRecord":
        """Read a record (formats 1-3; 1 and 2 kept only settled outcomes). MemberRecordError if unusable."""
        try:
            version = int(data.get("version", 1))
            if version > MEMBER_RECORD_VERSION:
                raise MemberRecordError(f"{where} was written by a newer confide (format {version})",
                                        "run that version, or restore the record it replaced")
            rounds = {}
            for key, entry in (data.get("rounds") or {}).items():
                if version < 3:  # an outcome {kind, count, detail, undecryptable}
                    entry = {"round": int(key), "state": entry["kind"], "reason": entry.get("detail", ""),
                             "count": entry.get("count", 0), "undecryptable": entry.get("undecryptable", False)}
                r = RoundRecord(**entry)
                if r.state not in TRANSITIONS or r.round != int(key):
                    raise ValueError(f"round {key}: state {r.state!r}")
                rounds[r.round] = r
            return cls(str(data["dataset_id"]) if data.get("dataset_id") is not None else "",
                       int(data.get("synced_round", 0)), data.get("aborted"),
                       int(data.get("consecutive_failures", 0)), rounds)
        except MemberRecordError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise MemberRecordError(f"{where} is damaged ({exc})",
                                    "restore the federation's state directory from a backup") from None


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

    `applied` and `failed` move `synced_round` to `index` when it is the next round (a failed
    round's adapter is the previous one, carried forward). `applied` resets the run of
    undecryptable sums, an undecryptable failure extends it. `leave` records why the member
    leaves the federation. Raises MemberRecordError for a transition the round's state forbids.
    """
    new = advance(record, index, state, count=count, reason=reason, undecryptable=undecryptable)
    synced = index if state in ("applied", "failed") and index == record.synced_round + 1 else record.synced_round
    failures = failures_after(record, state, undecryptable)
    return dataclasses.replace(new, synced_round=synced, consecutive_failures=failures,
                               aborted=record.aborted or leave)


def leave_federation(record: MemberRecord, reason: str) -> MemberRecord:
    """`record` of a member that leaves the federation for `reason` (the first reason stays). Pure."""
    return dataclasses.replace(record, aborted=record.aborted or reason)
