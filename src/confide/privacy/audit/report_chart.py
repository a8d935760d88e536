"""Charts for the budget report: cumulative epsilon over rounds against the budget line, as PNG bytes."""

from __future__ import annotations

import io
import math
from typing import Sequence

from confide.privacy.audit.result import LedgerAudit

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf")


def _finite(values: Sequence[float]) -> list[float]:
    return [v if math.isfinite(v) else math.nan for v in values]


def _by_round(ledgers: Sequence[LedgerAudit]) -> bool:
    """Plot against round numbers when every spend is of one federation, one spend per round; else by spend index."""
    federations = {s.federation for ledger in ledgers for s in ledger.spends}
    return len(federations) <= 1 and all(
        len({s.round for s in ledger.spends}) == len(ledger.spends) for ledger in ledgers)


def epsilon_chart(ledgers: Sequence[LedgerAudit], title: str, first_color: int = 0) -> bytes:
    """One PNG: per ledger its recorded cumulative epsilon (solid), the PLD recomputation (dotted)
    and its budget (dashed), against the round (or the spend's position when rounds of several
    federations mix).
    """
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    by_round = _by_round(ledgers)
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
        for index, ledger in enumerate(ledgers):
            color = _COLORS[(first_color + index) % len(_COLORS)]
            name = ledger.institution or f"ledger {index + 1}"
            x = [s.round for s in ledger.spends] if by_round else list(range(1, len(ledger.spends) + 1))
            axes.plot(x, _finite([s.recorded_epsilon for s in ledger.spends]), "o-", color=color,
                      label=f"{name} recorded")
            axes.plot(x, _finite([s.pld_epsilon for s in ledger.spends]), ":", color=color, label=f"{name} PLD")
            if ledger.budget_epsilon is not None:
                axes.axhline(ledger.budget_epsilon, linestyle="--", color=color, linewidth=1,
                             label=f"{name} budget {ledger.budget_epsilon:g}")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("round" if by_round else "spend (in ledger order)")
        axes.set_ylabel("cumulative epsilon")
        axes.set_ylim(bottom=0)
        axes.set_title(title)
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=7, loc="best")
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
