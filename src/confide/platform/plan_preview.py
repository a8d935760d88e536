"""What joining will cost, before anything is spent: the privacy plan `confide policy explain` shows.

With the institution's data at hand (its records are read and split as the member will, but not
tokenized) and its ledger (read, never written), the plan is the one the member would make when
it joins: `privacy.budget.plan_participation` calibrates the noise for the rounds it will take, on
top of what the ledger already holds. Every participation rule is then evaluated on round 1 of that
plan, and the rounds are walked forward to name the rule that would first refuse one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from confide.platform.data import read_source, record_digests, split_records
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.policies.decision import Decision, LedgerState, RoundFacts, decide_participation
from confide.privacy.accounting import History, epsilon, history_with
from confide.privacy.budget import ParticipationPlan, plan_participation, sample_rate_for
from confide.privacy.errors import PlanError, RecordsChargedElsewhereError
from confide.privacy.ledger import PrivacyLedger, ledger_path
from confide.privacy.ledger_registry import LedgerRegistry, registry_dir


@dataclass(frozen=True)
class LedgerSoFar:
    """What the institution's ledger holds for the dataset (read only)."""

    path: str
    exists: bool
    history: History
    epsilon_spent: float
    rounds_taken: int
    """Rounds of this federation already trained."""
    charged_elsewhere: str | None = None
    """Why joining is refused: the records are charged under another ledger (the institution's registry)."""


@dataclass(frozen=True)
class PlanPreview:
    """The plan and the decision it leads to."""

    institution: str
    dataset: str
    records: int
    eval_records: int
    train_records: int
    expected_batch_size: int
    sample_rate: float
    steps_per_round: int
    rounds_planned: int
    budget_epsilon: float
    delta: float
    accountant: str
    ledger: LedgerSoFar
    plan: ParticipationPlan | None
    """None when no plan fits (then `problem` says why)."""
    epsilon_by_round: list[float]
    """Cumulative epsilon after each planned round (index 0: after round 1)."""
    stops: str
    """The rule that would first refuse a round of this federation, and when; or that none would."""
    decision: Decision
    problem: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["decision"] = {"allowed": self.decision.allowed, "rules": [asdict(r) for r in self.decision.results]}
        data["plan"] = None if self.plan is None else self.plan.as_dict()
        data["ledger"].pop("history")
        return data


def read_ledger_so_far(federation: FederationPolicy, institution: InstitutionPolicy,
                       records: tuple[bytes, ...] = ()) -> LedgerSoFar:
    """The dataset's ledger under the institution's state_dir and (given the data's `records` digests)
    another ledger of the institution's registry that spent on them.

    Raises RegistryError for a corrupt registry.
    """
    state_dir, who, dataset = Path(institution.state_dir), institution.institution_id, institution.dataset_id
    ledger = PrivacyLedger(ledger_path(state_dir, who, dataset), who, dataset)
    elsewhere = None
    try:
        LedgerRegistry(registry_dir(institution.identity_path)).refuse_charged_elsewhere(ledger.path, dataset, records)
    except RecordsChargedElsewhereError as exc:
        elsewhere = str(exc)
    history = list(ledger.spend_history())
    rounds = ledger.rounds_taken(federation.federation_id)
    spent = epsilon(history, federation.privacy.delta, federation.privacy.accountant) if history else 0.0
    return LedgerSoFar(str(ledger.path), ledger.path.exists(), history, spent, rounds, elsewhere)


def _first_stop(federation: FederationPolicy, institution: InstitutionPolicy, ledger: LedgerSoFar,
                plan: ParticipationPlan, by_round: list[float]) -> str:
    """Walk the federation's rounds left with the plan's spend; name the first rule that refuses one.

    `by_round` holds the cumulative epsilons of the planned rounds; a round past them is accounted
    only if no rule that needs no epsilon (rounds, max_rounds) refuses it first.
    """
    left = federation.rounds - ledger.rounds_taken
    for k in range(1, left + 1):
        state = LedgerState(ledger.epsilon_spent, ledger.rounds_taken + k - 1)
        facts = RoundFacts(ledger.rounds_taken + k, None, plan.round_epsilon, plan.spend.noise_multiplier)
        for attempt in ("without epsilon", "with epsilon"):
            refused = [r for r in decide_participation(federation, institution, state, facts).results
                       if r.passed is False]
            if refused:
                return f"{refused[0].rule} at round {k} of the plan: {refused[0].detail}"
            if attempt == "without epsilon":
                after = by_round[k - 1] if k <= len(by_round) else epsilon(
                    history_with(ledger.history, *[plan.spend] * k), plan.delta, plan.accountant)
                facts = RoundFacts(facts.round_index, after, facts.round_epsilon, facts.noise_multiplier)
    return f"nothing: all {left} rounds of {federation.federation_id} left fit"


def preview_plan(federation: FederationPolicy, institution: InstitutionPolicy) -> PlanPreview:
    """The privacy plan of `institution` joining `federation`, from its data and ledger.

    Raises DataError (bad input) if the data cannot be read, as joining would.
    """
    records = read_source(institution.data, federation.model)
    train, evaluation = split_records(records, institution.data.eval_fraction)
    ledger = read_ledger_so_far(federation, institution, record_digests(records))
    training, privacy = federation.training, federation.privacy
    q = sample_rate_for(training.expected_batch_size, len(train))
    rounds = min(federation.rounds, institution.max_rounds - ledger.rounds_taken)
    plan: ParticipationPlan | None = None
    problem = None
    by_round: list[float] = []
    if ledger.charged_elsewhere is not None:
        problem = ledger.charged_elsewhere
    elif rounds < 1:
        problem = f"already took part in {ledger.rounds_taken} rounds (max_rounds {institution.max_rounds})"
    else:
        try:
            plan = plan_participation(federation, institution, len(train), ledger.history, rounds=rounds)
        except PlanError as exc:
            problem = str(exc)
    state = LedgerState(ledger.epsilon_spent, ledger.rounds_taken)
    if plan is None:
        decision = decide_participation(federation, institution, state)
        stops = f"round 1: {problem}"
    else:
        by_round = [epsilon(history_with(ledger.history, *[plan.spend] * k), plan.delta, plan.accountant)
                    for k in range(1, rounds + 1)]
        facts = RoundFacts(ledger.rounds_taken + 1, by_round[0], plan.round_epsilon, plan.spend.noise_multiplier)
        decision = decide_participation(federation, institution, state, facts)
        stops = _first_stop(federation, institution, ledger, plan, by_round)
    return PlanPreview(
        institution=institution.institution_id, dataset=institution.dataset_id, records=len(records),
        eval_records=len(evaluation), train_records=len(train), expected_batch_size=training.expected_batch_size,
        sample_rate=q, steps_per_round=training.steps_per_round, rounds_planned=max(rounds, 0),
        budget_epsilon=institution.budget.epsilon, delta=privacy.delta, accountant=privacy.accountant,
        ledger=ledger, plan=plan, epsilon_by_round=by_round, stops=stops, decision=decision, problem=problem,
    )


def plan_rows(preview: PlanPreview) -> list[tuple[str, str]]:
    """(quantity, value) rows for a two-column table that fits 80 columns."""
    p = preview
    rows = [
        ("records", f"{p.records}: {p.train_records} for training, {p.eval_records} kept for evaluation"),
        ("sample rate", f"{p.sample_rate:.4g} (expected batch {p.expected_batch_size} / {p.train_records})"),
        ("rounds", f"{p.rounds_planned} planned x {p.steps_per_round} steps = "
                   f"{p.rounds_planned * p.steps_per_round} steps"),
    ]
    ledger = f"epsilon {p.ledger.epsilon_spent:.3f} spent, {p.ledger.rounds_taken} rounds of this federation"
    if not p.ledger.exists:
        ledger = "no ledger yet: nothing spent"
    if p.ledger.charged_elsewhere is not None:
        mine = ledger if p.ledger.exists else "no ledger of this dataset id yet"
        ledger = f"{mine}; but its records are already charged under another ledger (see plan)"
    rows.append(("ledger", ledger))
    if p.plan is None:
        rows.append(("plan", f"none fits: {p.problem}"))
    else:
        plan = p.plan
        rows += [
            ("noise", f"sigma {plan.spend.noise_multiplier:.4g} (set by {plan.limited_by})"),
            ("per round", f"epsilon {plan.round_epsilon:.3f} (round alone, delta {p.delta:g}, {p.accountant})"),
            ("cumulative", ", ".join(f"{e:.2f}" for e in p.epsilon_by_round)),
            ("after plan", f"epsilon {plan.epsilon_after_plan:.3f} of budget {p.budget_epsilon:g} "
                           f"(left {max(0.0, p.budget_epsilon - plan.epsilon_after_plan):.3f})"),
        ]
    rows.append(("stops first", p.stops))
    return rows
