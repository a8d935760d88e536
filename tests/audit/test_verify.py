"""`audit_ledgers`: an honest ledger verifies; every kind of tampering is caught and names the entry."""

from __future__ import annotations

import dataclasses
import json

import pytest

from confide.errors import BadInput
from confide.formats import Receipt
from confide.identity import Identity, b64
from confide.policies import load_federation
from confide.privacy.audit import audit_ledgers
from confide.privacy.audit.integrity import integrity_checks
from confide.privacy.audit.recompute import DEFAULT_TOLERANCE
from confide.privacy.ledger import signed_message

from .support import (
    ENTRIES_PER_ROUND,
    ROUNDS,
    SPEND,
    SPEND_SEQS,
    altered,
    envelope_hash,
    read_entries,
    reseal,
    sign_receipts,
    write_entries,
    write_ledger,
)


def failures(result):
    return [c for ledger in result.ledgers for c in ledger.failures] + [c for c in result.checks if c.passed is False]


def failed(result, name):
    return [c for c in failures(result) if c.name == name]


def full_audit(world, **kwargs):
    args = dict(policies=[world.policy], federations=[world.federation], receipts=[world.receipts],
                coordinator_keys=[world.coordinator_key])
    return audit_ledgers([world.ledger], **(args | kwargs))


def test_untouched_ledger_verifies(world):
    result = full_audit(world)
    assert failures(result) == []
    assert result.exit_code == 0
    audit = result.ledgers[0]
    assert audit.institution == "hospital-a" and len(audit.spends) == ROUNDS
    evaluated = {c.name for c in audit.checks if c.passed is True}
    assert {"hash", "chain", "seq", "time", "signature", "receipts", "ledger_receipts", "epsilon_pld",
            "epsilon_accountant", "budget", "round_cap", "federation"} <= evaluated


def _entry_fields(world):
    return [(line, field) for line, entry in enumerate(read_entries(world.ledger), start=1) for field in entry]


def test_changing_any_field_of_any_entry_is_caught_at_that_line(world):
    original = read_entries(world.ledger)
    cases = _entry_fields(world)
    assert len(cases) > 60
    for line, field in cases:
        entries = [dict(e) for e in original]
        entries[line - 1][field] = altered(entries[line - 1][field])
        write_entries(world.ledger, entries)
        checks = integrity_checks(world.ledger, entries, world.institution.public, "test key")
        at_line = [c for c in checks if c.passed is False and c.line == line]
        assert at_line, f"changing {field!r} of line {line} went unnoticed"


def test_changed_field_fails_the_whole_audit_with_exit_1(world):
    entries = read_entries(world.ledger)
    entries[3]["steps"] = 2  # the spend of round 2 claims far fewer steps than it trained
    write_entries(world.ledger, entries)
    result = full_audit(world)
    assert result.exit_code == 1
    assert [(c.seq, c.line) for c in failed(result, "hash")] == [(4, 4)]


def test_reordering_entries_is_caught(world):
    entries = read_entries(world.ledger)
    entries[2], entries[3] = entries[3], entries[2]
    write_entries(world.ledger, entries)
    result = full_audit(world)
    assert {c.line for c in failed(result, "seq")} == {3, 4}
    assert {c.seq for c in failed(result, "seq")} == {4, 3}
    assert failed(result, "chain")


def test_deleting_a_middle_entry_is_caught_at_the_next_entry(world):
    entries = read_entries(world.ledger)
    del entries[2]
    write_entries(world.ledger, entries)
    result = full_audit(world)
    seq_failures = failed(result, "seq")
    assert seq_failures[0].line == 3 and seq_failures[0].seq == 4
    assert [c.line for c in failed(result, "chain")] == [3]


def test_forged_signature_is_caught_at_that_entry(world):
    forger = Identity.generate("hospital-a")
    entries = read_entries(world.ledger)
    entries[4]["signature"] = b64(forger.sign(signed_message(entries[4]["hash"])))  # round 2's outcome
    write_entries(world.ledger, entries)
    result = full_audit(world)
    assert [(c.name, c.seq) for c in failures(result)] == [("signature", 5)]


def test_ledger_resealed_with_another_key_fails_every_signature(world):
    write_entries(world.ledger, reseal(read_entries(world.ledger), Identity.generate("hospital-a")))
    result = full_audit(world)
    assert [c.seq for c in failed(result, "signature")] == list(range(1, ENTRIES_PER_ROUND * ROUNDS + 1))
    assert not failed(result, "hash") and not failed(result, "chain")


def test_recorded_epsilon_below_independent_recomputation_is_caught(world):
    entries = read_entries(world.ledger)
    entries[3]["epsilon"] *= 0.9  # the institution itself under-reports round 2 and re-signs everything
    write_entries(world.ledger, reseal(entries, world.institution))
    _receipts_for_the_ledger_as_it_is(world)  # so that only the recomputation can catch it
    result = full_audit(world)
    assert [c.seq for c in failed(result, "epsilon_pld")] == [4]
    assert [c.seq for c in failed(result, "epsilon_accountant")] == [4]
    assert {c.name for c in failures(result)} == {"epsilon_pld", "epsilon_accountant"}


def test_a_spend_of_absurdly_many_steps_fails_its_fields_instead_of_overflowing_the_accountants(world):
    entries = read_entries(world.ledger)
    entries[3]["steps"] = 10**23  # re-signed: only the auditor's own limits can refuse it
    write_entries(world.ledger, reseal(entries, world.institution))
    result = full_audit(world)
    assert [c.seq for c in failed(result, "spend_fields")] == [4]
    assert "steps 100000000000000000000000 is not an integer from 1 to 1,000,000" in failed(
        result, "spend_fields")[0].detail


def test_recorded_epsilon_within_tolerance_of_pld_passes(world):
    entries = read_entries(world.ledger)
    pld = full_audit(world).ledgers[0].spends[1].pld_epsilon
    entries[3]["epsilon"] = pld - 0.5 * DEFAULT_TOLERANCE.allowed_shortfall(pld)  # another grid, another version
    write_entries(world.ledger, reseal(entries, world.institution))
    assert not failed(full_audit(world), "epsilon_pld")


def test_rdp_ledger_above_pld_passes_accounting(world, tmp_path):
    path = write_ledger(tmp_path / "rdp", world.institution, [dict(SPEND, accountant="rdp")] * 2)
    result = audit_ledgers([path], key=world.key)
    audit = result.ledgers[0]
    assert all(s.recorded_epsilon > 1.05 * s.pld_epsilon for s in audit.spends)  # RDP is looser, fine
    assert result.passed


def test_total_over_budget_is_caught_at_the_entry_that_crosses_it(world):
    result = full_audit(world, policies=[world.policy_file(budget=2.5, cap=None)])
    assert [c.seq for c in failed(result, "budget")] == [SPEND_SEQS[2]]  # round 3 crosses 2.5
    assert "exceeds the budget 2.5" in failed(result, "budget")[0].detail


def test_round_over_its_cap_is_caught(world):
    result = full_audit(world, policies=[world.policy_file(budget=5.0, cap=1.5)])
    assert [c.seq for c in failed(result, "round_cap")] == SPEND_SEQS


def test_spend_breaking_federation_requirements_is_caught(world):
    result = full_audit(world, federations=[world.federation_file(min_noise=1.2, accountant="rdp", delta=1e-6)])
    assert [c.seq for c in failed(result, "federation_noise")] == SPEND_SEQS
    assert [c.seq for c in failed(result, "federation_accountant")] == SPEND_SEQS
    assert [c.seq for c in failed(result, "federation_delta")] == SPEND_SEQS


def test_spend_clipping_other_than_policy_is_caught(world):
    result = full_audit(world, policies=[world.policy_file(clipping=0.5)])
    assert [c.seq for c in failed(result, "clipping")] == SPEND_SEQS


def test_deleting_trailing_entries_is_caught_given_receipts(world):
    write_entries(world.ledger, read_entries(world.ledger)[:4])  # round 2's spend stays; the rest is gone
    without_receipts = full_audit(world, receipts=(), coordinator_keys=())
    assert without_receipts.passed  # a shorter chain is still a valid chain
    result = full_audit(world)
    missing = [c for c in failed(result, "receipts") if "has no spend entry" in c.detail]
    assert len(missing) == 1 and "round 3 of fed-1" in missing[0].detail and "ends at seq 4" in missing[0].detail
    # Rounds 2 and 3's receipts name ledger heads (their outcome entries) the cut ledger no longer has.
    behind = [c for c in failed(result, "receipts") if "has no such entry" in c.detail]
    assert [("round 2 of fed-1" in c.detail, "round 3 of fed-1" in c.detail) for c in behind] == [(True, False),
                                                                                                 (False, True)]


def _receipts_for_the_ledger_as_it_is(world) -> None:
    """The coordinator's export as it would be had the ledger been this one at each upload."""
    world.receipts.write_text(json.dumps(sign_receipts(world.coordinator, "hospital-a", ROUNDS, ledger=world.ledger)))


@pytest.mark.parametrize("field", ["ledger_head", "spend"])
def test_a_receipt_without_its_ledger_head_or_spend_is_refused_as_malformed(world, field):
    receipts = json.loads(world.receipts.read_text())
    del receipts[1][field]
    world.receipts.write_text(json.dumps(receipts))
    with pytest.raises(BadInput, match=f"receipts.json: receipt 2: malformed \\('{field}'\\)") as err:
        full_audit(world)
    assert err.value.lines() == [str(err.value)]


def test_receipt_for_another_envelope_than_the_ledger_records_is_caught(world):
    receipts = sign_receipts(world.coordinator, "hospital-a", ROUNDS, ledger=world.ledger)
    other = dataclasses.replace(Receipt.from_dict(receipts[1]), envelope_sha256=envelope_hash(4))
    receipts[1] = {**other.to_dict(), "signature": b64(world.coordinator.sign(other.message()))}
    world.receipts.write_text(json.dumps(receipts))
    result = full_audit(world)
    assert [(c.name, c.seq) for c in failures(result)] == [("receipts", 5)]  # round 2's outcome entry
    assert "the ledger records" in failures(result)[0].detail


def test_kept_receipt_not_signed_by_the_coordinator_is_caught(world):
    entries = read_entries(world.ledger)
    entries[5]["receipt"]["signature"] = entries[2]["receipt"]["signature"]  # round 2 keeps round 1's signature
    write_entries(world.ledger, reseal(entries, world.institution))
    _receipts_for_the_ledger_as_it_is(world)  # the export alone would also catch the re-sealed chain
    result = full_audit(world)
    assert [(c.name, c.seq) for c in failures(result)] == [("ledger_receipts", 6)]


def test_receipt_not_signed_by_the_coordinator_fails_and_is_not_held_against_the_ledger(world):
    receipts = json.loads(world.receipts.read_text())
    receipts.append({**receipts[0], "round": 4, "envelope_sha256": "ab" * 32})  # round 1's signature
    world.receipts.write_text(json.dumps(receipts))
    result = full_audit(world)
    assert [c.name for c in failures(result)] == ["receipt_signature"]
    assert "receipt 4" in failures(result)[0].detail


def test_receipts_in_json_lines_without_federation_use_the_federation_file(world):
    lines = []
    for receipt in json.loads(world.receipts.read_text()):
        receipt.pop("federation")
        lines.append(json.dumps(receipt))
    world.receipts.write_text("\n".join(lines) + "\n")
    assert full_audit(world).passed


def test_without_any_key_signatures_are_not_vouched_for(world):
    result = audit_ledgers([world.ledger])
    assert result.exit_code == 1
    assert "no public key" in failed(result, "signature")[0].detail


def test_key_may_be_an_identity_json_or_its_directory_but_not_a_private_key(world, tmp_path):
    world.institution.save(tmp_path / "identity")
    for key in (tmp_path / "identity" / "identity.json", tmp_path / "identity"):
        result = audit_ledgers([world.ledger], key=key)
        assert result.passed and not failed(result, "signature")
    for private in ("signing.key", "sealing.key"):
        with pytest.raises(BadInput, match=f"{private}: a private key.*pass the identity.json beside it"):
            audit_ledgers([world.ledger], key=tmp_path / "identity" / private)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="a directory without an identity.json"):
        audit_ledgers([world.ledger], key=tmp_path / "empty")


def test_missing_ledger_or_bad_key_is_bad_input(world, tmp_path):
    with pytest.raises(BadInput, match="no such ledger"):
        audit_ledgers([tmp_path / "nope.jsonl"], key=world.key)
    with pytest.raises(BadInput, match="not an Ed25519 public key"):
        audit_ledgers([world.ledger], key="not-a-key")


def test_json_form_carries_every_check_with_its_entry(world):
    entries = read_entries(world.ledger)
    entries[3]["epsilon"] *= 0.5
    write_entries(world.ledger, reseal(entries, world.institution))
    data = json.loads(json.dumps(full_audit(world).to_dict()))
    assert data["passed"] is False
    ledger = data["ledgers"][0]
    assert {"name": "epsilon_pld", "passed": False, "seq": 4}.items() <= next(
        c for c in ledger["checks"] if c["name"] == "epsilon_pld").items()
    assert len(ledger["spends"]) == ROUNDS and ledger["spends"][1]["seq"] == 4


def test_a_file_that_is_no_ledger_at_all_is_bad_input(world, tmp_path):
    garbage = tmp_path / "notes.txt"
    garbage.write_text("this is not\na ledger\n")
    with pytest.raises(BadInput, match="not a privacy ledger"):
        audit_ledgers([garbage], key=world.key)


def test_a_garbled_line_in_a_ledger_is_a_finding_at_that_line(world):
    lines = world.ledger.read_text().splitlines(keepends=True)
    lines[4] = "{not json\n"
    world.ledger.write_text("".join(lines))
    result = full_audit(world)
    assert 5 in {c.line for c in failed(result, "format")}


def test_an_interrupted_last_append_is_reported_but_not_a_finding(world):
    with world.ledger.open("a") as handle:
        handle.write('{"seq": 10, "kind": "spe')
    result = full_audit(world)
    assert result.passed
    assert any(c.name == "complete" and c.passed is None for c in result.ledgers[0].checks)


def test_console_rendering_shows_each_failure_with_its_seq(world):
    from rich.console import Console

    from confide.privacy.audit.console import audit_renderables

    entries = read_entries(world.ledger)
    entries[3]["epsilon"] *= 0.5
    write_entries(world.ledger, reseal(entries, world.institution))
    console = Console(record=True, width=200)
    for renderable in audit_renderables(full_audit(world)):
        console.print(renderable)
    text = console.export_text()
    assert "epsilon_pld" in text and "FAIL" in text and "verification failed" in text
    assert any("epsilon_pld" in line and " 4 " in line for line in text.splitlines())


def test_the_audit_states_the_replace_one_epsilon_that_holds_against_the_coordinator(world, tmp_path):
    from rich.console import Console

    from confide.privacy.accounting import epsilon
    from confide.privacy.audit import audit_renderables, write_report

    result = full_audit(world)
    audit = result.ledgers[0]
    history = [(s.noise_multiplier, s.sample_rate, s.steps) for s in audit.spends]
    expected = epsilon(history, audit.spends[-1].delta, "pld", replace_one=True)
    # A swap moves the clipped sum twice as far as an addition: a larger epsilon than the ledger's.
    assert audit.replace_one_epsilon == pytest.approx(expected) and expected > audit.spent_epsilon
    assert result.to_dict()["ledgers"][0]["replace_one_epsilon"] == pytest.approx(expected)
    console = Console(record=True, width=80)
    for renderable in audit_renderables(result):
        console.print(renderable)
    text = " ".join(console.export_text().split())
    assert f"epsilon {expected:.4f} for one record swapped" in text and "knows the record count" in text
    html = write_report(result, tmp_path / "report.html")[0].read_text()
    markdown = write_report(result, tmp_path / "report.md")[0].read_text()
    assert "replace-one &epsilon;</th>" in html and "whoever knows the record count" in html
    assert f"{expected:.4g}" in html
    assert "replace-one ε (one record swapped; what holds against whoever" in markdown and f"{expected:.4g}" in markdown


def test_spend_with_an_unknown_accountant_is_caught(world):
    entries = read_entries(world.ledger)
    entries[0]["accountant"] = "gdp"  # GDP under-reports and must never certify anything
    write_entries(world.ledger, reseal(entries, world.institution))
    result = full_audit(world)
    assert [c.seq for c in failed(result, "epsilon_accountant")] == [1]
    assert [c.seq for c in failed(result, "federation_accountant")] == [1]


def test_resigned_ledger_with_steps_other_than_the_federation_file_fails(world):
    entries = read_entries(world.ledger)
    entries[SPEND_SEQS[1] - 1]["steps"] = SPEND["steps"] // 2
    write_entries(world.ledger, reseal(entries, world.institution))
    result = full_audit(world, receipts=(), coordinator_keys=())
    assert [c.seq for c in failed(result, "federation_steps")] == [SPEND_SEQS[1]]
    assert result.exit_code == 1


def test_resigned_sample_rate_that_disagrees_with_the_recorded_training_size_fails(world):
    expected_batch = load_federation(world.federation).training.expected_batch_size
    entries = read_entries(world.ledger)
    for seq in SPEND_SEQS:  # the institution records its training-set size with each spend...
        entries[seq - 1]["train_records"] = round(expected_batch / SPEND["sample_rate"])
    write_entries(world.ledger, reseal(entries, world.institution))
    assert failed(full_audit(world, receipts=(), coordinator_keys=()), "sample_rate") == []
    entries[SPEND_SEQS[0] - 1]["sample_rate"] = SPEND["sample_rate"] / 2  # ...then claims a smaller rate
    write_entries(world.ledger, reseal(entries, world.institution))
    result = full_audit(world, receipts=(), coordinator_keys=())
    assert [c.seq for c in failed(result, "sample_rate")] == [SPEND_SEQS[0]]


def test_an_institution_in_the_receipts_whose_ledger_is_not_handed_in_fails(world):
    receipts = sign_receipts(world.coordinator, "hospital-a", ROUNDS, ledger=world.ledger) + \
        sign_receipts(world.coordinator, "hospital-b", 1)
    world.receipts.write_text(json.dumps(receipts))
    result = full_audit(world)
    missing = failed(result, "receipts_ledgers")
    assert len(missing) == 1 and "hospital-b" in missing[0].detail and result.exit_code == 1


def test_a_noiseless_round_in_a_real_federation_fails(world):
    from confide.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(world.ledger, "hospital-a", "ds-1", world.institution)
    ledger.append("nonprivate", "fed-1", ROUNDS + 1, noise_multiplier=0.0, sample_rate=0.05, steps=SPEND["steps"],
                  clipping_norm=1.0)
    result = full_audit(world)
    assert [c.name for c in failures(result)] == ["nonprivate"]


def test_a_ledger_rewritten_after_the_upload_contradicts_the_receipt_that_names_its_head(world):

    entries = read_entries(world.ledger)
    outcome = next(e for e in entries if e["kind"] == "outcome" and e["round"] == 1)
    receipts = sign_receipts(world.coordinator, "hospital-a", ROUNDS, ledger=world.ledger)
    assert receipts[0]["ledger_head"] == outcome["hash"] and "ledger_seq" not in receipts[0]
    world.receipts.write_text(json.dumps(receipts))
    assert failures(full_audit(world)) == []
    # The institution raises round 1's noise after the fact and re-signs everything with its own key.
    entries[SPEND_SEQS[0] - 1]["noise_multiplier"] = SPEND["noise_multiplier"] * 2
    write_entries(world.ledger, reseal(entries, world.institution))
    result = full_audit(world)
    rewritten = [c for c in failed(result, "receipts") if "rewritten or rolled back" in c.detail]
    # Every receipt's head moved with the re-sealed chain: round 1's outcome entry first.
    assert [next(r for r in range(1, ROUNDS + 1) if f"round {r} of" in c.detail) for c in rewritten] == [1, 2, 3]


def test_an_audit_that_could_not_evaluate_the_budget_is_incomplete_not_a_pass(world, tmp_path):
    from confide.privacy.audit import audit_renderables, write_report
    from confide.privacy.audit.result import EXIT_INCOMPLETE

    result = full_audit(world, policies=[])
    assert failures(result) == [] and result.verdict == "incomplete" and result.exit_code == EXIT_INCOMPLETE
    assert "hospital-a" in result.verdict_text and "--policy" in result.verdict_text
    assert result.to_dict()["verdict"] == "incomplete"
    assert any("incomplete" in str(r) for r in audit_renderables(result))
    page = write_report(result, tmp_path / "report.html")[0].read_text()
    assert "incomplete" in page and "Every ledger verifies" not in page
    assert full_audit(world).verdict == "verified"


def _receipts_signing_the_spends(world) -> list[dict]:
    """Receipts as the coordinator signs them: each names the ledger head at upload and the round's
    declared spend."""
    return sign_receipts(world.coordinator, "hospital-a", ROUNDS, ledger=world.ledger)


@pytest.mark.integration  # three full audits with PLD recomputation: kept out of make test-fast
@pytest.mark.parametrize("field, change", [
    ("noise_multiplier", lambda v: v * 1.5),
    ("steps", lambda v: v + 1),
    ("sample_rate", lambda v: v / 2),
])
def test_a_ledger_resigned_with_other_dp_parameters_after_the_upload_fails_against_the_signed_spend(
        world, field, change):
    world.receipts.write_text(json.dumps(_receipts_signing_the_spends(world)))
    assert failures(full_audit(world)) == []
    entries = read_entries(world.ledger)
    entries[SPEND_SEQS[1] - 1][field] = change(entries[SPEND_SEQS[1] - 1][field])
    write_entries(world.ledger, reseal(entries, world.institution))
    result = full_audit(world)
    contradicted = [c for c in failed(result, "receipts") if "declaring another spend" in c.detail]
    # The changed round names the field; every later spend's hash moved with the re-sealed chain.
    assert [c.seq for c in contradicted] == list(SPEND_SEQS[1:])
    assert field in contradicted[0].detail and result.exit_code == 1
    assert all("entry_hash" in c.detail and field not in c.detail for c in contradicted[1:])
