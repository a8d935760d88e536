"""The budget holds under ordinary operations: growing data, parallel federations, restores, restarts.

Each test reproduces one way the budget used to be exceeded and checks it no longer can be.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import shutil
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant

from confide.aggregation.envelope import decrypt_sum
from confide.identity import Identity
from confide.platform.member import Member
from confide.platform.member.engine import settle
from confide.platform.secure_sum import unmask
from confide.policies import load_federation, load_institution
from confide.privacy import LedgerError, PrivacyLedger, RoundSpend, reserve_round
from confide.privacy.dataset_ledger import DataVersion, open_dataset_ledger
from confide.privacy.errors import LedgerRollbackError
from tests.platform.federation_kit import install_directly, load_files, make_federation_files, summed, write_data


def _members(root: Path, **kwargs):
    federation, institutions = load_files(*make_federation_files(root, **kwargs))
    return federation, institutions, {p.institution_id: Member(federation, p) for p in institutions}


def _spend_round(member: Member, round_index: int) -> None:
    """Train (and record) one round without a coordinator: the spend is what these tests are about."""
    contribution = member.take_part(round_index)
    assert contribution.kind == "upload", contribution.reason


def _keyed(members: dict[str, Member]) -> None:
    install_directly(members)


@pytest.mark.integration  # slow (accountant calibrations): kept out of make test-fast
def test_adding_one_record_continues_the_same_budget(tmp_path):
    federation, institutions, members = _members(tmp_path, rounds=3)
    _keyed(members)
    a = members["a"]
    _spend_round(a, 1)
    spent = a.ledger.epsilon_spent()
    assert spent > 0
    # The dataset grows by one record: a new version, the same budget.
    with open(institutions[0].data.path, "a") as handle:
        handle.write(json.dumps({"text": "apple pear plum fig kiwi apple", "label": "x"}) + "\n")
    grown = Member(federation, institutions[0])
    assert grown.ledger.path == a.ledger.path
    assert grown.ledger.epsilon_spent() == spent
    versions = [e for e in grown.ledger.entries() if e["kind"] == "data_version"]
    assert len(versions) == 2 and versions[1]["previous_fingerprint"] == versions[0]["fingerprint"]
    assert versions[1]["records"] == versions[0]["records"] + 1 and versions[1]["epsilon_inherited"] == spent
    # The next spend composes on top of everything spent before the new version.
    plan = grown.plan()
    assert plan["epsilon_before"] == pytest.approx(spent, rel=1e-6)
    assert plan["rounds"] == 3  # nothing was applied yet: the federation's rounds are all still to come
    grown.note_failed_round(1, "quorum not reached")  # round 1 closed without a sum
    assert grown.take_part(2).kind == "upload"
    history = grown.ledger.spend_history()
    assert len(history) == 2 and grown.ledger.epsilon_spent() > spent
    assert grown.ledger.epsilon_spent() <= institutions[0].budget.epsilon + 1e-9


def _reserve_in_process(args) -> bool:
    state_dir, identity_dir, federation_path, institution_path, federation_id, start = args
    federation = load_federation(federation_path).model_copy(update={"federation_id": federation_id})
    policy = load_institution(institution_path)
    ledger = PrivacyLedger.open(Path(state_dir), "a", "ds", Identity.load(Path(identity_dir)))
    start.wait()  # every process checks the budget at the same moment
    return reserve_round(ledger, federation, policy, 1, RoundSpend(1.0, 0.2, 10)).granted


@pytest.mark.integration
def test_racing_processes_of_different_federations_never_spend_past_the_budget(tmp_path):
    federation_path, institutions = make_federation_files(tmp_path)
    # The budget affords exactly three such rounds (of any federations) but not four.
    one = PrivacyLedger.open(tmp_path / "probe", "a", "ds", Identity.generate("a"))
    epsilons = []
    for k in range(1, 6):
        one.append("spend", f"f{k}", 1, noise_multiplier=1.0, sample_rate=0.2, steps=10, clipping_norm=1.0,
                   delta=1e-5, accountant="pld")
        epsilons.append(one.epsilon_spent())
    budget = (epsilons[2] + epsilons[3]) / 2
    institution = tmp_path / "a-tight.yaml"
    institution.write_text(institutions[0].read_text().replace("epsilon: 6.0", f"epsilon: {budget}"))
    assert load_institution(institution).budget.epsilon == pytest.approx(budget)
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        start = manager.Barrier(6)
        jobs = [(str(tmp_path / "state"), str(tmp_path / "ids" / "a"), str(federation_path), str(institution),
                 f"fed-{k}", start) for k in range(6)]
        with context.Pool(6) as pool:
            granted = pool.map(_reserve_in_process, jobs)
    ledger = PrivacyLedger.open(tmp_path / "state", "a", "ds", Identity.load(tmp_path / "ids" / "a"))
    assert ledger.verify(Identity.load(tmp_path / "ids" / "a").public, recompute_epsilon=True) == []
    assert sum(granted) == 3
    assert len(ledger.spend_entries()) == 3
    assert ledger.epsilon_spent() <= budget


def test_a_restored_older_ledger_is_refused_and_nothing_is_spent(tmp_path):
    federation, institutions, members = _members(tmp_path, rounds=3)
    _keyed(members)
    a = members["a"]
    _spend_round(a, 1)
    backup = tmp_path / "backup.jsonl"
    shutil.copy(a.ledger.path, backup)
    a.apply_sum(1, *summed(_public_context(a), [a.take_part(1), members["b"].take_part(1)], members))
    _spend_round(a, 2)
    spent = a.ledger.epsilon_spent()
    shutil.copy(backup, a.ledger.path)  # the operator restores last week's copy of the ledger
    with pytest.raises(LedgerRollbackError) as raised:
        Member(federation, institutions[0])
    message = str(raised.value)
    assert "\n" not in message and "restore the newest copy" in message and "witness" in message
    assert PrivacyLedger(a.ledger.path).epsilon_spent() < spent  # the file really is the older one
    with pytest.raises(LedgerRollbackError):
        reserve_round(a.ledger, federation, institutions[0], 3, a.account.plan(a.rounds_left()).spend)
    assert len(PrivacyLedger(a.ledger.path).spend_entries()) == 1  # nothing was spent on the old copy


def test_a_deleted_ledger_is_refused_while_the_state_shows_participation(tmp_path):
    federation, institutions, members = _members(tmp_path)
    _keyed(members)
    a = members["a"]
    _spend_round(a, 1)
    a.ledger.path.unlink()
    for witness in a.ledger.path.parent.glob("*.head"):
        witness.unlink()  # even with the witness gone too, the federation's record shows it took part
    a._commit(settle(a.record, 1, "applied", count=2))
    with pytest.raises(LedgerRollbackError, match="is missing") as raised:
        Member(federation, institutions[0])
    assert "\n" not in str(raised.value)
    assert not a.ledger.path.exists()  # no fresh, empty ledger was created


def test_a_whole_state_directory_restore_is_caught_by_the_coordinators_receipt(tmp_path):
    federation, institutions, members = _members(tmp_path)
    _keyed(members)
    a = members["a"]
    state = Path(institutions[0].state_dir)
    registry = tmp_path / "ids" / "a" / "ledgers"  # the default outside witness: rolled back too, here
    shutil.copytree(state, tmp_path / "state-backup")
    shutil.copytree(registry, tmp_path / "registry-backup")
    contribution = a.take_part(1)
    receipt = {"federation": "tiny", "round": 1, "institution": "a",
               "ledger_head": contribution.ledger_head, "envelope_sha256": "0" * 64,
               "spend": contribution.declared.to_dict(), "signature": ""}
    a.check_anchor(receipt)  # the current ledger holds what the coordinator saw
    shutil.rmtree(state)
    shutil.copytree(tmp_path / "state-backup", state)  # ledger and its local witness both rolled back
    with pytest.raises(LedgerRollbackError, match="ledgers"):
        Member(federation, institutions[0])  # the witness beside the identity saw the newer head
    shutil.rmtree(registry)
    shutil.copytree(tmp_path / "registry-backup", registry)  # and the identity directory too
    restored = Member(federation, institutions[0])
    with pytest.raises(LedgerRollbackError, match="coordinator's receipt for round 1"):
        restored.check_anchor(receipt)


def test_a_witness_directory_elsewhere_catches_a_restored_state_directory(tmp_path):
    identity = Identity.generate("a")
    version = DataVersion("ab" * 32, 10, 9)
    opened = open_dataset_ledger(tmp_path / "state", "a", "ds", identity, version, [tmp_path / "usb"])
    backup = tmp_path / "backup"
    shutil.copytree(tmp_path / "state", backup)
    opened.ledger.append("spend", "f", 1, noise_multiplier=1.0, sample_rate=0.1, steps=5, clipping_norm=1.0,
                         delta=1e-5, accountant="pld")
    shutil.rmtree(tmp_path / "state")
    shutil.copytree(backup, tmp_path / "state")
    with pytest.raises(LedgerRollbackError, match="usb"):
        open_dataset_ledger(tmp_path / "state", "a", "ds", identity, version, [tmp_path / "usb"])


def _public_context(member: Member):
    from confide.aggregation.keys import PublicContext

    return PublicContext.from_bytes(member.secret.public_context().to_bytes())


def _pld_add_remove(history, delta: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    for sigma, rate, steps in history:
        accountant.compose(dp_event.PoissonSampledDpEvent(rate, dp_event.GaussianDpEvent(sigma)), steps)
    return accountant.get_epsilon(delta)


@pytest.mark.integration  # slow (accountant calibrations): kept out of make test-fast
def test_members_learn_no_record_count_and_the_ledger_is_true_under_add_remove(tmp_path):
    federation, institutions, members = _members(tmp_path)
    _keyed(members)
    # Very different dataset sizes: if the weight carried n, the decrypted weight would show it.
    write_data(institutions[1].data.path, 120, seed=9)
    members["b"] = Member(federation, institutions[1])
    a, b = members["a"], members["b"]
    assert a.learner.data.train_size != b.learner.data.train_size
    envelope, evidence = summed(_public_context(a), [a.take_part(1), b.take_part(1)], members)
    mask = unmask(federation, a.roster, a.secret.key_id, 1, list(evidence.statements), list(evidence.reveals))[1]
    total = decrypt_sum(a.secret, envelope, a.layout.hash, unmask=mask)
    assert total.count == 2
    assert total.total_weight == pytest.approx(sum(m.weight for m in federation.roster if m.id in ("a", "b")))
    # What every member learns is the sum of public weights; the epsilon recorded assumes exactly
    # that n stays hidden (add/remove-one), and is at least what an independent accountant gives.
    for member in (a, b):
        history = member.ledger.spend_history()
        assert member.ledger.epsilon_spent() >= _pld_add_remove(history, federation.privacy.delta) - 1e-3


@pytest.mark.integration  # slow (accountant calibrations): kept out of make test-fast
def test_a_restarted_member_plans_only_the_rounds_left(tmp_path):
    federation, institutions, members = _members(tmp_path, rounds=4)
    _keyed(members)
    a, b = members["a"], members["b"]
    first = a.plan()
    assert first["rounds"] == 4
    for round_index in (1, 2):
        total = summed(_public_context(a), [a.take_part(round_index), b.take_part(round_index)], members)
        assert a.apply_sum(round_index, *total).kind == "applied"
        assert b.apply_sum(round_index, *total).kind == "applied"
    restarted = Member(federation, institutions[0])
    again = restarted.plan()
    assert again["rounds"] == 2 and again["epsilon_before"] == pytest.approx(a.ledger.epsilon_spent())
    # Two rounds left on top of two spent at the plan's noise: the same noise fits, not a larger one.
    assert again["spend"]["noise_multiplier"] == pytest.approx(first["spend"]["noise_multiplier"], rel=0.02)
    assert again["epsilon_after_plan"] <= institutions[0].budget.epsilon + 1e-6


def test_a_second_spend_of_a_round_is_refused_whatever_fields_it_carries(tmp_path):
    # Spends copied by the removed per-fingerprint migration (`migrated_from`) once skipped this rule.
    identity = Identity.generate("a")
    ledger = open_dataset_ledger(tmp_path / "state", "a", "a", identity, DataVersion("ef" * 32, 20, 18)).ledger
    spend = dict(noise_multiplier=1.2, sample_rate=0.1, steps=5, clipping_norm=1.0, delta=1e-5, accountant="pld")
    ledger.append("spend", "fed", 1, **spend)
    spent = ledger.epsilon_spent()
    with pytest.raises(LedgerError, match="already has a spend entry"):
        ledger.append("spend", "fed", 1, **spend, migrated_from="a." + "cd" * 32 + ".jsonl")
    assert ledger.epsilon_spent() == spent and len(ledger.spend_entries()) == 1


def test_a_kill_after_the_adapter_is_written_applies_the_sum_exactly_once(tmp_path):
    federation, institutions, members = _members(tmp_path)
    _keyed(members)
    a, b = members["a"], members["b"]
    total = summed(_public_context(a), [a.take_part(1), b.take_part(1)], members)
    assert b.apply_sum(1, *total).kind == "applied"
    expected = np.load(b.store.dir / "adapter-r1.npy")
    # What a SIGKILL between writing the round's adapter and recording it leaves behind.
    a._commit = lambda record: (_ for _ in ()).throw(KeyboardInterrupt("killed"))
    with pytest.raises(KeyboardInterrupt):
        a.apply_sum(1, *total)
    restarted = Member(federation, institutions[0])
    assert restarted.last_applied_round == 0
    assert restarted.apply_sum(1, *total).kind == "applied"
    assert np.array_equal(np.load(restarted.store.dir / "adapter-r1.npy"), expected)
    again = Member(federation, institutions[0])
    assert again.apply_sum(1, *total).kind == "applied"  # idempotent: settled once
    assert np.array_equal(np.load(again.store.dir / "adapter-r1.npy"), expected)
    assert [e["kind"] for e in again.ledger.entries()].count("applied") == 1
    assert (again.store.dir / "adapter-r1.npy").stat().st_mode & 0o077 == 0  # a raw decryption: owner only
