"""Differential privacy at an institution: accounting, calibration, the privacy ledger and its audit.

Depends on `confide.policies`, `confide.identity` and `confide.errors` only (never on aggregation or platform).
What this package exports needs neither torch nor Opacus: the coordinator and the auditor import it.
DP-SGD training itself (`confide.privacy.training`, `trainable`, `objective`) is imported by name
where it is used, by the institutions' side only.
"""

from confide.privacy.accounting import ACCOUNTANTS, History, RoundSpend, epsilon, round_epsilon
from confide.privacy.budget import (
    BudgetCheck,
    ParticipationPlan,
    plan_participation,
    sample_rate_for,
    strictest_cap,
    would_exceed,
)
from confide.privacy.calibration import Calibration, calibrate, calibrate_noise_multiplier
from confide.privacy.errors import (
    AccountingError,
    CalibrationError,
    DoubleSpendError,
    LedgerBrokenError,
    LedgerError,
    PlanError,
    PrivacyError,
    TrainingError,
)
from confide.privacy.ledger import LedgerProblem, PrivacyLedger, ledger_path
from confide.privacy.reservation import Reservation, reserve_round

__all__ = [
    "ACCOUNTANTS", "AccountingError", "BudgetCheck", "Calibration", "CalibrationError",
    "DoubleSpendError", "History", "LedgerBrokenError", "LedgerError", "LedgerProblem",
    "ParticipationPlan", "PlanError", "PrivacyError", "PrivacyLedger", "Reservation", "RoundSpend",
    "TrainingError", "calibrate", "calibrate_noise_multiplier", "epsilon",
    "ledger_path", "plan_participation", "reserve_round",
    "round_epsilon", "sample_rate_for", "strictest_cap", "would_exceed",
]
