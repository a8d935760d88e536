"""The member's privacy account in one federation: its dataset's ledger and every entry a round writes.

It plans the participation (noise calibrated once for the rounds to come), reserves a round's spend
before training (write-ahead, `privacy.reservation`), records the upload, the decline, the receipt,
the applied or refused sum and a departure, each once, and declares the round's spend to the
coordinator exactly as the ledger holds it. Ledger entries are read here and in `privacy`, nowhere
else on the member's side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

from confide.formats import DeclaredSpend, KeyCertificate, Receipt, sha256
from confide.identity import Identity
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.accounting import RoundSpend
from confide.privacy.budget import ParticipationPlan, plan_participation, sample_rate_for
from confide.privacy.dataset_ledger import DataVersion, open_dataset_ledger
from confide.privacy.errors import LedgerRollbackError
from confide.privacy.guarantee import replace_one_epsilon
from confide.privacy.ledger import PrivacyLedger, ledger_path
from confide.privacy.ledger_entries import ACCOUNTED, Kind, entries_of
from confide.privacy.ledger_registry import LedgerRegistry
from confide.privacy.reservation import reserve_round


class DataFacts(Protocol):
    """What the account needs to know of the institution's data: its version and its records."""

    fingerprint: str
    records: int
    train_size: int
    record_digests: Sequence[bytes]


@dataclass(frozen=True)
class Reserved:
    """A round's reservation: granted (epsilon after it) or declined (the reasons, already in the ledger)."""

    granted: bool
    epsilon: float = math.nan
    reasons: tuple[str, ...] = ()


class PrivacyAccount:
    """The ledger of one dataset, seen from one federation, with the rules of what a round records."""

    def __init__(self, federation: FederationPolicy, policy: InstitutionPolicy, identity: Identity,
                 data: DataFacts, registry: LedgerRegistry, private: bool = True) -> None:
        """Open (and lock-check) the dataset's ledger, recording the data version if it is new.

        Raises LedgerRollbackError when the ledger is missing but the state directory shows the
        dataset took part in rounds, and whatever `open_dataset_ledger` raises.
        """
        self.federation, self.policy, self.data, self.registry, self.private = (federation, policy, data, registry,
                                                                                private)
        self.fed = federation.federation_id
        state_dir = Path(policy.state_dir)
        _refuse_lost_ledger(state_dir, policy.institution_id, policy.dataset_id)
        opened = open_dataset_ledger(state_dir, policy.institution_id, policy.dataset_id, identity,
                                     DataVersion(data.fingerprint, data.records, data.train_size),
                                     policy.ledger_witness_dirs, registry, data.record_digests)
        self.ledger: PrivacyLedger = opened.ledger
        self.opened = opened
        self._plan: ParticipationPlan | None = None

    # -------------------------------------------------------------------------------- planning
    def plan(self, rounds: int) -> ParticipationPlan:
        """Calibrate the noise once for `rounds` rounds on top of what the ledger holds (see privacy.budget)."""
        if self._plan is None:
            self._plan = (plan_participation(self.federation, self.policy, self.data.train_size,
                                             self.ledger.spend_history(), rounds=rounds)
                          if self.private else self._nonprivate_plan(rounds))
        return self._plan

    def _nonprivate_plan(self, rounds: int) -> ParticipationPlan:
        training, privacy = self.federation.training, self.federation.privacy
        spend = RoundSpend(0.0, sample_rate_for(training.expected_batch_size, self.data.train_size),
                           training.steps_per_round)
        return ParticipationPlan(spend, rounds, privacy.delta, privacy.accountant, self.ledger.epsilon_spent(),
                                 math.inf, math.inf, "nonprivate")

    def rounds_taken(self) -> int:
        return self.ledger.rounds_taken(self.fed)

    # -------------------------------------------------------------------------------- a round
    def reserve(self, round_index: int, spend: RoundSpend) -> Reserved:
        """Write the round's spend ahead of training (or its non-private record), or decline it."""
        trained_on = {"data_fingerprint": self.data.fingerprint, "train_records": self.data.train_size}
        if not self.private:
            # Training without noise has no finite epsilon, and the ledger rightly refuses infinite
            # ones: the round is recorded as what it is, not as a spend.
            privacy = self.federation.privacy
            self.ledger.append(Kind.NONPRIVATE, self.fed, round_index, noise_multiplier=0.0,
                               sample_rate=spend.sample_rate, steps=spend.steps,
                               clipping_norm=self.policy.clipping_norm, delta=privacy.delta,
                               accountant=privacy.accountant, **trained_on)
            return Reserved(True, math.inf)
        reservation = reserve_round(self.ledger, self.federation, self.policy, round_index, spend, self.registry,
                                    self.data.record_digests, **trained_on)
        if not reservation.granted:
            return Reserved(False, reasons=tuple(reservation.reasons))
        return Reserved(True, reservation.entry["epsilon"])

    def spent_on(self, round_index: int) -> bool:
        """The ledger accounts for our training in the round (a spend, or a non-private record)."""
        return self._spend_entry(round_index) is not None

    def _spend_entry(self, round_index: int) -> dict | None:
        return self.ledger.last_of(*ACCOUNTED, federation=self.fed, round_index=round_index)

    def declared(self, round_index: int) -> DeclaredSpend | None:
        """The round's spend as our ledger records it: declared with the upload, signed into the receipt."""
        entry = self._spend_entry(round_index)
        return None if entry is None else DeclaredSpend.of_entry(entry)

    def record_decline(self, round_index: int, reason: str) -> None:
        if self._first(Kind.DECLINE, round_index):  # a refused reservation wrote its own: no spend then
            self.ledger.append(Kind.DECLINE, self.fed, round_index, reasons=[reason])

    def record_upload(self, round_index: int, envelope: bytes, weight: float) -> str:
        """Record the upload of `envelope` (once); return the ledger head (the entry's hash) it made."""
        head = self.upload_head(round_index, envelope)
        if head is not None:
            return head
        entry = self.ledger.append(Kind.OUTCOME, self.fed, round_index, result="uploaded",
                                   envelope_sha256=sha256(envelope), weight=weight)
        return entry["hash"]

    def upload_head(self, round_index: int, envelope: bytes) -> str | None:
        """The ledger head (hash) recorded with our upload of `envelope` (None: not recorded)."""
        digest = sha256(envelope)
        for entry in reversed(entries_of(self.ledger.entries(), Kind.OUTCOME, federation=self.fed,
                                         round_index=round_index)):
            if entry.get("envelope_sha256") == digest:
                return entry["hash"]
        return None

    def spend_differences(self, round_index: int, receipt: Receipt) -> list[str] | None:
        """How the receipt's signed spend differs from our ledger's (None: our ledger has no spend)."""
        entry = self._spend_entry(round_index)
        if entry is None:
            return None
        return receipt.spend.differences(entry)

    def keep_receipt(self, round_index: int, receipt: Receipt) -> None:
        if self._first(Kind.RECEIPT, round_index):
            self.ledger.append(Kind.RECEIPT, self.fed, round_index, receipt=receipt.to_dict())

    def check_anchor(self, receipt: Receipt) -> None:
        """Refuse a ledger without the head the coordinator's receipt names (LedgerRollbackError)."""
        self.ledger.witness_hash(receipt.ledger_head,
                                 f"the coordinator's receipt for round {receipt.round} of {receipt.federation}")

    def _first(self, kind: Kind, round_index: int) -> bool:
        """No entry of `kind` for the round yet: each is written once, whatever a restart repeats."""
        return self.ledger.last_of(kind, federation=self.fed, round_index=round_index) is None

    # -------------------------------------------------------------------------------- sums
    def applied_sums(self) -> dict[int, str]:
        """The SHA-256 of the sum we applied, by round."""
        return self.ledger.applied_sums(self.fed)

    def record_applied(self, round_index: int, count: int, sum_sha256: str) -> None:
        if self._first(Kind.APPLIED, round_index):
            self.ledger.append(Kind.APPLIED, self.fed, round_index, count=count, sum_sha256=sum_sha256)

    def record_failed(self, round_index: int, reason: str, sum_sha256: str | None) -> None:
        if self._first(Kind.ROUND_FAILED, round_index):
            extra = {"sum_sha256": sum_sha256} if sum_sha256 is not None else {}
            self.ledger.append(Kind.ROUND_FAILED, self.fed, round_index, reason=reason, **extra)

    def record_abort(self, round_index: int, reason: str, count: int = 0) -> None:
        if self._first(Kind.ABORT, round_index):
            self.ledger.append(Kind.ABORT, self.fed, round_index, reason=reason, count=count)

    def record_key(self, certificate: KeyCertificate) -> None:
        """The federation key's fingerprint, once: what the adapter card and the auditor check."""
        if self.ledger.last_of(Kind.KEY, federation=self.fed) is None:
            self.ledger.append(Kind.KEY, self.fed, 0, key_id=certificate.key_id, key_holder=certificate.key_holder,
                               fingerprint=certificate.fingerprint)

    # -------------------------------------------------------------------------------- status
    def status(self) -> dict:
        privacy = self.federation.privacy
        return {
            "private": self.private,
            "epsilon": self.ledger.epsilon_spent() if self.private else None,
            # Against whoever knows our record count (the coordinator: see privacy.guarantee).
            "replace_one_epsilon": (replace_one_epsilon(self.ledger.spend_history(), privacy.delta)
                                    if self.private else None),
            "delta": privacy.delta,
            "budget_epsilon": self.policy.budget.epsilon,
            "rounds_trained": self.rounds_taken(),
            "ledger": str(self.ledger.path),
            "dataset": self.policy.dataset_id,
            "data_fingerprint": self.data.fingerprint,
            "train_records": self.data.train_size,
        }


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
