"""One round driver for the network and the simulation; a member killed at any step resumes correctly."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from confide.aggregation.codec import flatten
from confide.platform.driver import RoundDriver
from confide.platform.hub import CoordinatorHub
from confide.platform.member import Member
from confide.platform.member import account as account_module
from confide.platform.member import store as store_module
from confide.platform.member.learner import LocalModel
from confide.platform.simulation import (
    InProcessTransport,
    SimulatedClock,
    Simulation,
    SimulationError,
    _Idle,
    run_simulation,
)
from confide.privacy.trainable import trainable_state
from tests.network.conftest import make_federation
from tests.network.test_agent import agent_for, receipts, run_all
from tests.network.test_tls_client import free_port, serve
from tests.network.vector_learner import NOISE, SIZE, STEP, vector_member
from tests.platform.federation_kit import load_files, make_federation_files


class Crash(BaseException):
    """An injected kill: not an Exception, so nothing on the way catches it (like SIGKILL)."""


def _drivers_in_process(hub: CoordinatorHub, members: dict, federation, root: Path, clock=None, idle=None):
    clock, idle = clock or SimulatedClock(), idle or _Idle()
    return {m: RoundDriver(member, InProcessTransport(hub, m, clock, idle), federation, root / m / "agent.json",
                           say=lambda _line: None, wait_s=0.2, clock=clock, adapter_dir=root / m / "final")
            for m, member in members.items()}


def _run_threads(drivers: dict[str, RoundDriver]) -> dict:
    reports, errors = {}, []

    def run(name: str, driver: RoundDriver) -> None:
        try:
            reports[name] = driver.run()
        except BaseException as exc:  # surfaced below
            errors.append((name, exc))

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in drivers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    return reports


@pytest.mark.integration
def test_the_network_agent_and_the_in_process_transport_run_the_same_driver(tmp_path):
    # Over HTTPS, with a real coordinator process-in-thread and TLS...
    federation = make_federation(tmp_path / "net", rounds=2)
    port = free_port()
    running = serve(federation, tmp_path / "net" / "coordinator", port)
    pin = (tmp_path / "net" / "coordinator" / "tls" / "fingerprint.txt").read_text().strip()
    network = (federation, running, f"https://127.0.0.1:{port}", pin, tmp_path / "net")
    try:
        agents = [agent_for(network, who) for who in ("a", "b", "c")]
        assert all(isinstance(a, RoundDriver) for a in agents)
        net_reports = run_all(agents)
    finally:
        running.stop()
    # ...and in process, over the same hub class the service runs, with members built the same way.
    hub = CoordinatorHub(federation.policy, tmp_path / "local" / "coordinator")
    members = {who: vector_member(federation.policy, who, tmp_path / "net" / "identities" / who,
                                  tmp_path / "local" / who) for who in ("a", "b", "c")}
    local_reports = _run_threads(_drivers_in_process(hub, members, federation.policy, tmp_path / "local"))
    hub.close()
    for who, net in zip(("a", "b", "c"), net_reports):
        local = local_reports[who]
        assert (net.uploaded, net.applied, net.declined, net.failed) == \
               (local.uploaded, local.applied, local.declined, local.failed) == ([1, 2], [1, 2], [], [])
    net_adapters = [a.member.server_state.adapter for a in agents]
    local_adapters = [members[w].server_state.adapter for w in ("a", "b", "c")]
    # Within each run the members hold bit-identical adapters; across the two runs they agree up
    # to the CKKS noise of two independent encryptions.
    assert all(np.array_equal(net_adapters[0], x) for x in net_adapters)
    assert all(np.array_equal(local_adapters[0], x) for x in local_adapters)
    # (uploads are rounded to the federation's upload precision, so the two runs differ by that
    # rounding, far below the 1e-4 the encryption promises on an update).
    assert np.abs(net_adapters[0] - local_adapters[0]).max() < 1e-4
    assert np.allclose(local_adapters[0], np.full(SIZE, 6 * STEP), rtol=0, atol=NOISE)  # averages 2 then 4 (x STEP)
    # Both ways the coordinator's receipts were checked and kept in the ledger with the same rounds.
    for who, agent in zip(("a", "b", "c"), agents):
        assert sorted(receipts(agent.member)) == sorted(receipts(members[who])) == [1, 2]
        assert [members[who].round_state(r) for r in (1, 2)] == ["applied", "applied"]
        assert members[who].learner.trainings == agent.member.learner.trainings == ["1", "2"]


@pytest.mark.integration
def test_real_members_keep_equivalent_ledgers_whichever_transport_drives_them(tmp_path):
    from types import SimpleNamespace

    from confide.platform.service.client import CoordinatorClient
    from tests.network.test_agent import FAST

    runs = {}
    for way in ("https", "in process"):
        root = tmp_path / way.replace(" ", "-")
        fed_path, institution_paths = make_federation_files(root, ids=("a", "b"), rounds=2)
        federation, institutions = load_files(fed_path, institution_paths)
        members = {p.institution_id: Member(federation, p) for p in institutions}
        if way == "https":
            port = free_port()
            running = serve(SimpleNamespace(path=fed_path), root / "coordinator", port)
            pin = (root / "coordinator" / "tls" / "fingerprint.txt").read_text().strip()
            try:
                _run_threads({m: RoundDriver(member, CoordinatorClient(f"https://127.0.0.1:{port}", member.identity,
                                                                       "tiny", pin=pin, backoff=FAST),
                                             federation, root / "agents" / m / "agent.json", say=lambda _l: None,
                                             wait_s=2) for m, member in members.items()})
            finally:
                running.stop()
        else:
            hub = CoordinatorHub(federation, root / "coordinator")
            _run_threads(_drivers_in_process(hub, members, federation, root / "agents"))
            hub.close()
        adapters = [flatten(trainable_state(m.learner.model))[0] for m in members.values()]
        assert np.array_equal(adapters[0], adapters[1])  # within a run every member applied the same sums
        runs[way] = {name: [_comparable(e) for e in m.ledger.entries() if e["federation"] == "tiny"]
                     for name, m in members.items()}
        assert all(m.round_state(r) == "applied" for m in members.values() for r in (1, 2))
    # The same entries in the same order with the same spends and epsilons (hashes, times and
    # envelopes differ: each run drew its own noise and encryption randomness).
    assert runs["https"] == runs["in process"]
    assert [e[0] for e in runs["https"]["a"]] == ["key"] + ["spend", "outcome", "receipt", "applied"] * 2


def _comparable(entry: dict) -> tuple:
    """What two runs of one federation must agree on in a ledger entry."""
    keep = ("noise_multiplier", "sample_rate", "steps", "epsilon", "count", "result")
    receipt = entry.get("receipt")
    signed = tuple(sorted(receipt["spend"].items())) if receipt else None
    return (entry["kind"], entry["round"], tuple((k, entry.get(k)) for k in keep),
            signed and tuple(kv for kv in signed if kv[0] != "entry_hash"))


def test_the_simulation_refuses_an_institution_whose_policy_refuses_the_federation(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path / "files"))
    strict = institutions[1].model_copy(update={"accepts": institutions[1].accepts.model_copy(
        update={"federations": ["another-federation"]})})
    with pytest.raises(SimulationError, match="b may not join tiny"):
        run_simulation(Simulation(federation, [institutions[0], strict, institutions[2]], tmp_path / "out", workers=0))
    assert not (tmp_path / "out" / "summary.json").exists()


# Where a member can die in a round: right after the work of a transition (a ledger entry, a file),
# before its state is recorded, and right after each state of the member's round is recorded.
KILL_POINTS = {
    "spend reserved, not recorded": ("reserve_round", None),
    "state reserved": ("commit", "reserved"),
    "trained, envelope not written": ("train", None),
    "envelope written": ("write_atomically", "r1.envelope"),
    "upload in the ledger, not recorded": ("ledger_append", "outcome"),
    "state trained": ("commit", "trained"),
    "uploaded, reply lost": ("transport_upload", None),
    "receipt in the ledger, not recorded": ("ledger_append", "receipt"),
    "state receipted": ("commit", "receipted"),
    "adapter written": ("write_atomically", "adapter-r1.npy"),
    "applied in the ledger, not recorded": ("ledger_append", "applied"),
    "state applied": ("commit", "applied"),
}


def _arm(monkeypatch, point: str, fired: list) -> None:
    """Make the member's process die right after the step `point`, once, in round 1."""
    what, detail = KILL_POINTS[point]

    def after(original, condition=lambda *a, **k: True):
        def wrapped(*args, **kwargs):
            result = original(*args, **kwargs)
            if not fired and threading.current_thread().name == "victim" and condition(*args, **kwargs):
                fired.append(point)
                raise Crash(point)
            return result
        return wrapped

    if what == "reserve_round":
        monkeypatch.setattr(account_module, "reserve_round", after(account_module.reserve_round))
    elif what == "train":
        monkeypatch.setattr(LocalModel, "train", after(LocalModel.train))
    elif what == "write_atomically":
        monkeypatch.setattr(store_module, "write_atomically",
                            after(store_module.write_atomically, lambda path, *a, **k: Path(path).name == detail))
    elif what == "ledger_append":
        from confide.privacy.ledger import PrivacyLedger
        monkeypatch.setattr(PrivacyLedger, "append",
                            after(PrivacyLedger.append, lambda self, kind, *a, **k: kind == detail))
    elif what == "transport_upload":
        monkeypatch.setattr(InProcessTransport, "upload", after(InProcessTransport.upload))
    elif what == "commit":
        monkeypatch.setattr(Member, "_commit", after(Member._commit,
                                                     lambda self, record: record.state_of(1) == detail))


def test_every_state_of_the_members_round_has_a_kill_point():
    from confide.platform.member.engine import TRANSITIONS

    upload_path = {"reserved", "trained", "receipted", "applied"}
    assert upload_path <= set(TRANSITIONS)
    assert {detail for what, detail in KILL_POINTS.values() if what == "commit"} == upload_path


@pytest.mark.integration
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_member_killed_at_any_step_resumes_without_training_spending_or_applying_twice(tmp_path, monkeypatch,
                                                                                          point):
    federation, institutions = load_files(*make_federation_files(tmp_path, ids=("a", "b"), rounds=2))
    hub = CoordinatorHub(federation, tmp_path / "coordinator")
    clock, idle = SimulatedClock(), _Idle()
    members = {p.institution_id: Member(federation, p) for p in institutions}
    drivers = _drivers_in_process(hub, members, federation, tmp_path / "agents", clock, idle)
    fired: list = []
    _arm(monkeypatch, point, fired)
    survivor = threading.Thread(target=drivers["b"].run, daemon=True)
    survivor.start()
    killed = threading.Thread(target=lambda: _expect_crash(drivers["a"]), name="victim", daemon=True)
    killed.start()
    killed.join(timeout=300)
    assert fired == [point], "the kill point was never reached"
    # A new process: fresh member and driver objects over the same state directories.
    monkeypatch.undo()
    restarted = Member(federation, institutions[0])
    again = _drivers_in_process(hub, {"a": restarted}, federation, tmp_path / "agents", clock, idle)["a"]
    report = again.run()
    survivor.join(timeout=300)
    assert report.finished and hub.state.status == "finished"
    finals = {}
    for name in ("a", "b"):
        member = restarted if name == "a" else members["b"]
        finals[name] = flatten(trainable_state(member.learner.model))[0]
        entries = member.ledger.entries()
        for round_index in (1, 2):
            of_round = [e for e in entries if e["round"] == round_index and e["federation"] == "tiny"]
            kinds = [e["kind"] for e in of_round]
            assert kinds.count("spend") <= 1, (name, round_index, kinds)
            assert kinds.count("outcome") <= 1, (name, round_index, kinds)  # trained at most once
            summed = hub.state.rounds[round_index - 1].status in ("summed", "closed")
            assert kinds.count("applied") == int(summed), (name, round_index, kinds)  # applied exactly once
        assert member.ledger.verify(member.identity.public) == []
    assert np.array_equal(finals["a"], finals["b"])
    hub.close()


def _expect_crash(driver: RoundDriver) -> None:
    with pytest.raises(Crash):
        driver.run()


@pytest.mark.integration
def test_a_member_killed_after_deciding_to_decline_tells_the_coordinator_once_and_stays_in_step(tmp_path,
                                                                                              monkeypatch):
    federation, institutions = load_files(*make_federation_files(tmp_path, rounds=1, budgets={"c": 3.0}))
    hub = CoordinatorHub(federation, tmp_path / "coordinator")
    clock, idle = SimulatedClock(), _Idle()
    members = {p.institution_id: Member(federation, p) for p in institutions}
    members["c"].plan()
    # Another federation spends most of c's budget after c planned this one: c must decline round 1.
    members["c"].ledger.append("spend", "other-federation", 1, noise_multiplier=1.5, sample_rate=0.2, steps=10,
                               clipping_norm=1.0, delta=1e-5, accountant="pld")
    drivers = _drivers_in_process(hub, members, federation, tmp_path / "agents", clock, idle)
    fired: list = []
    monkeypatch.setattr(Member, "_commit", _crash_after(Member._commit, fired,
                                                        lambda self, record: record.state_of(1) == "declining"))
    others = [threading.Thread(target=drivers[m].run, daemon=True) for m in ("a", "b")]
    for thread in others:
        thread.start()
    killed = threading.Thread(target=lambda: _expect_crash(drivers["c"]), name="victim", daemon=True)
    killed.start()
    killed.join(timeout=300)
    assert fired == ["declining"]
    monkeypatch.undo()
    restarted = Member(federation, institutions[2])
    report = _drivers_in_process(hub, {"c": restarted}, federation, tmp_path / "agents", clock, idle)["c"].run()
    for thread in others:
        thread.join(timeout=300)
    assert report.finished and report.declined == [1] and hub.state.status == "finished"
    assert "budget" in hub.state.rounds[0].declined["c"]
    assert restarted.round_state(1) == "applied"
    kinds = [e["kind"] for e in restarted.ledger.entries() if e["federation"] == "tiny"]
    assert kinds.count("decline") == 1 and "spend" not in kinds  # decided once, nothing spent
    finals = [flatten(trainable_state(m.learner.model))[0] for m in (members["a"], members["b"], restarted)]
    assert all(np.array_equal(finals[0], other) for other in finals[1:])
    hub.close()


def _crash_after(original, fired: list, condition):
    def wrapped(*args, **kwargs):
        result = original(*args, **kwargs)
        if not fired and threading.current_thread().name == "victim" and condition(*args, **kwargs):
            fired.append(args[1].state_of(1))
            raise Crash("killed")
        return result
    return wrapped


def test_a_member_refuses_a_receipt_that_is_forged_or_names_another_ledger_head_or_spend(tmp_path):
    from confide.formats import Receipt, sha256
    from confide.identity import Identity, b64
    from confide.platform.member import MemberError

    federation, institutions = load_files(*make_federation_files(tmp_path, ids=("a", "b")))
    a = Member(federation, institutions[0])
    bundle = a.make_keys()
    a.install_key(bundle.sealed["a"], bundle.certificate)
    contribution = a.take_part(1)
    coordinator = Identity.generate("coordinator")
    head = contribution.ledger_head
    assert head == a.ledger.entries()[-1]["hash"]  # the upload names the newest entry by its hash alone

    def signed(**changes) -> dict:
        receipt = Receipt("tiny", 1, "a", sha256(contribution.envelope), ledger_head=head,
                          spend=contribution.declared)
        receipt = Receipt(**{**receipt.__dict__, **changes})
        return {**receipt.to_dict(), "signature": b64(coordinator.sign(receipt.message()))}

    key = coordinator.public.signing_public
    assert a.record_receipt(1, signed(), contribution.envelope, key)["ledger_head"] == head
    with pytest.raises(MemberError, match="ledger head"):
        a.record_receipt(1, signed(ledger_head=a.ledger.entries()[0]["hash"]), contribution.envelope, key)
    with pytest.raises(MemberError, match="does not describe"):
        a.record_receipt(1, signed(envelope_sha256="0" * 64), contribution.envelope, key)
    noisier = dataclasses.replace(contribution.declared, noise_multiplier=contribution.declared.noise_multiplier * 2)
    with pytest.raises(MemberError, match="spend does not match.*noise_multiplier"):
        a.record_receipt(1, signed(spend=noisier), contribution.envelope, key)
    unspent = {k: v for k, v in signed().items() if k != "spend"}
    with pytest.raises(MemberError, match="malformed receipt"):
        a.record_receipt(1, unspent, contribution.envelope, key)
    forged = {**signed(), "signature": signed(round=2)["signature"]}
    with pytest.raises(MemberError, match="signature"):
        a.record_receipt(1, forged, contribution.envelope, key)
    assert [e["kind"] for e in a.ledger.entries()].count("receipt") == 1
    # Read back at start (no envelope passed), the receipt is checked again, its spend included.
    assert a.record_receipt(1, signed(), None, key)["ledger_head"] == head
    with pytest.raises(MemberError, match="malformed receipt"):
        a.record_receipt(1, unspent, None, key)
    with pytest.raises(MemberError, match="spend does not match"):
        a.record_receipt(1, signed(spend=noisier), None, key)
