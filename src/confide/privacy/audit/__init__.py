"""Auditor tooling: verify privacy ledgers independently, report budgets, audit empirically.

- `audit_ledgers(...)` -> `AuditResult`: what `confide audit` prints (`audit_renderables` or
  `result.to_dict()`) and exits with (`result.exit_code`);
- `write_report(result, out)`: what `confide report` writes (self-contained HTML, or Markdown
  with PNG charts beside it);
- `canary_settings(...)` and `run_canary_audit(...)` -> `CanaryAudit`: what `confide audit
  canaries` runs (`canary_audit_renderables` or `audit.to_dict()`; `audit.exit_code`).

Submodules are imported on first use, so `import confide.privacy.audit` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditResult": "result", "Check": "result", "LedgerAudit": "result",
    "audit_ledgers": "verify", "write_report": "report", "Tolerance": "recompute",
    "CanaryAudit": "canary_run", "canary_settings": "canary_run", "run_canary_audit": "canary_run",
    "audit_renderables": "console", "canary_audit_renderables": "canary_console",
    "AuditInputError": "inputs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
