"""The budget report as Markdown, with its PNG charts as files beside it."""

from __future__ import annotations

from html import escape
from typing import Sequence

from confide.privacy.audit.report import InstitutionSummary, number


def cell(text: str) -> str:
    """Ledger text made inert in Markdown: no HTML, no table breaks, no emphasis or links."""
    safe = escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")
    for char in "*_`[]":
        safe = safe.replace(char, "\\" + char)
    return safe


def _overview(summaries: Sequence[InstitutionSummary]) -> list[str]:
    lines = ["| institution | dataset | budget ε | spent ε | remaining ε | accountant | spends | verification |",
             "|---|---|---:|---:|---:|---|---:|---|"]
    lines += [f"| {cell(s.name)} | {cell(s.dataset)} | {number(s.budget)} | {number(s.spent)} | "
              f"{number(s.remaining)} | {cell(s.accountants)} | {len(s.spends)} | {cell(s.status)} |"
              for s in summaries]
    return lines


def _section(summary: InstitutionSummary, chart: str) -> list[str]:
    lines = [f"## {cell(summary.name)}", "",
             f"Dataset `{summary.dataset.replace('`', '')}`, ledger `{summary.path.replace('`', '')}`.", "",
             f"- budget ε: {number(summary.budget)}", f"- spent ε: {number(summary.spent)}",
             f"- remaining ε: {number(summary.remaining)}",
             f"- replace-one ε (one record swapped; what holds against whoever knows the record count: the "
             f"coordinator, with a member who decrypts): {number(summary.replace_one)}",
             f"- accountant: {cell(summary.accountants)}",
             f"- verification: **{cell(summary.status)}**", "",
             f"![cumulative epsilon of {cell(summary.name)}]({chart})", "",
             "| seq | federation | round | noise σ | sample rate q | steps | clipping | round ε (PLD) | "
             "cumulative ε recorded | cumulative ε PLD |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {s.seq} | {cell(s.federation)} | {s.round} | {number(s.noise_multiplier)} | "
              f"{number(s.sample_rate)} | {s.steps} | {number(s.clipping_norm)} | {number(s.round_pld_epsilon)} | "
              f"{number(s.recorded_epsilon)} | {number(s.pld_epsilon)} |" for s in summary.spends]
    if summary.failures:
        lines += ["", "Findings:", ""] + [f"- {cell(f)}" for f in summary.failures]
    if summary.unchecked:
        lines += ["", "Not evaluated:", ""] + [f"- {cell(u)}" for u in summary.unchecked]
    return lines + [""]


def render_markdown(
    summaries: Sequence[InstitutionSummary],
    verdict: str,
    overall: Sequence[str],
    charts: Sequence[str],
    overview: str | None,
    generated: str,
) -> str:
    """The whole document. `charts` are image file names aligned with `summaries`."""
    lines = ["# Privacy budget report", "",
             f"Generated {generated} by confide; epsilons recomputed from the recorded spends with dp_accounting's PLD "
             "accountant and the recorded accountant.", "",
             f"**Verdict: {cell(verdict)}.**", ""]
    lines += [f"- {cell(o)}" for o in overall] + ([""] if overall else [])
    lines += _overview(summaries) + [""]
    if overview:
        lines += [f"![cumulative epsilon of every institution]({overview})", ""]
    for summary, chart in zip(summaries, charts):
        lines += _section(summary, chart)
    return "\n".join(lines)
