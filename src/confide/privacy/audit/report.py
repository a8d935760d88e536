"""`confide report`: a budget report an auditor can hand on, from an audit's result.

Per institution: budget, spent, remaining, accountant, verification status, a chart of epsilon
over rounds against the budget, and the per-round table. Several ledgers (say, every member of a
federation) appear side by side, with one overview chart. HTML is one self-contained file (PNG
charts inline as base64, no scripts, a Content-Security-Policy that forbids any fetch); Markdown
gets its PNG charts written beside it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from confide.privacy.audit.inputs import AuditInputError
from confide.privacy.audit.recompute import SpendRecomputation
from confide.privacy.audit.result import AuditResult, LedgerAudit


@dataclass(frozen=True)
class InstitutionSummary:
    """What the report says about one ledger, already reduced to display values."""

    name: str
    dataset: str
    path: str
    budget: float | None
    spent: float
    accountants: str
    replace_one: float | None
    verified: bool
    failures: list[str] = field(default_factory=list)
    """`check (seq N): detail` for every failed check."""
    unchecked: list[str] = field(default_factory=list)
    """`check: why` for every check that could not be evaluated."""
    spends: list[SpendRecomputation] = field(default_factory=list)
    audit: LedgerAudit | None = None

    @property
    def remaining(self) -> float | None:
        return None if self.budget is None else self.budget - self.spent

    @property
    def status(self) -> str:
        if not self.verified:
            return f"FAILED ({len(self.failures)} finding{'s' if len(self.failures) != 1 else ''})"
        return "verified" if not self.unchecked else "verified (with checks not evaluated)"


def summarize(ledger: LedgerAudit) -> InstitutionSummary:
    """Reduce one ledger's audit to what the report shows."""
    failures = [f"{c.name}" + (f" (seq {c.seq})" if c.seq is not None else "") + f": {c.detail}"
                for c in ledger.checks if c.passed is False]
    unchecked = [f"{c.name}: {c.detail}" for c in ledger.checks if c.passed is None]
    accountants = ", ".join(sorted({s.accountant for s in ledger.spends})) or "-"
    return InstitutionSummary(
        name=ledger.institution or Path(ledger.path).name, dataset=ledger.dataset or "-", path=ledger.path,
        budget=ledger.budget_epsilon, spent=ledger.spent_epsilon, accountants=accountants,
        replace_one=ledger.replace_one_epsilon,
        verified=ledger.passed, failures=failures, unchecked=unchecked, spends=list(ledger.spends), audit=ledger,
    )


def number(value: float | None, digits: int = 4) -> str:
    """A display number: `-` for unknown, `inf` for no privacy, else `digits` significant digits."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def chart_file_stem(name: str) -> str:
    """A file-name-safe form of an institution id (ledger content is untrusted)."""
    return re.sub(r"[^a-zA-Z0-9_.-]", "_", name)[:64] or "ledger"


def write_report(result: AuditResult, out: Path, generated: datetime | None = None) -> list[Path]:
    """Write the report of `result` to `out` (`.html` or `.md`); return every file written.

    HTML: one self-contained file. Markdown: the .md plus one PNG per institution (and an overview
    PNG for several) beside it, named `<stem>-<n>-<institution>.png` and `<stem>-overview.png`.
    `generated` is the time printed in the report (default: now, UTC). Raises AuditInputError for
    another suffix or an unwritable path.
    """
    from confide.privacy.audit.report_chart import epsilon_chart

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md", ".markdown"):
        raise AuditInputError(f"{out}: the report must end in .html or .md")
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    summaries = [summarize(ledger) for ledger in result.ledgers]
    overall = [f"{c.name}: {c.detail}" for c in result.checks if c.passed is False]
    charts = [epsilon_chart([ledger], f"{s.name}: cumulative epsilon", index)
              for index, (s, ledger) in enumerate(zip(summaries, result.ledgers))]
    overview = epsilon_chart(result.ledgers, "all institutions") if len(summaries) > 1 else None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if suffix in (".html", ".htm"):
            from confide.privacy.audit.report_html import render_html

            page = render_html(summaries, result.verdict_text, overall, charts, overview, when)
            out.write_text(page, encoding="utf-8")
            return [out]
        from confide.privacy.audit.report_markdown import render_markdown

        written = []
        names = ["overview"] if overview else []
        names += [f"{index}-{chart_file_stem(s.name)}" for index, s in enumerate(summaries, start=1)]
        for name, png in zip(names, ([overview] if overview else []) + charts):
            image = out.with_name(f"{out.stem}-{name}.png")
            image.write_bytes(png)
            written.append(image)
        files = [image.name for image in written]
        overview_file, chart_files = (files[0], files[1:]) if overview else (None, files)
        out.write_text(render_markdown(summaries, result.verdict_text, overall, chart_files, overview_file, when),
                       encoding="utf-8")
        return [out, *written]
    except OSError as exc:
        raise AuditInputError(f"{out}: cannot write the report ({exc.strerror})") from None
