"""The audit's result as plain data: checks with pass/fail and the entry at fault.

The CLI prints this as a table or JSON; the report renders it; tests assert on it. Nothing here
computes anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from confide.privacy.audit.recompute import SpendRecomputation

EXIT_VERIFIED = 0
EXIT_CHECK_FAILED = 1
EXIT_INCOMPLETE = 3
"""No check failed, but a ledger's budget could not be evaluated (no institution policy): not a pass."""

VERDICT_TEXT = {
    "verified": "every ledger verifies",
    "failed": "verification failed (see the FAIL rows)",
    "incomplete": "incomplete: nothing failed, but the budget of {names} was not evaluated (pass its --policy)",
}


@dataclass(frozen=True)
class Check:
    """One check on one ledger. A check that fails at several entries appears once per entry."""

    name: str
    """What was checked: `hash`, `chain`, `signature`, `seq`, `time`, `epsilon_pld`, `budget`..."""
    passed: bool | None
    """True: holds; False: violated (a finding); None: could not be evaluated (inputs missing)."""
    detail: str
    seq: int | None = None
    """The ledger entry at fault, by the `seq` it carries, when the finding is about one entry."""
    line: int | None = None
    """Its line in the ledger file (1-based): differs from `seq` when entries were reordered or removed."""


@dataclass(frozen=True)
class LedgerAudit:
    """Everything found about one ledger file."""

    path: str
    institution: str | None
    dataset: str | None
    checks: list[Check] = field(default_factory=list)
    spends: list[SpendRecomputation] = field(default_factory=list)
    """Recomputed epsilons, one per spend entry in ledger order."""
    budget_epsilon: float | None = None
    """The institution policy's total budget, when a policy was given."""
    round_epsilon_cap: float | None = None
    """The tightest per-round cap (institution's or federation's), when known."""
    budget_delta: float | None = None
    replace_one_epsilon: float | None = None
    """The whole ledger's epsilon by PLD when neighbouring datasets differ by one record swapped for
    another (the count unchanged), at the last spend's delta. It is what holds against whoever knows
    the record count and sees the updates: the coordinator, which learns the count from the sample
    rates the uploads declare, colluding with a member who decrypts. None without spends."""

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    @property
    def spent_epsilon(self) -> float:
        """The larger of the last recorded and the last independently recomputed cumulative epsilon."""
        if not self.spends:
            return 0.0
        last = self.spends[-1]
        return max(last.recorded_epsilon, last.pld_epsilon)


@dataclass(frozen=True)
class AuditResult:
    """The audit of one or more ledgers. `exit_code` is what `confide audit` exits with."""

    ledgers: list[LedgerAudit] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    """Checks that concern the inputs as a whole (e.g. receipts that match no ledger)."""

    @property
    def passed(self) -> bool:
        return all(ledger.passed for ledger in self.ledgers) and all(c.passed is not False for c in self.checks)

    @property
    def unevaluated_budgets(self) -> list[str]:
        """Institutions (or ledger paths) whose budget check could not be evaluated."""
        return [ledger.institution or ledger.path for ledger in self.ledgers
                if any(c.name == "budget" and c.passed is None for c in ledger.checks)]

    @property
    def verdict(self) -> str:
        """`failed` (a check failed), `incomplete` (none failed, a budget was not evaluated) or `verified`."""
        if not self.passed:
            return "failed"
        return "incomplete" if self.unevaluated_budgets else "verified"

    @property
    def verdict_text(self) -> str:
        return VERDICT_TEXT[self.verdict].format(names=", ".join(self.unevaluated_budgets))

    @property
    def exit_code(self) -> int:
        return {"verified": EXIT_VERIFIED, "failed": EXIT_CHECK_FAILED, "incomplete": EXIT_INCOMPLETE}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form with the same content as the table: every check, every recomputation."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "checks": [asdict(c) for c in self.checks],
            "ledgers": [
                {
                    "path": ledger.path,
                    "institution": ledger.institution,
                    "dataset": ledger.dataset,
                    "passed": ledger.passed,
                    "budget_epsilon": ledger.budget_epsilon,
                    "round_epsilon_cap": ledger.round_epsilon_cap,
                    "spent_epsilon": ledger.spent_epsilon,
                    "replace_one_epsilon": ledger.replace_one_epsilon,
                    "checks": [asdict(c) for c in ledger.checks],
                    "spends": [asdict(s) for s in ledger.spends],
                }
                for ledger in self.ledgers
            ],
        }
