"""The privacy ledger: signed hash chain, write-ahead spends, crash safety, tamper detection."""

from __future__ import annotations

import base64
import json
import threading
from datetime import datetime, timedelta, timezone

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from confide.identity import Identity
from confide.privacy import DoubleSpendError, LedgerBrokenError, LedgerError, PrivacyLedger
from confide.privacy.ledger import canonical_json, entry_hash, signed_message

DATASET = "ab" * 32


def spend(sigma: float = 1.0, rate: float = 0.05, steps: int = 10, accountant: str = "pld") -> dict:
    return dict(noise_multiplier=sigma, sample_rate=rate, steps=steps, clipping_norm=1.0, delta=1e-5,
                accountant=accountant)


def open_ledger(tmp_path, identity, **kwargs) -> PrivacyLedger:
    return PrivacyLedger.open(tmp_path / "state", "a", DATASET, identity, **kwargs)


def pld_epsilon(history, delta=1e-5) -> float:
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    accountant.compose(dp_event.ComposedDpEvent([
        dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma)), steps)
        for sigma, q, steps in history
    ]))
    return accountant.get_epsilon(delta)


def reseal(entries: list[dict], identity: Identity) -> bytes:
    """Rewrite a ledger's entries with valid hashes, chain and signatures (what a forger with the key could do)."""
    previous, lines = "0" * 64, []
    for entry in entries:
        entry = {k: v for k, v in entry.items() if k not in ("hash", "signature")}
        entry["prev_hash"] = previous
        entry["hash"] = entry_hash(entry)
        entry["signature"] = base64.b64encode(identity.sign(signed_message(entry["hash"]))).decode()
        previous = entry["hash"]
        lines.append(canonical_json(entry) + b"\n")
    return b"".join(lines)


def test_entries_form_a_signed_hash_chain_that_verifies(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    ledger.append("spend", "fed-1", 1, **spend())
    ledger.append("outcome", "fed-1", 1, result="uploaded", detail={"bytes": 10})
    entries = ledger.entries()
    assert [e["seq"] for e in entries] == [1, 2]
    assert entries[0]["prev_hash"] == "0" * 64 and entries[1]["prev_hash"] == entries[0]["hash"]
    for entry in entries:
        assert set(entry) >= {"seq", "time", "institution", "dataset", "federation", "round", "kind",
                              "prev_hash", "hash", "signature"}
        assert entry["institution"] == "a" and entry["dataset"] == DATASET
    assert ledger.verify(identity.public, recompute_epsilon=True) == []
    # An auditor with only the file and the public key sees the same.
    auditor = PrivacyLedger(ledger.path)
    assert auditor.verify(identity.public) == []
    assert ledger.path.name == f"a.{DATASET}.jsonl"


def test_spend_entries_carry_cumulative_epsilon_matching_an_independent_pld_recomputation(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    rounds = [(1.1, 0.05, 20), (0.9, 0.04, 15), (1.1, 0.05, 20), (1.5, 0.08, 10)]
    for index, (sigma, rate, steps) in enumerate(rounds, start=1):
        ledger.append("spend", "fed-1", index, **spend(sigma, rate, steps))
    recorded = [e["epsilon"] for e in ledger.spend_entries()]
    assert recorded == sorted(recorded)
    for count, value in enumerate(recorded, start=1):
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in ledger.spend_entries()[:count]]
        independent = pld_epsilon(history)
        assert abs(value - independent) <= 0.02 * independent, (value, independent)
    assert ledger.epsilon_spent() == recorded[-1]
    assert ledger.spend_history() == rounds


def test_second_spend_for_the_same_round_is_refused(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    ledger.append("spend", "fed-1", 1, **spend())
    assert ledger.has_spend("fed-1", 1) and not ledger.has_spend("fed-1", 2) and not ledger.has_spend("fed-2", 1)
    with pytest.raises(DoubleSpendError, match="round 1 of fed-1"):
        ledger.append("spend", "fed-1", 1, **spend())
    ledger.append("spend", "fed-2", 1, **spend())  # another federation's round 1 is its own
    assert ledger.rounds_taken("fed-1") == 1


@pytest.mark.parametrize("bad, message", [
    ({"noise_multiplier": 0.0}, "noise_multiplier"),
    ({"sample_rate": 1.5}, "sample_rate"),
    ({"steps": 0}, "steps"),
    ({"accountant": "gdp"}, "accountant"),
    ({"epsilon": 0.1}, "computed by the ledger"),
])
def test_spend_entries_with_bad_fields_are_refused(tmp_path, identity, bad, message):
    with pytest.raises(LedgerError, match=message):
        open_ledger(tmp_path, identity).append("spend", "fed-1", 1, **{**spend(), **bad})


def test_ledger_without_identity_is_read_only_and_reserved_fields_are_refused(tmp_path, identity):
    with pytest.raises(LedgerError, match="read-only"):
        PrivacyLedger.open(tmp_path, "a", DATASET).append("outcome", "fed-1", 1)
    with pytest.raises(LedgerError, match="hash"):
        open_ledger(tmp_path, identity).append("outcome", "fed-1", 1, hash="x")
    with pytest.raises(LedgerError, match="belongs to"):
        PrivacyLedger.open(tmp_path, "b", DATASET, identity)


def test_truncated_last_line_is_detected_ignored_and_repaired_on_next_append(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    ledger.append("spend", "fed-1", 1, **spend())
    torn = b'{"federation":"fed-1","kind":"outcome","prev_hash":"'
    with open(ledger.path, "ab") as handle:  # the next append died half-way through its line
        handle.write(torn)
    data = ledger.path.read_bytes()

    assert [e["kind"] for e in ledger.entries()] == ["spend"]
    problems = ledger.verify(identity.public)
    assert [p.kind for p in problems] == ["truncated"] and problems[0].line == 2
    ledger.ensure_intact()  # a torn tail alone is not a broken chain

    ledger.append("outcome", "fed-1", 1, result="uploaded")
    assert [e["kind"] for e in ledger.entries()] == ["spend", "repair", "outcome"]
    assert ledger.verify(identity.public, recompute_epsilon=True) == []
    repair = ledger.entries()[1]
    side_file = ledger.path.with_name(repair["kept_in"])
    assert side_file.read_bytes() == torn and data.endswith(torn)


def test_altered_entry_breaks_the_chain_and_appends_are_refused(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    for r in (1, 2, 3):
        ledger.append("spend", "fed-1", r, **spend())
    lines = ledger.path.read_bytes().splitlines()
    first = json.loads(lines[0])
    first["noise_multiplier"] = 5.0  # claim more noise than was used
    ledger.path.write_bytes(b"\n".join([canonical_json(first)] + lines[1:]) + b"\n")

    kinds = {p.kind for p in ledger.verify(identity.public)}
    assert "hash" in kinds
    with pytest.raises(LedgerBrokenError, match="line 1"):
        ledger.append("outcome", "fed-1", 3)


def test_deleted_entry_shows_as_chain_and_seq_problems(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    for r in (1, 2, 3):
        ledger.append("spend", "fed-1", r, **spend())
    lines = ledger.path.read_bytes().splitlines(keepends=True)
    ledger.path.write_bytes(lines[0] + lines[2])
    kinds = {p.kind for p in ledger.verify(identity.public)}
    assert {"chain", "seq"} <= kinds


def test_entries_signed_by_another_key_fail_verification(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    ledger.append("spend", "fed-1", 1, **spend())
    forged = reseal(ledger.entries(), Identity.generate("a"))
    ledger.path.write_bytes(forged)
    problems = ledger.verify(identity.public)
    assert [p.kind for p in problems] == ["signature"]
    with pytest.raises(LedgerBrokenError):
        ledger.ensure_intact()


def test_time_never_goes_back_even_if_the_clock_does(tmp_path, identity):
    now = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    times = iter([now, now - timedelta(hours=1), now + timedelta(seconds=1)])
    ledger = open_ledger(tmp_path, identity, clock=lambda: next(times))
    for r in (1, 2, 3):
        ledger.append("outcome", "fed-1", r)
    stamps = [datetime.fromisoformat(e["time"]) for e in ledger.entries()]
    assert stamps == sorted(stamps) and stamps[1] == now
    assert ledger.verify(identity.public) == []
    # A ledger whose times were rewritten to go back is reported, even with valid signatures.
    entries = ledger.entries()
    entries[2]["time"] = (now - timedelta(days=1)).isoformat()
    ledger.path.write_bytes(reseal(entries, identity))
    assert [p.kind for p in ledger.verify(identity.public)] == ["time"]


def test_concurrent_appends_keep_one_unbroken_chain(tmp_path, identity):
    def writer(name: str) -> None:
        ledger = open_ledger(tmp_path, identity)
        for i in range(8):
            ledger.append("outcome", name, i)

    threads = [threading.Thread(target=writer, args=(f"fed-{n}",)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger = open_ledger(tmp_path, identity)
    assert len(ledger.entries()) == 16
    assert ledger.verify(identity.public) == []


@pytest.mark.parametrize("kind, fields, message", [
    ("payout", {}, "unknown kind 'payout'"),
    ("applied", {"count": 2}, "applied entry: sum_sha256: field required"),
    ("decline", {"reasons": "budget"}, "decline entry: reasons: input should be a valid list"),
    ("outcome", {"envelope_sha256": "not a hash"}, "outcome entry: envelope_sha256"),
])
def test_an_entry_that_is_not_of_its_kinds_shape_is_refused_and_nothing_is_written(tmp_path, identity, kind,
                                                                                    fields, message):
    ledger = open_ledger(tmp_path, identity)
    ledger.append("spend", "fed-1", 1, **spend())
    before = ledger.path.read_bytes()
    with pytest.raises(LedgerError, match=message):
        ledger.append(kind, "fed-1", 1, **fields)
    assert ledger.path.read_bytes() == before and ledger.verify(identity.public) == []


def test_a_resigned_entry_of_the_wrong_type_is_refused_on_read_at_its_line(tmp_path, identity):
    ledger = open_ledger(tmp_path, identity)
    for r in (1, 2):
        ledger.append("spend", "fed-1", r, **spend())
    entries = ledger.entries()
    entries[1]["steps"] = "10"  # a string where the accountant needs an integer, signed with the real key
    ledger.path.write_bytes(reseal(entries, identity))
    problems = ledger.verify(identity.public)
    assert [(p.line, p.kind) for p in problems] == [(2, "format")] and "steps" in problems[0].message
    with pytest.raises(LedgerBrokenError):
        ledger.append("outcome", "fed-1", 2, result="uploaded")
