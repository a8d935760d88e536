"""Grid expansion, point keys, the policies each point runs with, and the Pareto front."""

from __future__ import annotations

import math

from confide.platform.sweep.job import point_policies
from confide.platform.sweep.points import Point, expand_grid
from confide.platform.sweep.report import Setting, best_rows, pareto_front
from confide.policies import FederationPolicy, InstitutionPolicy
from tests.platform.federation_kit import load_files, make_federation_files

BASE = {"epsilon": 6.0, "clipping_norm": 1.0, "lora_rank": 2, "freeze_a": True, "local_steps": 2,
        "expected_batch_size": 4, "learning_rate": 0.01, "rounds": 1, "seed": 0, "max_length_tokens": 12}


def test_baselines_run_every_combination_the_federation_runs():
    grid = {"epsilon": [1.0, math.inf], "lora_rank": [4, 8], "seed": [0, 1]}
    points = expand_grid(grid, BASE, ["site-1", "site-2", "site-3"], alone=True, central=True, context="c")
    federated = [p for p in points if p.kind == "federated"]
    assert len(federated) == 8
    central = [p for p in points if p.kind == "central"]
    alone = [p for p in points if p.kind == "alone"]
    settings = sorted(str(sorted(p.settings.items())) for p in federated)
    assert sorted(str(sorted(p.settings.items())) for p in central) == settings
    assert len(alone) == 3 * len(federated)
    assert {p.settings["lora_rank"] for p in alone} == {4, 8}
    assert len({p.key for p in points}) == len(points)


def _row(kind, epsilon, rank, seed, accuracy, institution=""):
    return {"kind": kind, "institution": institution, "epsilon": epsilon, "lora_rank": rank, "seed": seed,
            **{a: BASE[a] for a in BASE if a not in ("epsilon", "lora_rank", "seed")},
            "accuracy": accuracy, "macro_f1": accuracy - 0.01, "epsilon_spent": None}


def test_baselines_are_picked_by_their_best_mean_over_seeds_like_the_federation():
    rows = [_row("federated", 3.0, r, s, a) for r, s, a in [(4, 0, 0.6), (4, 1, 0.7), (8, 0, 0.8), (8, 1, 0.9)]]
    rows += [_row("central", 3.0, r, s, a) for r, s, a in [(4, 0, 0.95), (4, 1, 0.93), (8, 0, 0.5), (8, 1, 0.5)]]
    rows += [_row("alone", 3.0, 8, s, a, i) for s in (0, 1) for i, a in (("s1", 0.2), ("s2", 0.4))]
    rows += [_row("alone", 3.0, 4, s, 0.1, i) for s in (0, 1) for i in ("s1", "s2")]
    best = best_rows(rows)[0]
    assert best["setting"] == "lora_rank=8" and best["accuracy"].startswith("0.850")
    assert best["central"] == "0.940"  # rank 4 is central's best, not the federation's choice
    assert best["alone"] == "0.300 (0.200-0.400)"
    assert "central: lora_rank=4" in best["baseline_settings"]
    assert best["f1"] == "0.840"


def test_point_keys_are_stable_and_change_with_the_context():
    grid = {"epsilon": [1.0, 3.0]}
    first = expand_grid(grid, BASE, ["s"], False, False, context="data-v1")
    again = expand_grid(grid, BASE, ["s"], False, False, context="data-v1")
    other = expand_grid(grid, BASE, ["s"], False, False, context="data-v2")
    assert [p.key for p in first] == [p.key for p in again]
    assert not {p.key for p in first} & {p.key for p in other}


def test_point_policies_set_budget_to_the_target_and_lift_caps(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path))
    template = institutions[0].model_copy(update={"round_epsilon_cap": 1.0})
    point = Point("federated", {**BASE, "epsilon": 3.0, "lora_rank": 8, "expected_batch_size": 6}, key="k1")
    fed, insts = point_policies(point, federation, template, ["site-1", "site-2"])
    fed, insts = FederationPolicy.model_validate(fed), [InstitutionPolicy.model_validate(i) for i in insts]
    assert fed.adapter.rank == 8 and fed.training.expected_batch_size == 6 and fed.federation_id == "sweep-k1"
    assert fed.privacy.min_noise_multiplier == 0 and fed.privacy.max_round_epsilon is None
    assert [i.institution_id for i in insts] == ["site-1", "site-2"]
    assert all(i.budget.epsilon == 3.0 and i.round_epsilon_cap is None for i in insts)


def test_central_baseline_trains_one_institution_with_the_federations_batch(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path))
    point = Point("central", {**BASE, "epsilon": math.inf}, key="k2")
    fed, insts = point_policies(point, federation, institutions[0], ["site-1", "site-2", "site-3"])
    assert fed["min_institutions"] == 1 and insts[0]["min_cohort"] == 1
    assert fed["training"]["expected_batch_size"] == 3 * BASE["expected_batch_size"]
    assert [i["institution_id"] for i in insts] == ["central"]
    assert insts[0]["budget"]["epsilon"] == institutions[0].budget.epsilon  # no DP: the budget is untouched


def test_pareto_front_keeps_settings_no_smaller_epsilon_beats():
    settings = [Setting(1.0, (("r", 4),), 0.50, 1, 1.0), Setting(1.0, (("r", 8),), 0.55, 1, 1.0),
                Setting(3.0, (("r", 4),), 0.54, 1, 3.0), Setting(3.0, (("r", 8),), 0.70, 1, 3.0),
                Setting(math.inf, (("r", 4),), 0.69, 1, None), Setting(math.inf, (("r", 8),), 0.80, 1, None)]
    front = pareto_front(settings)
    assert [(s.epsilon, s.accuracy) for s in front] == [(1.0, 0.55), (3.0, 0.70), (math.inf, 0.80)]
