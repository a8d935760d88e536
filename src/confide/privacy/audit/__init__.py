"""Auditor tooling: verify privacy ledgers independently, report budgets, audit empirically.

- `audit_ledgers(...)` -> `AuditResult` (what `confide audit` prints; `result.exit_code`);
- `write_report(...)` (what `confide report` writes: self-contained HTML or Markdown with a PNG);
- `run_canary_audit(...)` (what `confide audit canaries` runs: a one-run empirical lower bound).

Heavy modules (accounting, plotting, training) are imported on first use, so `import
confide.privacy.audit` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AuditResult", "Check", "LedgerAudit", "audit_ledgers", "write_report", "run_canary_audit"]


def __getattr__(name: str) -> Any:
    if name in ("AuditResult", "Check", "LedgerAudit"):
        from confide.privacy.audit import result

        return getattr(result, name)
    if name == "audit_ledgers":
        from confide.privacy.audit.verify import audit_ledgers

        return audit_ledgers
    if name == "write_report":
        from confide.privacy.audit.report import write_report

        return write_report
    if name == "run_canary_audit":
        from confide.privacy.audit.canary_run import run_canary_audit

        return run_canary_audit
    raise AttributeError(name)
