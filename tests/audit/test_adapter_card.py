"""`confide audit adapter`: an honest member's card with complete inputs verifies; every number on it,
in privacy.json or in the displayed README, edited after the fact, fails. The card is written by the
project's own card code (`platform.model_card`) from a ledger written by the project's ledger code."""

from __future__ import annotations

import dataclasses
import json

import pytest

from confide.platform.model_card import member_card, write_card
from confide.policies import load_federation, load_institution
from confide.privacy.audit.adapter_card import audit_adapter
from confide.privacy.audit.result import EXIT_CHECK_FAILED, EXIT_VERIFIED
from confide.privacy.guarantee import read_guarantee
from confide.privacy.ledger import PrivacyLedger

from .support import ROUNDS, SPEND, sign_receipts, write_ledger


@pytest.fixture
def adapter(world):
    """hospital-a's saved adapter after 3 applied rounds, with the card a member writes."""
    policy = load_institution(world.policy)
    path = write_ledger(world.root / "state", world.institution, [dict(SPEND, accountant="pld")] * ROUNDS,
                        dataset=policy.dataset_id, coordinator=world.coordinator, applied=True)
    # The coordinator's export names this ledger's heads (4 entries a round here, with the applied sums).
    world.receipts.write_text(json.dumps(sign_receipts(world.coordinator, "hospital-a", ROUNDS, ledger=path)))
    directory = world.root / "adapter"
    directory.mkdir()
    (directory / "adapter_model.safetensors").write_bytes(b"weights of the final adapter")
    (directory / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "random:tiny-bert"}))
    ledger = PrivacyLedger(path, "hospital-a", policy.dataset_id, world.institution)
    write_card(directory, member_card(directory, load_federation(world.federation), policy, ledger,
                                      rounds_applied=ROUNDS))
    return directory, path


def _audit(world, adapter):
    adapter, ledger = adapter
    return audit_adapter(adapter, [ledger], policies=[world.policy], federations=[world.federation],
                         receipts=[world.receipts], coordinator_keys=[world.coordinator_key])


def _failed(audit) -> set[str]:
    return {c.name for c in audit.checks if c.passed is False}


def test_an_honest_member_card_with_complete_inputs_verifies(world, adapter):
    audit = _audit(world, adapter)
    assert [c.detail for c in audit.checks if c.passed is not True] == []
    assert audit.verdict == "verified" and audit.exit_code == EXIT_VERIFIED


def _edit_guarantee(**fields):
    return lambda card: dataclasses.replace(card, guarantees=[dataclasses.replace(card.guarantees[0], **fields)])


@pytest.mark.parametrize("edit, check", [
    (lambda card: _edit_guarantee(dataset_epsilon=card.guarantees[0].dataset_epsilon / 6)(card),
     "card_dataset_epsilon"),
    (lambda card: _edit_guarantee(budget_epsilon=card.guarantees[0].budget_epsilon * 10)(card), "card_budget"),
    (lambda card: dataclasses.replace(card, rounds_applied=1), "card_rounds_applied"),
    (lambda card: dataclasses.replace(card, guarantees=[]), "card_guarantees"),
    (lambda card: _edit_guarantee(epsilon=card.guarantees[0].epsilon * 0.98)(card), "card_epsilon"),
    (lambda card: _edit_guarantee(replace_one_epsilon=card.guarantees[0].replace_one_epsilon * 0.999)(card),
     "card_replace_one"),
    (lambda card: dataclasses.replace(card, adapter={**card.adapter, "rank": 64}), "card_federation"),
], ids=["dataset_epsilon", "budget", "rounds_applied", "guarantees_emptied", "epsilon_2pc_lower",
        "replace_one", "adapter_rank"])
def test_a_card_edited_consistently_in_privacy_json_and_readme_fails_at_that_field(world, adapter, edit, check):
    directory = adapter[0]
    write_card(directory, edit(read_guarantee(directory)))  # README re-rendered: only the number is wrong
    audit = _audit(world, adapter)
    assert check in _failed(audit) and "card_readme" not in _failed(audit)
    assert audit.exit_code == EXIT_CHECK_FAILED


def test_a_displayed_readme_that_says_another_epsilon_than_privacy_json_fails(world, adapter):
    readme = adapter[0] / "README.md"
    shown = f"{read_guarantee(adapter[0]).guarantees[0].epsilon:.3f}"
    assert shown in readme.read_text()
    readme.write_text(readme.read_text().replace(shown, "0.300"))
    audit = _audit(world, adapter)
    assert _failed(audit) == {"card_readme"} and audit.exit_code == EXIT_CHECK_FAILED
    assert "0.300" in next(c.detail for c in audit.checks if c.name == "card_readme")
