"""One institution's side of a federation: decide, reserve, train, encrypt; then decrypt, check, apply.

A `Member` composes the parts and performs what the round engine decides; each part does one job:

    engine.py    the round record and the pure rules: resuming, receipts, settling (no I/O)
    store.py     the member's files: the record, the round's envelope and shares, the adapters
    account.py   the privacy account: the dataset's ledger and every entry a round writes
    keyring.py   the federation key: made, sealed, certified, installed
    ciphertexts.py  sealing and stating our update; opening and checking the round's sum
    learner.py   the local model and data (the only part that touches torch)

Everything a member knows lives under its state directory, so a new `Member` over the same
directory resumes where the last one stopped (the agent may be killed at any moment): a
transition's work (a ledger entry, the envelope, the adapter) is written first, then the record
names the new state. A written envelope is uploaded, not retrained; a spend without an envelope
counts and the round is declined; a sum is applied to the previous round's adapter file, never
twice to the same weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    KeyCertificate,
    MemberRoundState,
    Receipt,
    RevealStatement,
    sha256,
)
from confide.identity import Identity, PublicIdentity, roster_identities, unb64
from confide.platform.events import MemberNote, ProgressEvent, TrainingStep
from confide.platform.faults import leave_out_cap, patience
from confide.platform.member import engine
from confide.platform.member.account import PrivacyAccount
from confide.platform.member.ciphertexts import open_sum, seal_update, state_upload
from confide.platform.member.engine import MemberRecord, RoundFacts, advance, leave_federation, settle
from confide.platform.member.errors import MemberError
from confide.platform.member.keyring import KeyRing
from confide.platform.member.learner import Learner
from confide.platform.member.server_step import ServerState, apply_average, load_state, state_array
from confide.platform.member.store import MemberStore
from confide.platform.member_api import Contribution, KeyBundle, Outcome
from confide.platform.secure_sum import Reveals
from confide.platform.sum_evidence import SumEvidence, split_problem, sum_problem
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.ledger_registry import LedgerRegistry
from confide.privacy.ledger_registry import registry_dir as registry_dir_of


class Member:
    """An institution in one federation (a `member_api.RoundMember`).

    Construct it in the process that will train: by default it loads the model and data
    (`learner.LocalModel`); pass `learner` to run the same member over another. `private=False` is for
    experiments only (a sweep's no-DP reference point): rounds clip but add no noise, and the ledger
    records them as `nonprivate` entries instead of spends. `registry_dir`: the institution's registry
    of ledgers (privacy.ledger_registry), by default beside its identity.
    """

    def __init__(self, federation: FederationPolicy, policy: InstitutionPolicy, progress: Any = None,
                 private: bool = True, registry_dir: Path | None = None, learner: Learner | None = None) -> None:
        self.federation, self.policy, self.progress = federation, policy, progress
        self.institution_id = policy.institution_id
        self.identity = Identity.load(policy.identity_path)
        self.roster = roster_identities(federation.roster)
        """Every member's public keys, from our own federation file: what we check signed documents against."""
        self._refuse_other_identity()
        if learner is None:
            from confide.platform.member.learner import LocalModel

            learner = LocalModel(federation, policy)
        self.learner = learner
        registry = LedgerRegistry(registry_dir or registry_dir_of(policy.identity_path))
        self.account = PrivacyAccount(federation, policy, self.identity, learner.data, registry, private)
        self._announce()
        directory = Path(policy.state_dir) / "federations" / federation.federation_id
        self.store = MemberStore(directory)
        self.keys = KeyRing(directory, federation, self.roster, self.identity)
        self.record = self.store.load_record(policy.dataset_id)
        self.server_state = ServerState.initial(learner.initial)
        saved = self.store.adapter(self.last_applied_round)
        if saved is not None:
            self.server_state = load_state(federation.server_update, saved,
                                           self.store.adapter_path(self.last_applied_round))
            learner.load(self.server_state.adapter)
        self._reveals = Reveals(self.store.reveals_dir, federation, self.roster, self.identity)

    def _refuse_other_identity(self) -> None:
        if self.identity.institution_id != self.institution_id:
            raise MemberError(f"identity at {self.policy.identity_path} is {self.identity.institution_id!r}, "
                              f"not {self.institution_id!r}")
        member = self.federation.member(self.institution_id)
        if member is None:
            raise MemberError(f"{self.institution_id} is not on the roster of {self.federation.federation_id}")
        if unb64(member.signing_key, "roster signing_key") != self.identity.public.signing_public:
            raise MemberError(f"the roster's signing key for {self.institution_id} is not this identity's",
                              "put the fingerprint printed by `confide keys init` in the roster")

    def _announce(self) -> None:
        opened = self.account.opened
        if opened.new_version is not None and opened.previous_fingerprint is not None:
            self._note(f"dataset {self.policy.dataset_id}: new data version "
                       f"{opened.new_version.fingerprint[:12]} ({opened.new_version.records} records) recorded; "
                       f"it inherits epsilon {self.ledger.epsilon_spent():.3f} already spent")

    def _emit(self, event: ProgressEvent) -> None:
        if self.progress is not None:
            self.progress.put(event)

    def _note(self, text: str) -> None:
        self._emit(MemberNote(self.institution_id, text))

    def _commit(self, record: MemberRecord) -> None:
        self.store.commit(record)
        self.record = record

    # ------------------------------------------------------------------------------- views
    @property
    def ledger(self):
        return self.account.ledger

    @property
    def layout(self):
        return self.learner.layout

    @property
    def secret(self):
        return self.keys.secret

    @property
    def last_applied_round(self) -> int:
        return self.record.last_applied_round

    @property
    def aborted(self) -> str | None:
        return self.record.aborted

    @property
    def weight(self) -> float:
        """Our public aggregation weight, from the federation file's roster."""
        return float(self.federation.member(self.institution_id).weight)

    def round_state(self, round_index: int) -> MemberRoundState | None:
        """Where round `round_index` stands for us (None: we have done nothing in it yet)."""
        return self.record.state_of(round_index)

    # ------------------------------------------------------------------------------- keys
    def is_key_holder(self) -> bool:
        return self.federation.key_holder_id == self.institution_id

    def has_key(self) -> bool:
        return self.keys.has_key()

    def key_id(self) -> str | None:
        return self.keys.key_id()

    def make_keys(self) -> KeyBundle:
        """Key holder only: create the federation's key (once), seal it to every member, certify it."""
        return self.keys.make(self.layout.hash, self.layout.size, self.account.record_key)

    def install_key(self, sealed: bytes, certificate: KeyCertificate) -> str:
        """Check the key holder's certificate and install our sealed copy of the key (`keyring.KeyRing.install`)."""
        return self.keys.install(sealed, certificate, self.layout.hash, self.layout.size, self.account.record_key)

    # ------------------------------------------------------------------------------- rounds
    def rounds_left(self) -> int:
        """Rounds still to plan for: those of the federation not settled yet, within our max_rounds.

        After a restart this is what remains, so the noise is calibrated for the rounds to come on
        top of what the ledger already holds (not re-spread over rounds that are over).
        """
        fed_rounds = self.federation.rounds - self.last_applied_round
        ours = self.policy.max_rounds - self.account.rounds_taken()
        return max(1, min(fed_rounds, ours))

    def plan(self) -> dict:
        """The participation plan: the noise calibrated once for the rounds to come (see privacy.budget)."""
        return self.account.plan(self.rounds_left()).as_dict()

    def take_part(self, round_index: int) -> Contribution:
        """Decide and, if allowed, reserve, train and encrypt this round. Idempotent: never trains a round twice.

        `engine.resume` decides from the record and what is on disk: a decline is returned again, a
        trained round's envelope is uploaded again, a round spent but not trained is declined with
        its spend counted, never retrained with a fresh noise draw.
        """
        envelope = self.store.envelope(round_index)
        facts = RoundFacts(envelope_written=envelope is not None, spend_recorded=self.account.spent_on(round_index))
        step = engine.resume(self.record, round_index, facts)
        if step.record is not self.record:
            self._commit(step.record)
        if step.action == "upload":
            if envelope is None:
                raise MemberError(f"round {round_index} was trained, but {self.store.envelope_path(round_index)} "
                                  "is missing", "restore the federation's state directory from a backup")
            if step.adopt:
                self._adopt(round_index, envelope)
            return self._upload(round_index, envelope)
        if step.action == "decline":
            return self._decline(round_index, step.reason) if step.record_decline else Contribution(
                "decline", reason=step.reason)
        if step.action == "refuse":
            raise MemberError(step.reason)
        return self._start(round_index)

    def _start(self, round_index: int) -> Contribution:
        if self.aborted:
            return self._decline(round_index, f"left the federation: {self.aborted}", in_ledger=False)
        if self.last_applied_round != round_index - 1:
            raise MemberError(f"{self.institution_id} holds the adapter of round {self.last_applied_round}, "
                              f"round {round_index} needs round {round_index - 1}", "apply the missing sums first")
        plan = self.account.plan(self.rounds_left())
        reserved = self.account.reserve(round_index, plan.spend)
        if not reserved.granted:
            return self._decline(round_index, "; ".join(reserved.reasons), in_ledger=False)
        self._commit(advance(self.record, round_index, "reserved"))
        self._note(f"round {round_index}: training (eps after {reserved.epsilon:.2f})")
        vector = self.learner.train(plan.spend, lambda step, steps: self._emit(
            TrainingStep(self.institution_id, round_index, step, steps, reserved.epsilon)))
        # The weight travels inside the sum that every member decrypts, so it is public: it comes
        # from the federation file, never from the data (a record count here would tell the others
        # our n, which the add/remove-one epsilon we record assumes they cannot learn), and every
        # member checks the sum's total weight against the contributors' weights there.
        envelope, shares = seal_update(self.federation, self.roster, self.secret, round_index, self.institution_id,
                                       vector, self.weight, self.layout.hash)
        self.store.write_upload(round_index, envelope, shares)
        self._adopt(round_index, envelope)
        self._note(f"round {round_index}: uploaded {len(envelope) / 1e6:.2f} MB, "
                   f"eps {reserved.epsilon:.2f}")
        return self._upload(round_index, envelope)

    def _adopt(self, round_index: int, envelope: bytes) -> None:
        """Record the upload of `envelope` in the ledger (once) and move the round to `trained`."""
        head = self.account.record_upload(round_index, envelope, self.weight)
        self._commit(advance(self.record, round_index, "trained", envelope_sha256=sha256(envelope),
                             ledger_head=head))

    def _upload(self, round_index: int, envelope: bytes) -> Contribution:
        """The upload of a trained round: envelope, mask shares, ledger head, declared spend, statement."""
        declared = self.account.declared(round_index)
        if declared is None:
            raise MemberError(f"round {round_index}: an envelope exists but the ledger has no spend for it",
                              "restore the ledger from the newest backup")
        shares = self.store.shares(round_index)
        statement = state_upload(self.identity, self.federation, self.secret, self.keys.integrity_key, round_index,
                                 envelope, shares, self.policy.min_cohort,
                                 self.account.applied_sums().get(round_index - 1, ""))
        return Contribution("upload", envelope=envelope, ledger_head=self.record.round(round_index).ledger_head,
                            declared=declared, statement=statement, shares=shares)

    def _decline(self, round_index: int, reason: str, in_ledger: bool = True) -> Contribution:
        """Sit the round out. `in_ledger`: write a `decline` entry (a refused reservation has written its own)."""
        if in_ledger:
            self.account.record_decline(round_index, reason)
        self._commit(advance(self.record, round_index, "declining", reason=reason))
        self._note(f"round {round_index}: declined")
        return Contribution("decline", reason=reason)

    def note_declined(self, round_index: int) -> None:
        """The coordinator has our decline of `round_index` (idempotent)."""
        if self.record.state_of(round_index) == "declining":
            self._commit(advance(self.record, round_index, "declined"))

    def note_missed(self, round_index: int) -> None:
        """The round closed before our answer counted (deadline or quorum); its sum comes without us."""
        if engine.can_miss(self.record, round_index):
            self._commit(advance(self.record, round_index, "missed"))

    def reveal(self, round_index: int, statements: list[ContributionStatement],
               shares: dict[str, bytes]) -> RevealStatement:
        """As a committee member: our signed share sum over the round's contributors (`secure_sum.Reveals`:
        once per round, for one set; raises RevealRefused otherwise)."""
        return self._reveals.reveal(round_index, self.secret.key_id, statements, shares)

    # ------------------------------------------------------------------------------- receipts
    def record_receipt(self, round_index: int, receipt: dict, envelope: bytes | None,
                       coordinator_key: bytes) -> dict:
        """Check the coordinator's receipt for our upload and keep it in the ledger (once); return it.

        The receipt must pass `engine.receipt_problem` against our envelope (None: the one we stored
        for the round, if any), our ledger head and spend, and verify under `coordinator_key`
        (Ed25519, 32 bytes). Raises MemberError otherwise, and stores nothing.
        """
        try:
            parsed = Receipt.from_dict(receipt)
        except (KeyError, TypeError, ValueError) as exc:
            raise MemberError(f"round {round_index}: malformed receipt ({exc})") from None
        envelope = envelope if envelope is not None else self.store.envelope(round_index)
        head = self.account.upload_head(round_index, envelope) if envelope is not None else None
        problem = engine.receipt_problem(parsed, (self.federation.federation_id, round_index, self.institution_id),
                                         sha256(envelope) if envelope is not None else None, head,
                                         self.account.spend_differences(round_index, parsed))
        if problem is None and not PublicIdentity(coordinator_key, b"").signed(parsed):
            problem = "the receipt's signature does not verify under the coordinator's key"
        if problem is not None:
            raise MemberError(f"round {round_index}: {problem}")
        if envelope is not None:
            self.account.keep_receipt(round_index, parsed)
            if self.record.state_of(round_index) == "trained":
                self._commit(advance(self.record, round_index, "receipted", receipt=parsed.to_dict()))
        return parsed.to_dict()

    def check_anchor(self, receipt: dict | None) -> None:
        """Refuse a ledger that is behind what our latest receipt shows the coordinator saw.

        The coordinator keeps our newest receipt, which names our ledger head at that upload; a
        ledger without that entry was restored from an older copy, replaced or lost. Raises
        LedgerRollbackError then (nothing may be spent until an operator restores the newest copy).
        """
        if receipt is not None:
            self.account.check_anchor(Receipt.from_dict(receipt))

    # ------------------------------------------------------------------------------- sums
    def apply_sum(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence) -> Outcome:
        """Check the round's encrypted sum against its evidence, decrypt it, check its count against
        min_cohort, and apply the average with the federation's server step (`server_step`: FedAvgM).

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
        count = len(evidence.statements)
        problem = self._sum_problem(round_index, sum_envelope, evidence)
        small = engine.too_small(round_index, count, self.policy.min_cohort) if problem is None else None
        if small is not None:
            # Counted from member-signed statements, before anything is decrypted: a sum this small
            # would show too much of each contribution, so it is never opened.
            self.account.record_abort(round_index, small, count)
            self._commit(settle(self.record, round_index, "aborted", count, small, leave=small))
            return Outcome("aborted", count, small)
        if problem is not None:  # altered around its ciphertexts: the coordinator's doing, or a replay
            return self._settle_failed(round_index, f"refused the sum: {problem}", sum_envelope)
        opened = open_sum(self.federation, self.roster, self.secret, self.keys.integrity_key, round_index,
                          sum_envelope, evidence, self.layout.hash, self.layout.size, self.server_state.adapter)
        for line in opened.left_out:
            self._note(f"round {round_index}: reveal left out ({line})")
        if opened.problem is not None:
            # A faulty member's upload, or a coordinator that altered the sum: nothing of this round
            # is applied, the spends stay counted, and the federation goes on (`OpenedSum.broken`
            # says whether it is reported as a broken sum).
            return self._settle_failed(round_index, f"refused the sum: {opened.problem}",
                                       sum_envelope if opened.broken else None)
        result = opened.result
        updated = apply_average(self.federation.server_update, self.server_state, result.average)
        self.store.save_adapter(round_index, state_array(self.federation.server_update, updated))
        self.learner.load(updated.adapter)
        self.account.record_applied(round_index, result.count, sha256(sum_envelope))
        self._commit(settle(self.record, round_index, "applied", result.count))
        self.server_state = updated
        self.store.drop_adapters_before(self.last_applied_round)
        return Outcome("applied", result.count, statement=self._applied_statement(round_index))

    def _sum_problem(self, round_index: int, sum_envelope: bytes, evidence: SumEvidence) -> str | None:
        """What is wrong with the sum around its ciphertexts (`sum_evidence.sum_problem`), or None."""
        mine = engine.own_envelope(self.record, round_index)
        # A kill after the `applied` entry and before the record leaves this round's own sum in the
        # ledger: applying it again to the previous adapter is the resume, not a replay.
        earlier = {digest for index, digest in self.account.applied_sums().items() if index != round_index}
        return sum_problem(self.federation, self.roster, self.institution_id, round_index, self.secret.key_id,
                           sum_envelope, evidence, mine, earlier)

    def _applied_statement(self, round_index: int) -> AppliedStatement | None:
        """Our signed statement of the sum we applied in `round_index` (None if we applied none)."""
        digest = self.account.applied_sums().get(round_index)
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
        ours = self.account.applied_sums()
        for statement in statements:
            problem = split_problem(statement, self.federation, self.roster, ours.get(statement.round))
            if problem is None or self.aborted:
                continue
            self.account.record_abort(statement.round, problem)
            self._commit(leave_federation(self.record, f"leaving the federation: {problem}"))
            return problem
        return None

    def _settled(self, round_index: int) -> Outcome | None:
        r = self.record.round(round_index)
        if r is None or not r.settled:
            return None
        statement = self._applied_statement(round_index) if r.state == "applied" else None
        return Outcome(r.state, r.count, r.reason, r.undecryptable, statement)

    def note_failed_round(self, round_index: int, reason: str) -> Outcome:
        """The round failed at the coordinator: nothing to apply, the adapter stays as it is."""
        return self._settle_failed(round_index, reason)

    def _settle_failed(self, round_index: int, reason: str, sum_envelope: bytes | None = None) -> Outcome:
        done = self._settled(round_index)
        if done is not None:
            return done
        undecryptable = sum_envelope is not None
        self.account.record_failed(round_index, reason, sha256(sum_envelope) if undecryptable else None)
        if round_index == self.last_applied_round + 1:
            # The adapter and its velocity stay as they were: saved under the new round's name.
            self.store.save_adapter(round_index, state_array(self.federation.server_update, self.server_state))
        policy = self.federation
        cap = leave_out_cap(len(policy.roster), policy.min_institutions, policy.colluders)
        record = engine.fail(self.record, round_index, reason, undecryptable, patience(len(policy.roster), cap))
        if record.aborted and not self.aborted:
            self.account.record_abort(round_index, record.aborted)
        self._commit(record)
        self.store.drop_adapters_before(self.last_applied_round)
        r = record.round(round_index)
        return Outcome("failed", 0, r.reason, undecryptable=undecryptable)

    # ------------------------------------------------------------------------------- results
    def evaluate(self, records: list[dict] | None) -> dict:
        """Scores of the current adapter on `records` (None: our local eval split); see `learner.LocalModel`."""
        return self.learner.evaluate(records)

    def save_adapter(self, out_dir: Path) -> str:
        """Save the current adapter in PEFT format (loadable with PeftModel.from_pretrained), with its
        model card: README.md and privacy.json stating our ledger's guarantee (platform.model_card)."""
        from confide.platform.model_card import member_card, write_card

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.learner.save(out_dir)
        write_card(out_dir, member_card(out_dir, self.federation, self.policy, self.ledger, self.last_applied_round,
                                        self.account.private))
        return str(out_dir)

    def privacy_status(self) -> dict:
        return {**self.account.status(), "aborted": self.aborted}

