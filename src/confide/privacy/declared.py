"""Does a round's declared DP-SGD spend keep to the federation file? The coordinator's check on every upload.

A member declares, with its upload, the parameters of the ledger entry that accounts for the round
(`confide.formats.DeclaredSpend`); the coordinator refuses the upload when they break the
federation's requirements, and otherwise signs them into the receipt. This does not show that the
noise was drawn (nothing outside the institution can; see the canary audit), but it fixes what the
institution said it did, before the sum, where it cannot be rewritten later.
"""

from __future__ import annotations

import math

from confide.formats import DeclaredSpend
from confide.policies.federation import FederationPolicy
from confide.privacy.accounting import RoundSpend, round_epsilon

ROUND_EPSILON_SLACK = 1e-9
"""Relative slack on `max_round_epsilon`: the member and the coordinator run the same accountant on the
same numbers, so only floating-point noise may separate their results."""


def declared_spend_problems(federation: FederationPolicy, declared: DeclaredSpend) -> list[str]:
    """What in `declared` breaks `federation` (empty: nothing). Each problem is one sentence."""
    privacy, training = federation.privacy, federation.training
    problems = []
    if declared.accountant != privacy.accountant:
        problems.append(f"accountant {declared.accountant!r}, the federation requires {privacy.accountant!r}")
    if declared.delta != privacy.delta:
        problems.append(f"delta {declared.delta:g}, the federation requires {privacy.delta:g}")
    if declared.steps != training.steps_per_round:
        problems.append(f"{declared.steps} steps, the federation's rounds have {training.steps_per_round}")
    if not (math.isfinite(declared.noise_multiplier) and declared.noise_multiplier >= privacy.min_noise_multiplier):
        problems.append(f"noise multiplier {declared.noise_multiplier:g} is below the federation's floor "
                        f"{privacy.min_noise_multiplier:g}")
    if not 0.0 < declared.sample_rate <= 1.0:
        problems.append(f"sample rate {declared.sample_rate:g} is not in (0, 1]")
    if not (math.isfinite(declared.clipping_norm) and declared.clipping_norm > 0):
        problems.append(f"clipping norm {declared.clipping_norm:g} is not a positive number")
    cap = privacy.max_round_epsilon
    if cap is not None and not problems:
        spent = (math.inf if declared.noise_multiplier <= 0 else
                 round_epsilon(RoundSpend(declared.noise_multiplier, declared.sample_rate, declared.steps),
                               declared.delta, declared.accountant))
        if spent > cap * (1 + ROUND_EPSILON_SLACK):
            problems.append(f"the round spends epsilon {spent:.3f}, above the federation's max_round_epsilon {cap:g}")
    return problems
