"""Budget checks and participation planning: the numbers the participation decision needs.

The rules themselves (budget, per-round cap, minimum noise) live in
`confide.policies.decision.decide_participation`; this module computes the epsilons those rules
compare, and `would_exceed` applies the same comparison (same slack) for callers that only need a
yes/no before a round.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable

from confide.policies.decision import EPSILON_SLACK, RoundFacts
from confide.policies.federation import FederationPolicy
from confide.policies.institution import InstitutionPolicy
from confide.privacy.accounting import RoundSpend, epsilon, history_with, round_epsilon
from confide.privacy.calibration import calibrate_noise_multiplier
from confide.privacy.errors import CalibrationError, PlanError


@dataclass(frozen=True)
class BudgetCheck:
    """Epsilons before and after a prospective round, and why it would overspend (if it would)."""

    epsilon_before: float
    """Cumulative epsilon already spent on the dataset."""
    epsilon_after: float
    """Cumulative epsilon if the round is trained."""
    round_epsilon: float
    """Epsilon of the round on its own (what per-round caps limit)."""
    budget: float
    cap: float | None
    reasons: tuple[str, ...]
    """Empty if the round fits; otherwise one line per violated limit."""

    @property
    def exceeds(self) -> bool:
        return bool(self.reasons)

    def round_facts(self, round_index: int, noise_multiplier: float) -> RoundFacts:
        """The facts `decide_participation` needs about this round."""
        return RoundFacts(
            round_index=round_index,
            epsilon_after_round=self.epsilon_after,
            round_epsilon=self.round_epsilon,
            noise_multiplier=noise_multiplier,
        )


def strictest_cap(federation: FederationPolicy, institution: InstitutionPolicy) -> float | None:
    """The smaller of the institution's and the federation's per-round epsilon caps (None: no cap)."""
    caps = [c for c in (institution.round_epsilon_cap, federation.privacy.max_round_epsilon) if c is not None]
    return min(caps) if caps else None


def would_exceed(
    history: Iterable[tuple[float, float, int]],
    next_round: RoundSpend,
    budget: float,
    cap: float | None,
    delta: float,
    accountant: str = "pld",
) -> BudgetCheck:
    """Check whether training `next_round` after `history` would overspend.

    `budget` is the dataset's total epsilon, `cap` the per-round epsilon cap (None: none), both at
    `delta`. Returns a BudgetCheck whose `exceeds` is True (with `reasons`) if the cumulative
    epsilon after the round would exceed `budget` or the round's own epsilon would exceed `cap`.
    Raises AccountingError for malformed history or an unknown accountant.
    """
    past = list(history)
    before = epsilon(past, delta, accountant)
    after = epsilon(history_with(past, next_round), delta, accountant)
    alone = round_epsilon(next_round, delta, accountant)
    reasons = []
    if after > budget + EPSILON_SLACK:
        reasons.append(f"epsilon after the round would be {after:.4g} > budget {budget:g} (spent {before:.4g})")
    if cap is not None and alone > cap + EPSILON_SLACK:
        reasons.append(f"round epsilon {alone:.4g} > per-round cap {cap:g}")
    return BudgetCheck(before, after, alone, budget, cap, tuple(reasons))


@dataclass(frozen=True)
class ParticipationPlan:
    """How an institution will take part: the same DP-SGD parameters in every planned round."""

    spend: RoundSpend
    rounds: int
    delta: float
    accountant: str
    epsilon_before: float
    """Epsilon already spent on the dataset when the plan was made."""
    round_epsilon: float
    epsilon_after_plan: float
    """Cumulative epsilon once every planned round is trained."""
    limited_by: str
    """What set the noise: `budget`, `round_cap` or `min_noise_multiplier`."""

    def as_dict(self) -> dict:
        return asdict(self)


def sample_rate_for(expected_batch_size: int, train_records: int) -> float:
    """Poisson sample rate q = expected batch / records, at most 1. Raises PlanError if there are no records."""
    if train_records < 1:
        raise PlanError("the training set is empty", "add records or lower data.eval_fraction")
    return min(1.0, expected_batch_size / train_records)


def plan_participation(
    federation: FederationPolicy,
    institution: InstitutionPolicy,
    train_records: int,
    history: Iterable[tuple[float, float, int]] = (),
    rounds: int | None = None,
) -> ParticipationPlan:
    """Calibrate the noise once for the whole participation, before joining.

    Plans `rounds` rounds (default: the federation's rounds, at most the institution's
    max_rounds) of `training.steps_per_round` steps at sample rate expected_batch_size /
    `train_records`, on top of `history` (the dataset's ledger). The noise is the largest of: what
    fits the remaining budget, what keeps each round within the strictest per-round cap, and the
    federation's minimum. Raises PlanError if the budget is already spent or cannot be met.
    """
    training, privacy = federation.training, federation.privacy
    planned = rounds if rounds is not None else min(federation.rounds, institution.max_rounds)
    if planned < 1:
        raise PlanError(f"nothing to plan: {planned} rounds", "plan at least one round")
    past = list(history)
    q = sample_rate_for(training.expected_batch_size, train_records)
    steps = training.steps_per_round
    delta, accountant = privacy.delta, privacy.accountant
    before = epsilon(past, delta, accountant)
    candidates: dict[str, float] = {}
    try:
        candidates["budget"] = calibrate_noise_multiplier(
            institution.budget.epsilon, delta, q, steps, accountant, prior_history=past, repeats=planned
        )
        cap = strictest_cap(federation, institution)
        if cap is not None:
            candidates["round_cap"] = calibrate_noise_multiplier(cap, delta, q, steps, accountant)
    except CalibrationError as exc:
        raise PlanError(
            f"{institution.institution_id}: cannot plan {planned} rounds x {steps} steps at sample rate {q:.4g} "
            f"within epsilon {institution.budget.epsilon:g} (spent {before:.4g}): {exc.message}",
            "plan fewer rounds or steps, a smaller expected batch, or a larger budget",
        ) from None
    candidates["min_noise_multiplier"] = privacy.min_noise_multiplier
    limited_by = max(candidates, key=lambda k: candidates[k])
    spend = RoundSpend(candidates[limited_by], q, steps)
    after = epsilon(history_with(past, *[spend] * planned), delta, accountant)
    return ParticipationPlan(
        spend, planned, delta, accountant, before, round_epsilon(spend, delta, accountant), after, limited_by
    )
