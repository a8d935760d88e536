"""Reserving a round's privacy cost in the ledger before training (write-ahead).

`reserve_round` is the one place where an institution turns "may I train this round?" into a ledger
entry: it refuses a damaged ledger, never spends twice for one round, computes the epsilons with
the accountant, lets `decide_participation` apply the policy rules, and writes either a `decline`
(with the reasons) or a fsynced `spend`. Only after a granted reservation may the round train.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from confide.policies.decision import Decision, LedgerState, decide_participation
from confide.policies.federation import FederationPolicy
from confide.policies.institution import InstitutionPolicy
from confide.privacy.accounting import RoundSpend
from confide.privacy.budget import BudgetCheck, strictest_cap, would_exceed
from confide.privacy.errors import DoubleSpendError
from confide.privacy.ledger import PrivacyLedger
from confide.privacy.ledger_entries import Kind
from confide.privacy.ledger_registry import LedgerRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reservation:
    """The outcome of `reserve_round`: granted (a spend entry exists) or declined (a decline entry exists)."""

    granted: bool
    entry: dict
    """The ledger entry written: `spend` if granted, `decline` otherwise."""
    check: BudgetCheck
    decision: Decision
    reasons: list[str] = field(default_factory=list)


def _finite(value: float) -> float | None:
    """JSON has no infinity: a round without noise has unbounded epsilon, recorded as null."""
    return value if math.isfinite(value) else None


def reserve_round(
    ledger: PrivacyLedger,
    federation: FederationPolicy,
    institution: InstitutionPolicy,
    round_index: int,
    spend: RoundSpend,
    registry: LedgerRegistry | None = None,
    records: Sequence[bytes] = (),
    **recorded: Any,
) -> Reservation:
    """Decide round `round_index` of `federation` for `spend` and record the decision in `ledger`.

    The whole decision runs under the dataset's ledger lock (`PrivacyLedger.transaction`): the
    budget is checked against the ledger as it is at that moment and the spend is appended before
    anyone else may check, so agents of several federations on one dataset can never together
    spend past the budget. Granted: a `spend` entry (cumulative epsilon included) is fsynced before
    this returns, so a crash during training still counts the spend. Declined: a `decline` entry
    lists the reasons, which are also logged. `recorded` fields (e.g. the data version trained on)
    are written into either entry. With `registry` (the institution's registry of ledgers) the round
    is refused, before anything is written, while another ledger has spent on any of `records` (the
    data's record digests): RecordsChargedElsewhereError; the check and the spend hold the
    registry's lock too. Raises LedgerBrokenError if the ledger is damaged,
    LedgerRollbackError if it is behind a witness, DoubleSpendError if this round already has a
    spend entry (a restarted agent must not retrain it).
    """
    with registry.locked() if registry is not None else contextlib.nullcontext():
        if registry is not None:
            registry.refuse_charged_elsewhere(ledger.path, ledger.dataset or "-", records)
        reservation = _reserve(ledger, federation, institution, round_index, spend, recorded)
        if registry is not None and reservation.granted:
            registry.mark_spent(ledger.path)
    return reservation


def _reserve(ledger: PrivacyLedger, federation: FederationPolicy, institution: InstitutionPolicy, round_index: int,
             spend: RoundSpend, recorded: dict) -> Reservation:
    fed_id = federation.federation_id
    delta, accountant = federation.privacy.delta, federation.privacy.accountant
    with ledger.transaction() as tx:
        if tx.has_spend(fed_id, round_index):
            raise DoubleSpendError(
                f"{ledger.path}: round {round_index} of {fed_id} already has a spend entry",
                "its privacy is already counted; record an abort and do not train the round again",
            )
        check = would_exceed(
            tx.spend_history(), spend, institution.budget.epsilon, strictest_cap(federation, institution),
            delta, accountant,
        )
        state = LedgerState(epsilon_spent=check.epsilon_before, rounds_taken=tx.rounds_taken(fed_id))
        decision = decide_participation(
            federation, institution, state, check.round_facts(round_index, spend.noise_multiplier)
        )
        if not decision.allowed:
            reasons = decision.reasons
            log.info("%s declines round %d of %s: %s", institution.institution_id, round_index, fed_id,
                     "; ".join(reasons))
            entry = tx.append(
                Kind.DECLINE, fed_id, round_index, reasons=reasons, epsilon_spent=_finite(check.epsilon_before),
                epsilon_after_round=_finite(check.epsilon_after), round_epsilon=_finite(check.round_epsilon),
                noise_multiplier=spend.noise_multiplier, sample_rate=spend.sample_rate, steps=spend.steps,
                **recorded,
            )
            return Reservation(False, entry, check, decision, reasons)
        entry = tx.append(
            Kind.SPEND, fed_id, round_index,
            noise_multiplier=spend.noise_multiplier, sample_rate=spend.sample_rate, steps=spend.steps,
            clipping_norm=institution.clipping_norm, delta=delta, accountant=accountant, **recorded,
        )
    return Reservation(True, entry, check, decision, [])
