"""The budget report as one self-contained HTML file.

Everything a ledger says is untrusted (an institution writes it), so every string is escaped. The
page carries no script and a Content-Security-Policy that allows only inline styles and `data:`
images: opened anywhere, it fetches nothing and runs nothing.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Sequence

from confide.privacy.audit.report import InstitutionSummary, number

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text, th.text { text-align: left; }
.ok { color: #17692c; font-weight: 600; } .bad { color: #b00020; font-weight: 600; }
.grid { display: flex; flex-wrap: wrap; gap: 2em; }
.institution { flex: 1 1 46em; min-width: 0; } .scroll { overflow-x: auto; }
img { max-width: 100%; height: auto; } ul.findings li { margin: 0.2em 0; }
"""


def _png(data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{encoded}">'


def _status(summary: InstitutionSummary) -> str:
    css = "ok" if summary.verified else "bad"
    return f'<span class="{css}">{escape(summary.status)}</span>'


def _overview_table(summaries: Sequence[InstitutionSummary]) -> str:
    rows = "".join(
        f'<tr><td class="text">{escape(s.name)}</td>'
        f'<td class="text" title="{escape(s.dataset)}">{escape(s.dataset[:16])}&hellip;</td>'
        f"<td>{number(s.budget)}</td><td>{number(s.spent)}</td><td>{number(s.remaining)}</td>"
        f'<td class="text">{escape(s.accountants)}</td><td>{len(s.spends)}</td><td class="text">{_status(s)}</td></tr>'
        for s in summaries
    )
    return ('<table id="overview"><tr><th class="text">institution</th><th class="text">dataset</th>'
            "<th>budget &epsilon;</th><th>spent &epsilon;</th><th>remaining &epsilon;</th>"
            f'<th class="text">accountant</th><th>spends</th><th class="text">verification</th></tr>{rows}</table>')


def _rounds_table(summary: InstitutionSummary) -> str:
    rows = "".join(
        f'<tr><td>{s.seq}</td><td class="text">{escape(s.federation)}</td><td>{s.round}</td>'
        f"<td>{number(s.noise_multiplier)}</td><td>{number(s.sample_rate)}</td><td>{s.steps}</td>"
        f"<td>{number(s.clipping_norm)}</td><td>{number(s.round_pld_epsilon)}</td>"
        f"<td>{number(s.recorded_epsilon)}</td><td>{number(s.pld_epsilon)}</td></tr>"
        for s in summary.spends
    )
    return ("<table><tr><th>seq</th><th class=\"text\">federation</th><th>round</th><th>noise &sigma;</th>"
            "<th>sample rate q</th><th>steps</th><th>clipping</th><th>round &epsilon; (PLD)</th>"
            f"<th>cumulative &epsilon; recorded</th><th>cumulative &epsilon; PLD</th></tr>{rows}</table>")


def _findings(summary: InstitutionSummary) -> str:
    parts = []
    if summary.failures:
        items = "".join(f"<li>{escape(f)}</li>" for f in summary.failures)
        parts.append(f'<p class="bad">Findings</p><ul class="findings">{items}</ul>')
    if summary.unchecked:
        items = "".join(f"<li>{escape(u)}</li>" for u in summary.unchecked)
        parts.append(f'<p>Not evaluated</p><ul class="findings">{items}</ul>')
    return "".join(parts)


def _section(summary: InstitutionSummary, chart: bytes) -> str:
    facts = (f"<table><tr><th class=\"text\">budget &epsilon;</th><td>{number(summary.budget)}</td></tr>"
             f"<tr><th class=\"text\">spent &epsilon;</th><td>{number(summary.spent)}</td></tr>"
             f"<tr><th class=\"text\">remaining &epsilon;</th><td>{number(summary.remaining)}</td></tr>"
             f"<tr><th class=\"text\">replace-one &epsilon;</th><td>{number(summary.replace_one)}</td></tr>"
             f"<tr><th class=\"text\">accountant</th><td>{escape(summary.accountants)}</td></tr>"
             f"<tr><th class=\"text\">verification</th><td>{_status(summary)}</td></tr></table>"
             '<p class="meta">replace-one: one record swapped for another, by PLD; what holds against whoever '
             "knows the record count (the coordinator, with a member who decrypts)</p>")
    return (f'<section class="institution"><h2>{escape(summary.name)}</h2>'
            f'<p class="meta">dataset {escape(summary.dataset)} &middot; ledger {escape(summary.path)}</p>'
            f"{facts}{_png(chart, f'cumulative epsilon of {summary.name} over rounds')}"
            f'<div class="scroll">{_rounds_table(summary)}</div>{_findings(summary)}</section>')


def render_html(
    summaries: Sequence[InstitutionSummary],
    verdict: str,
    overall: Sequence[str],
    charts: Sequence[bytes],
    overview: bytes | None,
    generated: str,
) -> str:
    """The whole page. `charts` are PNGs aligned with `summaries`; `overall` lists findings that
    concern no single ledger (e.g. receipts not signed by the coordinator). `verdict` is the audit's
    verdict text (`AuditResult.verdict_text`)."""
    css = "ok" if verdict.startswith("every ledger verifies") else "bad"
    verdict = f'<p class="{css}">Verdict: {escape(verdict)}.</p>'
    overall_html = ("<ul class=\"findings\">" + "".join(f'<li class="bad">{escape(o)}</li>' for o in overall)
                    + "</ul>") if overall else ""
    overview_html = _png(overview, "cumulative epsilon of every institution") if overview else ""
    sections = "".join(_section(s, c) for s, c in zip(summaries, charts))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        "<title>confide privacy budget report</title>"
        f"<style>{_STYLE}</style></head><body>"
        "<h1>Privacy budget report</h1>"
        f'<p class="meta">generated {escape(generated)} by confide; epsilons recomputed from the recorded spends with '
        "dp_accounting's PLD accountant and the recorded accountant</p>"
        f'{verdict}{overall_html}<div class="scroll">{_overview_table(summaries)}</div>{overview_html}'
        f'<div class="grid">{sections}</div></body></html>\n'
    )
