"""The agent loop against a real coordinator over TLS, with real members over a vector learner (no model)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from confide.platform.driver import AgentError, RoundDriver
from confide.platform.member import Member
from confide.platform.service.agent import run_agent
from confide.platform.service.client import Backoff, CoordinatorClient

from .conftest import make_federation
from .test_tls_client import free_port, serve
from .vector_learner import NOISE, SIZE, STEP, vector_member

FAST = Backoff(first_s=0.05, max_s=0.3, give_up_after_s=30)


@pytest.fixture
def network(tmp_path):
    federation = make_federation(tmp_path, rounds=2)
    port = free_port()
    running = serve(federation, tmp_path / "coordinator", port)
    pin = (tmp_path / "coordinator" / "tls" / "fingerprint.txt").read_text().strip()
    yield federation, running, f"https://127.0.0.1:{port}", pin, tmp_path
    running.stop()


class DeclinesRounds(Member):
    """A member whose institution says no to the rounds in `decline_rounds`: it declines them the way the
    member declines a round its budget refuses (a decline entry in the ledger, the round `declining`)."""

    decline_rounds: frozenset[int] = frozenset()

    def _start(self, round_index: int):
        if round_index in self.decline_rounds:
            return self._decline(round_index, "policy says no")
        return super()._start(round_index)


def agent_for(network, who: str, client_class=CoordinatorClient, decline_rounds=()) -> RoundDriver:
    federation, _, url, pin, root = network
    member = vector_member(federation.policy, who, root / "identities" / who, root / "members" / who,
                           DeclinesRounds if decline_rounds else Member)
    if decline_rounds:
        member.decline_rounds = frozenset(decline_rounds)
    client = client_class(url, federation.identities[who], "net-test", pin=pin, backoff=FAST)
    return RoundDriver(member, client, federation.policy, root / "members" / who / "agent.json", say=lambda _l: None,
                 wait_s=2)


def run_all(agents: list[RoundDriver], once: bool = False) -> list:
    reports, errors = [None] * len(agents), []

    def run(index: int) -> None:
        try:
            reports[index] = agents[index].run(once=once)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(agents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for agent in agents:
        agent.client.close()
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    return reports


def adapter(agent: RoundDriver) -> np.ndarray:
    return agent.member.server_state.adapter


def receipts(member: Member) -> dict[int, dict]:
    """The coordinator's receipts the member checked and kept in its ledger, by round (each kept once)."""
    kept = [e for e in member.ledger.entries() if e["kind"] == "receipt"]
    assert len({e["round"] for e in kept}) == len(kept), kept
    return {e["round"]: e["receipt"] for e in kept}


def test_three_agents_finish_two_rounds_with_identical_adapters(network):
    federation, running, *_ = network
    agents = [agent_for(network, who) for who in ("a", "b", "c")]
    reports = run_all(agents)
    assert all(r.finished and r.uploaded == [1, 2] and r.applied == [1, 2] for r in reports)
    assert all(np.array_equal(adapter(a), adapter(agents[0])) for a in agents)
    # updates are 1, 2, 3 (x STEP x the training's ordinal): averages 2 then 4 (x STEP)
    assert np.allclose(adapter(agents[0]), np.full(SIZE, 6 * STEP), rtol=0, atol=NOISE)
    assert all(a.member.learner.trainings == ["1", "2"] for a in agents)
    assert all(sorted(receipts(a.member)) == [1, 2] for a in agents)
    assert running.hub.state.status == "finished"
    assert [len(r.uploads) for r in running.hub.state.rounds] == [3, 3]


def test_an_agent_that_declines_still_applies_the_sum(network):
    federation, running, *_ = network
    agents = [agent_for(network, "a"), agent_for(network, "b"), agent_for(network, "c", decline_rounds={1})]
    reports = run_all(agents)
    assert reports[2].declined == [1] and reports[2].uploaded == [2]
    assert agents[2].member.learner.trainings == ["1"]  # the declined round was never trained
    assert running.hub.state.rounds[0].declined["c"] == "policy says no"
    assert [e["kind"] for e in agents[2].member.ledger.entries() if e["round"] == 1] == ["decline", "applied"]
    assert all(np.array_equal(adapter(a), adapter(agents[0])) for a in agents)
    # round 1: a and b, 1 and 2 (x STEP): 1.5; round 2: a and b train a second time (2, 4), c its first (3): 3
    assert np.allclose(adapter(agents[0]), np.full(SIZE, 4.5 * STEP), rtol=0, atol=NOISE)


class LosesUploadReply(CoordinatorClient):
    """The upload reaches the coordinator, but the agent dies before it reads the reply."""

    def upload(self, round_index, envelope, ledger_head, declared, statement, shares=b""):
        super().upload(round_index, envelope, ledger_head, declared, statement, shares)
        raise KeyboardInterrupt("killed after the upload, before the reply")


def test_restarted_agent_whose_upload_reply_was_lost_keeps_the_receipt_and_never_retrains(network):
    federation, running, *_ = network
    doomed = agent_for(network, "a", client_class=LosesUploadReply)
    with pytest.raises(KeyboardInterrupt):
        doomed.run()
    assert doomed.member.learner.trainings == ["1"] and doomed.member.round_state(1) == "trained"  # no receipt yet
    assert receipts(doomed.member) == {}
    agents = [agent_for(network, who) for who in ("a", "b", "c")]
    reports = run_all(agents)
    # The restarted agent finds its receipt for round 1 in the coordinator's view (the newest receipt,
    # checked against the envelope it stored), so it has nothing to resend: round 1 is not uploaded again.
    assert reports[0].uploaded == [2] and reports[0].applied == [1, 2]
    assert agents[0].member.learner.trainings == ["1", "2"]
    assert agents[0].member.round_state(1) == "applied"
    kept = receipts(agents[0].member)
    assert sorted(kept) == [1, 2]
    assert kept[1]["envelope_sha256"] == running.hub.state.rounds[0].uploads["a"].envelope_sha256
    assert [len(r.uploads) for r in running.hub.state.rounds] == [3, 3]


def test_once_takes_part_in_the_next_round_and_stops(network):
    federation, running, *_ = network
    agents = [agent_for(network, who) for who in ("a", "b", "c")]
    reports = run_all(agents, once=True)
    assert all(r.uploaded == [1] and r.applied == [1] and not r.finished for r in reports)
    assert running.hub.state.current.index == 2


def test_agent_refuses_a_coordinator_running_another_federation_file(network, tmp_path):
    federation, _, url, pin, root = network
    member = vector_member(federation.policy, "a", root / "identities" / "a", root / "members" / "x")
    changed = federation.path.read_text().replace("rounds: 2", "rounds: 5")
    (tmp_path / "changed.yaml").write_text(changed)
    from confide.policies import load_federation

    agent = RoundDriver(member, CoordinatorClient(url, federation.identities["a"], "net-test", pin=pin, backoff=FAST),
                  load_federation(tmp_path / "changed.yaml"), root / "x.json", say=lambda _l: None)
    with pytest.raises(AgentError, match="differs from ours"):
        agent.run()
    agent.client.close()


def test_run_agent_checks_the_institution_policy_first(network, tmp_path):
    federation, _, url, pin, _ = network
    policy = tmp_path / "a.yaml"
    (tmp_path / "a.jsonl").write_text('{"text": "t", "label": "x"}\n')
    policy.write_text(
        "kind: institution\ninstitution_id: a\ndata:\n  path: a.jsonl\n  format: jsonl\n"
        "budget:\n  epsilon: 3\n  delta: 1.0e-5\naccepts:\n  federations: [some-other-federation]\n"
        f"state_dir: state\nidentity_dir: {tmp_path / 'identities' / 'a'}\n"
    )
    with pytest.raises(AgentError, match="may not join"):
        run_agent(policy, federation.path, url, pin=pin, member_factory=lambda *a: pytest.fail("constructed"))
