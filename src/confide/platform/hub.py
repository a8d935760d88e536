"""The coordinator behind the HTTP service: one `Coordinator`, serialised, plus request checks.

`CoordinatorHub` is what the FastAPI routes call. It holds the durable `Coordinator` (SQLite state,
blobs on disk), applies one transition at a time under a lock, validates uploads and key set-ups
fully before anything is stored (so a refused request changes nothing), and turns the state into
the per-member `FederationView`. Its methods are plain blocking functions; the app runs them in a
worker thread.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from pathlib import Path

from confide.formats import (
    ROUND_PENDING,
    AppliedStatement,
    DeclaredSpend,
    Receipt,
    RevealStatement,
    StatementClaims,
    policy_sha256,
)
from confide.identity import Identity, b64
from confide.platform import protocol
from confide.platform.coordinator import Coordinator
from confide.platform.messages import (
    FederationView,
    KeyCertificateReply,
    KeySetupRequest,
    ReceiptReply,
    RoundContributions,
    RoundView,
    UnmaskRequest,
)
from confide.platform.protocol import ProtocolViolation, Refusal
from confide.policies import FederationPolicy

log = logging.getLogger("confide.service.coordinator")

DEFAULT_MAX_UPLOAD_BYTES = 256 * 1024 * 1024
APPLIED_ROUNDS_SHOWN = 2
"""Views carry members' applied statements of the latest summed rounds only (their size stays bounded)."""
POLICY_HASH_FILE = "federation.sha256"


def coordinator_identity(state_dir: Path) -> Identity:
    """The coordinator's own Ed25519 identity (signs receipts), created on first start."""
    directory = state_dir / "identity"
    if not (directory / "identity.json").exists():
        Identity.generate("coordinator").save(directory)
    return Identity.load(directory)


def _decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolViolation(f"{what} is not valid base64", Refusal.MALFORMED) from None


class CoordinatorHub:
    """The federation's coordinator as the service sees it: thread-safe, validating, viewable."""

    def __init__(
        self,
        federation: FederationPolicy,
        state_dir: Path,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        state_dir.mkdir(parents=True, exist_ok=True)
        self.policy = federation
        self.policy_sha256 = _check_same_federation(state_dir, policy_sha256(federation))
        self.max_upload_bytes = max_upload_bytes
        self.state_dir = state_dir
        initial = protocol.new_federation(
            federation.federation_id, [m.id for m in federation.roster], federation.key_holder_id,
            federation.min_institutions, federation.rounds, federation.round_deadline_s,
            federation.committee, federation.unmask_threshold,
        )
        self.identity = coordinator_identity(state_dir)
        self.coordinator = Coordinator(state_dir, initial, self.identity, federation, max_upload_bytes)
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        """Notified on every state change: in-process drivers long-poll on it (the HTTP app has its own)."""
        self.revision = self._read_revision()

    # -- reading ------------------------------------------------------------------------------
    def _read_revision(self) -> int:
        row = self.coordinator.store.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(row[0])

    @property
    def state(self) -> protocol.FederationState:
        return self.coordinator.state

    def view_for(self, institution: str) -> FederationView:
        """The federation as `institution` may see it: counts, not who else uploaded or why they declined."""
        state = self.state
        setup = state.key_setup
        summed = [r.index for r in state.rounds if r.sum_sha256 is not None]
        shown = set(summed[-APPLIED_ROUNDS_SHOWN:])
        rounds = [
            RoundView(
                index=r.index, status=r.status, opened_at=r.opened_at, deadline_at=r.deadline_at,
                uploads=len(r.uploads), declines=len(r.declined),
                mine="uploaded" if institution in r.uploads else "declined" if institution in r.declined else None,
                contributors=len(r.contributors), sum_sha256=r.sum_sha256, failure=r.failure,
                left_out=len(r.left_out), mine_left_out=institution in r.left_out,
                undecryptable=len(r.undecryptable),
                applied=[AppliedStatement(federation=state.federation_id, round=r.index, institution=member,
                                          sum_sha256=digest, signature=signature)
                         for member, (digest, signature) in sorted(r.applied.items())] if r.index in shown else [],
            )
            for r in state.rounds
        ]
        return FederationView(
            federation_id=state.federation_id, policy_sha256=self.policy_sha256, status=state.status,
            members=state.members, key_holder=state.key_holder, min_institutions=state.min_institutions,
            total_rounds=state.total_rounds, key_id=setup.key_id if setup else None,
            layout_hash=setup.layout_hash if setup else None, n_values=setup.n_values if setup else None,
            coordinator_signing_key=b64(self.identity.public.signing_public), revision=self.revision,
            excluded=dict(state.excluded),
            rounds=rounds, last_receipt=self._last_receipt(institution),
        )

    def _last_receipt(self, institution: str) -> ReceiptReply | None:
        receipt = self.coordinator.last_receipt(institution)
        if receipt is None:
            return None
        upload = next((r.uploads.get(institution) for r in self.state.rounds if r.index == receipt.round), None)
        return _receipt_reply(receipt, upload.size_bytes if upload is not None else 0)

    def public_context(self) -> bytes:
        if self.state.key_setup is None:
            raise ProtocolViolation("keys are not set up yet")
        return self.coordinator.get_blob("public_context.bin")

    def sealed_key(self, institution: str) -> bytes:
        return self.coordinator.sealed_key_for(institution)

    def sum_for(self, round_index: int) -> bytes:
        return self.coordinator.sum_for(round_index)

    def contributions(self, round_index: int) -> RoundContributions:
        with self.lock:
            return RoundContributions(round=round_index, statements=self.coordinator.contributions(round_index),
                                      reveals=self.coordinator.reveals(round_index))

    def unmask_request(self, round_index: int, institution: str) -> UnmaskRequest:
        with self.lock:
            statements, shares = self.coordinator.unmask_request(round_index, institution)
        return UnmaskRequest(round=round_index, statements=statements,
                             shares={sender: b64(blob) for sender, blob in shares.items()})

    def key_certificate(self) -> KeyCertificateReply:
        with self.lock:
            return KeyCertificateReply(certificate=self.coordinator.key_certificate())

    # -- transitions --------------------------------------------------------------------------
    def _mutated(self) -> None:
        self.revision = self._read_revision()
        self.changed.notify_all()

    def wait_for_change(self, after_revision: int, timeout_s: float) -> int:
        """Block until the revision differs from `after_revision` or `timeout_s` passes; return the revision."""
        with self.changed:
            self.changed.wait_for(lambda: self.revision != after_revision, timeout=timeout_s)
            return self.revision

    def publish_keys(self, institution: str, request: KeySetupRequest) -> list[str]:
        """Store the key holder's set-up (the Coordinator checks it: roster, key id, sealed headers)."""
        context_bytes = _decode(request.public_context, "public_context")
        sealed = {member: _decode(text, f"sealed[{member}]") for member, text in request.sealed.items()}
        with self.lock:
            self.coordinator.publish_keys(institution, request.key_id, request.layout_hash, context_bytes, sealed,
                                          request.n_values, request.certificate_signature)
            self._mutated()
        return sorted(sealed)

    def upload(self, institution: str, round_index: int, envelope: bytes, now: float,
               ledger_head: str | None = None, declared: DeclaredSpend | None = None,
               signed: StatementClaims | None = None, shares: bytes = b"") -> ReceiptReply:
        """Validate (in the Coordinator: header, key, layout, every ciphertext) and store an upload.

        `ledger_head` is the hash of the member's newest ledger entry and `declared` its round's DP-SGD spend, both
        checked and signed into the receipt, `signed` what it gives of its contribution statement
        and `shares` its mask shares for the committee (`Coordinator.upload`). Raises
        ProtocolViolation or an aggregation error (both 4xx); nothing is stored then.
        """
        with self.lock:
            receipt = self.coordinator.upload(institution, round_index, envelope, now, ledger_head, declared, signed,
                                              shares)
            self._mutated()
        return _receipt_reply(receipt, len(envelope) + len(shares))

    def report_undecryptable(self, institution: str, round_index: int, sum_sha256: str, reason: str) -> int:
        """Record a member's report that the round's sum does not decrypt; return the round's report count."""
        with self.lock:
            self.coordinator.report_undecryptable(institution, round_index, sum_sha256, reason)
            self._mutated()
            r = next(r for r in self.state.rounds if r.index == round_index)
            return len(r.undecryptable)

    def record_reveal(self, institution: str, round_index: int, reveal: RevealStatement) -> None:
        """Keep a committee member's reveal; the round is summed once enough are in."""
        with self.lock:
            self.coordinator.record_reveal(institution, round_index, reveal)
            self._mutated()

    def record_applied(self, institution: str, round_index: int, sum_sha256: str, signature: str) -> None:
        """Keep a member's signed statement of the sum it applied; the others see it in their views."""
        with self.lock:
            self.coordinator.record_applied(institution, round_index, sum_sha256, signature)
            self._mutated()

    def decline(self, institution: str, round_index: int, reason: str, now: float) -> None:
        with self.lock:
            self.coordinator.decline(institution, round_index, reason, now)
            self._mutated()

    def tick(self, now: float) -> bool:
        """Sum or fail the current round when due, and open the next one. True if anything changed."""
        with self.lock:
            before = self.revision
            state = self.state
            if state.status != "running":
                return False
            current = state.current
            if current is not None and current.status in ROUND_PENDING:
                outcome = self.coordinator.advance(now)
                if outcome != "wait":
                    log.info("round %d: %s", current.index, outcome)
            current = self.state.current
            if current is None or current.status in ("summed", "failed"):
                self.coordinator.open_next_round(now)
                latest = self.state.current
                log.info("federation %s", "finished" if self.state.status == "finished" else
                         f"round {latest.index} open until {latest.deadline_at:.0f}")
            self._mutated()
            return self.revision != before

    def close(self) -> None:
        with self.lock:
            self.coordinator.close()


def _receipt_reply(receipt: Receipt, size_bytes: int) -> ReceiptReply:
    return ReceiptReply(federation=receipt.federation, round=receipt.round, institution=receipt.institution,
                        envelope_sha256=receipt.envelope_sha256, size_bytes=size_bytes, signature=receipt.signature,
                        ledger_head=receipt.ledger_head,
                        spend=receipt.spend.to_dict())


def _check_same_federation(state_dir: Path, digest: str) -> str:
    """Refuse to resume a state directory with a different federation file."""
    path = state_dir / POLICY_HASH_FILE
    if path.exists():
        recorded = path.read_text().strip()
        if recorded != digest:
            raise ProtocolViolation(
                f"{state_dir} holds a federation started from another federation file "
                f"(sha256 {recorded[:12]}..., this one {digest[:12]}...)",
                400,
            )
    else:
        path.write_text(digest + "\n")
    return digest
