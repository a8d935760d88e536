"""From membership guesses on canaries to a lower bound on epsilon (one training run).

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023): each of
m canaries is included in training independently with probability 1/2. After training, the auditor
guesses "in" for the k_plus highest-scoring canaries, "out" for the k_minus lowest and abstains on
the rest. If training is (epsilon, delta)-DP, the number of correct guesses W out of r = k_plus +
k_minus is (up to a delta term) stochastically dominated by Binomial(r, e^eps / (1 + e^eps)):

    P[W >= v] <= P[Bin(r, p) >= v] + 2 m delta * max_{1<=i<=v} P[v - i <= Bin(r, p) < v] / i.

An epsilon for which observing v correct guesses has probability below 1 - confidence is rejected;
the lower bound is the largest rejected epsilon. This module is pure statistics: scores in, bound
out. The training that produces the scores is in `canary_run`; the tighter f-DP bound computed
beside this one from the same guesses is in `canary_fdp`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.stats import binom

from confide.privacy.audit.canary_fdp import fdp_epsilon_lower_bound

DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.5)
"""Fractions of m guessed on each side; the bound is Bonferroni-corrected over these choices."""


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability, under (epsilon, delta)-DP, of at least `v` correct out of `r` guesses on `m` canaries."""
    if not (0 <= v <= r <= m):
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if epsilon < 0 or not (0.0 <= delta <= 1.0):
        raise ValueError(f"need epsilon >= 0 and delta in [0, 1], got {epsilon}, {delta}")
    if v == 0:
        return 1.0
    p = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    tail = float(binom.sf(v - 1, r, p))
    # P[v - i <= Bin < v] for i = 1..v, as differences of the CDF.
    below_v = binom.cdf(v - 1, r, p)
    i = np.arange(1, v + 1)
    window = below_v - binom.cdf(v - i - 1, r, p)
    slack = float(np.max(window / i))
    return min(1.0, tail + 2.0 * m * delta * slack)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> float:
    """The largest epsilon that `v` correct of `r` guesses on `m` canaries rejects at `confidence`.

    0.0 when even epsilon = 0 is not rejected. Accurate to about 1e-6 (bisection).
    """
    alpha = 1.0 - confidence
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) < alpha:
        low, high = high, high * 2
        if high > 1e3:  # cannot happen for finite r; guards against a runaway loop
            return low
    while high - low > 1e-6:
        mid = (low + high) / 2
        if p_value(m, r, v, mid, delta) < alpha:
            low = mid
        else:
            high = mid
    return low


def guess_membership(scores: Sequence[float], k_plus: int, k_minus: int) -> np.ndarray:
    """Guesses +1 (in) for the `k_plus` highest scores, -1 (out) for the `k_minus` lowest, 0 otherwise.

    Ties are broken by position, so equal scores never make both guesses for one canary.
    """
    values = np.asarray(scores, dtype=float)
    m = len(values)
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise ValueError(f"need k_plus + k_minus <= m, got {k_plus} + {k_minus} > {m}")
    order = np.argsort(-values, kind="stable")
    guesses = np.zeros(m, dtype=int)
    guesses[order[:k_plus]] = 1
    if k_minus:
        guesses[order[m - k_minus:]] = -1
    return guesses


@dataclass(frozen=True)
class GuessOutcome:
    """One choice of how many canaries to guess: r guesses, v of them correct, the bounds they give.

    `reachable_*` is what the same number of guesses would give were every one of them correct:
    the most this audit could show, whatever the training did.
    """

    k_plus: int
    k_minus: int
    correct: int
    epsilon_lower_bound: float
    reachable_epsilon: float
    fdp_mu_lower_bound: float
    fdp_epsilon_lower_bound: float
    fdp_reachable_epsilon: float

    @property
    def guesses(self) -> int:
        return self.k_plus + self.k_minus


@dataclass(frozen=True)
class CanaryBound:
    """The audit's statistical outcome: per guess count both bounds, and the best of each.

    `epsilon_lower_bound` (Steinke-Nasr-Jagielski) holds for (epsilon, delta)-DP whatever the
    mechanism; `fdp_epsilon_lower_bound` (Mahloujifar-Melis-Chaudhuri) is the epsilon of the
    smallest mu-GDP the guesses do not reject (see `canary_fdp`).
    """

    canaries: int
    included: int
    delta: float
    confidence: float
    epsilon_lower_bound: float
    reachable_epsilon: float
    fdp_mu_lower_bound: float
    fdp_epsilon_lower_bound: float
    fdp_reachable_epsilon: float
    best: GuessOutcome
    outcomes: list[GuessOutcome] = field(default_factory=list)


def bound_from_scores(
    scores: Sequence[float],
    included: Sequence[bool],
    delta: float,
    confidence: float = 0.95,
    guess_fractions: Sequence[float] = DEFAULT_GUESS_FRACTIONS,
) -> CanaryBound:
    """Lower-bound epsilon from membership scores (higher = more likely trained on) and the truth.

    For each fraction f, guesses f*m canaries "in" and f*m "out"; each bound is computed at
    confidence 1 - (1 - confidence) / len(guess_fractions) (Bonferroni), so reporting the best of
    them still holds at `confidence` (for each of the two bounds).
    """
    truth = np.where(np.asarray(included, dtype=bool), 1, -1)
    m = len(truth)
    if m == 0 or len(scores) != m:
        raise ValueError(f"need one score per canary, got {len(scores)} scores for {m} canaries")
    per_test = 1.0 - (1.0 - confidence) / len(guess_fractions)
    outcomes = []
    for k in sorted({max(1, min(m // 2, int(round(f * m)))) for f in guess_fractions}):
        guesses = guess_membership(scores, k, k)
        correct = int(np.sum(guesses == truth))
        mu, fdp = fdp_epsilon_lower_bound(m, 2 * k, correct, delta, per_test)
        outcomes.append(GuessOutcome(
            k, k, correct, epsilon_lower_bound(m, 2 * k, correct, delta, per_test),
            reachable_epsilon=epsilon_lower_bound(m, 2 * k, 2 * k, delta, per_test),
            fdp_mu_lower_bound=mu, fdp_epsilon_lower_bound=fdp,
            fdp_reachable_epsilon=fdp_epsilon_lower_bound(m, 2 * k, 2 * k, delta, per_test)[1],
        ))
    best = max(outcomes, key=lambda o: o.epsilon_lower_bound)
    best_fdp = max(outcomes, key=lambda o: o.fdp_mu_lower_bound)
    return CanaryBound(
        canaries=m,
        included=int(np.sum(truth == 1)),
        delta=delta,
        confidence=confidence,
        epsilon_lower_bound=best.epsilon_lower_bound,
        reachable_epsilon=max(o.reachable_epsilon for o in outcomes),
        fdp_mu_lower_bound=best_fdp.fdp_mu_lower_bound,
        fdp_epsilon_lower_bound=best_fdp.fdp_epsilon_lower_bound,
        fdp_reachable_epsilon=max(o.fdp_reachable_epsilon for o in outcomes),
        best=best,
        outcomes=outcomes,
    )
