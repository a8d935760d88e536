"""The coordinator's side of the round protocol as plain data and pure transitions.

No I/O, no clock, no randomness: every function takes the state and the facts (including `now`)
and returns a new state or raises `ProtocolViolation`. The in-process simulation and the HTTP
coordinator both drive exactly these functions; only where blobs and state are stored differs.

Round life cycle::

    open --(first upload)--> collecting --(quorum reached)--> unmasking --(threshold reveals)--> summed
       \\_______(deadline passes below min_institutions, or too few reveals in time)_______--> failed
    summed --(next round opens)--> closed

In `unmasking` the sum and its contributors are fixed and the committee reveals the sums of the
mask shares it holds for exactly those contributors (`confide.platform.secure_sum`).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Literal

from confide.errors import BadInput
from confide.formats import ROUND_ACTIVE, ROUND_PENDING, FederationStatus, RoundStatus


class Refusal(Enum):
    """Why the protocol refuses a message. Transports say it their way (`service.errors.HTTP_STATUS`)."""

    MALFORMED = "malformed"
    """The message cannot be read (bad encoding, fields that do not go together)."""
    FORBIDDEN = "forbidden"
    """The sender may not do this (excluded, not the key holder, not on the committee)."""
    UNKNOWN = "unknown"
    """No such round or document."""
    CONFLICT = "conflict"
    """Not now: the federation's or the round's state does not allow it."""
    TOO_LARGE = "too_large"
    """More bytes than the federation allows."""
    INVALID = "invalid"
    """Well-formed, but against the federation's rules (another key, layout, spend)."""
    BROKEN = "broken"
    """The coordinator's own logic is at fault (a bug), not the sender."""


class ProtocolViolation(BadInput):
    """A message that the protocol does not allow now, and why (`refusal`)."""

    def __init__(self, message: str, refusal: Refusal = Refusal.CONFLICT) -> None:
        super().__init__(message)
        self.refusal = refusal


@dataclass
class Upload:
    institution: str
    envelope_sha256: str
    size_bytes: int
    received_at: float


@dataclass
class Round:
    index: int
    status: RoundStatus
    opened_at: float
    deadline_at: float
    uploads: dict[str, Upload] = field(default_factory=dict)
    declined: dict[str, str] = field(default_factory=dict)
    sum_sha256: str | None = None
    contributors: list[str] = field(default_factory=list)
    failure: str | None = None
    left_out: list[str] = field(default_factory=list)  # accepted uploads kept out of the sum (see `faults`)
    undecryptable: dict[str, str] = field(default_factory=dict)  # member -> reason, from signed reports
    applied: dict[str, list[str]] = field(default_factory=dict)
    """Member -> [sum_sha256, signature]: its signed statement of the sum it applied (members compare them)."""
    reveals: dict[str, str] = field(default_factory=dict)
    """Committee member -> SHA-256 of its signed reveal for this round's contributor set."""
    unmask_by: float | None = None
    """When the committee's reveals are due (set when the round is summed)."""

    def responded(self) -> set[str]:
        return set(self.uploads) | set(self.declined)


@dataclass
class KeySetup:
    """Published by the key holder: the public CKKS context, one sealed secret per member, the layout."""

    key_id: str
    public_context_sha256: str
    layout_hash: str
    sealed_for: list[str]
    n_values: int | None = None  # adapter values per update; None in set-ups made before it was declared


@dataclass
class FederationState:
    federation_id: str
    members: list[str]
    key_holder: str
    min_institutions: int
    total_rounds: int
    round_deadline_s: float
    committee: list[str] = field(default_factory=list)
    """Who holds shares of every upload's mask, in seat order (from the federation file)."""
    unmask_threshold: int = 1
    status: FederationStatus = "setup"
    key_setup: KeySetup | None = None
    rounds: list[Round] = field(default_factory=list)
    excluded: dict[str, str] = field(default_factory=dict)  # member -> why its uploads are no longer taken
    suspects: list[str] | None = None  # who may be breaking sums (None: no unexplained broken round)
    reviewed_round: int = 0  # rounds up to this one have been taken into account by `faults.review`

    @property
    def current(self) -> Round | None:
        return self.rounds[-1] if self.rounds else None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FederationState":
        data = copy.deepcopy(data)
        key = data.pop("key_setup")
        rounds = [
            Round(**{**r, "uploads": {k: Upload(**u) for k, u in r["uploads"].items()}}) for r in data.pop("rounds")
        ]
        return cls(**data, key_setup=KeySetup(**key) if key else None, rounds=rounds)


def new_federation(
    federation_id: str,
    members: list[str],
    key_holder: str,
    min_institutions: int,
    total_rounds: int,
    round_deadline_s: float,
    committee: list[str],
    unmask_threshold: int,
) -> FederationState:
    """The state of a federation that has been created but whose keys are not set up yet."""
    if key_holder not in members:
        raise ProtocolViolation(f"key holder {key_holder!r} is not a member", Refusal.MALFORMED)
    if not committee or not set(committee) <= set(members) or not 1 <= unmask_threshold <= len(committee):
        raise ProtocolViolation("the committee must be members, with a threshold it can reach", Refusal.MALFORMED)
    return FederationState(federation_id, list(members), key_holder, min_institutions, total_rounds, round_deadline_s,
                           list(committee), unmask_threshold)


def require_member(state: FederationState, institution: str) -> None:
    """Refuse anyone not on the roster (forbidden)."""
    if institution not in state.members:
        raise ProtocolViolation(f"{institution!r} is not a member of {state.federation_id}", Refusal.FORBIDDEN)


def require_key_holder(state: FederationState, by: str) -> None:
    """Refuse a key set-up from anyone but the federation's key holder (forbidden)."""
    require_member(state, by)
    if by != state.key_holder:
        raise ProtocolViolation(f"only the key holder ({state.key_holder}) publishes keys", Refusal.FORBIDDEN)


def publish_keys(state: FederationState, by: str, setup: KeySetup) -> FederationState:
    """The key holder publishes the key set-up. Only once, only by the key holder, sealed for every member."""
    require_key_holder(state, by)
    if state.key_setup is not None:
        if state.key_setup == setup:
            return state  # an idempotent retry after a lost reply
        raise ProtocolViolation("keys are already published for this federation")
    missing = sorted(set(state.members) - set(setup.sealed_for))
    if missing:
        raise ProtocolViolation(f"no sealed key for {', '.join(missing)}", Refusal.MALFORMED)
    new = copy.deepcopy(state)
    new.key_setup = setup
    new.status = "running"
    return new


def open_next_round(state: FederationState, now: float) -> FederationState:
    """Close the finished round (if any) and open the next; mark the federation finished after the last."""
    if state.status == "setup":
        raise ProtocolViolation("keys are not set up yet")
    if state.status == "finished":
        raise ProtocolViolation("the federation has finished")
    current = state.current
    if current is not None and current.status in ROUND_PENDING:
        raise ProtocolViolation(f"round {current.index} is still {current.status}")
    new = copy.deepcopy(state)
    if new.current is not None and new.current.status == "summed":
        new.current.status = "closed"
    if len(new.rounds) >= new.total_rounds:
        new.status = "finished"
        return new
    index = len(new.rounds) + 1
    new.rounds.append(Round(index, "open", now, now + new.round_deadline_s))
    return new


def _open_round(state: FederationState, round_index: int, now: float) -> Round:
    current = state.current
    if current is None or current.index != round_index:
        raise ProtocolViolation(f"round {round_index} is not the current round")
    if current.status not in ROUND_ACTIVE:
        raise ProtocolViolation(f"round {round_index} is {current.status}, not accepting contributions")
    if now > current.deadline_at:
        raise ProtocolViolation(f"round {round_index} passed its deadline")
    return current


def accept_upload(
    state: FederationState, institution: str, round_index: int, key_id: str, layout_hash: str,
    envelope_sha256: str, size_bytes: int, now: float,
) -> FederationState:
    """Record an upload whose envelope header was already validated.

    A repeated upload with the same envelope hash is accepted again without change (a retry); a
    different envelope for a round the institution already uploaded to is refused (no double
    counting).
    """
    require_member(state, institution)
    if state.key_setup is None:
        raise ProtocolViolation("keys are not set up yet")
    current = _open_round(state, round_index, now)
    if key_id != state.key_setup.key_id:
        raise ProtocolViolation(
            f"envelope is under key {key_id}, the federation's key is {state.key_setup.key_id}", Refusal.INVALID)
    if layout_hash != state.key_setup.layout_hash:
        raise ProtocolViolation("envelope adapter layout differs from the federation's", Refusal.INVALID)
    if institution in state.excluded:
        raise ProtocolViolation(f"{institution} is excluded from {state.federation_id}: "
                                f"{state.excluded[institution]}", Refusal.FORBIDDEN)
    previous = current.uploads.get(institution)
    if previous is not None:
        if previous.envelope_sha256 == envelope_sha256:
            return state
        raise ProtocolViolation(f"{institution} already uploaded a different update for round {round_index}")
    if institution in current.declined:
        raise ProtocolViolation(f"{institution} declined round {round_index}")
    new = copy.deepcopy(state)
    new.current.uploads[institution] = Upload(institution, envelope_sha256, size_bytes, now)
    new.current.status = "collecting"
    return new


def record_decline(
    state: FederationState, institution: str, round_index: int, reason: str, now: float
) -> FederationState:
    """An institution says it will not take part in this round (its reason is kept)."""
    require_member(state, institution)
    current = _open_round(state, round_index, now)
    if institution in current.uploads:
        raise ProtocolViolation(f"{institution} already uploaded for round {round_index}")
    if current.declined.get(institution) == reason:
        return state
    new = copy.deepcopy(state)
    new.current.declined[institution] = reason
    return new


def sum_decision(state: FederationState, now: float) -> Literal["wait", "sum", "fail"]:
    """What the coordinator should do with the current round now.

    Sum as soon as every member has answered (uploaded or declined) with at least `min_institutions`
    uploads, or once the deadline passes with enough of them; fail when it cannot reach quorum
    (everyone answered, or the deadline passed, with too few uploads).
    """
    current = state.current
    if current is None or current.status not in ROUND_ACTIVE:
        return "wait"
    enough = len(current.uploads) >= state.min_institutions
    everyone = current.responded() >= set(state.members) - set(state.excluded)
    if everyone or now > current.deadline_at:
        return "sum" if enough else "fail"
    return "wait"


def record_sum(state: FederationState, round_index: int, sum_sha256: str, contributors: list[str],
               now: float, left_out: list[str] = ()) -> FederationState:
    """The coordinator added the current round's uploads: remember who is in the sum and its hash, and
    wait for the committee's reveals (until one round deadline from now).

    `left_out` are accepted uploads kept out of this sum while a member that breaks sums is looked
    for (see `faults.leave_out`); every accepted upload is either a contributor or left out.
    """
    current = state.current
    if current is None or current.index != round_index or current.status not in ROUND_ACTIVE:
        raise ProtocolViolation(f"round {round_index} cannot be summed now")
    if sorted(list(contributors) + list(left_out)) != sorted(current.uploads) or set(contributors) & set(left_out):
        raise ProtocolViolation("the sum must cover exactly the accepted uploads not left out", Refusal.BROKEN)
    if len(contributors) < state.min_institutions:
        raise ProtocolViolation(f"only {len(contributors)} uploads, min_institutions is {state.min_institutions}")
    new = copy.deepcopy(state)
    new.current.status = "unmasking"
    new.current.unmask_by = now + state.round_deadline_s
    new.current.sum_sha256 = sum_sha256
    new.current.contributors = sorted(contributors)
    new.current.left_out = sorted(left_out)
    return new


def record_reveal(state: FederationState, institution: str, round_index: int, reveal_sha256: str) -> FederationState:
    """A committee member's signed reveal for the round's contributor set (checked by the caller).
    Once per member; the round is summed when `unmask_quorum` of the committee members not excluded
    are in. Later ones are kept too: members check every reveal they get against the others."""
    require_member(state, institution)
    if institution not in state.committee:
        raise ProtocolViolation(f"{institution} is not on the committee", Refusal.FORBIDDEN)
    r = next((x for x in state.rounds if x.index == round_index), None)
    if r is None or r.sum_sha256 is None:
        raise ProtocolViolation(f"round {round_index} has no sum to unmask", Refusal.CONFLICT if r else Refusal.UNKNOWN)
    if institution in r.reveals:
        if r.reveals[institution] == reveal_sha256:
            return state
        raise ProtocolViolation(f"{institution} already revealed for round {round_index}")
    new = copy.deepcopy(state)
    target = next(x for x in new.rounds if x.index == round_index)
    target.reveals[institution] = reveal_sha256
    active = [m for m in state.committee if m not in state.excluded]  # excluded members no longer answer
    if target.status == "unmasking" and len(target.reveals) >= unmask_quorum(len(active), state.unmask_threshold):
        target.status = "summed"
    return new


def unmask_quorum(committee: int, threshold: int) -> int:
    """Reveals that sum a round at once: two beyond the threshold (so one wrong reveal is outvoted
    rather than taken for a broken upload; `secagg.reconstruct`), or the whole committee."""
    return min(committee, threshold + 2)


def unmask_decision(state: FederationState, now: float) -> Literal["wait", "sum", "fail"]:
    """What the coordinator does with a round that waits for reveals: past its time, sum it with the
    threshold of reveals (the rest of the committee dropped out) or fail it below."""
    current = state.current
    if current is None or current.status != "unmasking" or current.unmask_by is None or now <= current.unmask_by:
        return "wait"
    return "sum" if len(current.reveals) >= state.unmask_threshold else "fail"


def close_unmasking(state: FederationState) -> FederationState:
    """The round's reveals are in as far as they will come (`unmask_decision` said sum)."""
    new = copy.deepcopy(state)
    new.current.status = "summed"
    return new


def record_undecryptable(state: FederationState, institution: str, round_index: int, sum_sha256: str,
                         reason: str) -> FederationState:
    """A member reports that the round's published sum does not decrypt (its count or padding
    check failed). Only a member's report of the sum actually published counts; once per member."""
    require_member(state, institution)
    rounds = {r.index: r for r in state.rounds}
    r = rounds.get(round_index)
    if r is None or r.sum_sha256 is None:
        raise ProtocolViolation(f"round {round_index} has no sum to report on",
                                Refusal.CONFLICT if r else Refusal.UNKNOWN)
    if sum_sha256 != r.sum_sha256:
        raise ProtocolViolation(f"round {round_index}'s sum is {r.sum_sha256[:12]}..., not the one reported")
    if institution in r.undecryptable:
        return state
    new = copy.deepcopy(state)
    next(x for x in new.rounds if x.index == round_index).undecryptable[institution] = reason
    return new


def record_applied(state: FederationState, institution: str, round_index: int, sum_sha256: str,
                   signature: str) -> FederationState:
    """A member's signed statement of the sum it applied in a summed round (kept to show the other
    members, who refuse to go on with a coordinator that handed out different sums). Once per member."""
    require_member(state, institution)
    r = next((x for x in state.rounds if x.index == round_index), None)
    if r is None or r.sum_sha256 is None:
        raise ProtocolViolation(f"round {round_index} has no sum to have applied",
                                Refusal.CONFLICT if r else Refusal.UNKNOWN)
    if sum_sha256 != r.sum_sha256:
        raise ProtocolViolation(f"round {round_index}'s sum is {r.sum_sha256[:12]}..., not the one stated")
    if institution in r.applied:
        if r.applied[institution] == [sum_sha256, signature]:
            return state
        raise ProtocolViolation(f"{institution} already stated the sum it applied in round {round_index}")
    new = copy.deepcopy(state)
    next(x for x in new.rounds if x.index == round_index).applied[institution] = [sum_sha256, signature]
    return new


def fail_round(state: FederationState, round_index: int, reason: str) -> FederationState:
    """Mark the current round failed (no sum is published; members keep their adapters)."""
    current = state.current
    if current is None or current.index != round_index or current.status not in ROUND_PENDING:
        raise ProtocolViolation(f"round {round_index} cannot fail now")
    new = copy.deepcopy(state)
    new.current.status = "failed"
    new.current.failure = reason
    return new
