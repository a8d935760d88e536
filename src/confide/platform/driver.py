"""The round driver: one member's side of a federation, the same for the network agent and the simulation.

`confide join` drives it over HTTP (`CoordinatorClient`), `confide simulate` over in-process calls to
the same coordinator (`confide.platform.simulation`); both give it a member (`RoundMember`) and a
clock. It only ever asks the coordinator: each pass it fetches the federation (long-polling when
there is nothing to do) and does the next thing its own policy allows. Its member keeps key,
adapter and ledger under the state directory and is idempotent per round, so a killed driver
restarts where it was and never trains twice. What was answered, receipted and settled is the
member's round record (`confide.platform.member.engine`), so an upload whose reply was lost is sent
again (the coordinator answers a repeat with the same receipt); the driver's own journal
(`agent.json`) only pins the coordinator's receipt-signing key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from confide.errors import BadInput
from confide.formats import (
    MEMBER_ROUND_ANSWERED,
    MEMBER_ROUND_SETTLED,
    ROUND_ACTIVE,
    ROUND_SUMMED,
    ContributionStatement,
    DeclaredSpend,
    KeyCertificate,
    RevealStatement,
    policy_sha256,
    sha256,
    write_atomically,
)
from confide.identity import unb64
from confide.platform.member_api import Outcome, RoundMember
from confide.platform.messages import FederationView, ReceiptReply, RoundContributions, RoundView
from confide.platform.protocol import Refusal
from confide.platform.secure_sum import RevealRefused
from confide.platform.sum_evidence import SumEvidence
from confide.policies import FederationPolicy, InstitutionPolicy, decide_participation

JOURNAL_VERSION = 1
"""The journal's format; a journal of another version is refused (see CHANGELOG.md for how formats change)."""


class AgentError(BadInput):
    """The agent cannot go on: wrong federation, policy refuses it, or the coordinator misbehaves."""


class CoordinatorRefused(BadInput):
    """The coordinator refused a request: it is wrong or not allowed now (`refusal`, `detail`).

    `status` is the HTTP status it came with, when it came over HTTP (None in process).
    """

    def __init__(self, refusal: Refusal, detail: str, status: int | None = None) -> None:
        self.refusal, self.detail, self.status = refusal, detail, status
        super().__init__(f"coordinator refused ({status if status is not None else refusal.value}): {detail}")


class CoordinatorTransport(Protocol):
    """How a driver reaches the coordinator: HTTP (`CoordinatorClient`) or in-process calls (the simulation).

    Refusals are raised as `CoordinatorRefused`; network failures as the transport's own BadInput.
    """

    def federation(self, after_revision: int | None = None, wait_s: float = 0.0) -> FederationView: ...

    def publish_keys(self, key_id: str, layout_hash: str, public_context: bytes, sealed: dict[str, bytes],
                     n_values: int, certificate: KeyCertificate) -> Any: ...

    def sealed_key(self) -> bytes: ...

    def key_certificate(self) -> KeyCertificate: ...

    def upload(self, round_index: int, envelope: bytes, ledger_head: str | None,
               declared: DeclaredSpend | None, statement: ContributionStatement | None,
               shares: bytes = b"") -> ReceiptReply: ...

    def decline(self, round_index: int, reason: str) -> Any: ...

    def report_undecryptable(self, round_index: int, sum_sha256: str, reason: str) -> Any: ...

    def round_sum(self, round_index: int) -> bytes: ...

    def round_contributions(self, round_index: int) -> RoundContributions: ...

    def unmask_request(self, round_index: int) -> tuple[list[ContributionStatement], dict[str, bytes]]: ...

    def reveal(self, round_index: int, reveal: RevealStatement) -> Any: ...

    def report_applied(self, round_index: int, sum_sha256: str, signature: str) -> Any: ...


def admit(federation: FederationPolicy, policy: InstitutionPolicy) -> None:
    """Check the federation against the institution's policy before anything else; AgentError if it may not join."""
    decision = decide_participation(federation, policy)
    if not decision.allowed:
        raise AgentError(f"{policy.institution_id} may not join {federation.federation_id}: "
                         + "; ".join(decision.reasons))


@dataclass
class AgentReport:
    """What one run of the agent did (rounds by index)."""

    uploaded: list[int] = field(default_factory=list)
    declined: list[int] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    aborted: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    missed: list[int] = field(default_factory=list)
    finished: bool = False
    adapter_dir: str | None = None


class Journal:
    """The agent's own small durable record: the coordinator's receipt-signing key, pinned on first contact.

    Everything about rounds lives in the member's record (`confide.platform.member.engine`), one
    place for what was answered, receipted and settled.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": JOURNAL_VERSION, "coordinator_signing_key": None}
        if path.exists():
            try:
                stored = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise AgentError(f"{path}: unreadable journal ({exc})",
                                 "restore it from a backup, or remove it to pin the coordinator's key again") from None
            version = stored.get("version") if isinstance(stored, dict) else None
            if version != JOURNAL_VERSION:
                raise AgentError(f"{path} has journal format {version!r}; this confide reads format {JOURNAL_VERSION}",
                                 "run the confide that wrote it, or restore the journal it replaced")
            self.data.update(stored)

    def save(self) -> None:
        write_atomically(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())


class RoundDriver:
    """Drives one member through a federation: the one round sequence of `confide join` and `confide simulate`.

    Admission happens before (`admit`); then, from each view of the federation: publish keys (key
    holder), install the sealed key, check the ledger against our newest receipt, settle finished
    rounds in order (decrypt, check the count, apply; or note the failure), answer the open round
    (decide, reserve, train, encrypt, upload, check the receipt; or decline). Only the transport and
    the clock differ between the network and a simulation. `on_settled(round, outcome)` is called
    after each round we settle (the simulation evaluates there).
    """

    def __init__(self, member: RoundMember, client: CoordinatorTransport, federation: FederationPolicy,
                 journal_path: Path, say: Callable[[str], None] = print, wait_s: float = 20.0,
                 clock: Callable[[], float] = time.time, adapter_dir: Path | None = None,
                 on_settled: Callable[[int, Outcome], None] | None = None) -> None:
        self.member, self.client, self.federation = member, client, federation
        self.journal = Journal(journal_path)
        self.say, self.wait_s = say, wait_s
        self.clock, self.adapter_dir, self.on_settled = clock, adapter_dir, on_settled
        self.expected_policy = policy_sha256(federation)
        self.report = AgentReport()
        self.me = federation.member(member.institution_id)
        self._anchored = False
        self._revealed: set[int] = set()
        """Rounds whose reveal this run handed to the coordinator (the member keeps the reveal itself)."""
        self._refused: set[int] = set()
        self._witnessed: set[bytes] = set()
        """Other members' applied statements already compared with ours (signed bytes and signature)."""

    # -- the loop -----------------------------------------------------------------------------
    def run(self, once: bool = False) -> AgentReport:
        """Take part until the federation finishes (or, with `once`, until our next round is settled)."""
        revision: int | None = None
        target: int | None = None
        while True:
            view = self.client.federation(after_revision=revision, wait_s=self.wait_s)
            self._check(view)
            # With `once`, the round we answered is the last: settle it, answer no other.
            acted, answered = self.step(view, answer=not (once and target is not None))
            if target is None and answered is not None:
                target = answered
            if once and target is not None and self._settled(target):
                return self.report
            if view.status == "finished" and all(self._settled(r.index) for r in view.rounds):
                self.report.finished = True
                self.report.adapter_dir = self._save_adapter()
                self.say(f"federation {view.federation_id} finished; adapter saved to {self.report.adapter_dir}")
                return self.report
            revision = None if acted else view.revision

    def step(self, view: FederationView, answer: bool = True) -> tuple[bool, int | None]:
        """Do everything possible now (answering the open round only if `answer`).

        Returns (did anything, the index of the open round if we answered it or had already).
        """
        if view.status == "setup":
            if self.member.is_key_holder():
                bundle = self.member.make_keys()
                self.client.publish_keys(bundle.key_id, bundle.layout_hash, bundle.public_context, bundle.sealed,
                                         bundle.n_values, bundle.certificate)
                self.say(f"published key {bundle.key_id[:8]}... sealed for {len(bundle.sealed)} members")
                return True, None
            return False, None
        acted = False
        if not self.member.has_key():
            installed = self.member.install_key(self.client.sealed_key(), self.client.key_certificate())
            self.say(f"installed federation key {installed[:8]}... (certified by {self.federation.key_holder_id})")
            acted = True
        held = self.member.key_id()
        if view.key_id != held:
            raise AgentError(f"the coordinator names federation key {str(view.key_id)[:8]}..., we hold "
                             f"{str(held)[:8]}...", "its operator replaced the key; do not go on")
        for r in view.rounds:
            # Compared once we have settled the round, and each statement once: views repeat them on
            # every poll of the latest rounds.
            if not self._settled(r.index):
                continue
            unseen = [a for a in r.applied if a.message() + a.signature.encode() not in self._witnessed]
            if unseen:
                problem = self.member.witness_applied(unseen)
                self._witnessed.update(a.message() + a.signature.encode() for a in unseen)
                if problem is not None:
                    self.say(f"round {r.index}: {problem}; leaving the federation")
                    acted = True
        for r in view.rounds:
            if r.status == "unmasking" and self.me.id in self.federation.committee:
                acted = self._reveal(r) or acted
        for r in view.rounds:
            if r.status in ROUND_ACTIVE:
                if not answer:
                    return acted, None
                did, answered = self._answer(r)
                return acted or did, answered
            if not self._settled(r.index):
                acted = self._settle(r) or acted
        return acted, None

    # -- rounds -------------------------------------------------------------------------------
    def _settled(self, round_index: int) -> bool:
        return self.member.round_state(round_index) in MEMBER_ROUND_SETTLED

    def _reveal(self, r: RoundView) -> bool:
        """As a committee member, reveal our share sum for the round's contributors (once; the member
        refuses a second set). A refusal is said once and the round is left to fail."""
        if r.index in self._revealed:
            return False
        try:
            statements, shares = self.client.unmask_request(r.index)
            reveal = self.member.reveal(r.index, statements, shares)
        except (RevealRefused, CoordinatorRefused, BadInput) as exc:
            # A refusal, or a reply that does not parse: said once; the round fails or is unmasked without us.
            if r.index not in self._refused:
                self._refused.add(r.index)
                self.say(f"round {r.index}: no reveal of our mask shares: {exc}")
            return False
        self._tell(f"round {r.index}: our reveal", self.client.reveal, r.index, reveal)
        self._revealed.add(r.index)
        return True

    def _settle(self, r: RoundView) -> bool:
        """Settle a finished round with the member; False if the round is not finished yet."""
        if r.status in ROUND_SUMMED:
            total = self.client.round_sum(r.index)
            contributions = self.client.round_contributions(r.index)
            evidence = SumEvidence(tuple(contributions.statements), r.sum_sha256, r.contributors, r.mine_left_out,
                                   tuple(contributions.reveals))
            outcome = self.member.apply_sum(r.index, total, evidence)
            {"applied": self.report.applied, "failed": self.report.failed}.get(
                outcome.kind, self.report.aborted).append(r.index)
            self.say(f"round {r.index}: {outcome.kind} the sum of {outcome.count} institution(s) {outcome.detail}")
            if outcome.undecryptable:
                # Signed by us: the coordinator cannot decrypt, so members tell it which sums break.
                # Only that it was refused: the detail (decrypted slot values) stays with the members.
                self._tell(f"round {r.index}: the report of the refused sum", self.client.report_undecryptable,
                           r.index, sha256(total), "the sum fails this member's decryption checks")
            if outcome.statement is not None:
                # Shown to the other members, who leave a coordinator that handed them another sum.
                self._tell(f"round {r.index}: our statement of the applied sum", self.client.report_applied,
                           r.index, outcome.statement.sum_sha256, outcome.statement.signature)
        elif r.status == "failed":
            outcome = self.member.note_failed_round(r.index, r.failure or "failed")
            self.report.failed.append(r.index)
            self.say(f"round {r.index}: failed at the coordinator ({r.failure})")
        else:
            return False
        if self.on_settled is not None:
            self.on_settled(r.index, outcome)
        return True

    def _tell(self, what: str, send: Callable[..., Any], *args: Any) -> None:
        """Send the coordinator something it may refuse without harm to us (a report, a statement): a
        refusal is said in one line and the agent goes on; the round is settled already."""
        try:
            send(*args)
        except CoordinatorRefused as exc:
            self.say(f"{what} was refused by the coordinator ({exc.detail})")

    def _answer(self, r: RoundView) -> tuple[bool, int | None]:
        state = self.member.round_state(r.index)
        if state in MEMBER_ROUND_ANSWERED or state in MEMBER_ROUND_SETTLED:
            return False, r.index
        if r.mine is None and self.clock() > r.deadline_at:
            self.member.note_missed(r.index)
            self.report.missed.append(r.index)
            self.say(f"round {r.index}: its deadline passed before we could answer")
            return True, r.index
        contribution = self.member.take_part(r.index)  # idempotent: a resumed round is never retrained
        try:
            if contribution.kind == "upload":
                reply = self.client.upload(r.index, contribution.envelope, contribution.ledger_head,
                                           contribution.declared, contribution.statement, contribution.shares)
                self.member.record_receipt(r.index, reply.to_receipt().to_dict(), contribution.envelope,
                                           self._coordinator_key())
                self.report.uploaded.append(r.index)
                self.say(f"round {r.index}: uploaded {reply.size_bytes} bytes, receipt {reply.signature[:12]}...")
            else:
                self.client.decline(r.index, contribution.reason or "declined")
                self.member.note_declined(r.index)
                self.report.declined.append(r.index)
                self.say(f"round {r.index}: declined ({contribution.reason})")
        except CoordinatorRefused as exc:
            if exc.refusal is not Refusal.CONFLICT:
                raise
            # The round closed (deadline or quorum) while we trained: our answer no longer counts.
            self.member.note_missed(r.index)
            self.report.missed.append(r.index)
            self.say(f"round {r.index}: too late ({exc.detail})")
        return True, r.index

    def _coordinator_key(self) -> bytes:
        return unb64(self.journal.data["coordinator_signing_key"], "coordinator signing key", 32)

    def _check(self, view: FederationView) -> None:
        if view.federation_id != self.federation.federation_id:
            raise AgentError(
                f"the coordinator runs federation {view.federation_id}, not {self.federation.federation_id}")
        if view.policy_sha256 != self.expected_policy:
            raise AgentError("the coordinator's federation file differs from ours",
                             "both sides must use the same federation file; compare them")
        known = self.journal.data["coordinator_signing_key"]
        if known is None:
            self.journal.data["coordinator_signing_key"] = view.coordinator_signing_key
            self.journal.save()
        elif known != view.coordinator_signing_key:
            raise AgentError("the coordinator's receipt-signing key changed since we first joined",
                             "its state directory was replaced; ask its operator")
        if not self._anchored:
            # Before anything is spent: our ledger must hold the head our newest receipt names.
            if view.last_receipt is not None:
                receipt = view.last_receipt.to_receipt().to_dict()
                self.member.check_anchor(receipt)  # first: nothing is written to a rolled-back ledger
                self.member.record_receipt(view.last_receipt.round, receipt, None, self._coordinator_key())
            self._anchored = True

    def _save_adapter(self) -> str:
        out = self.adapter_dir if self.adapter_dir is not None else Path(self.journal.path).parent / "final-adapter"
        return self.member.save_adapter(out)



