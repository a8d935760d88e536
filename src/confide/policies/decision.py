"""Whether an institution takes part: one pure function of the two policies, its ledger and the round.

Every rule is evaluated (never short-circuited) so an operator sees all the reasons at once. A rule
whose inputs are not known yet (say, the epsilon of a round that has not been planned) is reported
as not evaluated rather than passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from confide.policies.federation import FederationPolicy
from confide.policies.institution import InstitutionPolicy

# Accounting is not exact to the last digit across platforms; a plan that lands on the budget
# (calibrated to spend exactly it) must not be refused for a rounding error.
EPSILON_SLACK = 1e-6


@dataclass(frozen=True)
class LedgerState:
    """What the institution's ledger says so far."""

    epsilon_spent: float = 0.0
    """Cumulative epsilon already spent on this dataset, across all federations."""
    rounds_taken: int = 0
    """Rounds of this federation the institution has already trained in."""


@dataclass(frozen=True)
class RoundFacts:
    """What is known about the round being decided (None: not known yet, e.g. when only joining)."""

    round_index: int | None = None
    """1-based round number."""
    epsilon_after_round: float | None = None
    """Cumulative epsilon the dataset would have after this round."""
    round_epsilon: float | None = None
    """Epsilon of this round's training on its own."""
    noise_multiplier: float | None = None


@dataclass(frozen=True)
class RuleResult:
    rule: str
    passed: bool | None
    """True: satisfied; False: violated; None: not evaluated (inputs unknown)."""
    detail: str


@dataclass(frozen=True)
class Decision:
    results: list[RuleResult] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return all(r.passed is not False for r in self.results)

    @property
    def reasons(self) -> list[str]:
        """The details of the violated rules: why the institution declines."""
        return [f"{r.rule}: {r.detail}" for r in self.results if r.passed is False]


def _check(rule: str, ok: bool, good: str, bad: str) -> RuleResult:
    return RuleResult(rule, ok, good if ok else bad)


def _unknown(rule: str, what: str) -> RuleResult:
    return RuleResult(rule, None, f"not evaluated: {what} not known yet")


def decide_participation(
    federation: FederationPolicy,
    institution: InstitutionPolicy,
    ledger: LedgerState = LedgerState(),
    round_facts: RoundFacts = RoundFacts(),
) -> Decision:
    """Evaluate every participation rule. Pure: no I/O, no clock, no randomness."""
    fed, inst = federation, institution
    results = [
        _check("roster", fed.member(inst.institution_id) is not None,
               f"{inst.institution_id} is on the roster",
               f"{inst.institution_id} is not on the roster of {fed.federation_id}"),
        _check("federation", inst.accepts_federation(fed.federation_id),
               f"{fed.federation_id} is accepted",
               f"{fed.federation_id} is not in accepts.federations {inst.accepts.federations}"),
        _check("base_model", inst.accepts_model(fed.model.source),
               f"{fed.model.source} is accepted",
               f"{fed.model.source} is not in accepts.base_models {inst.accepts.base_models}"),
        _check("encryption", fed.encryption == "ckks" or not inst.require_encryption,
               f"updates are encrypted ({fed.encryption})",
               f"encryption is required but the federation uses {fed.encryption}"),
        _check("delta", fed.privacy.delta <= inst.budget.delta,
               f"federation delta {fed.privacy.delta:g} <= budget delta {inst.budget.delta:g}",
               f"federation delta {fed.privacy.delta:g} > budget delta {inst.budget.delta:g}"),
        _check("cohort", fed.min_institutions >= inst.min_cohort,
               f"sums have at least {fed.min_institutions} >= min_cohort {inst.min_cohort} contributions",
               f"the federation may sum only {fed.min_institutions} contribution(s), "
               f"below min_cohort {inst.min_cohort}"),
        _check("release", inst.allow_release or not fed.release.to_coordinator,
               "the final adapter stays with the members" if not fed.release.to_coordinator
               else "release to the coordinator is allowed",
               "the federation releases the final adapter to the coordinator but allow_release is false"),
        _check("max_rounds", ledger.rounds_taken < inst.max_rounds,
               f"{ledger.rounds_taken} of at most {inst.max_rounds} rounds taken",
               f"already took part in {ledger.rounds_taken} rounds (max_rounds {inst.max_rounds})"),
    ]
    if round_facts.round_index is None:
        results.append(_unknown("round", "the round"))
    else:
        results.append(_check("round", 1 <= round_facts.round_index <= fed.rounds,
                              f"round {round_facts.round_index} of {fed.rounds}",
                              f"round {round_facts.round_index} is outside 1..{fed.rounds}"))
    after = round_facts.epsilon_after_round
    budget = inst.budget.epsilon
    if after is None:
        results.append(_unknown("budget", "the epsilon after this round"))
    else:
        results.append(_check("budget", after <= budget + EPSILON_SLACK,
                              f"epsilon after the round {after:.4g} <= budget {budget:g}",
                              f"epsilon after the round would be {after:.4g} > budget {budget:g}"))
    round_eps = round_facts.round_epsilon
    caps = [c for c in (inst.round_epsilon_cap, fed.privacy.max_round_epsilon) if c is not None]
    if not caps:
        results.append(RuleResult("round_cap", True, "no per-round epsilon cap"))
    elif round_eps is None:
        results.append(_unknown("round_cap", "the round's epsilon"))
    else:
        cap = min(caps)
        results.append(_check("round_cap", round_eps <= cap + EPSILON_SLACK,
                              f"round epsilon {round_eps:.4g} <= cap {cap:g}",
                              f"round epsilon {round_eps:.4g} > cap {cap:g}"))
    sigma, floor = round_facts.noise_multiplier, fed.privacy.min_noise_multiplier
    if sigma is None:
        results.append(_unknown("noise", "the noise multiplier"))
    else:
        results.append(_check("noise", sigma >= floor,
                              f"noise multiplier {sigma:.4g} >= federation minimum {floor:g}",
                              f"noise multiplier {sigma:.4g} < federation minimum {floor:g}"))
    return Decision(results)
