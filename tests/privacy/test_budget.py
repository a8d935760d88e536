"""Accounting, calibration, planning and the write-ahead reservation: the budget is never overspent."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from confide.privacy import (
    CalibrationError,
    DoubleSpendError,
    PlanError,
    PrivacyLedger,
    RoundSpend,
    calibrate,
    calibrate_noise_multiplier,
    epsilon,
    plan_participation,
    reserve_round,
    would_exceed,
)

from .helpers import make_federation, make_institution

DATASET = "cd" * 32
SRC = Path(__file__).resolve().parents[2] / "src"


def test_composition_is_order_free_and_merges_equal_rounds():
    a, b = (1.0, 0.05, 10), (0.8, 0.02, 30)
    assert epsilon([a, b, a], 1e-5) == epsilon([a, a, b], 1e-5) == epsilon([(1.0, 0.05, 20), b], 1e-5)
    assert epsilon([], 1e-5) == 0.0
    assert math.isinf(epsilon([(0.0, 0.1, 1)], 1e-5))
    # RDP is the looser bound.
    assert epsilon([a, b], 1e-5, "rdp") > epsilon([a, b], 1e-5, "pld")


@pytest.mark.parametrize("accountant", ["pld", "rdp"])
def test_calibration_spends_the_target_to_within_a_tenth_of_a_percent(accountant):
    result = calibrate(2.0, 1e-5, 0.02, 300, accountant)
    assert 2.0 * 0.999 <= result.epsilon <= 2.0
    assert result.epsilon == epsilon([(result.noise_multiplier, 0.02, 300)], 1e-5, accountant)
    assert result.as_dict()["noise_multiplier"] == result.noise_multiplier
    assert "noise multiplier" in result.describe()


def test_calibration_against_prior_spending_fits_exactly_what_is_left():
    prior = [(1.2, 0.05, 40)]
    sigma = calibrate_noise_multiplier(3.0, 1e-5, 0.05, 20, prior_history=prior, repeats=3)
    total = epsilon(prior + [(sigma, 0.05, 20)] * 3, 1e-5)
    assert 3.0 * 0.999 <= total <= 3.0


@pytest.mark.parametrize("kwargs, option", [
    (dict(epsilon_target=-1, delta=1e-5, sample_rate=0.1, steps=10), "--epsilon"),
    (dict(epsilon_target=1, delta=2.0, sample_rate=0.1, steps=10), "--delta"),
    (dict(epsilon_target=1, delta=1e-5, sample_rate=0.0, steps=10), "--sample-rate"),
    (dict(epsilon_target=1, delta=1e-5, sample_rate=0.1, steps=0), "--steps"),
    (dict(epsilon_target=1, delta=1e-5, sample_rate=0.1, steps=10, accountant="gdp"), "accountant"),
])
def test_calibration_rejects_bad_inputs_naming_the_option(kwargs, option):
    with pytest.raises(CalibrationError, match=option):
        calibrate(**kwargs)


def test_would_exceed_reports_budget_and_cap_separately():
    history = [(1.0, 0.05, 20)]
    small = RoundSpend(2.0, 0.05, 5)
    fits = would_exceed(history, small, budget=10.0, cap=None, delta=1e-5)
    assert not fits.exceeds and fits.epsilon_before < fits.epsilon_after <= 10.0
    over_budget = would_exceed(history, small, budget=fits.epsilon_before, cap=None, delta=1e-5)
    assert over_budget.exceeds and "budget" in over_budget.reasons[0]
    over_cap = would_exceed(history, small, budget=10.0, cap=fits.round_epsilon / 2, delta=1e-5)
    assert over_cap.exceeds and "cap" in over_cap.reasons[0]


def test_plan_spreads_the_budget_over_all_rounds(tmp_path):
    federation = make_federation(rounds=4)
    institution = make_institution(tmp_path, budget={"epsilon": 2.0, "delta": 1e-5})
    plan = plan_participation(federation, institution, train_records=80)
    assert plan.limited_by == "budget" and plan.rounds == 4
    assert plan.spend.sample_rate == 4 / 80 and plan.spend.steps == 2
    assert 2.0 * 0.999 <= plan.epsilon_after_plan <= 2.0


@pytest.mark.integration  # slow (accountant calibrations): kept out of make test-fast
def test_plan_honours_the_strictest_round_cap_and_the_minimum_noise(tmp_path):
    federation = make_federation(rounds=2, privacy={"max_round_epsilon": 0.5})
    institution = make_institution(tmp_path, round_epsilon_cap=0.8)
    plan = plan_participation(federation, institution, train_records=80)
    assert plan.limited_by == "round_cap" and plan.round_epsilon <= 0.5
    noisy = make_federation(privacy={"min_noise_multiplier": 20.0})
    assert plan_participation(noisy, institution, train_records=80).spend.noise_multiplier == 20.0


def test_plan_fails_when_the_budget_is_already_spent(tmp_path):
    institution = make_institution(tmp_path, budget={"epsilon": 1.0, "delta": 1e-5})
    with pytest.raises(PlanError, match="already spent"):
        plan_participation(make_federation(), institution, 80, history=[(0.5, 0.5, 100)])


def test_agent_declines_round_that_would_exceed_budget_and_never_overspends(tmp_path, identity):
    federation = make_federation(rounds=10)
    institution = make_institution(tmp_path, budget={"epsilon": 1.0, "delta": 1e-5}, max_rounds=10)
    # A plan made for fewer rounds than the federation runs: it needs more than epsilon 1 in total.
    spend = plan_participation(federation, institution, train_records=80, rounds=3).spend
    ledger = PrivacyLedger.open(institution.state_dir, "a", DATASET, identity)
    outcomes = []
    for round_index in range(1, 11):
        reservation = reserve_round(ledger, federation, institution, round_index, spend)
        outcomes.append(reservation.granted)
        if reservation.granted:
            ledger.append("outcome", federation.federation_id, round_index, result="uploaded")
    assert outcomes[:3] == [True] * 3 and not any(outcomes[3:])
    decline = next(e for e in ledger.entries() if e["kind"] == "decline")
    assert decline["round"] == 4 and any(r.startswith("budget:") for r in decline["reasons"])
    assert ledger.spend_entries()[-1]["epsilon"] <= 1.0
    assert ledger.epsilon_spent() <= 1.0


def test_round_over_the_cap_or_under_the_noise_floor_is_declined(tmp_path, identity):
    federation = make_federation(privacy={"min_noise_multiplier": 2.0})
    institution = make_institution(tmp_path, round_epsilon_cap=0.1)
    ledger = PrivacyLedger.open(institution.state_dir, "a", DATASET, identity)
    reservation = reserve_round(ledger, federation, institution, 1, RoundSpend(1.0, 0.05, 10))
    assert not reservation.granted
    assert {r.split(":")[0] for r in reservation.reasons} == {"round_cap", "noise"}
    assert ledger.spend_entries() == [] and ledger.entries()[-1]["kind"] == "decline"


KILL_AFTER_SPEND = """
import os, signal, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from confide.identity import Identity
from confide.privacy import PrivacyLedger, RoundSpend, reserve_round
from tests.privacy.helpers import make_federation, make_institution
identity = Identity.load(Path({identity!r}))
federation, institution = make_federation(), make_institution(Path({tmp!r}))
ledger = PrivacyLedger.open(institution.state_dir, "a", {dataset!r}, identity)
assert reserve_round(ledger, federation, institution, 1, RoundSpend(1.0, 0.05, 10)).granted
os.kill(os.getpid(), signal.SIGKILL)  # dies "during training", before any outcome entry
"""


@pytest.mark.integration
def test_kill_between_spend_and_outcome_leaves_the_spend_counted(tmp_path, identity):
    identity.save(tmp_path / "identity")
    script = KILL_AFTER_SPEND.format(root=str(SRC.parent), identity=str(tmp_path / "identity"),
                                     tmp=str(tmp_path), dataset=DATASET)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]

    federation, institution = make_federation(), make_institution(tmp_path)
    ledger = PrivacyLedger.open(institution.state_dir, "a", DATASET, identity)
    assert ledger.verify(identity.public) == []
    assert [e["kind"] for e in ledger.entries()] == ["spend"]
    assert ledger.epsilon_spent() == epsilon([(1.0, 0.05, 10)], 1e-5) > 0
    # The restarted agent must not train round 1 again with a fresh draw...
    with pytest.raises(DoubleSpendError):
        reserve_round(ledger, federation, institution, 1, RoundSpend(1.0, 0.05, 10))
    # ...and round 2 is judged with round 1's spend counted.
    second = reserve_round(ledger, federation, institution, 2, RoundSpend(1.0, 0.05, 10))
    assert second.granted and second.check.epsilon_before == ledger.spend_entries()[0]["epsilon"]


def test_a_full_batch_sample_rate_accounts_as_the_plain_gaussian_without_numpy_warnings(recwarn):
    # An expected batch as large as the dataset gives q = 1: the subsampled Gaussian is the plain one.
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant

    full = epsilon([(2.0, 1.0, 10)], 1e-5, "pld")
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_event.GaussianDpEvent(2.0), 10)
    assert full == pytest.approx(pld.get_epsilon(1e-5), rel=0.02)
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
