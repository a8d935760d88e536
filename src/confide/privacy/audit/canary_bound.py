"""From membership guesses on canaries to a lower bound on epsilon (one training run).

Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run" (NeurIPS 2023): each of
m canaries is included in training independently with probability 1/2. After training, the auditor
guesses "in" for the k_plus highest-scoring canaries, "out" for the k_minus lowest and abstains on
the rest. If training is (epsilon, delta)-DP, the number of correct guesses W out of r = k_plus +
k_minus is (up to a delta term) stochastically dominated by Binomial(r, e^eps / (1 + e^eps)):

    P[W >= v] <= P[Bin(r, p) >= v] + 2 m delta * max_{1<=i<=v} P[v - i <= Bin(r, p) < v] / i.

An epsilon for which observing v correct guesses has probability below 1 - confidence is rejected;
the lower bound is the largest rejected epsilon. It holds for any (epsilon, delta)-DP mechanism,
which is why it is weak: `confide audit canaries` reports it for information and judges with the
f-DP test against the recorded mechanism's own curve (`canary_curve`). Pure statistics.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.stats import binom


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
