"""A stand-in for `confide.platform.member.Member` over a tiny vector: real keys, real envelopes, no model.

It keeps the Member's contract: everything under its directory, idempotent per round (a second
`take_part` returns the same envelope and never "trains" again), sums applied in order. Each
training appends a line to `trainings.log`, so tests can count them across restarts.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from confide.aggregation.envelope import decrypt_sum, encrypt_update
from confide.aggregation.integrity import Contributor, contribution_tags, integrity_key, verify_sum
from confide.aggregation.keys import create_key_material, load_secret, open_sealed, seal_secret
from confide.aggregation.params import CkksParameters
from confide.aggregation.wire import read_header, read_seeds
from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    KeyCertificate,
    Receipt,
    RevealStatement,
    policy_sha256,
    sha256,
)
from confide.identity import Identity, PublicIdentity, roster_identities, unb64
from confide.platform.member_api import Contribution, Outcome
from confide.platform.member_api import KeyBundle as Bundle
from confide.platform.secure_sum import Reveals, mask_upload, share_digests, unmask
from confide.platform.sum_evidence import SumEvidence, certificate_problem, sum_problem

from .conftest import LAYOUT, LEDGER_HEAD, declared_spend

SIZE = 16


class FakeMember:
    def __init__(self, federation, identity: Identity, directory: Path, decline_rounds=()) -> None:
        self.federation = federation
        self.identity = identity
        self.institution_id = identity.institution_id
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.decline_rounds = set(decline_rounds)

    # -- files --------------------------------------------------------------------------------
    def _progress(self) -> dict:
        path = self.dir / "progress.json"
        return json.loads(path.read_text()) if path.exists() else {"synced": 0, "rounds": {}}

    def _save(self, progress: dict) -> None:
        (self.dir / "progress.json").write_text(json.dumps(progress))

    @property
    def adapter(self) -> np.ndarray:
        path = self.dir / "adapter.npy"
        return np.load(path) if path.exists() else np.zeros(SIZE)

    @property
    def trainings(self) -> list[str]:
        path = self.dir / "trainings.log"
        return path.read_text().split() if path.exists() else []

    @property
    def last_applied_round(self) -> int:
        return self._progress()["synced"]

    # -- keys ---------------------------------------------------------------------------------
    def is_key_holder(self) -> bool:
        return self.federation.key_holder_id == self.institution_id

    def has_key(self) -> bool:
        return (self.dir / "secret.key").exists()

    def _secret(self):
        return load_secret((self.dir / "secret.key").read_bytes())

    def key_id(self) -> str | None:
        return self._secret().key_id if self.has_key() else None

    def make_keys(self) -> Bundle:
        if not self.has_key():
            params = CkksParameters(**self.federation.ckks.model_dump())
            (self.dir / "secret.key").write_bytes(create_key_material(params).to_bytes())
        secret = self._secret()
        raw = (self.dir / "secret.key").read_bytes()
        sealed = {m.id: seal_secret(raw, unb64(m.sealing_key, "k", 32), m.id, secret.key_id)
                  for m in self.federation.roster}
        public = secret.public_context_bytes()
        certificate = self.identity.sign_document(KeyCertificate(
            federation=self.federation.federation_id, federation_sha256=policy_sha256(self.federation),
            key_holder=self.institution_id, key_id=secret.key_id,
            params=self.federation.ckks.model_dump(mode="json"), public_context_sha256=sha256(public),
            layout_hash=LAYOUT, n_values=SIZE, sealed_sha256={m: sha256(b) for m, b in sorted(sealed.items())}))
        return Bundle(secret.key_id, LAYOUT, public, sealed, SIZE, certificate)

    def install_key(self, sealed: bytes, certificate: KeyCertificate) -> str:
        roster = roster_identities(self.federation.roster)
        assert certificate_problem(certificate, self.federation, roster, self.institution_id, sealed) is None
        secret = open_sealed(sealed, self.identity.sealing_private, self.institution_id)
        if not self.has_key():
            (self.dir / "secret.key").write_bytes(secret)
        return certificate.key_id

    def _statement(self, round_index: int, envelope: bytes, shares: bytes) -> ContributionStatement:
        secret, header = self._secret(), read_header(envelope)
        key = integrity_key((self.dir / "secret.key").read_bytes(), secret.key_id)
        tags = contribution_tags(secret, key, self.federation.federation_id, round_index, self.institution_id,
                                 envelope)
        return self.identity.sign_document(ContributionStatement(
            federation=self.federation.federation_id, round=round_index, institution=self.institution_id,
            key_id=header.key_id, envelope_sha256=sha256(envelope), seed=read_seeds(envelope, header)[0].hex(),
            tags=tags, shares=share_digests(self.federation, shares)))

    def _upload(self, round_index: int, envelope: bytes) -> Contribution:
        shares = (self.dir / f"r{round_index}.shares").read_bytes()
        return Contribution("upload", envelope=envelope, ledger_head=LEDGER_HEAD,
                            declared=declared_spend(self.federation),
                            statement=self._statement(round_index, envelope, shares), shares=shares)

    def reveal(self, round_index: int, statements: list[ContributionStatement],
               shares: dict[str, bytes]) -> RevealStatement:
        reveals = Reveals(self.dir / "reveals", self.federation, roster_identities(self.federation.roster),
                          self.identity)
        return reveals.reveal(round_index, self._secret().key_id, statements, shares)

    # -- rounds -------------------------------------------------------------------------------
    def round_state(self, round_index: int):
        progress = self._progress()
        settled = progress["rounds"].get(str(round_index))
        if settled is not None:
            return settled["kind"]
        answered = progress.get("answered", {}).get(str(round_index))
        if answered is not None:
            return answered
        if (self.dir / f"r{round_index}.envelope").exists():
            return "trained"
        return "declining" if (self.dir / f"r{round_index}.decline").exists() else None

    def _answered(self, round_index: int, state: str) -> None:
        progress = self._progress()
        progress.setdefault("answered", {})[str(round_index)] = state
        self._save(progress)

    def note_declined(self, round_index: int) -> None:
        self._answered(round_index, "declined")

    def note_missed(self, round_index: int) -> None:
        self._answered(round_index, "missed")

    def take_part(self, round_index: int) -> Contribution:
        envelope, decline = self.dir / f"r{round_index}.envelope", self.dir / f"r{round_index}.decline"
        if envelope.exists():
            return self._upload(round_index, envelope.read_bytes())
        if decline.exists():
            return Contribution("decline", reason=decline.read_text())
        assert self.last_applied_round == round_index - 1, "sums must be applied before the next round"
        if round_index in self.decline_rounds:
            decline.write_text("policy says no")
            return Contribution("decline", reason="policy says no")
        with open(self.dir / "trainings.log", "a") as log:
            log.write(f"{round_index}\n")
        delta = np.full(SIZE, float(ord(self.institution_id[0]) - ord("a") + 1) * round_index)
        secret = self._secret()
        mask, shares = mask_upload(self.federation, roster_identities(self.federation.roster), secret.key_id,
                                   round_index, self.institution_id)
        blob = encrypt_update(secret, delta, 1.0, LAYOUT, mask=mask)
        (self.dir / f"r{round_index}.shares").write_bytes(shares)
        envelope.write_bytes(blob)
        return self._upload(round_index, blob)

    def record_receipt(self, round_index: int, receipt: dict, envelope: bytes | None, coordinator_key: bytes) -> dict:
        parsed = Receipt.from_dict(receipt)
        assert envelope is None or parsed.envelope_sha256 == sha256(envelope)
        assert PublicIdentity(coordinator_key, b"").verify(unb64(parsed.signature, "s", 64), parsed.message())
        path = self.dir / "receipts.json"
        receipts = json.loads(path.read_text()) if path.exists() else {}
        receipts.setdefault(str(round_index), receipt)
        path.write_text(json.dumps(receipts))
        if envelope is not None:
            self._answered(round_index, "receipted")
        return receipt

    def check_anchor(self, receipt: dict | None) -> None:
        self.anchors = getattr(self, "anchors", []) + [receipt]

    def apply_sum(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence) -> Outcome:
        progress = self._progress()
        if str(round_index) in progress["rounds"]:
            return Outcome(**progress["rounds"][str(round_index)])
        assert round_index == progress["synced"] + 1
        secret, roster = self._secret(), roster_identities(self.federation.roster)
        assert sum_problem(self.federation, roster, self.institution_id, round_index, secret.key_id, sum_envelope,
                           evidence, None, set()) is None
        verify_sum(secret, integrity_key((self.dir / "secret.key").read_bytes(), secret.key_id),
                   self.federation.federation_id, round_index, sum_envelope,
                   [Contributor(s.institution, s.seed, s.tags) for s in evidence.statements], LAYOUT, SIZE)
        unmasked = unmask(self.federation, roster, secret.key_id, round_index, list(evidence.statements),
                          list(evidence.reveals))
        assert unmasked.problem is None, unmasked.problem
        result = decrypt_sum(secret, sum_envelope, LAYOUT, unmask=unmasked.mask)
        np.save(self.dir / "adapter.npy", self.adapter + result.average)
        progress["synced"] = round_index
        progress["rounds"][str(round_index)] = {"kind": "applied", "count": result.count, "detail": ""}
        self._save(progress)
        return Outcome("applied", result.count)

    def witness_applied(self, statements: list[AppliedStatement]) -> str | None:
        return None

    def note_failed_round(self, round_index: int, reason: str) -> Outcome:
        progress = self._progress()
        progress["rounds"].setdefault(str(round_index), {"kind": "failed", "count": 0, "detail": reason})
        progress["synced"] = max(progress["synced"], round_index)
        self._save(progress)
        return Outcome("failed", 0, reason)

    def save_adapter(self, out_dir: Path) -> str:
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / "adapter.npy", self.adapter)
        return str(out_dir)
