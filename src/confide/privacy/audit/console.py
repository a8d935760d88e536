"""Terminal rendering of audit results with rich: what `confide audit` prints without --json.

Kept here so the CLI stays a thin shell: it calls `audit_ledgers` or `run_canary_audit`, then
prints `audit_renderables(result)` (the canary audit's are in `canary_console`), or `result.to_dict()`
as JSON.
"""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table
from rich.text import Text

from confide.privacy.audit.result import AuditResult, Check

_MARKS = {True: ("pass", "green"), False: ("FAIL", "bold red"), None: ("n/a", "yellow")}


def _mark(passed: bool | None) -> Text:
    word, style = _MARKS[passed]
    return Text(word, style=style)


def _checks_table(title: str, checks: list[Check]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("check")
    table.add_column("result")
    table.add_column("seq", justify="right")
    table.add_column("detail", overflow="fold")
    for check in checks:
        table.add_row(check.name, _mark(check.passed), "" if check.seq is None else str(check.seq),
                      Text(check.detail))  # Text: ledger content must not be read as rich markup
    return table


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.4f}"


def audit_renderables(result: AuditResult) -> list[Any]:
    """Per ledger a table of checks and a table of recomputed epsilons, then the verdict."""
    out: list[Any] = []
    if result.checks:
        out.append(_checks_table("inputs (receipts, federation files, members' sums)", result.checks))
    for ledger in result.ledgers:
        who = f"{ledger.institution or '?'} / {ledger.dataset or '?'}"
        out.append(_checks_table(Text(f"{who}  ({ledger.path})").plain, ledger.checks))
        if ledger.spends:
            spends = Table(title=f"{who}: cumulative epsilon per spend", title_justify="left")
            for column in ("seq", "federation", "round", "sigma", "q", "steps", "recorded", "PLD", "accountant"):
                spends.add_column(column, justify="left" if column in ("federation", "accountant") else "right")
            for s in ledger.spends:
                spends.add_row(str(s.seq), Text(s.federation), str(s.round), f"{s.noise_multiplier:g}",
                               f"{s.sample_rate:.4g}", str(s.steps), _number(s.recorded_epsilon),
                               _number(s.pld_epsilon),
                               Text(f"{s.accountant} {_number(s.accountant_epsilon)}"))
            out.append(spends)
        if ledger.replace_one_epsilon is not None:
            out.append(Text(f"{who}: epsilon {_number(ledger.replace_one_epsilon)} for one record swapped "
                            "for another (replace-one, by PLD): what holds against whoever knows the record "
                            "count and sees the updates (the coordinator, which learns the count, with a "
                            "member who decrypts)"))
    style = {"verified": "green", "failed": "bold red", "incomplete": "bold yellow"}[result.verdict]
    out.append(Text("verdict: ") + Text(result.verdict_text, style=style))
    return out
