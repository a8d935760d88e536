"""Differential privacy at an institution: DP-LoRA rounds, accounting, calibration and the privacy ledger.

Depends on `confide.policies` and `confide.identity` only.
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
from confide.privacy.dp_round import DPSettings, RoundResult, run_dp_round
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
from confide.privacy.objective import Evaluation, evaluate
from confide.privacy.reservation import Reservation, reserve_round
from confide.privacy.trainable import (
    apply_delta,
    load_trainable_state,
    parameters_digest,
    state_to_vector,
    trainable_state,
    vector_to_state,
)

__all__ = [
    "ACCOUNTANTS", "AccountingError", "BudgetCheck", "Calibration", "CalibrationError", "DPSettings",
    "DoubleSpendError", "Evaluation", "History", "LedgerBrokenError", "LedgerError", "LedgerProblem",
    "ParticipationPlan", "PlanError", "PrivacyError", "PrivacyLedger", "Reservation", "RoundResult", "RoundSpend",
    "TrainingError", "apply_delta", "calibrate", "calibrate_noise_multiplier", "epsilon", "evaluate",
    "ledger_path", "load_trainable_state", "parameters_digest", "plan_participation", "reserve_round",
    "round_epsilon", "run_dp_round", "sample_rate_for", "state_to_vector", "strictest_cap", "trainable_state",
    "vector_to_state", "would_exceed",
]
