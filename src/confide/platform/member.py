"""One institution's side of a federation: decide, reserve, train, encrypt; then decrypt, check, apply.

Everything a member knows lives under its state directory, so a new `Member` over the same
directory resumes where the last one stopped (the agent may be killed at any moment):

    <state_dir>/ledger/...                        the dataset's privacy ledger (privacy.ledger)
    <state_dir>/federations/<fed>/member.json     the member's record: each round's state (0600)
    <state_dir>/federations/<fed>/secret.key      the CKKS secret key material (0600)
    <state_dir>/federations/<fed>/key-certificate.json  the key holder's signed certificate of that key
    <state_dir>/federations/<fed>/adapter-rN.npy  the shared adapter after round N, with the server
                                                  velocity (platform.server_update; float64, 0600)
    <state_dir>/federations/<fed>/rounds/rN.envelope   our encrypted update for round N

Each round is a small state machine (`confide.platform.member_round`): a transition's work (a
ledger entry, the envelope, the adapter) is written first, then the record names the new state.
On restart the record says what is done, and what a kill left half-recorded is adopted, never redone:
a written envelope is uploaded, not retrained; a spend without an envelope counts and the round is
declined; a sum is applied to the previous round's adapter file, never twice to the same weights.

The rules are elsewhere and called, not copied: participation and the write-ahead spend in
`privacy.reservation`, DP-SGD in `privacy`, packing and encryption in `aggregation`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from confide.aggregation.codec import flatten, unflatten
from confide.aggregation.envelope import DecryptedSum, decrypt_sum, encrypt_update
from confide.aggregation.errors import AggregationError
from confide.aggregation.integrity import Contributor, contribution_tags, integrity_key, verify_sum
from confide.aggregation.keys import create_key_material, load_secret, open_sealed, seal_secret
from confide.aggregation.params import CkksParameters
from confide.aggregation.secagg import UploadMask
from confide.aggregation.wire import read_header, read_seeds
from confide.errors import BadInput
from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    DeclaredSpend,
    KeyCertificate,
    MemberRoundState,
    Receipt,
    RevealStatement,
    policy_sha256,
    sha256,
    write_atomically,
)
from confide.identity import Identity, PublicIdentity, roster_identities, unb64
from confide.platform.faults import leave_out_cap, patience
from confide.platform.member_api import Contribution, KeyBundle, Outcome
from confide.platform.member_round import MemberRecord, RoundRecord, advance, failures_after, leave_federation, settle
from confide.platform.secure_sum import Reveals, mask_upload, share_digests, unmask
from confide.platform.server_update import ServerState, apply_average, load_state, state_array
from confide.platform.sum_evidence import (
    SumEvidence,
    certificate_problem,
    influence_problem,
    split_problem,
    sum_problem,
    weight_problem,
)
from confide.platform.update_bound import max_update
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.accounting import RoundSpend
from confide.privacy.budget import ParticipationPlan, plan_participation, sample_rate_for
from confide.privacy.dataset_ledger import DataVersion, open_dataset_ledger
from confide.privacy.errors import LedgerRollbackError
from confide.privacy.guarantee import replace_one_epsilon
from confide.privacy.ledger import ledger_path
from confide.privacy.ledger_registry import LedgerRegistry
from confide.privacy.ledger_registry import registry_dir as registry_dir_of
from confide.privacy.reservation import reserve_round
from confide.privacy.trainable import load_trainable_state, trainable_state


class MemberError(BadInput):
    """The member cannot do what was asked in its current state."""


class Member:
    """An institution in one federation. Construct it in the process that will train (it loads the model).

    `private=False` is for experiments only (a sweep's no-DP reference point): rounds clip but add
    no noise, and the ledger records them as `nonprivate` entries instead of spends. `registry_dir`:
    the institution's registry of ledgers (privacy.ledger_registry), by default beside its identity.
    """

    def __init__(self, federation: FederationPolicy, policy: InstitutionPolicy, progress: Any = None,
                 private: bool = True, registry_dir: Path | None = None) -> None:
        from confide.platform.data import load_institution_data
        from confide.platform.models import build_model

        self.federation = federation
        self.policy = policy
        self.institution_id = policy.institution_id
        self.progress = progress
        self.private = private
        self.identity = Identity.load(policy.identity_path)
        if self.identity.institution_id != self.institution_id:
            raise MemberError(f"identity at {policy.identity_path} is {self.identity.institution_id!r}, "
                              f"not {self.institution_id!r}")
        member = federation.member(self.institution_id)
        if member is None:
            raise MemberError(f"{self.institution_id} is not on the roster of {federation.federation_id}")
        if unb64(member.signing_key, "roster signing_key") != self.identity.public.signing_public:
            raise MemberError(f"the roster's signing key for {self.institution_id} is not this identity's",
                              "put the fingerprint printed by `confide keys init` in the roster")
        self.roster = roster_identities(federation.roster)
        """Every member's public keys, from our own federation file: what we check signed documents against."""
        self.dir = Path(policy.state_dir) / "federations" / federation.federation_id
        self.model, self.tokenizer = build_model(federation)
        self.data = load_institution_data(policy, federation, self.tokenizer)
        self.dataset_id = policy.dataset_id
        _refuse_lost_ledger(Path(policy.state_dir), self.institution_id, self.dataset_id)
        self.registry = LedgerRegistry(registry_dir or registry_dir_of(policy.identity_path))
        opened = open_dataset_ledger(
            policy.state_dir, self.institution_id, self.dataset_id, self.identity,
            DataVersion(self.data.fingerprint, self.data.records, self.data.train_size), policy.ledger_witness_dirs,
            self.registry, self.data.record_digests)
        self.ledger = opened.ledger
        self._announce(opened)
        self.dir.mkdir(parents=True, exist_ok=True)
        initial, self.layout = flatten(trainable_state(self.model))
        self.record = self._load_record()
        adapter = self._adapter_file(self.last_applied_round)
        self.server_state = ServerState.initial(initial)
        if adapter is not None:
            self.server_state = load_state(federation.server_update, np.load(adapter), adapter)
            load_trainable_state(self.model, unflatten(self.server_state.adapter, self.layout))
        self._secret = None
        self._integrity: bytes | None = None
        self._reveals = Reveals(self.dir / "reveals", federation, self.roster, self.identity)
        self._plan = None

    def _announce(self, opened) -> None:
        if opened.new_version is not None and opened.previous_fingerprint is not None:
            self._emit(type="member", text=f"dataset {self.dataset_id}: new data version "
                       f"{opened.new_version.fingerprint[:12]} ({opened.new_version.records} records) recorded; "
                       f"it inherits epsilon {self.ledger.epsilon_spent():.3f} already spent")

    def _adapter_file(self, round_index: int) -> Path | None:
        """The adapter saved after `round_index` (None: round 0, the initial adapter from the seed)."""
        if round_index == 0:
            return None
        path = self.dir / f"adapter-r{round_index}.npy"
        if path.exists():
            return path
        legacy = self.dir / "adapter.npy"  # one file for every round, before round-named adapters
        if legacy.exists():
            return legacy
        raise MemberError(f"{path} is missing but member.json says round {round_index} was applied",
                          "restore the federation's state directory from the same backup as member.json")

    # ----------------------------------------------------------------------------------- state
    def _load_record(self) -> MemberRecord:
        path = self.dir / "member.json"
        if not path.exists():
            return MemberRecord(self.dataset_id)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MemberError(f"{path} cannot be read ({exc})", "restore the federation's state directory "
                              "from a backup") from None
        record = MemberRecord.from_dict(data, str(path))
        if record.dataset_id and record.dataset_id != self.dataset_id:
            raise MemberError(f"{path}: this federation was joined with dataset {record.dataset_id!r}, the policy now "
                              f"names {self.dataset_id!r}", "set data.dataset_id back; a federation keeps one dataset")
        return dataclasses.replace(record, dataset_id=self.dataset_id)

    def _commit(self, record: MemberRecord) -> None:
        """Make `record` the member's durable state (one atomic write), after the work it records is done."""
        write_atomically(self.dir / "member.json", json.dumps(record.to_dict(), indent=1).encode(), mode=0o600)
        self.record = record

    def _emit(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress.put({"institution": self.institution_id, **event})

    @property
    def last_applied_round(self) -> int:
        return self.record.synced_round

    @property
    def aborted(self) -> str | None:
        return self.record.aborted

    def round_state(self, round_index: int) -> MemberRoundState | None:
        """Where round `round_index` stands for us (None: we have done nothing in it yet)."""
        return self.record.state_of(round_index)

    # ------------------------------------------------------------------------------------ keys
    def is_key_holder(self) -> bool:
        return self.federation.key_holder_id == self.institution_id

    def has_key(self) -> bool:
        return (self.dir / "secret.key").exists()

    def _write_secret(self, secret: bytes) -> None:
        write_atomically(self.dir / "secret.key", secret, mode=0o600)

    def make_keys(self) -> KeyBundle:
        """Key holder only: create the federation's CKKS key (once), seal it to every member, certify it."""
        if not self.is_key_holder():
            raise MemberError(f"{self.institution_id} is not the key holder ({self.federation.key_holder_id})")
        if not self.has_key():
            params = CkksParameters(**self.federation.ckks.model_dump())
            self._write_secret(create_key_material(params).to_bytes())
        secret = self.secret
        raw = self._secret_bytes()  # the exact bytes every member will hold: the integrity key derives from them
        sealed = {
            m.id: seal_secret(raw, unb64(m.sealing_key, f"roster {m.id} sealing_key", 32), m.id, secret.key_id)
            for m in self.federation.roster
        }
        public = secret.public_context().to_bytes()
        certificate = self.identity.sign_document(KeyCertificate(
            federation=self.federation.federation_id, federation_sha256=policy_sha256(self.federation),
            key_holder=self.institution_id, key_id=secret.key_id,
            params=self.federation.ckks.model_dump(mode="json"), public_context_sha256=sha256(public),
            layout_hash=self.layout.hash, n_values=self.layout.size,
            sealed_sha256={member: sha256(blob) for member, blob in sorted(sealed.items())}))
        self._record_key(certificate)
        return KeyBundle(secret.key_id, self.layout.hash, public, sealed, self.layout.size, certificate)

    def install_key(self, sealed: bytes, certificate: KeyCertificate) -> str:
        """Check the key holder's `certificate`, open our `sealed` copy of the key it certifies, and keep
        both (idempotent). Returns the key id installed.

        Raises MemberError, naming what does not hold, for a certificate the key holder's roster key
        did not sign, of other parameters, adapter or federation, or one that does not name exactly
        this sealed key; a key that is not the certified one; another key than the one we hold.
        """
        problem = certificate_problem(certificate, self.federation, self.roster, self.institution_id, sealed)
        if problem is None and (certificate.layout_hash, certificate.n_values) != (self.layout.hash, self.layout.size):
            problem = "the certified adapter layout is not ours (another model or adapter)"
        if problem is not None:
            raise MemberError(f"refused the federation key: {problem}", "the coordinator relayed a key the key "
                              "holder did not make for us; ask its operator and the key holder")
        secret = open_sealed(sealed, self.identity.sealing_private, self.institution_id)
        material = load_secret(secret)
        if (material.key_id, sha256(material.public_context_bytes())) != (certificate.key_id,
                                                                         certificate.public_context_sha256):
            raise MemberError("refused the federation key: the sealed key is not the certified one")
        if self.has_key():
            if self.secret.key_id != material.key_id:
                raise MemberError(f"already hold key {self.secret.key_id}, offered {material.key_id}")
            return material.key_id
        # The certificate and its ledger entry first, the key last: the key file is what says "installed",
        # so a kill in between installs again (the ledger entry is written once) instead of losing the entry.
        self._record_key(certificate)
        self._write_secret(secret)
        self._secret = material
        return material.key_id

    def _record_key(self, certificate: KeyCertificate) -> None:
        """Keep the certificate beside the key, and its fingerprint in the ledger (once)."""
        write_atomically(self.dir / "key-certificate.json", certificate.model_dump_json(indent=1).encode())
        fed = self.federation.federation_id
        if self.ledger.last_of("key", fed) is None:
            self.ledger.append("key", fed, 0, key_id=certificate.key_id, key_holder=certificate.key_holder,
                               fingerprint=certificate.fingerprint)

    def key_id(self) -> str | None:
        """The federation key we hold, or None."""
        return self.secret.key_id if self.has_key() else None

    def _secret_bytes(self) -> bytes:
        return (self.dir / "secret.key").read_bytes()

    @property
    def integrity_key(self) -> bytes:
        """The members' key for sum integrity tags (aggregation.integrity), derived from the federation key."""
        if self._integrity is None:
            self._integrity = integrity_key(self._secret_bytes(), self.secret.key_id)
        return self._integrity

    @property
    def secret(self):
        if self._secret is None:
            if not self.has_key():
                raise MemberError(f"{self.institution_id} has no federation key yet", "install the sealed key first")
            self._secret = load_secret((self.dir / "secret.key").read_bytes())
        return self._secret

    # ---------------------------------------------------------------------------------- rounds
    def plan(self) -> dict:
        """Calibrate the noise once for the whole planned participation (see privacy.budget)."""
        if self._plan is None and not self.private:
            self._plan = self._nonprivate_plan()
        if self._plan is None:
            self._plan = plan_participation(self.federation, self.policy, self.data.train_size,
                                            self.ledger.spend_history(), rounds=self.rounds_left())
        return self._plan.as_dict()

    def rounds_left(self) -> int:
        """Rounds still to plan for: those of the federation not settled yet, within our max_rounds.

        After a restart this is what remains, so the noise is calibrated for the rounds to come on
        top of what the ledger already holds (not re-spread over rounds that are over).
        """
        fed_rounds = self.federation.rounds - self.last_applied_round
        ours = self.policy.max_rounds - self.ledger.rounds_taken(self.federation.federation_id)
        return max(1, min(fed_rounds, ours))

    def _nonprivate_plan(self) -> ParticipationPlan:
        training, privacy = self.federation.training, self.federation.privacy
        rounds = self.rounds_left()
        spend = RoundSpend(0.0, sample_rate_for(training.expected_batch_size, self.data.train_size),
                           training.steps_per_round)
        return ParticipationPlan(spend, rounds, privacy.delta, privacy.accountant, self.ledger.epsilon_spent(),
                                 math.inf, math.inf, "nonprivate")

    def take_part(self, round_index: int) -> Contribution:
        """Decide and, if allowed, reserve, train and encrypt this round. Idempotent: never trains a round twice.

        Resumes from the round's record: a decline is returned again, a trained round's envelope is
        returned again, a round reserved but not trained (killed while training) is declined with
        its spend counted, never retrained with a fresh noise draw.
        """
        envelope_path = self.dir / "rounds" / f"r{round_index}.envelope"
        r = self._resumed(round_index, envelope_path)
        if r is not None:
            if r.state in ("declining", "declined"):
                return Contribution("decline", reason=r.reason)
            if r.state in ("trained", "receipted"):
                return self._upload(round_index, envelope_path.read_bytes(), r.head)
            if r.state == "reserved":
                # Spent, but the training did not finish: the spend counts; the round is not re-run.
                return self._decline(round_index, "interrupted after its spend was recorded; the spend counts, "
                                     "the round is not retrained")
            raise MemberError(f"round {round_index} is already {r.state}; there is nothing to answer")
        if self.aborted:
            return self._decline(round_index, f"left the federation: {self.aborted}", in_ledger=False)
        if self.last_applied_round != round_index - 1:
            raise MemberError(f"{self.institution_id} holds the adapter of round {self.last_applied_round}, "
                              f"round {round_index} needs round {round_index - 1}", "apply the missing sums first")
        fed = self.federation.federation_id
        self.plan()
        trained_on = {"data_fingerprint": self.data.fingerprint, "train_records": self.data.train_size}
        if self.private:
            reservation = reserve_round(self.ledger, self.federation, self.policy, round_index, self._plan.spend,
                                        self.registry, self.data.record_digests, **trained_on)
            if not reservation.granted:
                return self._decline(round_index, "; ".join(reservation.reasons), in_ledger=False)
            epsilon = reservation.entry["epsilon"]
        else:
            # Training without noise has no finite epsilon, and the ledger rightly refuses infinite
            # ones: the round is recorded as what it is, not as a spend.
            spend = self._plan.spend
            privacy = self.federation.privacy
            self.ledger.append("nonprivate", fed, round_index, sample_rate=spend.sample_rate, steps=spend.steps,
                               clipping_norm=self.policy.clipping_norm, delta=privacy.delta,
                               accountant=privacy.accountant, **trained_on)
            epsilon = math.inf
        self._commit(advance(self.record, round_index, "reserved"))
        self._emit(type="member", text=f"round {round_index}: training (eps after {epsilon:.2f})")
        delta = self._train(round_index, epsilon)
        vector, _ = flatten(delta, self.layout)
        # The weight travels inside the sum that every member decrypts, so it is public: it comes
        # from the federation file, never from the data (a record count here would tell the others
        # our n, which the add/remove-one epsilon we record assumes they cannot learn), and every
        # member checks the sum's total weight against the contributors' weights there.
        weight = self.weight
        # A one-time mask, shared to the committee, keeps the upload unreadable alone even to members
        # (`secure_sum`). The shares are written before the envelope, which is what says "trained".
        mask, shares = mask_upload(self.federation, self.roster, self.secret.key_id, round_index, self.institution_id)
        envelope = encrypt_update(self.secret, vector, weight, self.layout.hash, mask=mask)  # it multiplies by weight
        del mask
        write_atomically(self._shares_path(round_index), shares)
        write_atomically(envelope_path, envelope)
        self._adopt_envelope(round_index, envelope)
        self._emit(type="member", text=f"round {round_index}: uploaded {len(envelope) / 1e6:.2f} MB, eps {epsilon:.2f}")
        return self._upload(round_index, envelope, self.record.round(round_index).head)

    def _shares_path(self, round_index: int) -> Path:
        return self.dir / "rounds" / f"r{round_index}.shares"

    def _upload(self, round_index: int, envelope: bytes, head: tuple[int, str] | None) -> Contribution:
        """The upload of a trained round: envelope, mask shares, ledger head, declared spend, statement."""
        shares = self._shares_path(round_index).read_bytes()
        return Contribution("upload", envelope=envelope, ledger_head=head, declared=self._declared(round_index),
                            statement=self._statement(round_index, envelope, shares), shares=shares)

    @property
    def weight(self) -> float:
        """Our public aggregation weight, from the federation file's roster."""
        return float(self.federation.member(self.institution_id).weight)

    def _statement(self, round_index: int, envelope: bytes, shares: bytes) -> ContributionStatement:
        """Our signed statement of our upload of `round_index`, with its integrity tags and the digests of
        its mask shares (deterministic: the same after a restart)."""
        fed = self.federation.federation_id
        header = read_header(envelope)
        tags = contribution_tags(self.secret, self.integrity_key, fed, round_index, self.institution_id, envelope)
        return self.identity.sign_document(ContributionStatement(
            federation=fed, round=round_index, institution=self.institution_id, key_id=header.key_id,
            envelope_sha256=sha256(envelope), seed=read_seeds(envelope, header)[0].hex(), tags=tags,
            min_cohort=self.policy.min_cohort, shares=share_digests(self.federation, shares),
            previous_sum=self.ledger.applied_sums(fed).get(round_index - 1, "")))

    def reveal(self, round_index: int, statements: list[ContributionStatement],
               shares: dict[str, bytes]) -> RevealStatement:
        """As a committee member: our signed share sum over the round's contributors (`secure_sum.Reveals`:
        once per round, for one set; raises RevealRefused otherwise)."""
        return self._reveals.reveal(round_index, self.secret.key_id, statements, shares)

    def _resumed(self, round_index: int, envelope_path: Path) -> RoundRecord | None:
        """The round's record, completed from the work a kill left unrecorded (or from older state files).

        A written envelope is adopted (trained once, so it is uploaded, not retrained); a spend in
        the ledger without a record means we were killed right after reserving; a `.decline` file
        is a decline recorded by an older confide.
        """
        r = self.record.round(round_index)
        if r is not None and r.state != "reserved":
            return r
        if envelope_path.exists():
            self._adopt_envelope(round_index, envelope_path.read_bytes())
        elif r is None and self._spend_entry(round_index) is not None:
            self._commit(advance(self.record, round_index, "reserved"))
        elif r is None and (legacy := envelope_path.with_suffix(".decline")).exists():
            self._commit(advance(self.record, round_index, "declining", reason=legacy.read_text()))
        return self.record.round(round_index)

    def _adopt_envelope(self, round_index: int, envelope: bytes) -> None:
        """Record the upload of `envelope` in the ledger (once) and move the round to `trained`."""
        head = self._upload_head(round_index, envelope) or self._record_upload(round_index, envelope)
        if self.record.state_of(round_index) is None:  # killed between reserving and recording it
            self._commit(advance(self.record, round_index, "reserved"))
        self._commit(advance(self.record, round_index, "trained", envelope_sha256=sha256(envelope),
                             ledger_seq=head[0], ledger_head=head[1]))

    def _record_upload(self, round_index: int, envelope: bytes) -> tuple[int, str]:
        """Record the upload of `envelope` in the ledger; return the new head `(seq, hash)`."""
        entry = self.ledger.append("outcome", self.federation.federation_id, round_index, result="uploaded",
                                   envelope_sha256=sha256(envelope), weight=self.weight)
        return entry["seq"], entry["hash"]

    def _decline(self, round_index: int, reason: str, in_ledger: bool = True) -> Contribution:
        """Sit the round out. `in_ledger`: write a `decline` entry (reserve_round has already written its own)."""
        if in_ledger:
            self.ledger.append("decline", self.federation.federation_id, round_index, reasons=[reason])
        self._commit(advance(self.record, round_index, "declining", reason=reason))
        self._emit(type="member", text=f"round {round_index}: declined")
        return Contribution("decline", reason=reason)

    def note_declined(self, round_index: int) -> None:
        """The coordinator has our decline of `round_index` (idempotent)."""
        if self.record.state_of(round_index) == "declining":
            self._commit(advance(self.record, round_index, "declined"))

    def note_missed(self, round_index: int) -> None:
        """The round closed before our answer counted (deadline or quorum); its sum comes without us."""
        if self.record.state_of(round_index) in (None, "declining", "reserved", "trained"):
            self._commit(advance(self.record, round_index, "missed"))

    def _spend_entry(self, round_index: int) -> dict | None:
        """The ledger entry that accounts for our training in `round_index` (`spend`, or `nonprivate`)."""
        fed = self.federation.federation_id
        return self.ledger.last_of("spend", fed, round_index) or self.ledger.last_of("nonprivate", fed, round_index)

    def _declared(self, round_index: int) -> DeclaredSpend:
        """The round's spend as our ledger records it: declared with the upload, signed into the receipt."""
        entry = self._spend_entry(round_index)
        if entry is None:
            raise MemberError(f"round {round_index}: an envelope exists but the ledger has no spend for it",
                              "restore the ledger from the newest backup")
        return DeclaredSpend.of_entry(entry)

    def _upload_head(self, round_index: int, envelope: bytes) -> tuple[int, str] | None:
        """The ledger head recorded with our upload of `round_index` (None if the record was lost in a crash)."""
        digest = sha256(envelope)
        for entry in reversed(self.ledger.entries()):
            if (entry.get("kind") == "outcome" and entry.get("federation") == self.federation.federation_id
                    and entry.get("round") == round_index and entry.get("envelope_sha256") == digest):
                return entry["seq"], entry["hash"]
        return None

    def _train(self, round_index: int, epsilon: float) -> dict:
        from confide.privacy.training import train_round

        def on_step(step: int, steps: int) -> None:
            self._emit(type="step", round=round_index, step=step, steps=steps, epsilon=epsilon)

        # Poisson sampling and the Gaussian noise draw from fresh OS randomness, never from a seed:
        # anyone who knew the seed could subtract the noise and undo the privacy.
        before = trainable_state(self.model)
        try:
            return train_round(self.model, self.data.train, self.federation, self.policy, self._plan.spend,
                               on_step=on_step)
        finally:
            # The local weights must not leak into the global adapter: the round's result travels
            # only as the encrypted delta, and the sum is applied to the global state.
            load_trainable_state(self.model, before)

    def record_receipt(self, round_index: int, receipt: dict, envelope: bytes | None,
                       coordinator_key: bytes) -> dict:
        """Check the coordinator's receipt for our upload and keep it in the ledger (once); return it.

        The receipt must name this federation, round, institution and envelope (None: the one we
        stored for the round, if any), carry the ledger head we recorded with the upload, and
        verify under `coordinator_key` (Ed25519, 32 bytes). Raises MemberError otherwise, and
        stores nothing.
        """
        fed = self.federation.federation_id
        try:
            parsed = Receipt.from_dict(receipt)
        except (KeyError, TypeError, ValueError) as exc:
            raise MemberError(f"round {round_index}: malformed receipt ({exc})") from None
        if envelope is None:
            stored = self.dir / "rounds" / f"r{round_index}.envelope"
            envelope = stored.read_bytes() if stored.exists() else None
        expected = (fed, round_index, self.institution_id)
        if (parsed.federation, parsed.round, parsed.institution) != expected or (
                envelope is not None and parsed.envelope_sha256 != sha256(envelope)):
            raise MemberError(f"round {round_index}: the receipt does not describe our upload")
        head = self._upload_head(round_index, envelope) if envelope is not None else None
        if head is not None and (parsed.ledger_seq, parsed.ledger_head) != head:
            raise MemberError(f"round {round_index}: the receipt names ledger head {parsed.ledger_seq}, not the "
                              f"head {head[0]} we recorded with the upload")
        # The receipt must sign the spend we declared (every receipt carries one).
        spent = self._spend_entry(round_index)
        found = "our ledger has no spend" if spent is None else "; ".join(parsed.spend.differences(spent))
        if found:
            raise MemberError(f"round {round_index}: the receipt's spend does not match our ledger ({found})")
        try:
            signature = unb64(parsed.signature, "receipt signature", 64)
        except BadInput:
            signature = b""
        if not PublicIdentity(coordinator_key, b"").verify(signature, parsed.message()):
            raise MemberError(f"round {round_index}: the receipt's signature does not verify under the "
                              "coordinator's key")
        if envelope is not None and self.ledger.last_of("receipt", fed, round_index) is None:
            self.ledger.append("receipt", fed, round_index, receipt=parsed.to_dict())
        if envelope is not None and self.record.state_of(round_index) == "trained":
            self._commit(advance(self.record, round_index, "receipted", receipt=parsed.to_dict()))
        return parsed.to_dict()

    def check_anchor(self, receipt: dict | None) -> None:
        """Refuse a ledger that is behind what our latest receipt shows the coordinator saw.

        The coordinator keeps our newest receipt, which names our ledger head at that upload; a
        ledger without that entry was restored from an older copy, replaced or lost. Raises
        LedgerRollbackError then (nothing may be spent until an operator restores the newest copy).
        """
        if receipt is None:
            return
        parsed = Receipt.from_dict(receipt)
        self.ledger.witness(parsed.ledger_seq, parsed.ledger_head,
                            f"the coordinator's receipt for round {parsed.round} of {parsed.federation}")

    def apply_sum(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence) -> Outcome:
        """Check the round's encrypted sum against its evidence, decrypt it, check its count against
        min_cohort, and apply the average with the federation's server step (`server_update`: FedAvgM).

        The sum must be exactly the contributions whose signed statements come with it, nothing
        added (`sum_evidence.sum_problem`, `aggregation.integrity.verify_sum`), decrypt cleanly,
        carry its contributors' public weights, and average to no more than honest rounds can
        move a parameter (`update_bound`). A sum refused by any check settles the round as
        failed, with the reason, and is reported like an undecryptable one: nothing of it is
        applied, the spends stay counted.

        The adapter of the round (with its velocity) is written under its own name before the record
        says the round is applied: a kill in between leaves the record at the previous round, whose
        file is still there, and the sum is applied again to that one, never twice to the same weights.
        """
        done = self._settled(round_index)
        if done is not None:
            return done
        if self.aborted:
            self._commit(settle(self.record, round_index, "aborted", reason=self.aborted))
            return Outcome("aborted", 0, self.aborted)
        if round_index != self.last_applied_round + 1:
            raise MemberError(f"cannot apply round {round_index} on top of round {self.last_applied_round}")
        fed = self.federation.federation_id
        count = len(evidence.statements)
        problem = self._sum_problem(round_index, sum_envelope, evidence)
        if problem is None and count < self.policy.min_cohort:
            # Counted from member-signed statements, before anything is decrypted: a sum this small
            # would show too much of each contribution, so it is never opened.
            detail = (f"round {round_index} sum has {count} contribution(s), below min_cohort "
                      f"{self.policy.min_cohort}: leaving the federation")
            if self.ledger.last_of("abort", fed, round_index) is None:
                self.ledger.append("abort", fed, round_index, reason=detail, count=count)
            self._commit(settle(self.record, round_index, "aborted", count, detail, leave=detail))
            return Outcome("aborted", count, detail)
        result = None
        checked = True
        if problem is None:
            unmasked = unmask(self.federation, self.roster, self.secret.key_id, round_index,
                              list(evidence.statements), list(evidence.reveals))
            for line in unmasked.left_out:
                self._emit(type="member", text=f"round {round_index}: reveal left out ({line})")
            if unmasked.problem is not None:
                # The committee's reveals, not the uploads, are at fault: not reported as a broken sum.
                return self._settle_failed(round_index, f"refused the sum: cannot unmask it: {unmasked.problem}")
            checked = unmasked.checked
            problem, result = self._open_sum(round_index, sum_envelope, evidence, unmasked.mask)
        if problem is not None:
            # A faulty member's upload, or a coordinator that altered the sum: nothing of this round
            # is applied, the spends stay counted, and the federation goes on. A sum unmasked with
            # exactly the threshold of reveals is not reported as broken: one wrong reveal would
            # look like a broken upload, and the search for its culprit would blame a contributor.
            return self._settle_failed(round_index, f"refused the sum: {problem}", sum_envelope if checked else None)
        updated = apply_average(self.federation.server_update, self.server_state, result.average)
        self._save_round_state(round_index, updated)
        load_trainable_state(self.model, unflatten(updated.adapter, self.layout))
        if self.ledger.last_of("applied", fed, round_index) is None:
            self.ledger.append("applied", fed, round_index, count=result.count, sum_sha256=sha256(sum_envelope))
        self._commit(settle(self.record, round_index, "applied", result.count))
        self.server_state = updated
        self._drop_old_adapters()
        return Outcome("applied", result.count, statement=self._applied_statement(round_index))

    def _sum_problem(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence) -> str | None:
        """What is wrong with the sum around its ciphertexts (`sum_evidence.sum_problem`), or None."""
        fed = self.federation.federation_id
        r = self.record.round(round_index)
        mine = r.envelope_sha256 if r is not None and r.state in ("trained", "receipted") else None
        # A kill after the `applied` entry and before the record leaves this round's own sum in the
        # ledger: applying it again to the previous adapter is the resume, not a replay.
        earlier = {digest for index, digest in self.ledger.applied_sums(fed).items() if index != round_index}
        return sum_problem(self.federation, self.roster, self.institution_id, round_index, self.secret.key_id,
                           sum_envelope, evidence, mine, earlier)

    def _open_sum(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence, mask: UploadMask
                  ) -> tuple[str | None, DecryptedSum | None]:
        """Check the sum's integrity tags, decrypt it unmasked with `mask`, and check its weight and bound:
        (problem, None) or (None, the decrypted sum). Nothing is decrypted before the tags pass."""
        try:
            verify_sum(self.secret, self.integrity_key, self.federation.federation_id, round_index, sum_envelope,
                       [Contributor(s.institution, s.seed, s.tags) for s in evidence.statements],
                       self.layout.hash, self.layout.size)
            result = decrypt_sum(self.secret, sum_envelope, self.layout.hash, unmask=mask)
        except (AggregationError, ValueError, OverflowError) as exc:
            # Whatever the coordinator relayed that does not parse is a refusal, never a crash: a
            # crash would repeat on every restart and the round would never settle.
            return (exc.message if isinstance(exc, AggregationError) else f"malformed sum ({exc})"), None
        problem = (weight_problem(self.federation, evidence.statements, result.total_weight)
                   or influence_problem(result.average, max_update(self.federation, self.server_state.adapter),
                                        result.error_bound))
        return problem, (result if problem is None else None)

    def _applied_statement(self, round_index: int) -> AppliedStatement | None:
        """Our signed statement of the sum we applied in `round_index` (None if we applied none)."""
        digest = self.ledger.applied_sums(self.federation.federation_id).get(round_index)
        if digest is None:
            return None
        return self.identity.sign_document(AppliedStatement(
            federation=self.federation.federation_id, round=round_index, institution=self.institution_id,
            sum_sha256=digest))

    def witness_applied(self, statements: list[AppliedStatement]) -> str | None:
        """Compare other members' signed statements of the sums they applied with ours.

        A member handed another sum than ours for the same round means the coordinator split the
        federation: we leave it (recorded in the ledger and our record) and return why, once.
        Statements that do not verify are ignored. Returns None when nothing is wrong.
        """
        fed = self.federation.federation_id
        ours = self.ledger.applied_sums(fed)
        for statement in statements:
            problem = split_problem(statement, self.federation, self.roster, ours.get(statement.round))
            if problem is None or self.aborted:
                continue
            if self.ledger.last_of("abort", fed, statement.round) is None:
                self.ledger.append("abort", fed, statement.round, reason=problem, count=0)
            self._commit(leave_federation(self.record, f"leaving the federation: {problem}"))
            return problem
        return None

    def _settled(self, round_index: int) -> Outcome | None:
        r = self.record.round(round_index)
        if r is None or not r.settled:
            return None
        statement = self._applied_statement(round_index) if r.state == "applied" else None
        return Outcome(r.state, r.count, r.reason, r.undecryptable, statement)

    def _drop_old_adapters(self) -> None:
        """Once the record names the round, the adapters of earlier rounds are no longer needed."""
        for path in self.dir.glob("adapter-r*.npy"):
            if path.name != f"adapter-r{self.last_applied_round}.npy":
                path.unlink(missing_ok=True)
        (self.dir / "adapter.npy").unlink(missing_ok=True)

    def note_failed_round(self, round_index: int, reason: str) -> Outcome:
        """The round failed at the coordinator: nothing to apply, the adapter stays as it is."""
        return self._settle_failed(round_index, reason)

    def _settle_failed(self, round_index: int, reason: str, sum_envelope: bytes | None = None) -> Outcome:
        done = self._settled(round_index)
        if done is not None:
            return done
        fed = self.federation.federation_id
        undecryptable = sum_envelope is not None
        if self.ledger.last_of("round_failed", fed, round_index) is None:
            extra = {"sum_sha256": sha256(sum_envelope)} if undecryptable else {}
            self.ledger.append("round_failed", fed, round_index, reason=reason, **extra)
        if round_index == self.last_applied_round + 1:
            self._carry_adapter_forward(round_index)
        failures = failures_after(self.record, "failed", undecryptable)
        detail, leave = reason, None
        policy = self.federation
        cap = leave_out_cap(len(policy.roster), policy.min_institutions, policy.colluders)
        if undecryptable and failures >= patience(len(policy.roster), cap) and not self.aborted:
            detail = leave = (f"{failures} rounds in a row whose sums did not decrypt: leaving the federation "
                              f"(last: {reason})")
            if self.ledger.last_of("abort", fed, round_index) is None:
                self.ledger.append("abort", fed, round_index, reason=detail, count=0)
        self._commit(settle(self.record, round_index, "failed", 0, detail, undecryptable, leave=leave))
        self._drop_old_adapters()
        return Outcome("failed", 0, detail, undecryptable=undecryptable)

    def _carry_adapter_forward(self, round_index: int) -> None:
        """A failed round leaves the adapter and its velocity as they were: save them under the new round's name."""
        self._save_round_state(round_index, self.server_state)

    def _save_round_state(self, round_index: int, state: ServerState) -> None:
        """Write the round's adapter (and velocity) file. It is the member's state once the record names
        the round; until then `self.server_state` stays the previous round's, which a retry applies to."""
        write_atomically_npy(self.dir / f"adapter-r{round_index}.npy",
                             state_array(self.federation.server_update, state))

    # ------------------------------------------------------------------------------- results
    def evaluate(self, records: list[dict] | None) -> dict:
        """Accuracy and mean loss of the current adapter on `records` (None: our local eval split).

        Classifiers also get macro-F1, per-class accuracy and the confusion matrix (platform.evaluation).
        """
        from confide.platform.evaluation import evaluate_classifier
        from confide.privacy.training import evaluate

        dataset = self.data.eval if records is None else self.data.encode(records)
        if self.federation.model.task == "sequence_classification":
            return evaluate_classifier(self.model, dataset, list(self.federation.model.labels))
        return evaluate(self.model, dataset)

    def save_adapter(self, out_dir: Path) -> str:
        """Save the current adapter in PEFT format (loadable with PeftModel.from_pretrained), with its
        model card: README.md and privacy.json stating our ledger's guarantee (platform.model_card)."""
        from confide.platform.model_card import member_card, write_card

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir))
        write_card(out_dir, member_card(out_dir, self.federation, self.policy, self.ledger, self.last_applied_round,
                                        self.private))
        return str(out_dir)

    def privacy_status(self) -> dict:
        return {
            "private": self.private,
            "epsilon": self.ledger.epsilon_spent() if self.private else None,
            # Against whoever knows our record count (the coordinator: see privacy.guarantee).
            "replace_one_epsilon": (replace_one_epsilon(self.ledger.spend_history(), self.federation.privacy.delta)
                                    if self.private else None),
            "delta": self.federation.privacy.delta,
            "budget_epsilon": self.policy.budget.epsilon,
            "rounds_trained": self.ledger.rounds_taken(self.federation.federation_id),
            "ledger": str(self.ledger.path),
            "dataset": self.dataset_id,
            "data_fingerprint": self.data.fingerprint,
            "train_records": self.data.train_size,
            "aborted": self.aborted,
        }


def write_atomically_npy(path: Path, vector: np.ndarray) -> None:
    """Save a decrypted adapter readable by its owner only: it is a raw decryption (see the threat model)."""
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float64))
    write_atomically(path, buffer.getvalue(), mode=0o600)


def _refuse_lost_ledger(state_dir: Path, institution: str, dataset_id: str) -> None:
    """A missing ledger where the state directory shows this dataset took part in rounds is lost, not new.

    Raises LedgerRollbackError naming the evidence and the fix.
    """
    path = ledger_path(state_dir, institution, dataset_id)
    if path.exists():
        return
    for record in sorted((state_dir / "federations").glob("*/member.json")):
        try:
            state = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        mine = state.get("dataset_id") in (None, dataset_id)
        took_part = bool(state.get("rounds")) or any((record.parent / "rounds").glob("r*.envelope"))
        if mine and took_part:
            raise LedgerRollbackError(
                f"{path} is missing, but {record} shows that dataset {dataset_id} took part in rounds",
                "restore the ledger from the newest backup; a new empty ledger would reopen spent budget",
            )
