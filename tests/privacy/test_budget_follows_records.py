"""The budget follows the records: whatever ids, policy files or state directories an institution uses on
its machine, and whichever command trains, records charged under one ledger are charged under any
other (here: refused there), and a restored ledger directory is noticed before anything is spent."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from confide.cli import app
from confide.platform.member import Member
from confide.policies import load_institution
from confide.privacy import PrivacyLedger
from confide.privacy.errors import LedgerRollbackError, RecordsChargedElsewhereError
from tests.privacy.test_budget_holds import _keyed, _members, _pld_add_remove, _spend_round


def _policy(root: Path, name: str, state_dir: str, dataset_id: str | None = None) -> Path:
    """Another policy file of institution `a` over the same data file and identity."""
    text = (root / "a.yaml").read_text().replace("state_dir: state/a", f"state_dir: {state_dir}")
    if dataset_id is not None:
        text = text.replace("eval_fraction: 0.2}", f"eval_fraction: 0.2, dataset_id: {dataset_id}}}")
    path = root / name
    path.write_text(text)
    return path


def _ledger_files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.glob("**/ledger/*.jsonl"))}


def _composed_epsilon(root: Path, delta: float) -> float:
    """Every spend of every ledger on the machine, composed independently (dp_accounting PLD)."""
    history = [h for path in _ledger_files(root) for h in PrivacyLedger(path).spend_history()]
    return _pld_add_remove(history, delta)


@pytest.fixture
def spent(tmp_path):
    """Institution `a` spent one round on its data under state/a, dataset id `a`."""
    federation, institutions, members = _members(tmp_path, ids=("a", "b"), rounds=2)
    _keyed(members)
    _spend_round(members["a"], 1)
    return tmp_path, federation, institutions, members


@pytest.mark.parametrize("state_dir,dataset_id", [("state/a-fed2", None), ("state/a", "a-copy")],
                         ids=["another-policy-and-state-dir", "another-dataset-id"])
def test_the_same_records_under_another_ledger_are_refused_before_anything_is_recorded(spent, state_dir, dataset_id):
    root, federation, institutions, _ = spent
    before = _ledger_files(root)
    other = load_institution(_policy(root, "a-other.yaml", state_dir, dataset_id))
    with pytest.raises(RecordsChargedElsewhereError) as raised:
        Member(federation, other)
    message = str(raised.value)
    assert "\n" not in message and str(Path(institutions[0].state_dir) / "ledger" / "a.a.jsonl") in message
    assert "state_dir" in message and "dataset_id" in message  # the fix
    assert _ledger_files(root) == before  # no new ledger, nothing changed in the old one
    budget = institutions[0].budget.epsilon
    assert _composed_epsilon(root, federation.privacy.delta) <= budget + 1e-6


def test_a_round_is_refused_when_another_ledger_spent_on_the_records_after_both_were_opened(tmp_path):
    federation, institutions, members = _members(tmp_path, ids=("a", "b"), rounds=2)
    other = Member(federation, load_institution(_policy(tmp_path, "a-other.yaml", "state/a-fed2")))
    _keyed(members)
    _spend_round(members["a"], 1)
    other_ledger = other.ledger.path.read_bytes()
    with pytest.raises(RecordsChargedElsewhereError, match="a.a.jsonl"):
        other.take_part(1)  # needs no key: refused at reservation, before training
    assert other.ledger.path.read_bytes() == other_ledger


def test_a_restored_ledger_directory_is_refused_by_a_new_federation(spent):
    root, federation, institutions, members = spent
    ledger_dir = Path(institutions[0].state_dir) / "ledger"
    backup = root / "ledger-backup"
    shutil.copytree(ledger_dir, backup)
    members["a"].note_failed_round(1, "quorum not reached")
    _spend_round(members["a"], 2)
    shutil.rmtree(ledger_dir)
    shutil.copytree(backup, ledger_dir)  # ledger and its witness from before round 2; member.json kept
    before = _ledger_files(root)
    newer = federation.model_copy(update={"federation_id": "tiny2"})  # its coordinator holds no receipt of ours
    with pytest.raises(LedgerRollbackError) as raised:
        Member(newer, institutions[0])
    message = str(raised.value)
    assert "\n" not in message and str(root / "ids" / "a" / "ledgers") in message
    assert _ledger_files(root) == before


def test_simulate_on_a_spent_dataset_is_refused(spent):
    root, federation, institutions, _ = spent
    before = _ledger_files(root)
    sim_policy = _policy(root, "a-sim.yaml", "state/a-sim")  # its own state_dir: simulate replaces it anyway
    result = CliRunner().invoke(app, ["simulate", str(root / "fed.yaml"), str(sim_policy), str(root / "b.yaml"),
                                      "--out", str(root / "sim"), "--workers", "0"])
    assert result.exit_code == 2, result.output
    refusal = [line for line in result.output.splitlines() if "already charged" in line]  # after the progress
    assert len(refusal) == 1 and "a.a.jsonl" in refusal[0]
    assert {p: b for p, b in _ledger_files(root).items() if "sim" not in p.parts} == before
    assert all(not PrivacyLedger(p).spend_entries() for p in _ledger_files(root) if "sim" in p.parts)


def test_policy_explain_on_a_third_id_reports_the_ledger_that_charged_the_records(spent):
    root, _, _, _ = spent
    third = _policy(root, "a-third.yaml", "state/a-third", "third")
    result = CliRunner().invoke(app, ["policy", "explain", str(root / "fed.yaml"), str(third), "--json"])
    assert result.exit_code == 1, result.output
    preview = json.loads(result.output)
    assert preview["allowed"] is False and preview["plan"]["plan"] is None
    assert "a.a.jsonl" in preview["plan"]["ledger"]["charged_elsewhere"]
    table = CliRunner().invoke(app, ["policy", "explain", str(root / "fed.yaml"), str(third)],
                               env={"COLUMNS": "200"})
    assert "already charged" in table.output and "no ledger yet: nothing spent" not in table.output


def test_a_corrupt_registry_is_one_line_naming_the_file_and_exit_2(spent):
    root, _, _, _ = spent
    entry = next((root / "ids" / "a" / "ledgers").glob("*.json"))
    entry.write_text("{not json")
    result = CliRunner().invoke(app, ["policy", "explain", str(root / "fed.yaml"), str(root / "a.yaml")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and str(entry) in lines[0] and "restore" in lines[0]


def test_a_simulation_on_an_institutions_data_charges_its_records_for_the_next_ledger(tmp_path):
    from tests.platform.federation_kit import load_files, make_federation_files

    fed_path, paths = make_federation_files(tmp_path, ids=("a", "b"), rounds=1)
    result = CliRunner().invoke(app, ["simulate", str(fed_path), *map(str, paths), "--out", str(tmp_path / "sim"),
                                      "--workers", "0"])
    assert result.exit_code == 0, result.output[-2000:]
    federation, institutions = load_files(fed_path, paths)
    with pytest.raises(RecordsChargedElsewhereError, match="sim"):
        Member(federation, institutions[0])  # the institution's own ledger: its records were spent by the simulation
    assert not (Path(institutions[0].state_dir) / "ledger").exists()
