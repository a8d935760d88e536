"""The one-run f-DP bound of Mahloujifar, Melis and Chaudhuri ("Auditing f-Differential Privacy in
One Run", 2024), for the Gaussian trade-off function f_mu(x) = Phi(Phi^-1(1 - x) - mu).

Same experiment as `canary_bound` (m canaries, each included with probability 1/2; r guesses, v
correct), a sharper question: could a mu-GDP mechanism make v or more of the r guesses correct
with probability at least alpha? The paper answers it with a backward recursion over the number
of correct guesses i = v, ..., 0 that tracks two probability masses, `hit` (guesses that are
right) and `miss` (guesses that are wrong). Each step applies the trade-off function: whatever
mass an f-DP mechanism puts on getting a canary right, it must put at least
f_inverse(hit) = Phi(Phi^-1(hit) - mu) on getting it wrong. The observation is impossible for
mu-GDP when the masses the recursion forces exceed the r/m a guesser can spend. The largest such mu
is the empirical privacy, reported (as in the paper) as the epsilon of mu-GDP at the run's delta.

What it shows: the run is not mu-GDP for any mu below the bound, at the stated confidence. That is
a statement about the Gaussian curve; DP-SGD's own curve is close to it but not equal, so the
verdict of `confide audit canaries` rests on the Steinke-Nasr-Jagielski bound, which assumes nothing
about the curve's shape, and this one is reported beside it.

Checked against the authors' own implementation (facebookresearch/PrivacyGuard, FDPAnalysisNode):
same recursion, evaluated here on a vectorised grid of mu instead of one mu at a time.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

_COARSE_MU = np.linspace(1e-3, 40.0, 201)
"""mu grid for the first pass (step 0.2); the second pass refines between two neighbours."""
_FINE_POINTS = 201


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of mu-GDP (Dong, Roth, Su 2019): Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)."""
    if mu <= 0:
        return 0.0
    return float(ndtr(-epsilon / mu + mu / 2) - math.exp(epsilon) * ndtr(-epsilon / mu - mu / 2))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The smallest epsilon >= 0 with gdp_delta(mu, epsilon) <= delta (bisection, about 1e-6)."""
    if not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while gdp_delta(mu, high) > delta:
        low, high = high, high * 2
    while high - low > 1e-6:
        mid = (low + high) / 2
        low, high = (mid, high) if gdp_delta(mu, mid) > delta else (low, mid)
    return high


def gdp_consistent(mu: np.ndarray, m: int, r: int, v: int, alpha: float) -> np.ndarray:
    """For each mu: could a mu-GDP mechanism give >= v correct of r guesses with probability >= alpha?

    False means the observation rejects mu-GDP at level alpha. Vectorised over `mu`.
    """
    if not (0 <= v <= r <= m) or r == 0:
        raise ValueError(f"need 0 <= v <= r <= m and r > 0, got v={v}, r={r}, m={m}")
    mu = np.asarray(mu, dtype=float)
    budget = r / m  # the most probability mass r guesses out of m can carry
    hit = np.full(mu.shape, alpha * v / m)
    miss = np.full(mu.shape, alpha * (r - v) / m)
    with np.errstate(divide="ignore", invalid="ignore"):
        for i in range(v - 1, -1, -1):
            # Mass past the budget already decides the answer; clip so ndtri stays defined.
            forced_miss = ndtr(ndtri(np.clip(hit, 0.0, 1.0)) - mu)
            new_miss = np.maximum(miss, forced_miss)
            hit = hit + i / (r - i) * (new_miss - miss)
            miss = new_miss
    return hit + miss <= budget


def mu_lower_bound(m: int, r: int, v: int, confidence: float = 0.95) -> float:
    """The largest mu that `v` correct of `r` guesses on `m` canaries rejects at `confidence` (0.0 if none).

    Grid search with step 0.001 near the answer, rounded down: never above the exact value.
    """
    alpha = 1.0 - confidence
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if v == 0:
        return 0.0
    ok = gdp_consistent(_COARSE_MU, m, r, v, alpha)
    if ok[0]:
        return 0.0
    if not ok.any():
        return float(_COARSE_MU[-1])  # beyond the grid: report its end, still a valid lower bound
    first = int(np.argmax(ok))
    fine = np.linspace(_COARSE_MU[first - 1], _COARSE_MU[first], _FINE_POINTS)
    fine_ok = gdp_consistent(fine, m, r, v, alpha)
    return float(fine[int(np.argmax(fine_ok)) - 1])


def fdp_epsilon_lower_bound(m: int, r: int, v: int, delta: float, confidence: float = 0.95) -> tuple[float, float]:
    """(mu, epsilon): the f-DP bound on mu and the epsilon of mu-GDP at `delta`, as the paper reports it."""
    mu = mu_lower_bound(m, r, v, confidence)
    return mu, (gdp_epsilon(mu, delta) if mu > 0 else 0.0)
