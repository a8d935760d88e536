"""`confide policy explain` previews the privacy plan from the data and the ledger, before anything is spent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confide.cli import app
from confide.identity import Identity
from confide.platform.plan_preview import preview_plan
from confide.policies import load_federation, load_institution
from confide.privacy.accounting import epsilon, history_with
from confide.privacy.budget import plan_participation
from confide.privacy.ledger import PrivacyLedger
from tests.platform.federation_kit import write_data

# Calibration and accounting take seconds: the tests computing a plan are integration tests.
FEDERATION = """kind: federation
federation_id: plan-fed
roster:
  - {{id: a, signing_key: '{signing}', sealing_key: '{sealing}'}}
model: {{source: 'random:tiny-bert', labels: [x, y], max_length_tokens: 12}}
rounds: {rounds}
training: {{steps_per_round: 4, expected_batch_size: 8, max_physical_batch_size: 8}}
privacy: {{delta: 1.0e-5, accountant: rdp}}
min_institutions: 1
"""
INSTITUTION = """kind: institution
institution_id: a
data: {{path: a.jsonl, format: jsonl, eval_fraction: 0.25}}
budget: {{epsilon: {budget}, delta: 1.0e-5}}
max_rounds: {max_rounds}
min_cohort: 1
state_dir: state
"""


def _files(root: Path, rounds: int = 3, budget: float = 8.0, max_rounds: int = 100, records: int = 40):
    identity = Identity.generate("a")
    identity.save(root / "state" / "identity")
    entry = identity.public.to_roster_entry("a")
    (root / "fed.yaml").write_text(FEDERATION.format(signing=entry["signing_key"], sealing=entry["sealing_key"],
                                                     rounds=rounds))
    (root / "a.yaml").write_text(INSTITUTION.format(budget=budget, max_rounds=max_rounds))
    write_data(root / "a.jsonl", records, seed=1)
    return root / "fed.yaml", root / "a.yaml", identity


@pytest.mark.integration
def test_plan_counts_the_records_after_the_eval_split_and_is_the_agents_own_plan(tmp_path):
    fed_path, inst_path, _ = _files(tmp_path)
    fed, inst = load_federation(fed_path), load_institution(inst_path)
    preview = preview_plan(fed, inst)
    assert (preview.records, preview.eval_records, preview.train_records) == (40, 10, 30)
    assert preview.sample_rate == pytest.approx(8 / 30)
    assert preview.rounds_planned == 3 and not preview.ledger.exists
    assert preview.plan == plan_participation(fed, inst, 30, rounds=3)
    assert preview.epsilon_by_round[-1] == pytest.approx(preview.plan.epsilon_after_plan)
    assert preview.epsilon_by_round == sorted(preview.epsilon_by_round)
    assert preview.plan.epsilon_after_plan <= 8.0 + 1e-6
    assert preview.decision.allowed and all(r.passed is not None for r in preview.decision.results)
    assert preview.stops.startswith("nothing")


@pytest.mark.integration
def test_plan_starts_from_what_the_ledger_holds_and_names_max_rounds_as_the_stop(tmp_path):
    fed_path, inst_path, identity = _files(tmp_path, rounds=5, max_rounds=2)
    fed, inst = load_federation(fed_path), load_institution(inst_path)
    ledger = PrivacyLedger.open(tmp_path / "state", "a", "a", identity)
    ledger.append("spend", "other-fed", 1, noise_multiplier=1.0, sample_rate=0.2, steps=4, clipping_norm=1.0,
                  delta=1e-5, accountant="rdp")
    preview = preview_plan(fed, inst)
    spent = epsilon([(1.0, 0.2, 4)], 1e-5, "rdp")
    assert preview.ledger.exists and preview.ledger.epsilon_spent == pytest.approx(spent)
    assert preview.rounds_planned == 2 and preview.plan.epsilon_before == pytest.approx(spent)
    after_two = epsilon(history_with([(1.0, 0.2, 4)], preview.plan.spend, preview.plan.spend), 1e-5, "rdp")
    assert preview.epsilon_by_round[1] == pytest.approx(after_two)
    assert preview.stops.startswith("max_rounds at round 3")


@pytest.mark.integration
def test_explain_refuses_with_exit_1_when_the_ledger_leaves_no_room_for_the_plan(tmp_path):
    fed_path, inst_path, identity = _files(tmp_path, budget=1.0)
    ledger = PrivacyLedger.open(tmp_path / "state", "a", "a", identity)
    ledger.append("spend", "other-fed", 1, noise_multiplier=0.6, sample_rate=0.5, steps=20, clipping_norm=1.0,
                  delta=1e-5, accountant="rdp")
    assert ledger.epsilon_spent() > 1.0
    result = CliRunner().invoke(app, ["policy", "explain", str(fed_path), str(inst_path), "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.output)
    assert data["allowed"] is False and data["plan"]["plan"] is None
    assert data["plan"]["ledger"]["epsilon_spent"] == pytest.approx(ledger.epsilon_spent())
    assert "cannot plan" in data["plan"]["problem"] and data["plan"]["stops"].startswith("round 1")
    result = CliRunner().invoke(app, ["policy", "explain", str(fed_path), str(inst_path)], env={"COLUMNS": "80"})
    assert result.exit_code == 1
    assert "privacy plan of a" in result.output and "30 for training" in result.output
    assert "may not join" in result.output
    assert max(len(line) for line in result.output.splitlines()) <= 80


def test_explain_without_the_data_at_hand_says_the_plan_is_not_evaluated(tmp_path):
    fed_path, inst_path, _ = _files(tmp_path)
    (tmp_path / "a.jsonl").unlink()
    result = CliRunner().invoke(app, ["policy", "explain", str(fed_path), str(inst_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["plan"] is None and "not found" in data["plan_missing"]
