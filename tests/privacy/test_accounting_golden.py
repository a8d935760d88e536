"""The accountants pinned to reference values (delta 1e-5), measured before the project started.

dp_accounting's PLD and RDP (what institutions account with and the auditor recomputes with) must
keep giving these numbers (Opacus' PRV gave 1.838 and 5.065, within 0.011 of PLD): a library upgrade
or a change in how confide calls them that moves an epsilon fails here, not silently in someone's
budget. The reference
values are given to three decimals, so the tolerance is half a unit in the last one plus margin.
"""

from __future__ import annotations

import math

import pytest

from confide.privacy.accounting import epsilon
from confide.privacy.audit import recompute

DELTA = 1e-5
TOLERANCE = 1e-3

GOLDEN = [
    # (sample rate q, noise multiplier sigma, steps): RDP, PLD
    pytest.param(0.01, 1.0, 1000, 2.101, 1.828, id="q=0.01 sigma=1.0 1000 steps"),
    pytest.param(0.1, 1.5, 200, 5.549, 5.054, id="q=0.1 sigma=1.5 200 steps"),
]


def pld_epsilon(history, delta, replace_one=False):
    return epsilon(history, delta, "pld", replace_one=replace_one)


@pytest.mark.parametrize("q, sigma, steps, rdp, pld", GOLDEN)
def test_accountants_give_the_reference_epsilons(q, sigma, steps, rdp, pld):
    history = [(sigma, q, steps)]
    assert epsilon(history, DELTA, "rdp") == pytest.approx(rdp, abs=TOLERANCE)
    assert pld_epsilon(history, DELTA) == pytest.approx(pld, abs=TOLERANCE)


@pytest.mark.parametrize("history", [[(1.0, 0.01, 1000)], [(1.5, 0.1, 100)] * 2 + [(0.8, 0.3, 7)],
                                     [(2.0, 1.0, 10)], [(3.0, 0.02, 50), (0.7, 0.5, 3)]])
def test_the_auditors_own_recomputation_agrees_with_the_agents_accountant(history):
    # Two codes over one library: the agent's (confide.privacy.accounting) and the auditor's
    # (privacy.audit.recompute), which merge, order and compose the history each their own way.
    assert recompute.pld_epsilon(history, DELTA) == pytest.approx(pld_epsilon(history, DELTA), rel=1e-9)
    assert recompute.pld_epsilon(history, DELTA, replace_one=True) == pytest.approx(
        pld_epsilon(history, DELTA, replace_one=True), rel=1e-9)
    assert recompute.rdp_epsilon(history, DELTA) == pytest.approx(epsilon(history, DELTA, "rdp"), rel=1e-9)


@pytest.mark.parametrize("q, sigma, steps, rdp, pld", GOLDEN)
def test_rdp_is_looser_than_pld(q, sigma, steps, rdp, pld):
    history = [(sigma, q, steps)]
    assert epsilon(history, DELTA, "rdp") > 1.05 * pld_epsilon(history, DELTA)


def test_history_split_into_rounds_composes_to_the_same_epsilon():
    # 1000 steps as 10 rounds of 100 (how the ledger records them) is the same mechanism.
    for accountant in ("pld", "rdp"):
        whole = epsilon([(1.0, 0.01, 1000)], DELTA, accountant)
        assert epsilon([(1.0, 0.01, 100)] * 10, DELTA, accountant) == pytest.approx(whole, rel=1e-9)


def test_replace_one_without_sampling_is_the_gaussian_at_twice_the_sensitivity():
    # Swapping one record for another moves the clipped sum by up to twice the clipping norm: the
    # mechanism at noise sigma is then the add/remove-one mechanism at noise sigma / 2.
    for sigma in (1.0, 3.0):
        assert pld_epsilon([(sigma, 1.0, 4)], DELTA, replace_one=True) == pytest.approx(
            pld_epsilon([(sigma / 2, 1.0, 4)], DELTA), rel=1e-3)


@pytest.mark.parametrize("q, sigma, steps", [(0.25, 1.26, 40), (0.8, 3.1, 40), (0.01, 1.0, 1000)])
def test_replace_one_lies_between_add_remove_and_its_group_privacy_bound(q, sigma, steps):
    # Replace-one is a removal then an addition, so (eps, delta) add/remove-one gives at most
    # (2 eps, (1 + e^eps) delta) for a swap; the exact replace-one value lies in between.
    history = [(sigma, q, steps)]
    add_remove = pld_epsilon(history, DELTA)
    swapped = pld_epsilon(history, DELTA, replace_one=True)
    assert add_remove < swapped
    assert pld_epsilon(history, (1 + math.exp(add_remove)) * DELTA, replace_one=True) <= 2 * add_remove + TOLERANCE
