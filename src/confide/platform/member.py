"""One institution's side of a federation: decide, reserve, train, encrypt; then decrypt, check, apply.

Everything a member knows lives under its state directory, so a new `Member` over the same
directory resumes where the last one stopped (the agent may be killed at any moment):

    <state_dir>/ledger/...                      the privacy ledger (privacy.ledger)
    <state_dir>/federations/<fed>/member.json   progress: rounds applied, failed, aborted
    <state_dir>/federations/<fed>/secret.key    the CKKS secret key material (0600)
    <state_dir>/federations/<fed>/adapter.npy   the current global trainable state (float64)
    <state_dir>/federations/<fed>/rounds/       our envelope or decline for each round

The rules are elsewhere and called, not copied: participation and the write-ahead spend in
`privacy.reservation`, DP-SGD in `privacy`, packing and encryption in `aggregation`.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from confide.aggregation.codec import flatten, unflatten
from confide.aggregation.envelope import decrypt_sum, encrypt_update
from confide.aggregation.keys import create_key_material, load_secret, open_sealed, seal_secret
from confide.aggregation.params import CkksParameters
from confide.errors import BadInput
from confide.identity import Identity, unb64
from confide.platform.coordinator import sha256, write_atomically
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.accounting import RoundSpend
from confide.privacy.budget import ParticipationPlan, plan_participation, sample_rate_for
from confide.privacy.ledger import PrivacyLedger
from confide.privacy.reservation import reserve_round
from confide.privacy.trainable import load_trainable_state, trainable_state


class MemberError(BadInput):
    """The member cannot do what was asked in its current state."""


@dataclass(frozen=True)
class KeyBundle:
    """What the key holder publishes: key id, adapter layout, public context, one sealed key per member."""

    key_id: str
    layout_hash: str
    public_context: bytes
    sealed: dict[str, bytes]


@dataclass(frozen=True)
class Contribution:
    kind: str  # "upload" or "decline"
    envelope: bytes | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    kind: str  # "applied" or "aborted"
    count: int
    detail: str = ""


class Member:
    """An institution in one federation. Construct it in the process that will train (it loads the model).

    `private=False` is for experiments only (a sweep's no-DP reference point): rounds clip but add
    no noise, and the ledger records them as `nonprivate` entries instead of spends.
    """

    def __init__(self, federation: FederationPolicy, policy: InstitutionPolicy, progress: Any = None,
                 private: bool = True) -> None:
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
        self.dir = Path(policy.state_dir) / "federations" / federation.federation_id
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model, self.tokenizer = build_model(federation)
        self.data = load_institution_data(policy, federation, self.tokenizer)
        self.ledger = PrivacyLedger.open(policy.state_dir, self.institution_id, self.data.fingerprint, self.identity)
        self.ledger.ensure_intact()
        initial = trainable_state(self.model)
        _, self.layout = flatten(initial)
        self.progress_state = self._load_progress()
        adapter = self.dir / "adapter.npy"
        if adapter.exists():
            load_trainable_state(self.model, unflatten(np.load(adapter), self.layout))
        self._secret = None
        self._plan = None

    # ----------------------------------------------------------------------------------- state
    def _load_progress(self) -> dict:
        path = self.dir / "member.json"
        if path.exists():
            return json.loads(path.read_text())
        return {"synced_round": 0, "aborted": None, "rounds": {}}

    def _save_progress(self) -> None:
        write_atomically(self.dir / "member.json", json.dumps(self.progress_state, indent=1).encode())

    def _emit(self, **event: Any) -> None:
        if self.progress is not None:
            self.progress.put({"institution": self.institution_id, **event})

    @property
    def last_applied_round(self) -> int:
        return int(self.progress_state["synced_round"])

    @property
    def aborted(self) -> str | None:
        return self.progress_state["aborted"]

    # ------------------------------------------------------------------------------------ keys
    def is_key_holder(self) -> bool:
        return self.federation.key_holder_id == self.institution_id

    def has_key(self) -> bool:
        return (self.dir / "secret.key").exists()

    def _write_secret(self, secret: bytes) -> None:
        path = self.dir / "secret.key"
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(secret)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)

    def make_keys(self) -> KeyBundle:
        """Key holder only: create the federation's CKKS key (once) and seal it to every member."""
        if not self.is_key_holder():
            raise MemberError(f"{self.institution_id} is not the key holder ({self.federation.key_holder_id})")
        if not self.has_key():
            params = CkksParameters(**self.federation.ckks.model_dump())
            self._write_secret(create_key_material(params).to_bytes())
        secret = self.secret
        raw = secret.to_bytes()
        sealed = {
            m.id: seal_secret(raw, unb64(m.sealing_key, f"roster {m.id} sealing_key", 32), m.id, secret.key_id)
            for m in self.federation.roster
        }
        return KeyBundle(secret.key_id, self.layout.hash, secret.public_context().to_bytes(), sealed)

    def install_key(self, sealed: bytes) -> None:
        """Open our sealed copy of the federation key and keep it (idempotent)."""
        secret = open_sealed(sealed, self.identity.sealing_private, self.institution_id)
        material = load_secret(secret)
        if self.has_key():
            if self.secret.key_id != material.key_id:
                raise MemberError(f"already hold key {self.secret.key_id}, offered {material.key_id}")
            return
        self._write_secret(secret)
        self._secret = material

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
                                            self.ledger.spend_history())
        return self._plan.as_dict()

    def _nonprivate_plan(self) -> ParticipationPlan:
        training, privacy = self.federation.training, self.federation.privacy
        rounds = min(self.federation.rounds, self.policy.max_rounds)
        spend = RoundSpend(0.0, sample_rate_for(training.expected_batch_size, self.data.train_size),
                           training.steps_per_round)
        return ParticipationPlan(spend, rounds, privacy.delta, privacy.accountant, self.ledger.epsilon_spent(),
                                 math.inf, math.inf, "nonprivate")

    def take_part(self, round_index: int) -> Contribution:
        """Decide and, if allowed, train and encrypt this round. Idempotent: never trains a round twice."""
        rounds = self.dir / "rounds"
        envelope_path, decline_path = rounds / f"r{round_index}.envelope", rounds / f"r{round_index}.decline"
        if envelope_path.exists():
            return Contribution("upload", envelope=envelope_path.read_bytes())
        if decline_path.exists():
            return Contribution("decline", reason=decline_path.read_text())
        if self.aborted:
            return self._decline(round_index, f"left the federation: {self.aborted}", record=False)
        if self.last_applied_round != round_index - 1:
            raise MemberError(f"{self.institution_id} holds the adapter of round {self.last_applied_round}, "
                              f"round {round_index} needs round {round_index - 1}", "apply the missing sums first")
        fed = self.federation.federation_id
        if self.ledger.has_spend(fed, round_index):
            # Spent, but no envelope: we crashed while training. The spend counts; the round is not
            # re-run with a fresh noise draw.
            return self._decline(round_index, "interrupted after its spend was recorded; the spend counts, "
                                 "the round is not retrained")
        self.plan()
        if self.private:
            reservation = reserve_round(self.ledger, self.federation, self.policy, round_index, self._plan.spend)
            if not reservation.granted:
                return self._decline(round_index, "; ".join(reservation.reasons), record=False)
            epsilon = reservation.entry["epsilon"]
        else:
            # Training without noise has no finite epsilon, and the ledger rightly refuses infinite
            # ones: the round is recorded as what it is, not as a spend.
            spend = self._plan.spend
            self.ledger.append("nonprivate", fed, round_index, sample_rate=spend.sample_rate, steps=spend.steps,
                               clipping_norm=self.policy.clipping_norm)
            epsilon = math.inf
        self._emit(type="member", text=f"round {round_index}: training (eps after {epsilon:.2f})")
        delta = self._train(round_index, epsilon)
        vector, _ = flatten(delta, self.layout)
        weight = float(self.data.train_size)
        envelope = encrypt_update(self.secret, vector, weight, self.layout.hash)  # it multiplies by weight
        write_atomically(envelope_path, envelope)
        self.ledger.append("outcome", fed, round_index, result="uploaded", envelope_sha256=sha256(envelope),
                           weight=weight)
        self._emit(type="member", text=f"round {round_index}: uploaded {len(envelope) / 1e6:.2f} MB, eps {epsilon:.2f}")
        return Contribution("upload", envelope=envelope)

    def _decline(self, round_index: int, reason: str, record: bool = True) -> Contribution:
        if record:
            self.ledger.append("decline", self.federation.federation_id, round_index, reasons=[reason])
        write_atomically(self.dir / "rounds" / f"r{round_index}.decline", reason.encode())
        self._emit(type="member", text=f"round {round_index}: declined")
        return Contribution("decline", reason=reason)

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

    def record_receipt(self, round_index: int, receipt: dict) -> None:
        """Keep the coordinator's signed receipt of our upload in the ledger (once)."""
        fed = self.federation.federation_id
        if any(e["kind"] == "receipt" and e["round"] == round_index and e["federation"] == fed
               for e in self.ledger.entries()):
            return
        self.ledger.append("receipt", fed, round_index, receipt=receipt)

    def apply_sum(self, round_index: int, sum_envelope: bytes) -> Outcome:
        """Decrypt the round's encrypted sum, check its count against min_cohort, and apply the average."""
        done = self.progress_state["rounds"].get(str(round_index))
        if done is not None:
            return Outcome(done["kind"], done["count"], done.get("detail", ""))
        if self.aborted:
            return Outcome("aborted", 0, self.aborted)
        if round_index != self.last_applied_round + 1:
            raise MemberError(f"cannot apply round {round_index} on top of round {self.last_applied_round}")
        result = decrypt_sum(self.secret, sum_envelope, self.layout.hash)
        fed = self.federation.federation_id
        if result.count < self.policy.min_cohort:
            detail = (f"round {round_index} sum has {result.count} contribution(s), below min_cohort "
                      f"{self.policy.min_cohort}: leaving the federation")
            self.ledger.append("abort", fed, round_index, reason=detail, count=result.count)
            self.progress_state["aborted"] = detail
            outcome = Outcome("aborted", result.count, detail)
        else:
            current, _ = flatten(trainable_state(self.model), self.layout)
            updated = current + result.average
            load_trainable_state(self.model, unflatten(updated, self.layout))
            write_atomically_npy(self.dir / "adapter.npy", updated)
            self.ledger.append("applied", fed, round_index, count=result.count,
                               sum_sha256=sha256(sum_envelope))
            self.progress_state["synced_round"] = round_index
            outcome = Outcome("applied", result.count)
        self.progress_state["rounds"][str(round_index)] = outcome.__dict__
        self._save_progress()
        return outcome

    def note_failed_round(self, round_index: int, reason: str) -> None:
        """The round failed at the coordinator: nothing to apply, the adapter stays as it is."""
        if str(round_index) in self.progress_state["rounds"]:
            return
        self.ledger.append("round_failed", self.federation.federation_id, round_index, reason=reason)
        if round_index == self.last_applied_round + 1:
            self.progress_state["synced_round"] = round_index
        self.progress_state["rounds"][str(round_index)] = {"kind": "failed", "count": 0, "detail": reason}
        self._save_progress()

    # ------------------------------------------------------------------------------- results
    def evaluate(self, records: list[dict] | None) -> dict:
        """Accuracy and mean loss of the current adapter on `records` (None: our local eval split)."""
        from confide.privacy.training import evaluate

        dataset = self.data.eval if records is None else self.data.encode(records)
        return evaluate(self.model, dataset)

    def save_adapter(self, out_dir: Path) -> str:
        """Save the current adapter in PEFT format (loadable with PeftModel.from_pretrained)."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(out_dir))
        return str(out_dir)

    def privacy_status(self) -> dict:
        return {
            "private": self.private,
            "epsilon": self.ledger.epsilon_spent() if self.private else None,
            "delta": self.federation.privacy.delta,
            "budget_epsilon": self.policy.budget.epsilon,
            "rounds_trained": self.ledger.rounds_taken(self.federation.federation_id),
            "ledger": str(self.ledger.path),
            "dataset": self.data.fingerprint,
            "train_records": self.data.train_size,
            "aborted": self.aborted,
        }


def write_atomically_npy(path: Path, vector: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.asarray(vector, dtype=np.float64))
    write_atomically(path, buffer.getvalue())
