"""The trade-off curve of the mechanism a ledger records, and the one-run f-DP test against it.

What the ledger records is a Poisson-subsampled Gaussian mechanism composed over its steps (a
history of `(noise_multiplier, sample_rate, steps)`). Its privacy is fully described by its
trade-off curve f (Dong, Roth and Su, "Gaussian Differential Privacy", 2019/2022): for any test
of "this record was in" against "it was out", a false-positive rate alpha forces a false-negative
rate of at least f(alpha). The curve is computed numerically from dp_accounting's privacy loss
distribution (PLD): its delta(epsilon), for every epsilon >= 0 of a grid, is a family of
(epsilon, delta)-DP guarantees, and each gives the line
    beta >= max(0, 1 - delta - e^eps alpha, e^-eps (1 - delta - alpha)).
The curve is the upper envelope of those lines (the primal-dual view of f-DP in Dong, Roth and
Su, section 2: a mechanism is f-DP for this f exactly when it is (eps, delta(eps))-DP for every
eps >= 0). Both approximations err on the safe side: the PLD is the pessimistic one (delta never
below the true value), and an envelope over a finite grid of epsilons lies at or below the exact
curve. So a mechanism that meets the recorded accounting meets this curve, and the test
below cannot fail an honest run more often than its stated level.

The test is the f-DP one-run audit of Mahloujifar, Melis and Chaudhuri ("Auditing f-Differential
Privacy in One Run", 2024), for any curve: m canaries, each included with probability 1/2, r of
them guessed, v guesses right. Whatever the dependence between canaries, an f-DP mechanism makes
v or more right with probability below `level` only if a backward recursion over i = v, ..., 0 of
two probability masses (`hit`: guesses right, `miss`: guesses wrong) overruns the r/m a guesser
can spend; each step applies the curve: mass `hit` on being right forces at least f(1 - hit) on
being wrong (for a symmetric curve, as here). For the Gaussian curve f(1 - h) is
Phi(Phi^-1(h) - mu), the form in the paper and in its authors' code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Iterable

import numpy as np
from dp_accounting.pld import privacy_loss_distribution

_EPSILON_STEP = 0.01
"""Grid step of the envelope's epsilons (finer only moves the curve up by less than this step)."""
_EPSILON_MAX = 80.0
_VALUE_DISCRETIZATION = 1e-3
"""PLD grid of privacy-loss values (pessimistic rounding: a coarser grid is looser, never unsafe)."""


@dataclass(frozen=True)
class TradeOffCurve:
    """A symmetric trade-off curve as the envelope of (epsilon, delta(epsilon)) lines.

    `epsilons` and `deltas` are the lines; an empty curve (a history with a noiseless stretch) is
    the trivial f = 0: anything is consistent with it.
    """

    epsilons: np.ndarray
    deltas: np.ndarray

    @property
    def trivial(self) -> bool:
        return len(self.epsilons) == 0

    def beta(self, alpha: float) -> float:
        """The smallest false-negative rate any test with false-positive rate `alpha` can have."""
        return self.blow_up_inverse(1.0 - alpha)

    def blow_up_inverse(self, hit: float) -> float:
        """f(1 - hit), written without forming 1 - hit (which loses the small masses the audit needs).

        The least mass of wrong guesses that a mass `hit` of right ones forces.
        """
        if self.trivial:
            return 0.0
        hit = min(max(hit, 0.0), 1.0)
        grow = np.exp(self.epsilons)
        first = grow * hit - (grow - 1.0 + self.deltas)  # 1 - delta - e^eps (1 - hit)
        second = (hit - self.deltas) / grow  # e^-eps (1 - delta - (1 - hit))
        return max(0.0, float(np.max(np.maximum(first, second))))


def _composed_pld(history: tuple[tuple[float, float, int], ...]):
    pld = None
    for sigma, rate, steps in history:
        one = privacy_loss_distribution.from_gaussian_mechanism(
            sigma, sampling_prob=rate, value_discretization_interval=_VALUE_DISCRETIZATION
        ).self_compose(steps)
        pld = one if pld is None else pld.compose(one)
    return pld


@lru_cache(maxsize=64)
def _curve_of(history: tuple[tuple[float, float, int], ...]) -> TradeOffCurve:
    if any(sigma <= 0 for sigma, _, steps in history if steps) or not history:
        return TradeOffCurve(np.zeros(0), np.zeros(0))
    pld = _composed_pld(history)
    epsilons = np.arange(0.0, _EPSILON_MAX, _EPSILON_STEP)
    deltas = np.asarray(pld.get_delta_for_epsilon(epsilons), dtype=float)
    keep = deltas < 1.0
    last = int(np.argmax(deltas <= 0.0)) if np.any(deltas <= 0.0) else len(deltas)
    keep[last + 1:] = False  # beyond delta = 0 the lines only get flatter
    return TradeOffCurve(epsilons[keep], deltas[keep])


def mechanism_curve(history: Iterable[tuple[float, float, int]]) -> TradeOffCurve:
    """The trade-off curve of Poisson-subsampled Gaussian DP-SGD composed over `history`.

    `history` is `[(noise_multiplier, sample_rate, steps), ...]`, as the ledger records it, for
    one record added or removed (dp_accounting's PLD, both directions, pessimistic). A stretch
    with noise multiplier 0 makes the curve trivial (no privacy is claimed). Raises ValueError
    for a sample rate outside (0, 1] or negative steps.
    """
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        if not 0 < rate <= 1 or steps < 0 or sigma < 0 or math.isnan(sigma):
            raise ValueError(f"need noise >= 0, sample rate in (0, 1] and steps >= 0, got {(sigma, rate, steps)}")
        if steps:
            merged[(float(sigma), float(rate))] = merged.get((float(sigma), float(rate)), 0) + int(steps)
    return _curve_of(tuple((s, q, n) for (s, q), n in sorted(merged.items())))


def consistent(curve: TradeOffCurve, m: int, r: int, v: int, level: float) -> bool:
    """Could a mechanism meeting `curve` make `v` or more of `r` guesses on `m` canaries right
    with probability at least `level`? False rejects the curve at that level.

    Raises ValueError unless 0 <= v <= r <= m, r > 0 and 0 < level < 1.
    """
    if not (0 <= v <= r <= m) or r == 0:
        raise ValueError(f"need 0 <= v <= r <= m and r > 0, got v={v}, r={r}, m={m}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    budget = r / m  # the most probability mass r guesses out of m can carry
    hit, miss = level * v / m, level * (r - v) / m
    for i in range(v - 1, -1, -1):
        forced = curve.blow_up_inverse(hit)
        if forced <= miss:
            break  # neither mass changes again
        hit, miss = hit + i / (r - i) * (forced - miss), forced
        if hit + miss > budget:
            return False  # both masses only grow from here
    return hit + miss <= budget


def most_consistent(curve: TradeOffCurve, m: int, r: int, level: float) -> int:
    """The largest number of right guesses out of `r` that `curve` still explains at `level`
    (`r` when even all-right does not reject it). More right guesses than this fail the audit."""
    if consistent(curve, m, r, r, level):
        return r
    low, high = 0, r  # consistent(low) holds (v = 0 always is), consistent(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if consistent(curve, m, r, mid, level) else (low, mid)
    return low
