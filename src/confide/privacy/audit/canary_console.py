"""Terminal rendering of a canary audit: what `confide audit canaries` prints without --json.

Each bound is shown with the most it could have been (every guess right), so a reader sees at a
glance whether the audit had the power to catch anything at this epsilon. Fits 80 columns.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text

from confide.privacy.audit.canary_run import CanaryAudit


def _number(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.2f}"


def canary_audit_renderables(audit: CanaryAudit) -> list[Any]:
    """The two lower bounds and their reachable maxima next to the accounted epsilon, then the verdict."""
    table = Table(title="one-run canary audit (Dirac gradient canaries)", title_justify="left")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    table.add_column("at most", justify="right")
    level = f"{audit.confidence:.0%}"
    rows = [
        ("canaries (included)", f"{audit.canaries} ({audit.included})", ""),
        ("draws of included canaries", str(audit.canary_draws), ""),
        ("best guesses (correct)", f"{audit.guesses} ({audit.correct})", ""),
        (f"epsilon lower bound, SNJ {level}", _number(audit.epsilon_lower_bound), _number(audit.reachable_epsilon)),
        (f"epsilon lower bound, f-DP {level}", _number(audit.fdp_epsilon_lower_bound),
         _number(audit.fdp_reachable_epsilon)),
        (f"accounted epsilon ({audit.accountant})", _number(audit.accounted_epsilon), ""),
    ]
    for name, value, most in rows:
        table.add_row(name, value, most)
    training = Text(f"sigma {audit.noise_multiplier:.4g}, q {audit.sample_rate:.4g}, {audit.steps} steps x "
                    f"{audit.rounds} rounds, clipping {audit.clipping_norm:g}, delta {audit.delta:g}")
    out: list[Any] = [table, Text("training: ") + training]
    if audit.passed:
        out.append(Text("verdict: ") + Text("SNJ lower bound within the accounted epsilon", style="green"))
        if audit.reachable_epsilon <= audit.accounted_epsilon:
            out.append(Text("note: even all-correct guesses stay below the accounted epsilon here, so this "
                            "audit could not have failed; use more canaries (--canaries).", style="yellow"))
    else:
        out.append(Text("verdict: ") + Text("SNJ bound above the accounted epsilon: leaks more than accounted",
                                            style="bold red"))
    return out
