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
"""No check failed, but something the verdict rests on could not be evaluated: not a pass."""

DECISIVE_CHECKS = frozenset({"budget", "receipts", "receipt_signature", "federation"})
"""Checks whose not being evaluated (`passed` None) leaves the verdict "incomplete": the budget (no
policy), completeness in a federation (no receipts, or no coordinator key to trust them) and the
federation's requirements (no federation file). Without them the auditor cannot know, so it says so."""

VERDICT_TEXT = {
    "verified": "every ledger verifies",
    "failed": "verification failed (see the FAIL rows)",
    "incomplete": "incomplete: nothing failed, but not everything could be checked: {unknowns}",
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
    federation: str | None = None
    """The federation the check is about, when it is about one (receipts, federation file)."""


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
    def undecided(self) -> list[Check]:
        """The decisive checks (DECISIVE_CHECKS) that could not be evaluated, ledger by ledger, then the inputs'."""
        checks = [c for ledger in self.ledgers for c in ledger.checks] + self.checks
        return [c for c in checks if c.passed is None and c.name in DECISIVE_CHECKS]

    @property
    def unchecked_federations(self) -> list[str]:
        """Federations in which some ledger's completeness could not be verified (receipts or key missing)."""
        return sorted({c.federation for c in self.undecided
                       if c.federation and c.name in ("receipts", "receipt_signature")})

    @property
    def unknowns(self) -> list[str]:
        """One phrase per undecided check: whose ledger, and what could not be checked."""
        phrases = [f"{ledger.institution or ledger.path}: {c.detail}" for ledger in self.ledgers
                   for c in ledger.checks if c.passed is None and c.name in DECISIVE_CHECKS]
        phrases += [c.detail for c in self.checks if c.passed is None and c.name in DECISIVE_CHECKS]
        return list(dict.fromkeys(phrases))

    @property
    def verdict(self) -> str:
        """`failed` (a check failed), `incomplete` (none failed, a decisive check was not evaluated) or `verified`."""
        if not self.passed:
            return "failed"
        return "incomplete" if self.undecided else "verified"

    @property
    def verdict_text(self) -> str:
        text = VERDICT_TEXT[self.verdict].format(unknowns="; ".join(self.unknowns))
        if self.verdict == "incomplete" and self.unchecked_federations:
            text += f" (completeness not verified in: {', '.join(self.unchecked_federations)})"
        return text

    @property
    def exit_code(self) -> int:
        return {"verified": EXIT_VERIFIED, "failed": EXIT_CHECK_FAILED, "incomplete": EXIT_INCOMPLETE}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form with the same content as the table: every check, every recomputation."""
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            "unchecked_federations": self.unchecked_federations,
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
