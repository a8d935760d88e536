"""Differential privacy at an institution: DP-LoRA rounds, accounting, calibration and the privacy ledger.

Depends on `confide.policies`, `confide.identity` and `confide.errors` only (never on aggregation or platform).
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
from confide.privacy.trainable import (
    apply_delta,
    load_trainable_state,
    parameters_digest,
    state_to_vector,
    trainable_state,
    vector_to_state,
)
from confide.privacy.training import DPSettings, RoundResult, evaluate, run_dp_round, train_round

__all__ = [
    "ACCOUNTANTS", "AccountingError", "BudgetCheck", "Calibration", "CalibrationError", "DPSettings",
    "DoubleSpendError", "History", "LedgerBrokenError", "LedgerError", "LedgerProblem",
    "ParticipationPlan", "PlanError", "PrivacyError", "PrivacyLedger", "Reservation", "RoundResult", "RoundSpend",
    "TrainingError", "apply_delta", "calibrate", "calibrate_noise_multiplier", "epsilon", "evaluate",
    "ledger_path", "load_trainable_state", "parameters_digest", "plan_participation", "reserve_round",
    "round_epsilon", "run_dp_round", "sample_rate_for", "state_to_vector", "strictest_cap", "train_round",
    "trainable_state", "vector_to_state", "would_exceed",
]
