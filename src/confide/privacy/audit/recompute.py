"""Recompute a ledger's epsilons from the numbers it recorded.

Two recomputations per spend entry, both from the DP-SGD parameters the ledger recorded (the
auditor rebuilds each history itself, so a bug in how the agent builds or merges its history
shows up):
- PLD: dp_accounting's privacy loss distributions, the tightest bound, against which every
  recorded epsilon is measured whatever accountant recorded it;
- the recorded accountant (PLD or RDP, both dp_accounting) rerun from scratch.

Everything is a pure function of plain numbers: a history is a list of
`(noise_multiplier, sample_rate, steps)` tuples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from confide.privacy.accounting import epsilon
from confide.privacy.errors import AccountingError

Step = tuple[float, float, int]


@dataclass(frozen=True)
class Tolerance:
    """How far a recorded epsilon may fall below a recomputed one before it is flagged.

    Members and the auditor run the same accountants on the same numbers, so a recorded epsilon
    matches to floating-point noise; the slack (1e-4, relative above epsilon 1) only absorbs the
    PLD grid's rounding should a library release move it. A recorded value is flagged when
    `recorded < recomputed - max(absolute, relative * recomputed)`.
    """

    absolute: float = 1e-4
    relative: float = 1e-4

    def allowed_shortfall(self, recomputed: float) -> float:
        return max(self.absolute, self.relative * recomputed)

    def is_below(self, recorded: float, recomputed: float) -> bool:
        """True if `recorded` under-reports `recomputed` beyond the tolerance."""
        if math.isinf(recomputed):
            return not math.isinf(recorded)
        return recorded < recomputed - self.allowed_shortfall(recomputed)


DEFAULT_TOLERANCE = Tolerance()

@dataclass(frozen=True)
class SpendParameters:
    """What one spend entry recorded: its DP-SGD parameters and its claimed cumulative epsilon."""

    seq: int
    federation: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: str
    recorded_epsilon: float
    clipping_norm: float | None = None
    """Not needed for accounting (noise scales with it); checked against the institution policy."""

    @property
    def step(self) -> Step:
        return (self.noise_multiplier, self.sample_rate, self.steps)


@dataclass(frozen=True)
class SpendRecomputation:
    """One spend entry's parameters and its epsilons: recorded, by PLD, by the recorded accountant."""

    seq: int
    federation: str
    round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float | None
    delta: float
    recorded_epsilon: float
    """Cumulative epsilon the entry claims."""
    pld_epsilon: float
    """Cumulative epsilon by dp_accounting's PLD accountant (the tightest bound)."""
    accountant: str
    accountant_epsilon: float | None
    """Cumulative epsilon by the recorded accountant recomputed from scratch; None when the
    accountant is unknown."""
    round_pld_epsilon: float
    """This round's spend on its own, by PLD (what per-round caps limit)."""


def recompute_spends(spends: Sequence[SpendParameters]) -> list[SpendRecomputation]:
    """Cumulative epsilons after each spend (in ledger order), each at that entry's own delta.

    The per-round PLD epsilon composes every spend of the same (federation, round) seen so far, so a
    round split across several entries is still measured against the cap as one round.
    """
    results: list[SpendRecomputation] = []
    history: list[Step] = []
    by_round: dict[tuple[str, int], list[Step]] = {}
    for spend in spends:
        history.append(spend.step)
        round_history = by_round.setdefault((spend.federation, spend.round), [])
        round_history.append(spend.step)
        pld = epsilon(history, spend.delta, "pld")
        try:
            accountant_eps: float | None = epsilon(history, spend.delta, spend.accountant)
        except AccountingError:  # an unknown accountant: the spend checks report it
            accountant_eps = None
        results.append(
            SpendRecomputation(
                seq=spend.seq,
                federation=spend.federation,
                round=spend.round,
                noise_multiplier=spend.noise_multiplier,
                sample_rate=spend.sample_rate,
                steps=spend.steps,
                clipping_norm=spend.clipping_norm,
                delta=spend.delta,
                recorded_epsilon=spend.recorded_epsilon,
                pld_epsilon=pld,
                accountant=spend.accountant,
                accountant_epsilon=accountant_eps,
                round_pld_epsilon=epsilon(round_history, spend.delta, "pld"),
            )
        )
    return results
