"""The auditor's verdict is "incomplete" where it cannot know and "failed" where the inputs contradict
each other: missing receipts, a ledger spanning federations, an edited federation file, members that
applied different sums. Every ledger is written by the project's own ledger code, then tampered with
as the institution itself would (re-signed with its own key)."""

from __future__ import annotations

import json

from confide.formats import DeclaredSpend, Receipt
from confide.identity import Identity, b64
from confide.privacy.accounting import epsilon
from confide.privacy.audit import audit_ledgers
from confide.privacy.audit.result import EXIT_CHECK_FAILED, EXIT_INCOMPLETE, EXIT_VERIFIED
from confide.privacy.ledger import PrivacyLedger

from .support import (
    ENTRIES_PER_ROUND,
    FEDERATION_ID,
    SPEND,
    federation_yaml,
    read_entries,
    reseal,
    sign_receipts,
    stepping_clock,
    write_entries,
    write_ledger,
)

OTHER_FEDERATION = "fed-2"


def failed(result, name):
    checks = [c for ledger in result.ledgers for c in ledger.checks] + result.checks
    return [c for c in checks if c.name == name and c.passed is False]


def full_audit(world, **kwargs):
    args = dict(policies=[world.policy], federations=[world.federation], receipts=[world.receipts],
                coordinator_keys=[world.coordinator_key])
    return audit_ledgers([world.ledger], **(args | kwargs))


def test_a_ledger_with_its_trailing_spend_removed_and_resigned_is_incomplete_without_receipts(world):
    entries = read_entries(world.ledger)
    write_entries(world.ledger, reseal(entries[: 2 * ENTRIES_PER_ROUND], world.institution))  # round 3 gone
    without = full_audit(world, receipts=(), coordinator_keys=())
    assert without.verdict == "incomplete" and without.exit_code == EXIT_INCOMPLETE
    assert without.unchecked_federations == [FEDERATION_ID] and FEDERATION_ID in without.verdict_text
    empty = world.root / "empty-export.json"
    empty.write_text("[]")
    assert full_audit(world, receipts=[empty]).exit_code == EXIT_INCOMPLETE  # an empty export proves nothing
    unverified = full_audit(world, coordinator_keys=())  # receipts nobody can tell from forged ones
    assert unverified.exit_code in (EXIT_CHECK_FAILED, EXIT_INCOMPLETE) and unverified.verdict != "verified"
    caught = full_audit(world)
    assert caught.exit_code == EXIT_CHECK_FAILED and "round 3 of fed-1" in failed(caught, "receipts")[0].detail


def _ledger_with_data_version(world, train_records: int) -> list[dict]:
    """hospital-a's ledger as the agent writes it: its data version, then three rounds at q = batch / n."""
    state = world.root / "versioned"
    ledger = PrivacyLedger.open(state, "hospital-a", "ds-1", world.institution, clock=stepping_clock())
    ledger.append("data_version", "-", 0, fingerprint="f" * 64, records=train_records, train_records=train_records,
                  previous_fingerprint=None, epsilon_inherited=0.0)
    for round_index in (1, 2, 3):
        ledger.append("spend", FEDERATION_ID, round_index, **dict(SPEND, sample_rate=128 / train_records,
                                                                   accountant="pld"))
    world.ledger.write_bytes(ledger.path.read_bytes())
    return read_entries(world.ledger)


def test_a_data_version_claiming_ten_times_the_records_is_incomplete_without_receipts_and_fails_with_them(world):
    honest = _ledger_with_data_version(world, 2560)
    receipts = []
    for e in honest[1:]:  # the coordinator signed each round's spend as the member declared it
        body = Receipt(FEDERATION_ID, e["round"], "hospital-a", "ab" * 32, e["hash"],
                       DeclaredSpend.of_entry(e))
        receipts.append({**body.to_dict(), "signature": b64(world.coordinator.sign(body.message()))})
    world.receipts.write_text(json.dumps(receipts))
    forged = [dict(e) for e in honest]
    forged[0]["train_records"] = forged[0]["records"] = 10 * honest[0]["train_records"]
    history = []
    for e in forged[1:]:
        e["sample_rate"] = e["sample_rate"] / 10
        history.append((e["noise_multiplier"], e["sample_rate"], e["steps"]))
        e["epsilon"] = epsilon(history, e["delta"], "pld")
    write_entries(world.ledger, reseal(forged, world.institution))
    assert forged[-1]["epsilon"] < honest[-1]["epsilon"] / 3  # the claim the forgery buys
    without = full_audit(world, receipts=(), coordinator_keys=())
    assert without.verdict == "incomplete" and without.exit_code == EXIT_INCOMPLETE
    with_receipts = full_audit(world)
    assert with_receipts.exit_code == EXIT_CHECK_FAILED
    contradicted = [c for c in failed(with_receipts, "receipts") if "declaring another spend" in c.detail]
    assert contradicted and "sample_rate" in contradicted[0].detail


def _two_federations(world) -> tuple[Identity, object, object]:
    """hospital-a's dataset ledger: three rounds of fed-1, then two of fed-2 (another coordinator), with
    each federation's file and receipts export."""
    second = Identity.generate("coordinator-2")
    write_ledger(world.root / "two", world.institution, [dict(SPEND, accountant="pld")] * 3,
                 coordinator=world.coordinator)
    path = write_ledger(world.root / "two", world.institution, [dict(SPEND, accountant="pld")] * 2,
                        coordinator=second, federation=OTHER_FEDERATION)
    world.ledger.write_bytes(path.read_bytes())
    federation_2 = world.root / "federation-2.yaml"
    federation_2.write_text(federation_yaml(world.institution, world.other, 0.5, "pld", 1e-5,
                                            federation=OTHER_FEDERATION))
    receipts_2 = world.root / "receipts-2.json"
    receipts_2.write_text(json.dumps(sign_receipts(second, "hospital-a", 2, OTHER_FEDERATION, world.ledger)))
    return second, federation_2, receipts_2


def test_a_ledger_spanning_two_federations_verifies_only_with_each_federations_receipts_and_key(world):
    second, federation_2, receipts_2 = _two_federations(world)
    both = dict(policies=[world.policy_file(budget=10.0)], federations=[world.federation, federation_2],
                receipts=[world.receipts, receipts_2],
                coordinator_keys=[world.coordinator_key, b64(second.public.signing_public)])
    honest = full_audit(world, **both)
    assert [c.detail for c in honest.ledgers[0].checks if c.passed is False] == []
    assert honest.verdict == "verified" and honest.exit_code == EXIT_VERIFIED
    one = full_audit(world, **(both | dict(receipts=[world.receipts], coordinator_keys=[world.coordinator_key])))
    assert one.exit_code == EXIT_INCOMPLETE and one.unchecked_federations == [OTHER_FEDERATION]
    assert f"no receipts of {OTHER_FEDERATION}" in one.verdict_text
    swapped = full_audit(world, **(both | dict(coordinator_keys=both["coordinator_keys"][::-1])))
    assert swapped.exit_code == EXIT_CHECK_FAILED  # each export is verified with its own coordinator's key
    # The institution deletes fed-2's rounds and re-signs: fed-2's coordinator signed those uploads.
    kept = [e for e in read_entries(world.ledger) if e["federation"] != OTHER_FEDERATION]
    write_entries(world.ledger, reseal(kept, world.institution))
    trimmed = full_audit(world, **(both | dict(federations=[world.federation])))
    assert trimmed.exit_code == EXIT_CHECK_FAILED
    assert [c.detail.split(":")[0] for c in failed(trimmed, "receipts")
            if "has no spend entry" in c.detail] == ["receipt 1", "receipt 2"]


def test_a_federation_file_whose_federation_id_was_edited_fails(world):
    edited = world.root / "edited.yaml"
    edited.write_text(world.federation.read_text().replace(f"federation_id: {FEDERATION_ID}",
                                                           "federation_id: fed-9"))
    result = full_audit(world, federations=[edited], key=world.key)
    assert result.exit_code == EXIT_CHECK_FAILED
    assert len(failed(result, "federation_file")) == 1 and "'fed-9'" in failed(result, "federation_file")[0].detail
    # Nor does its roster vouch for the ledger's signatures: without --key they are not verified.
    assert failed(full_audit(world, federations=[edited]), "signature")


def test_members_that_applied_different_sums_for_one_round_fail_as_a_split_federation(world):
    a = write_ledger(world.root / "a", world.institution, [dict(SPEND, accountant="pld")] * 3, applied=True)
    b = write_ledger(world.root / "b", world.other, [dict(SPEND, accountant="pld")] * 3, applied=True)
    args = dict(federations=[world.federation])
    agreed = audit_ledgers([a, b], **args)
    assert [c.passed for c in agreed.checks if c.name == "applied_sums"] == [True]
    entries = read_entries(b)
    round_2 = next(e for e in entries if e["kind"] == "applied" and e["round"] == 2)
    round_2["sum_sha256"] = "cd" * 32  # the coordinator handed hospital-b another sum for round 2
    write_entries(b, reseal(entries, world.other))
    split = audit_ledgers([a, b], **args)
    assert split.exit_code == EXIT_CHECK_FAILED
    [finding] = failed(split, "applied_sums")
    assert "round 2 of fed-1" in finding.detail and "hospital-a" in finding.detail and "hospital-b" in finding.detail
