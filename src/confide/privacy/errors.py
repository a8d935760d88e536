"""Errors of the privacy package. Each names what is wrong (file, line, field) and how to fix it.

The CLI prints `str(error)` on one line and exits 2, so messages carry their hint inline.
"""

from __future__ import annotations

from confide.errors import BadInput


class PrivacyError(BadInput):
    """Base class: something about differential privacy, its accounting or its ledger is not acceptable."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(f"{message} ({hint})" if hint else message)
        self.message = message
        self.hint = hint


class AccountingError(PrivacyError):
    """An accountant was given values it cannot account for (unknown accountant, sample rate outside (0, 1]...)."""


class CalibrationError(PrivacyError):
    """No noise multiplier can meet the requested budget, or the calibration inputs are invalid."""


class PlanError(PrivacyError):
    """The institution's participation cannot be planned within its remaining budget and caps."""


class TrainingError(PrivacyError):
    """A DP round could not run or produced a result that must not be used (e.g. weights that did not move)."""


class LedgerError(PrivacyError):
    """A ledger operation was refused: bad entry fields, no signing key, a second spend for one round."""


class DoubleSpendError(LedgerError):
    """A spend entry for this (federation, round) already exists: the round must not be trained again."""


class LedgerBrokenError(LedgerError):
    """The ledger's hash chain, signatures or sequence are broken: the agent must not continue on it.

    `problems` lists every problem found (see `LedgerProblem`).
    """

    def __init__(self, path: str, problems: list) -> None:
        first = problems[0] if problems else "unknown problem"
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        super().__init__(
            f"{path}: ledger is broken: {first}{more}",
            "restore the ledger from backup; run `confide audit` to list every problem",
        )
        self.path = path
        self.problems = problems


class LedgerRollbackError(LedgerError):
    """The ledger is behind what it already showed someone (a witness, a coordinator's receipt), or is missing.

    It was restored from an older copy, replaced or deleted; spending on it could reopen budget
    that is already spent, so nothing is spent until an operator restores the newest copy.
    """


class RecordsChargedElsewhereError(LedgerError):
    """Records of this dataset are already charged under another of the institution's ledgers.

    Spending on them here too would compose with that ledger's spends where no ledger counts both.
    """
