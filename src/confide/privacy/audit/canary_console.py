"""Terminal rendering of a canary audit: what `confide audit canaries` prints without --json.

The decisive guess count stands next to the most the recorded mechanism's curve allows, so a
reader sees how close the run came to failing; a note says when the audit had no power (even a
noiseless run would pass) and whether more canaries would give it some. Fits 80 columns.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text

from confide.privacy.audit.canary_curve import mechanism_curve
from confide.privacy.audit.canary_run import CanaryAudit, canaries_for_power


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _choice(guess_in: int, guess_out: int) -> str:
    return f"{guess_in} in" if not guess_out else f"{guess_in} in, {guess_out} out"


def canary_audit_renderables(audit: CanaryAudit) -> list[Any]:
    """The decisive guesses against the curve's allowance, the SNJ bound, then the verdict."""
    table = Table(title="one-run canary audit (Dirac gradient canaries)", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    decisive = audit.decisive
    level = f"{audit.confidence:.0%}"
    runs = "1 run" if audit.runs == 1 else f"{audit.runs} runs"
    rows = [
        ("canaries (included)", f"{audit.canaries} in {runs} ({audit.included})"),
        ("draws of included canaries", str(audit.canary_draws)),
        ("decisive guesses" if not audit.passed else "closest guesses",
         _choice(decisive.guess_in, decisive.guess_out)),
        ("right guesses", str(decisive.correct)),
        (f"most the recorded curve allows ({level})", str(decisive.allowed)),
        (f"epsilon lower bound, SNJ {level} (info)", f"{_number(audit.epsilon_lower_bound)} "
                                                       f"(at most {_number(audit.reachable_epsilon)})"),
        (f"accounted epsilon ({audit.accountant})", _number(audit.accounted_epsilon)),
    ]
    for name, value in rows:
        table.add_row(name, value)
    training = Text(f"sigma {audit.noise_multiplier:.4g}, q {audit.sample_rate:.4g}, {audit.steps} steps x "
                    f"{audit.rounds} rounds, clipping {audit.clipping_norm:g}, delta {audit.delta:g}")
    out: list[Any] = [table, Text("training: ") + training, Text(f"curve: {audit.curve}")]
    if not audit.passed:
        out.append(Text("verdict: ") + Text("more right guesses than the recorded mechanism allows: the "
                                            "training is less private than its ledger says", style="bold red"))
        return out
    out.append(Text("verdict: ") + Text("right guesses within the recorded mechanism's curve", style="green"))
    if not audit.noiseless_would_fail:
        history = [(audit.noise_multiplier, audit.sample_rate, audit.steps)] * audit.rounds
        draw = 1 - (1 - audit.sample_rate) ** (audit.steps * audit.rounds)
        needed = canaries_for_power(mechanism_curve(history), audit.canaries, draw, audit.level)
        advice = (f"with about {needed} canaries it would fail (--canaries {needed})." if needed is not None else
                  "more canaries do not help at this epsilon and sample rate.")
        out.append(Text("note: even a run without noise would be expected to pass this audit; " + advice,
                        style="yellow"))
    return out
