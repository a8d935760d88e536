"""Saved adapters carry their guarantee: a model card (README.md, privacy.json) that an auditor checks
against the ledgers and receipts, while the directory still loads with plain PeftModel.from_pretrained."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from confide.cli import app
from confide.platform.model_card import render_card
from confide.privacy.accounting import epsilon
from confide.privacy.audit.adapter_card import AdapterAudit, card_checks
from confide.privacy.guarantee import (
    AdapterGuarantee,
    GuaranteeError,
    InstitutionGuarantee,
    guarantee_from_entries,
    read_guarantee,
)
from tests.simulated_kit import simulated_run


def _spend(federation: str, round_index: int, sigma: float, seq: int) -> dict:
    return {"kind": "spend", "federation": federation, "round": round_index, "noise_multiplier": sigma,
            "sample_rate": 0.1, "steps": 5, "epsilon": 0.0, "seq": seq, "hash": f"{seq:064x}"}


def test_guarantee_composes_only_this_federations_spends():
    entries = [_spend("other", 1, 0.8, 1), _spend("mine", 1, 1.2, 2), _spend("mine", 2, 1.2, 3)]
    entries[-1]["epsilon"] = 7.5  # the ledger's cumulative epsilon over both federations
    g = guarantee_from_entries(entries, "a", "records", "mine", 1e-5, "rdp", budget_epsilon=9.0)
    assert g.rounds_trained == 2 and g.accountant == "rdp"
    assert g.epsilon == pytest.approx(epsilon([(1.2, 0.1, 5)] * 2, 1e-5, "rdp"))
    assert g.dataset_epsilon == 7.5 and g.ledger_head == f"{3:064x}"
    # Replace-one composes the same two spends, for one record swapped: above add/remove-one.
    assert g.replace_one_epsilon == pytest.approx(epsilon([(1.2, 0.1, 5)] * 2, 1e-5, "pld", replace_one=True))
    assert g.replace_one_epsilon > epsilon([(1.2, 0.1, 5)] * 2, 1e-5, "pld")
    noiseless = guarantee_from_entries(entries, "a", "records", "mine", 1e-5, "rdp", private=False)
    assert noiseless.epsilon is None and noiseless.replace_one_epsilon is None


def test_card_readme_states_each_institution_and_no_guarantee_for_a_noiseless_run():
    rows = [InstitutionGuarantee("a", "ra", True, 2.5, 1e-5, "pld", 3, 2.5, 4.0, "ab" * 32, 4.75),
            InstitutionGuarantee("b", "rb", False, None, 1e-5, "pld", 0, 0.0, 4.0, "cd" * 32, None)]
    card = AdapterGuarantee("fed", "random:tiny-bert", "sequence_classification", ["x", "y"], 3, 3, 2,
                            {"rank": 2, "alpha": 16.0, "target_modules": ["query"], "freeze_a": True}, "00" * 32, rows)
    text = render_card(card)
    assert text.startswith("---\n") and "library_name: peft" in text
    row_a = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert "2.500" in row_a and "pld" in row_a and "`abababababababab`" in row_a
    row_b = next(line for line in text.splitlines() if line.startswith("| b |"))
    assert "no DP" in row_b
    assert "no privacy guarantee" in text
    assert AdapterGuarantee.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_a_card_of_another_version_or_without_a_replace_one_epsilon_is_refused_naming_the_file():
    rows = [InstitutionGuarantee("a", "ra", True, 2.5, 1e-5, "pld", 3, 2.5, 4.0, "ab" * 32, 4.75)]
    card = AdapterGuarantee("fed", "random:tiny-bert", "sequence_classification", ["x", "y"], 3, 3, 1,
                            {"rank": 2, "alpha": 16.0, "target_modules": ["query"], "freeze_a": True}, "00" * 32, rows)
    row = next(line for line in render_card(card).splitlines() if line.startswith("| a |"))
    assert row.split(" | ")[2:4] == ["2.500", "4.750"]
    assert card.to_dict()["version"] == 1
    for version in (0, 2):
        with pytest.raises(GuaranteeError, match=f"x/privacy.json: card format {version}; this confide reads "
                           "format 1") as err:
            AdapterGuarantee.from_dict({**card.to_dict(), "version": version}, "x/privacy.json")
        assert len(err.value.lines()) == 1
    without = card.to_dict()
    del without["guarantees"][0]["replace_one_epsilon"]
    with pytest.raises(GuaranteeError, match="x/privacy.json: malformed card"):
        AdapterGuarantee.from_dict(without, "x/privacy.json")


@pytest.mark.integration
def test_every_saved_adapter_lists_every_institutions_guarantee_and_loads_with_peft():
    from peft import PeftModel

    from confide.platform.models import load_base_model, load_tokenizer
    from confide.policies import load_federation

    run = simulated_run()
    summary = json.loads((run.out / "summary.json").read_text())
    for name, status in summary["institutions"].items():
        card = read_guarantee(run.out / "adapters" / name)
        assert [g.institution for g in card.guarantees] == ["a", "b", "c"]
        assert card.rounds_applied == card.rounds_planned == 2 and card.institutions == 3
        mine = next(g for g in card.guarantees if g.institution == name)
        # The ledger's epsilon: the only federation on these datasets, so both numbers agree.
        assert mine.epsilon == pytest.approx(status["epsilon"], abs=1e-6) and mine.epsilon <= mine.budget_epsilon
        assert mine.replace_one_epsilon == pytest.approx(status["replace_one_epsilon"], abs=1e-9)
        assert mine.replace_one_epsilon > mine.epsilon
        readme = (run.out / "adapters" / name / "README.md").read_text()
        assert f"{mine.epsilon:.3f}" in readme and "base_model:" in readme
    directory = run.out / "adapters" / "a"
    federation = load_federation(run.out / "federation.yaml")
    base = load_base_model(federation.model, load_tokenizer(federation.model), federation.seed)
    loaded = PeftModel.from_pretrained(base, str(directory))
    saved = load_file(str(directory / "adapter_model.safetensors"))
    state = loaded.state_dict()
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b and any(saved[k].abs().sum() > 0 for k in lora_b)
    for key in lora_b:
        match = next(k for k in state if k.endswith(key.split("base_model.model.", 1)[-1].replace(".weight",
                                                                                               ".default.weight")))
        assert torch.equal(state[match], saved[key])


@pytest.mark.integration
def test_audit_adapter_verifies_the_card_and_fails_a_lowered_epsilon_other_weights_or_a_rolled_back_ledger(
        tmp_path):
    run = simulated_run()
    adapter = tmp_path / "adapter"
    shutil.copytree(run.out / "adapters" / "b", adapter)
    result = CliRunner().invoke(app, ["audit", "adapter", str(adapter), *map(str, run.ledgers), *run.audit_args(),
                                      "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    assert json.loads(result.output)["verdict"] == "verified"

    card = json.loads((adapter / "privacy.json").read_text())
    card["guarantees"][0]["epsilon"] /= 2
    (adapter / "privacy.json").write_text(json.dumps(card))
    found = card_checks(adapter, read_guarantee(adapter), run.ledgers)
    assert [c.passed for c in found if c.name == "card_epsilon"] == [False, True, True]
    assert [c.passed for c in found if c.name == "card_replace_one"] == [True, True, True]

    card["guarantees"][0]["epsilon"] *= 2
    card["guarantees"][0]["replace_one_epsilon"] /= 2
    (adapter / "privacy.json").write_text(json.dumps(card))
    found = card_checks(adapter, read_guarantee(adapter), run.ledgers)
    assert [c.passed for c in found if c.name == "card_epsilon"] == [True, True, True]
    assert [c.passed for c in found if c.name == "card_replace_one"] == [False, True, True]

    shutil.copytree(run.out / "adapters" / "b", adapter, dirs_exist_ok=True)
    weights = adapter / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    found = card_checks(adapter, read_guarantee(adapter), run.ledgers)
    assert [c.passed for c in found if c.name == "card_weights"] == [False]

    shutil.copytree(run.out / "adapters" / "b", adapter, dirs_exist_ok=True)
    rolled_back = tmp_path / "a.jsonl"
    lines = run.ledgers[0].read_text().splitlines(keepends=True)
    rolled_back.write_text("".join(lines[:-2]))  # an older copy of a's ledger
    found = card_checks(adapter, read_guarantee(adapter), [rolled_back, *run.ledgers[1:]])
    assert [c.passed for c in found if c.name == "card_head"] == [False, True, True]
    assert AdapterAudit(str(adapter), read_guarantee(adapter), found).exit_code == 1


def test_audit_adapter_of_a_directory_without_a_card_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "adapter").mkdir()
    ledger = tmp_path / "x.jsonl"
    ledger.write_text("{}\n")
    result = CliRunner().invoke(app, ["audit", "adapter", str(tmp_path / "adapter"), str(ledger)])
    assert result.exit_code == 2
    assert "privacy.json: file not found" in result.output and len(result.output.strip().splitlines()) == 1
