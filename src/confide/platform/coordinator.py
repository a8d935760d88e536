"""The coordinator: the round protocol plus durable state, ciphertext blobs and the encrypted sum.

The protocol rules live in `protocol` as pure functions; this class only loads the state, applies a
transition, and makes the result durable (SQLite for state, content-addressed files for blobs). The
in-process simulation and the HTTP service both use it, so a federation behaves the same either way.

What the coordinator holds: the public CKKS context (loading refuses one with a secret key), the
envelopes members upload, and the encrypted sums. It never holds a secret key or a plaintext update.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import sqlite3
import time
from pathlib import Path

from confide.aggregation.envelope import check_envelope, read_header, sum_envelopes
from confide.aggregation.errors import AggregationError
from confide.aggregation.integrity import tag_problem
from confide.aggregation.keys import PublicContext
from confide.aggregation.sealing import read_sealed_header
from confide.aggregation.secagg import shares_from_bytes, unpack_bundle
from confide.aggregation.wire import read_seeds
from confide.errors import BadInput
from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    DeclaredSpend,
    KeyCertificate,
    Receipt,
    RevealStatement,
    StatementClaims,
    contributors_sha256,
    policy_sha256,
    sha256,
    write_atomically,
)
from confide.identity import Identity, b64, roster_identities
from confide.platform import faults, protocol
from confide.platform.protocol import FederationState, KeySetup, ProtocolViolation, Refusal
from confide.platform.secure_sum import bundle_problem, fewest_unmasked, share_digests
from confide.policies.federation import FederationPolicy
from confide.privacy.declared import declared_spend_problems

MAX_ENVELOPE_BYTES = 256 * 1024 * 1024
STATE_FORMAT_VERSION = 1
"""`PRAGMA user_version` of state.sqlite; a file of another version is refused (CHANGELOG.md: how formats change)."""

__all__ = ["Coordinator", "Receipt", "StateFormatError", "StateStore", "remove_leftover_temporaries", "sha256",
           "write_atomically"]

log = logging.getLogger("confide.coordinator")


def remove_leftover_temporaries(directory: Path) -> list[Path]:
    """Delete the `.<name>.<pid>.tmp` files that `write_atomically` leaves in `directory` when its
    writer dies between writing and renaming. Only files of processes that no longer run are
    removed (a live writer may be about to rename its file). Returns what was removed."""
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    for path in directory.glob(".*.tmp"):
        pid = path.name[: -len(".tmp")].rpartition(".")[2]
        if not (pid.isascii() and pid.isdigit()) or _process_runs(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


class StateFormatError(BadInput):
    """The --state directory holds a state file this confide does not read (another format, or not SQLite)."""


class StateStore:
    """Coordinator state in SQLite: the federation state as one JSON snapshot, plus an event log.

    Each transition is written in one transaction, so a crash leaves the previous or the next state,
    never a mix.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._open(path)
        except BaseException:
            self.db.close()
            raise

    def _open(self, path: Path) -> None:
        """Create the schema in a new file, or check that an existing one is of STATE_FORMAT_VERSION."""
        try:
            version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StateFormatError(f"{path}: not a coordinator state file ({exc})",
                                   "give --state a fresh directory, or restore the state file from a backup") from None
        if tables and version != STATE_FORMAT_VERSION:
            raise StateFormatError(f"{path} has state format {version}; this confide reads format "
                                   f"{STATE_FORMAT_VERSION}", "run the confide that wrote it, or give --state a "
                                   "fresh directory to start the federation anew")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        if tables:
            return
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("CREATE TABLE federation (id TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL)")
            self.db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, time REAL, kind TEXT, "
                            "detail TEXT)")
            self.db.execute(
                "CREATE TABLE receipts (round INTEGER, institution TEXT, envelope_sha256 TEXT, signature TEXT, "
                "ledger_head TEXT NOT NULL, spend TEXT NOT NULL, "
                "PRIMARY KEY (round, institution))")
            self.db.execute(f"PRAGMA user_version = {STATE_FORMAT_VERSION}")

    def load(self, federation_id: str) -> FederationState | None:
        row = self.db.execute("SELECT state FROM federation WHERE id = ?", (federation_id,)).fetchone()
        return FederationState.from_dict(json.loads(row[0])) if row else None

    def save(self, state: FederationState, kind: str, detail: dict, receipt: Receipt | None = None) -> None:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO federation (id, state, updated) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET state = excluded.state, updated = excluded.updated",
                (state.federation_id, json.dumps(state.to_dict()), now),
            )
            self.db.execute("INSERT INTO events (time, kind, detail) VALUES (?, ?, ?)", (now, kind, json.dumps(detail)))
            if receipt is not None:
                self.db.execute(
                    "INSERT OR REPLACE INTO receipts (round, institution, envelope_sha256, signature, "
                    "ledger_head, spend) VALUES (?, ?, ?, ?, ?, ?)",
                    (receipt.round, receipt.institution, receipt.envelope_sha256, receipt.signature,
                     receipt.ledger_head, json.dumps(receipt.spend.to_dict())),
                )

    _RECEIPT_COLUMNS = ("round", "institution", "envelope_sha256", "signature", "ledger_head", "spend")

    def receipts(self, institution: str | None = None) -> list[dict]:
        """Every stored receipt (of `institution` only, if given), oldest round first, without `federation`."""
        query = f"SELECT {', '.join(self._RECEIPT_COLUMNS)} FROM receipts"
        args: tuple = ()
        if institution is not None:
            query, args = query + " WHERE institution = ?", (institution,)
        rows = self.db.execute(query + " ORDER BY round", args)
        receipts = []
        for row in rows:
            receipt = dict(zip(self._RECEIPT_COLUMNS, row))
            receipt["spend"] = json.loads(receipt["spend"])
            receipts.append(receipt)
        return receipts

    def write_receipts(self, out: Path) -> int:
        """Write every stored receipt to `out`, one JSON line each with its federation (`export_receipts`)."""
        row = self.db.execute("SELECT id FROM federation").fetchone()
        receipts = [dict(r, federation=row[0]) for r in self.receipts()] if row else []
        write_atomically(out, "".join(json.dumps(r) + "\n" for r in receipts).encode())
        return len(receipts)

    def close(self) -> None:
        self.db.close()


def export_receipts(state_dir: Path, out: Path) -> int:
    """Write every receipt the coordinator under `state_dir` signed, one JSON line each with its
    federation: the export `confide audit --receipts` reads (verified with the coordinator's public key,
    `state_dir/identity/identity.json`). Safe while the coordinator runs (SQLite readers do not block
    it). Returns how many; raises StateFormatError for a state file of another format, BadInput when
    there is no coordinator state there."""
    path = state_dir / "state.sqlite"
    if not path.is_file():
        raise BadInput(f"{path}: no coordinator state here", "pass the --state directory the coordinator ran with")
    store = StateStore(path)
    try:
        return store.write_receipts(out)
    finally:
        store.close()


class Coordinator:
    """Applies protocol transitions and keeps their results durable under `state_dir`."""

    def __init__(
        self, state_dir: Path, initial: FederationState, identity: Identity, federation: FederationPolicy,
        max_upload_bytes: int = MAX_ENVELOPE_BYTES,
    ) -> None:
        self.dir = state_dir
        self.federation = federation
        """What every upload's declared DP-SGD spend is checked against before it is signed."""
        self.max_upload_bytes = max_upload_bytes
        self.blobs = state_dir / "blobs"
        for leftover in remove_leftover_temporaries(self.blobs):
            log.info("removed %s, left by a write that crashed", leftover.name)
        self.store = StateStore(state_dir / "state.sqlite")
        self.identity = identity
        loaded = self.store.load(initial.federation_id)
        self.state = loaded if loaded is not None else initial
        if loaded is None:
            self.store.save(self.state, "created", {"members": initial.members})
        self._context: PublicContext | None = None
        self.roster = roster_identities(federation.roster)
        """Members' public keys: what their signed statements and the key holder's certificate verify under."""

    # -- blobs -------------------------------------------------------------------------------
    def blob_path(self, name: str) -> Path:
        return self.blobs / name

    def _put_blob(self, name: str, data: bytes) -> None:
        write_atomically(self.blob_path(name), data)

    def get_blob(self, name: str) -> bytes:
        path = self.blob_path(name)
        if not path.exists():
            raise ProtocolViolation(f"no such blob {name}", Refusal.UNKNOWN)
        return path.read_bytes()

    @property
    def public_context(self) -> PublicContext:
        if self._context is None:
            self._context = PublicContext.from_bytes(self.get_blob("public_context.bin"))
        return self._context

    # -- transitions -------------------------------------------------------------------------
    def publish_keys(
        self, by: str, key_id: str, layout_hash: str, public_context: bytes, sealed: dict[str, bytes],
        n_values: int | None, certificate_signature: str,
    ) -> None:
        """Check and store the key set-up: the public context, exactly one sealed key per member, and
        the key holder's signed certificate of them (`KeyCertificate`), which members verify.

        `n_values` (the adapter layout's size) lets every upload's value count be checked on arrival.

        Refused (state unchanged): a caller other than the key holder, sealed keys for anything but
        exactly the roster, a context that holds a secret key or is for another key id, a sealed
        blob addressed to someone else or under another key, a certificate the key holder's roster
        key did not sign.
        """
        protocol.require_key_holder(self.state, by)  # before anything else is read
        members = set(self.state.members)
        if set(sealed) != members:  # also keeps caller-chosen names out of blob file names
            raise ProtocolViolation("sealed keys must be given for exactly the roster: "
                                    f"missing {sorted(members - set(sealed))}, unknown {sorted(set(sealed) - members)}",
                                    Refusal.MALFORMED)
        context = PublicContext.from_bytes(public_context)  # refuses secret key material
        if context.key_id != key_id:
            raise ProtocolViolation(f"public context is for key {context.key_id}, not {key_id}", Refusal.INVALID)
        for member, blob in sealed.items():
            header = read_sealed_header(blob)
            if header.recipient_id != member or header.key_id != key_id:
                raise ProtocolViolation(
                    f"sealed[{member}] is sealed to {header.recipient_id!r} under key {header.key_id!r}",
                    Refusal.INVALID)
        if n_values is not None and not (isinstance(n_values, int) and n_values >= 1):
            raise ProtocolViolation(f"n_values must be a positive whole number, not {n_values!r}", Refusal.INVALID)
        certificate = KeyCertificate(
            federation=self.state.federation_id, federation_sha256=policy_sha256(self.federation), key_holder=by,
            key_id=key_id,
            params=context.params.model_dump(mode="json"), public_context_sha256=sha256(public_context),
            layout_hash=layout_hash, n_values=n_values,
            sealed_sha256={m: sha256(blob) for m, blob in sorted(sealed.items())}, signature=certificate_signature)
        if not self._signed_by(by, certificate):
            raise ProtocolViolation("the key certificate does not verify under the key holder's roster key",
                                    Refusal.INVALID)
        setup = KeySetup(key_id, sha256(public_context), layout_hash, sorted(sealed), n_values)
        new = protocol.publish_keys(self.state, by, setup)
        if new is self.state:
            return
        self._put_blob("public_context.bin", public_context)
        for member, blob in sealed.items():
            self._put_blob(f"sealed-{member}.bin", blob)
        self._put_blob("key-certificate.json", certificate.model_dump_json().encode())
        self.store.save(new, "keys", {"by": by, "key_id": key_id})
        self.state = new

    def key_certificate(self) -> KeyCertificate:
        """The key holder's signed certificate of the federation key (409 before keys are set up)."""
        if self.state.key_setup is None:
            raise ProtocolViolation("keys are not set up yet")
        return KeyCertificate.model_validate_json(self.get_blob("key-certificate.json"))

    def sealed_key_for(self, member: str) -> bytes:
        protocol.require_member(self.state, member)
        if self.state.key_setup is None:
            raise ProtocolViolation("keys are not set up yet")
        return self.get_blob(f"sealed-{member}.bin")

    def open_next_round(self, now: float) -> None:
        new = protocol.open_next_round(self.state, now)
        kind = "finished" if new.status == "finished" else "round_opened"
        self.store.save(new, kind, {"round": new.current.index if new.current else None})
        self.state = new

    def upload(self, institution: str, round_index: int, envelope: bytes, now: float,
               ledger_head: str | None = None, declared: DeclaredSpend | None = None,
               signed: StatementClaims | None = None, shares: bytes = b"") -> Receipt:
        """Validate an upload completely, store it, record it; return a signed receipt.

        `shares` is the upload's mask shares, one sealed to each committee member (`secure_sum`):
        required, checked for one blob per seat with this upload's label, named in the statement.

        `ledger_head` is the hash of the member's newest ledger entry as it uploads: required; the
        receipt signs it, so the member's ledger is anchored outside the member's disk (its position
        is not sent: it would count the dataset's entries in other federations). `declared` is the round's
        DP-SGD spend as the member recorded it: required, checked against the federation file
        (accountant, delta, steps, noise floor, per-round cap) and signed too. `signed` is the
        integrity tags, min_cohort and signature of the member's contribution statement of this upload
        (`ContributionStatement`, which names the envelope's digest, seed and key): required, it
        must verify under the member's roster key; it is handed to the members with the round's sum.
        A repeated upload (a reply lost on the way) gets the receipt first signed for it.

        Checked before anything is stored: size, envelope header (key id, layout, slot count, digest),
        that it is one member's single update (not a sum that would inflate the count slot), the
        protocol (member, round open, no second different upload), and every ciphertext's framing
        (garbage is refused now, not discovered when summing). Raises ProtocolViolation or an
        aggregation error (4xx); in every refused case the state is unchanged.
        """
        if len(envelope) > self.max_upload_bytes:
            raise ProtocolViolation(f"upload of {len(envelope)} bytes exceeds {self.max_upload_bytes}",
                                    Refusal.TOO_LARGE)
        setup = self.state.key_setup
        if setup is None:
            raise ProtocolViolation("keys are not set up yet")
        header = read_header(envelope, expected_key_id=setup.key_id, expected_layout_hash=setup.layout_hash,
                             expected_slots=self.public_context.params.slots, max_bytes=self.max_upload_bytes)
        if header.kind != "update" or header.n_summed != 1:
            raise ProtocolViolation("only single update envelopes may be uploaded", Refusal.INVALID)
        if setup.n_values is not None and header.n_values != setup.n_values:
            # Caught now, not when summing: a wrong count would otherwise fail the round for everyone.
            raise ProtocolViolation(f"envelope holds {header.n_values} values; the federation's adapter has "
                                    f"{setup.n_values} (check that this member runs the federation's model)",
                                    Refusal.INVALID)
        if ledger_head is None:
            raise ProtocolViolation("the upload does not name the member's ledger head (ledger_head)",
                                    Refusal.INVALID)
        if declared is None:
            raise ProtocolViolation("the upload does not declare its round's DP-SGD spend (noise_multiplier, "
                                    "sample_rate, steps, clipping_norm, delta, accountant, spend_hash)",
                                    Refusal.INVALID)
        problems = declared_spend_problems(self.federation, declared)
        if problems:
            raise ProtocolViolation("the declared spend breaks the federation file: " + "; ".join(problems),
                                    Refusal.INVALID)
        digest = sha256(envelope)
        problem = bundle_problem(self.federation, header.key_id, round_index, institution, shares)
        if problem is not None:
            raise ProtocolViolation(f"the upload's mask shares: {problem}", Refusal.INVALID)
        statement = self._statement(signed, institution, round_index, envelope, header, digest, shares)
        new = protocol.accept_upload(self.state, institution, round_index, header.key_id, header.layout_hash, digest,
                                     len(envelope) + len(shares), now)
        if new is self.state:
            stored = self.receipt_for(institution, round_index)
            if stored is not None and stored.envelope_sha256 == digest:
                if stored.spend != declared:
                    raise ProtocolViolation("this envelope was accepted with another declared spend")
                return stored
        receipt = self._sign(Receipt(self.state.federation_id, round_index, institution, digest,
                                     ledger_head=ledger_head, spend=declared))
        if new is not self.state:
            check_envelope(self.public_context, envelope)  # what summing it would check, without a sum
            self._put_blob(f"upload-r{round_index}-{institution}.bin", envelope)
            self._put_blob(f"upload-r{round_index}-{institution}.shares", shares)
            self._put_blob(f"upload-r{round_index}-{institution}.statement.json", statement.model_dump_json().encode())
            self.store.save(new, "upload", {"round": round_index, "institution": institution, "sha256": digest},
                            receipt)
            self.state = new
        return receipt

    def _statement(self, signed: StatementClaims | None, institution: str, round_index: int,
                   envelope: bytes, header, digest: str, shares: bytes) -> ContributionStatement:
        """The member's contribution statement of this upload; refused if missing or not signed by the member."""
        if signed is None:
            raise ProtocolViolation("the upload comes without its signed contribution statement (tags, "
                                    "min_cohort, statement_signature)", Refusal.INVALID)
        try:
            statement = ContributionStatement(
                federation=self.state.federation_id, round=round_index, institution=institution, key_id=header.key_id,
                envelope_sha256=digest, seed=read_seeds(envelope, header)[0].hex(), tags=tuple(signed.tags),
                min_cohort=signed.min_cohort, shares=share_digests(self.federation, shares),
                previous_sum=signed.previous_sum, signature=signed.signature)
        except ValueError as exc:
            raise ProtocolViolation(f"malformed contribution statement: {exc.errors()[0]['msg']}",
                                    Refusal.INVALID) from None
        if statement.min_cohort > self.federation.min_institutions:
            # No admitted member asks this (`policy explain`), and a sum it would veto could not leave anyone out.
            raise ProtocolViolation(f"min_cohort {statement.min_cohort} exceeds the federation's min_institutions "
                                    f"{self.federation.min_institutions}: this member's policy does not admit it",
                                    Refusal.INVALID)
        problem = tag_problem(statement.tags, self.public_context)
        if problem is not None:  # every member would refuse every sum holding it: refused now, at the door
            raise ProtocolViolation(f"the contribution statement: {problem}", Refusal.INVALID)
        if not self._signed_by(institution, statement):
            raise ProtocolViolation(f"the contribution statement does not verify under {institution}'s roster key",
                                    Refusal.INVALID)
        return statement

    def _signed_by(self, institution: str, document) -> bool:
        protocol.require_member(self.state, institution)
        return self.roster[institution].signed(document)

    def contributions(self, round_index: int) -> list[ContributionStatement]:
        """The signed statements of the uploads in round `round_index`'s sum, in the sum's order."""
        r = next((x for x in self.state.rounds if x.index == round_index), None)
        if r is None or r.sum_sha256 is None:
            raise ProtocolViolation(f"round {round_index} has no sum", Refusal.CONFLICT if r else Refusal.UNKNOWN)
        return [self._statement_of(round_index, i) for i in r.contributors]

    def unmask_request(self, round_index: int, member: str) -> tuple[list[ContributionStatement], dict[str, bytes]]:
        """What committee member `member` needs to reveal for round `round_index`: the contributors'
        statements and the share each sealed to it."""
        if member not in self.state.committee:
            raise ProtocolViolation(f"{member} is not on the committee", Refusal.FORBIDDEN)
        statements = self.contributions(round_index)
        seat = self.state.committee.index(member)
        shares = {s.institution: unpack_bundle(self.get_blob(f"upload-r{round_index}-{s.institution}.shares"))[seat]
                  for s in statements}
        return statements, shares

    def record_reveal(self, member: str, round_index: int, reveal: RevealStatement) -> None:
        """Keep a committee member's reveal: signed by it, for this round's key and contributor set
        (a round without a sum has none: `contributions` refuses it)."""
        contributors = contributors_sha256(self.contributions(round_index))
        expected = (self.state.federation_id, round_index, member, self.state.key_setup.key_id, contributors)
        if (reveal.federation, reveal.round, reveal.institution, reveal.key_id, reveal.contributors_sha256) != expected:
            raise ProtocolViolation("the reveal is for another federation, round, member, key or contributor set",
                                    Refusal.INVALID)
        if not self._signed_by(member, reveal):
            raise ProtocolViolation(f"the reveal does not verify under {member}'s roster key", Refusal.INVALID)
        try:  # every member would leave a malformed share sum out: refused at the door
            shares_from_bytes(base64.b64decode(reveal.share_sum, validate=True),
                              self.federation.ckks.poly_modulus_degree, "the share sum")
        except (binascii.Error, ValueError):
            raise ProtocolViolation("the reveal's share sum is not base64", Refusal.INVALID) from None
        document = reveal.model_dump_json().encode()
        new = protocol.record_reveal(self.state, member, round_index, sha256(document))
        if new is not self.state:
            self._put_blob(f"reveal-r{round_index}-{member}.json", document)
            self.store.save(new, "reveal", {"round": round_index, "institution": member})
            self.state = new

    def reveals(self, round_index: int) -> list[RevealStatement]:
        """The committee's reveals kept for round `round_index`, in seat order."""
        r = next((x for x in self.state.rounds if x.index == round_index), None)
        if r is None:
            raise ProtocolViolation(f"no round {round_index}", Refusal.UNKNOWN)
        return [RevealStatement.model_validate_json(self.get_blob(f"reveal-r{round_index}-{m}.json"))
                for m in self.state.committee if m in r.reveals]

    def record_applied(self, institution: str, round_index: int, sum_sha256: str, signature: str) -> None:
        """Keep a member's signed statement of the sum it applied (refused unless it verifies)."""
        statement = AppliedStatement(federation=self.state.federation_id, round=round_index, institution=institution,
                                     sum_sha256=sum_sha256, signature=signature)
        if not self._signed_by(institution, statement):
            raise ProtocolViolation(f"the applied statement does not verify under {institution}'s roster key",
                                    Refusal.INVALID)
        new = protocol.record_applied(self.state, institution, round_index, sum_sha256, signature)
        if new is not self.state:
            self.store.save(new, "applied", {"round": round_index, "institution": institution, "sum": sum_sha256})
            self.state = new

    def decline(self, institution: str, round_index: int, reason: str, now: float) -> None:
        new = protocol.record_decline(self.state, institution, round_index, reason, now)
        if new is not self.state:
            self.store.save(new, "decline", {"round": round_index, "institution": institution, "reason": reason})
            self.state = new

    def advance(self, now: float, workers: int = 1) -> str:
        """Sum or fail the current round if the protocol says so. Returns what happened: wait, sum or fail."""
        unmasking = protocol.unmask_decision(self.state, now)
        if unmasking == "sum":
            new = protocol.close_unmasking(self.state)
            self.store.save(new, "unmasked", {"round": new.current.index, "reveals": sorted(new.current.reveals)})
            self.state = new
            return "sum"
        if unmasking == "fail":
            current = self.state.current
            reason = (f"{len(current.reveals)} of the committee's {len(self.state.committee)} members revealed in "
                      f"time, {self.state.unmask_threshold} needed to unmask the sum")
            return self._fail(current.index, reason)
        decision = protocol.sum_decision(self.state, now)
        current = self.state.current
        if decision == "sum":
            # Reports on earlier rounds are in (members settle rounds in order before answering):
            # narrow the suspects of broken sums, and keep the right uploads out of this one.
            reviewed = faults.review(self.state)
            left_out = faults.leave_out(reviewed, sorted(current.uploads), self.federation.colluders)
            contributors = [i for i in sorted(current.uploads) if i not in left_out]
            if len(contributors) < reviewed.min_institutions:
                reason = (f"{len(contributors)} upload(s) once excluded members' are left out, "
                          f"min_institutions is {reviewed.min_institutions}")
                return self._fail(current.index, reason, reviewed)
            needed = fewest_unmasked(self.federation, [self._statement_of(current.index, i) for i in contributors])
            if len(contributors) < needed:
                reason = (f"{len(contributors)} upload(s): the committee unmasks no sum of fewer than {needed} "
                          f"(the contributors' min_cohort plus {self.federation.colluders} possible colluder(s))")
                return self._fail(current.index, reason, reviewed)
            paths = [self.blob_path(f"upload-r{current.index}-{i}.bin") for i in contributors]
            try:
                total = sum_envelopes(self.public_context, paths, workers=workers)
            except (AggregationError, OSError) as exc:
                # Uploads are fully checked on arrival, so this means damaged storage: fail the
                # round with the reason rather than retrying a sum that cannot succeed forever.
                return self._fail(current.index, f"summing failed: {exc}", reviewed)
            self._put_blob(f"sum-r{current.index}.bin", total)
            new = protocol.record_sum(reviewed, current.index, sha256(total), contributors, now, left_out)
            self.store.save(new, "summed", {"round": current.index, "contributors": contributors,
                                            "left_out": left_out, "excluded": sorted(new.excluded),
                                            "suspects": new.suspects})
            self.state = new
        elif decision == "fail":
            self._fail(current.index, f"{len(current.uploads)} upload(s), min_institutions is "
                                      f"{self.state.min_institutions}")
        return decision

    def _fail(self, round_index: int, reason: str, state: FederationState | None = None) -> str:
        new = protocol.fail_round(state or self.state, round_index, reason)
        self.store.save(new, "failed", {"round": round_index, "reason": reason})
        self.state = new
        return "fail"

    def _statement_of(self, round_index: int, institution: str) -> ContributionStatement:
        """The signed statement kept with `institution`'s upload of round `round_index`."""
        return ContributionStatement.model_validate_json(
            self.get_blob(f"upload-r{round_index}-{institution}.statement.json"))

    def report_undecryptable(self, institution: str, round_index: int, sum_sha256: str, reason: str) -> None:
        """Record a member's report that a round's sum does not decrypt (see `faults`)."""
        new = protocol.record_undecryptable(self.state, institution, round_index, sum_sha256, reason)
        if new is not self.state:
            self.store.save(new, "undecryptable", {"round": round_index, "institution": institution,
                                                   "reason": reason})
            self.state = new

    def sum_for(self, round_index: int) -> bytes:
        rounds = {r.index: r for r in self.state.rounds}
        r = rounds.get(round_index)
        if r is None or r.sum_sha256 is None:
            raise ProtocolViolation(f"round {round_index} has no sum", Refusal.CONFLICT if r else Refusal.UNKNOWN)
        return self.get_blob(f"sum-r{round_index}.bin")

    def _receipts_of(self, institution: str) -> list[Receipt]:
        return [Receipt.from_dict({**row, "federation": self.state.federation_id})
                for row in self.store.receipts(institution)]

    def receipt_for(self, institution: str, round_index: int) -> Receipt | None:
        """The receipt signed for `institution`'s upload in `round_index`, if any."""
        return next((r for r in self._receipts_of(institution) if r.round == round_index), None)

    def last_receipt(self, institution: str) -> Receipt | None:
        """`institution`'s most recent receipt: what an agent checks its ledger against when it starts."""
        receipts = self._receipts_of(institution)
        return receipts[-1] if receipts else None

    def _sign(self, receipt: Receipt) -> Receipt:
        return dataclasses.replace(receipt, signature=b64(self.identity.sign(receipt.message())))

    def close(self) -> None:
        self.store.close()
