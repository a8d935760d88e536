"""Did the institution spend what it says, and only what its policies allow?

Checks over the spend entries of one ledger:
- `spend_fields`: every spend carries its DP-SGD parameters as valid numbers;
- `epsilon_pld`: no recorded cumulative epsilon is below dp_accounting's PLD value (independent);
- `epsilon_accountant`: nor below the recorded accountant (PLD or RDP) recomputed from scratch;
- `budget`, `budget_delta`, `round_cap`, `clipping`: the institution policy's limits;
- `federation_delta`, `federation_accountant`, `federation_noise`: the federation's requirements;
- `federation_steps`, `sample_rate`, `nonprivate`: each spend matches the federation's schedule
  (steps per round; sample rate = expected batch / the training records the ledger itself records),
  and no round of a real federation trained without noise.
"""

from __future__ import annotations

import math
from typing import Sequence

from confide.policies import FederationPolicy, InstitutionPolicy
from confide.policies.decision import EPSILON_SLACK
from confide.policies.federation import MAX_STEPS_PER_ROUND
from confide.privacy.audit.recompute import (
    DEFAULT_TOLERANCE,
    RECOMPUTED,
    SpendParameters,
    SpendRecomputation,
    Tolerance,
)
from confide.privacy.audit.result import Check
from confide.privacy.ledger_entries import Kind, entries_of


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _spend_problem(entry: dict) -> str | None:
    """Why this spend entry cannot be accounted for, or None if its parameters are usable."""
    sigma, rate, steps = entry.get("noise_multiplier"), entry.get("sample_rate"), entry.get("steps")
    rules = [
        (_number(sigma) and sigma >= 0, f"noise_multiplier {sigma!r} is not a number >= 0"),
        (_number(rate) and 0 < rate <= 1, f"sample_rate {rate!r} is not in (0, 1]"),
        (isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_STEPS_PER_ROUND,
         f"steps {steps!r} is not an integer from 1 to {MAX_STEPS_PER_ROUND:,}"),
        (_number(entry.get("delta")) and 0 < entry["delta"] < 1, f"delta {entry.get('delta')!r} is not in (0, 1)"),
        (_number(entry.get("epsilon")) and entry["epsilon"] >= 0,
         f"epsilon {entry.get('epsilon')!r} is not a number >= 0"),
        (isinstance(entry.get("accountant"), str), f"accountant {entry.get('accountant')!r} is not a name"),
        (isinstance(entry.get("round"), int) and isinstance(entry.get("federation"), str),
         "round or federation missing"),
        (isinstance(entry.get("seq"), int), f"seq {entry.get('seq')!r} is not an integer"),
    ]
    failed = [message for ok, message in rules if not ok]
    return "; ".join(failed) if failed else None


def parse_spends(entries: list[dict]) -> tuple[list[SpendParameters], list[Check]]:
    """The usable spend entries in ledger order, and a failed `spend_fields` check per unusable one.

    An unusable spend is still a spend: it is left out of the recomputation (which then
    under-counts), so it always fails the audit.
    """
    spends: list[SpendParameters] = []
    checks: list[Check] = []
    for line, entry in enumerate(entries, start=1):
        if not entries_of([entry], Kind.SPEND):
            continue
        problem = _spend_problem(entry)
        seq = entry.get("seq") if isinstance(entry.get("seq"), int) else line
        if problem:
            checks.append(Check("spend_fields", False, f"spend cannot be accounted: {problem}", seq, line))
            continue
        spends.append(SpendParameters(
            seq=entry["seq"], federation=entry["federation"], round=entry["round"],
            noise_multiplier=float(entry["noise_multiplier"]), sample_rate=float(entry["sample_rate"]),
            steps=entry["steps"], delta=float(entry["delta"]), accountant=entry["accountant"],
            recorded_epsilon=float(entry["epsilon"]),
            clipping_norm=float(entry["clipping_norm"]) if _number(entry.get("clipping_norm")) else None,
        ))
    if not checks:
        checks.append(Check("spend_fields", True, f"{len(spends)} spend entries, all with valid DP-SGD parameters"))
    return spends, checks


def _summary(name: str, failures: list[Check], passed_detail: str) -> list[Check]:
    return failures if failures else [Check(name, True, passed_detail)]


def accounting_checks(recomputed: Sequence[SpendRecomputation],
                      tolerance: Tolerance = DEFAULT_TOLERANCE) -> list[Check]:
    """Flag recorded cumulative epsilons below the PLD or the recorded accountant's recomputation.

    A recorded value above either is conservative and passes (RDP is 8-17% above PLD by design).
    """
    pld, acct = [], []
    for r in recomputed:
        if tolerance.is_below(r.recorded_epsilon, r.pld_epsilon):
            pld.append(Check("epsilon_pld", False,
                             f"recorded epsilon {r.recorded_epsilon:.4f} < {r.pld_epsilon:.4f} by PLD "
                             f"(round {r.round} of {r.federation}; "
                             f"tolerance {tolerance.allowed_shortfall(r.pld_epsilon):.3g})",
                             r.seq))
        if r.accountant_epsilon is None:
            acct.append(Check("epsilon_accountant", False,
                              f"unknown accountant {r.accountant!r} (expected one of {', '.join(RECOMPUTED)})",
                              r.seq))
        elif tolerance.is_below(r.recorded_epsilon, r.accountant_epsilon):
            acct.append(Check("epsilon_accountant", False,
                              f"recorded epsilon {r.recorded_epsilon:.4f} < {r.accountant_epsilon:.4f} by "
                              f"{r.accountant.upper()} recomputed from the spends", r.seq))
    n = len(recomputed)
    last = (f"; last {recomputed[-1].recorded_epsilon:.4f} recorded, {recomputed[-1].pld_epsilon:.4f} by PLD"
            if n else "")
    return (_summary("epsilon_pld", pld, f"{n} recorded epsilons at or above dp_accounting PLD{last}")
            + _summary("epsilon_accountant", acct,
                       f"{n} recorded epsilons at or above their accountant's recomputation"))


def institution_checks(recomputed: Sequence[SpendRecomputation], spends: Sequence[SpendParameters],
                       policy: InstitutionPolicy | None, federations: dict[str, FederationPolicy]) -> list[Check]:
    """The institution policy's limits: total budget and delta, per-round cap, clipping norm.

    Without a policy these are reported as not evaluated, except the federation's own per-round cap.
    """
    checks: list[Check] = []
    if policy is None:
        checks.append(Check("budget", None, "no institution policy given (--policy): budget not checked"))
    else:
        budget = policy.budget.epsilon
        over = next((r for r in recomputed if max(r.recorded_epsilon, r.pld_epsilon) > budget + EPSILON_SLACK), None)
        if over is not None:
            checks.append(Check("budget", False,
                                f"cumulative epsilon {over.recorded_epsilon:.4f} recorded, "
                                f"{over.pld_epsilon:.4f} by PLD "
                                f"exceeds the budget {budget:g} (round {over.round} of {over.federation})", over.seq))
        else:
            spent = max((max(r.recorded_epsilon, r.pld_epsilon) for r in recomputed), default=0.0)
            checks.append(Check("budget", True, f"spent {spent:.4f} of budget {budget:g}"))
        bad_delta = [s for s in spends if s.delta > policy.budget.delta]
        checks += _summary("budget_delta", [
            Check("budget_delta", False, f"delta {s.delta:g} > budget delta {policy.budget.delta:g}", s.seq)
            for s in bad_delta], f"every spend accounts at delta <= {policy.budget.delta:g}")
        bad_clip = [s for s in spends
                    if s.clipping_norm is None or not math.isclose(s.clipping_norm, policy.clipping_norm)]
        checks += _summary("clipping", [
            Check("clipping", False, f"clipping_norm {s.clipping_norm!r} differs from the policy's "
                                     f"{policy.clipping_norm:g}", s.seq) for s in bad_clip],
            f"every spend clips at {policy.clipping_norm:g}")
    checks += _round_cap_checks(recomputed, policy, federations)
    return checks


def _round_cap_checks(recomputed: Sequence[SpendRecomputation], policy: InstitutionPolicy | None,
                      federations: dict[str, FederationPolicy]) -> list[Check]:
    failures, evaluated = [], 0
    for r in recomputed:
        fed = federations.get(r.federation)
        caps = [c for c in (policy.round_epsilon_cap if policy else None,
                            fed.privacy.max_round_epsilon if fed else None) if c is not None]
        if not caps:
            continue
        evaluated += 1
        if r.round_pld_epsilon > min(caps) + EPSILON_SLACK:
            failures.append(Check("round_cap", False, f"round {r.round} of {r.federation} spends "
                                  f"{r.round_pld_epsilon:.4f} by PLD > cap {min(caps):g}", r.seq))
    if failures:
        return failures
    if not evaluated:
        return [Check("round_cap", None, "no per-round cap known (institution policy or federation file)")]
    return [Check("round_cap", True, f"{evaluated} rounds within their per-round cap")]


def federation_checks(spends: Sequence[SpendParameters], federations: dict[str, FederationPolicy]) -> list[Check]:
    """Each spend against its own federation's requirements (delta, accountant, minimum noise).

    A federation of the spends without its file is named in a check not evaluated (`passed` None).
    """
    failures, evaluated = [], 0
    unknown = sorted({s.federation for s in spends} - set(federations))
    for s in spends:
        fed = federations.get(s.federation)
        if fed is None:
            continue
        evaluated += 1
        req = fed.privacy
        if s.delta > req.delta * (1 + 1e-9):
            failures.append(Check("federation_delta", False,
                                  f"delta {s.delta:g} > federation delta {req.delta:g}", s.seq))
        if s.accountant != req.accountant:
            failures.append(Check("federation_accountant", False,
                                  f"accountant {s.accountant!r}, federation requires {req.accountant!r}", s.seq))
        if s.noise_multiplier < req.min_noise_multiplier:
            failures.append(Check("federation_noise", False, f"noise multiplier {s.noise_multiplier:g} < federation "
                                  f"minimum {req.min_noise_multiplier:g}", s.seq))
    missing = [Check("federation", None, f"no federation file for {name} (--federation): its requirements not "
                     "checked", federation=name) for name in unknown]
    if failures or not evaluated:
        return failures + missing
    return [Check("federation", True, f"{evaluated} spends meet their federation's delta, accountant and "
                                      "minimum noise")] + missing


def _train_records_at(entries: list[dict]) -> dict[int, int]:
    """seq of each spend -> the training-set size in force (its own record, else the last data version)."""
    sizes, current = {}, None
    for entry in entries:
        if entries_of([entry], Kind.DATA_VERSION) and isinstance(entry.get("train_records"), int):
            current = entry["train_records"]
        if entries_of([entry], Kind.SPEND) and isinstance(entry.get("seq"), int):
            own = entry.get("train_records")
            size = own if isinstance(own, int) and not isinstance(own, bool) else current
            if size is not None:
                sizes[entry["seq"]] = size
    return sizes


def schedule_checks(entries: list[dict], spends: Sequence[SpendParameters],
                    federations: dict[str, FederationPolicy]) -> list[Check]:
    """Each spend against its federation's schedule, and no noiseless round in a real federation.

    A re-signed ledger can claim any parameters, but not ones that disagree with the federation
    file (steps per round) or with its own recorded training-set size and the federation's expected
    batch (the sample rate q = min(1, expected_batch_size / n)).
    """
    checks: list[Check] = []
    sizes = _train_records_at(entries)
    steps_failures, rate_failures, evaluated, rated = [], [], 0, 0
    for s in spends:
        fed = federations.get(s.federation)
        if fed is None:
            continue
        evaluated += 1
        if s.steps != fed.training.steps_per_round:
            steps_failures.append(Check("federation_steps", False, f"round {s.round} of {s.federation} records "
                                        f"{s.steps} steps, the federation file says {fed.training.steps_per_round}",
                                        s.seq))
        n = sizes.get(s.seq)
        if n is None or n < 1:
            continue
        rated += 1
        expected = min(1.0, fed.training.expected_batch_size / n)
        if abs(s.sample_rate - expected) > 1e-9 * max(1.0, expected):
            rate_failures.append(Check("sample_rate", False, f"round {s.round} of {s.federation} records sample "
                                       f"rate {s.sample_rate:.6g}, but expected batch "
                                       f"{fed.training.expected_batch_size} over the {n} training records the "
                                       f"ledger records gives {expected:.6g}", s.seq))
    if evaluated:
        checks += _summary("federation_steps", steps_failures, f"{evaluated} spends take their federation's steps")
    if rated:
        checks += _summary("sample_rate", rate_failures,
                           f"{rated} sample rates match expected batch / recorded training records")
    elif evaluated:
        checks.append(Check("sample_rate", None, "no training-set size recorded: sample rates not checked"))
    noiseless = [e for e in entries_of(entries, Kind.NONPRIVATE) if e.get("federation") in federations]
    checks += [Check("nonprivate", False, f"round {e.get('round')} of {e.get('federation')} trained without noise "
                     "(a nonprivate entry): no epsilon bounds it", e.get("seq")) for e in noiseless]
    return checks
