"""A faulty member cannot sink the federation: what the coordinator checks without the key.

The key holder declares the adapter's value count in the key set-up, and an upload with another
count is refused on arrival (422), before it can fail a round that honest members already paid for.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from confide.platform import faults
from confide.platform.driver import CoordinatorRefused, RoundDriver
from confide.platform.member import Member
from confide.platform.protocol import FederationState
from confide.platform.service.client import Backoff, CoordinatorClient
from tests.platform.test_malicious_member import UploadsUnderAnotherKey

from .conftest import Keys, make_federation, snapshot
from .test_tls_client import free_port, serve
from .vector_learner import NOISE, SIZE, STEP, vector_member

FAST = Backoff(first_s=0.05, max_s=0.3, give_up_after_s=30)


def set_up(served, n_values: int | None):
    hub, api, fed = served
    keys = Keys(fed, n_values=n_values)
    body = keys.request()
    reply = api.request(fed.identities["a"], "PUT", "/v1/keys", json_body=body)
    assert reply.status_code == 200, reply.text
    deadline = time.monotonic() + 10
    while hub.state.current is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return keys


def upload(api, identity, envelope: bytes):
    return api.upload(identity, envelope)


def test_an_upload_with_another_value_count_than_the_key_set_up_is_refused_unchanged(served):
    hub, api, fed = served
    keys = set_up(served, n_values=8)
    assert api.request(fed.identities["b"], "GET", "/v1/federation").json()["n_values"] == 8
    before = snapshot(hub)
    for wrong in (7, 9, 200):
        reply = upload(api, fed.identities["b"], keys.envelope(np.ones(wrong)))
        assert reply.status_code == 422 and "holds" in reply.json()["detail"], reply.text
    assert snapshot(hub) == before
    assert upload(api, fed.identities["b"], keys.envelope(np.ones(8))).status_code == 200


def test_a_key_set_up_without_a_value_count_still_works_and_old_states_load(served):
    hub, api, fed = served
    keys = set_up(served, n_values=None)
    assert upload(api, fed.identities["b"], keys.envelope(np.ones(5))).status_code == 200
    recorded = hub.state.to_dict()
    del recorded["key_setup"]["n_values"]  # a state written before the field existed
    assert FederationState.from_dict(json.loads(json.dumps(recorded))).key_setup.n_values is None


def test_a_key_set_up_with_a_nonsense_value_count_is_refused(served):
    hub, api, fed = served
    keys = Keys(fed)
    for bad in (0, -3, "many"):
        reply = api.request(fed.identities["a"], "PUT", "/v1/keys", json_body=keys.request(n_values=bad))
        assert reply.status_code == 422
    assert hub.state.key_setup is None


class WrongSize(Member):
    """A member whose adapter update has one value too many (another model, a bug): every upload is refused."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        honest = self.learner.train
        self.learner.train = lambda spend, on_step: np.append(honest(spend, on_step), 0.0)


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_federation_finishes_with_the_honest_members_when_one_uploads_the_wrong_size(tmp_path):
    federation = make_federation(tmp_path, rounds=2, min_institutions=2, deadline_s=4)
    agents, outcomes, state, _ = _run_federation(tmp_path, federation, {"a": Member, "b": Member, "c": WrongSize},
                                                 join_s=90)

    refused = outcomes["c"]
    assert isinstance(refused, CoordinatorRefused) and refused.status == 422 and "values" in refused.detail
    assert state.status == "finished" and [r.contributors for r in state.rounds] == [["a", "b"], ["a", "b"]]
    adapters = [agents[who].member.server_state.adapter for who in ("a", "b")]
    assert np.array_equal(adapters[0], adapters[1])
    for who in ("a", "b"):
        assert outcomes[who].finished and outcomes[who].applied == [1, 2]
        assert agents[who].member.learner.trainings == ["1", "2"]
    # updates 1 and 2 (x STEP x the training's ordinal): averages 1.5 then 3 (x STEP)
    assert np.allclose(adapters[0], np.full(SIZE, 4.5 * STEP), rtol=0, atol=NOISE)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_member_whose_uploads_do_not_decrypt_is_found_and_excluded_and_the_others_finish(tmp_path):
    federation = make_federation(tmp_path, rounds=6, min_institutions=2, deadline_s=20)
    # The honest members are the product's: they give up after `patience` refused sums in a row, one
    # round more than the search needs, so they must still be there when c is found.
    policy = federation.policy
    cap = faults.leave_out_cap(len(policy.roster), policy.min_institutions, policy.colluders)
    assert faults.rounds_to_find(3, cap) == 3 < faults.patience(3, cap)
    # c uploads well-formed envelopes under the federation's key id made with another secret key (honest
    # integrity tags and mask shares): nothing short of decrypting tells them from good ones.
    agents, outcomes, state, view = _run_federation(
        tmp_path, federation, {"a": Member, "b": Member, "c": UploadsUnderAnotherKey}, join_s=150)

    # c is refused (403) if it uploads once it is excluded. Otherwise it took part until it left: its
    # own key is wrong too, so it refuses every sum, round 4's (without it) included, and after
    # `patience` refused sums in a row it leaves and declines the rest.
    faulty = outcomes["c"]
    if isinstance(faulty, CoordinatorRefused):
        assert faulty.status == 403 and "excluded" in faulty.detail
    else:
        assert (faulty.uploaded, faulty.failed, faulty.declined) == ([1, 2, 3, 4], [1, 2, 3, 4], [5, 6]), faulty
        assert f"{faults.patience(3, cap)} rounds in a row whose sums did not decrypt" in \
            agents["c"].member.record.aborted
    assert list(state.excluded) == ["c"] and view.excluded == state.excluded
    assert state.status == "finished"
    # Rounds 1-3 held c's upload (round 2 left a out, round 3 b) and did not decrypt; from round 4
    # on c is kept out, and the honest two apply every sum.
    assert [r.contributors for r in state.rounds] == [["a", "b", "c"], ["b", "c"], ["a", "c"],
                                                      ["a", "b"], ["a", "b"], ["a", "b"]]
    assert [len(r.undecryptable) >= 2 for r in state.rounds] == [True, True, True, False, False, False]
    adapters = [agents[who].member.server_state.adapter for who in ("a", "b")]
    assert np.array_equal(adapters[0], adapters[1])
    for who in ("a", "b"):
        assert outcomes[who].finished and outcomes[who].failed == [1, 2, 3] and outcomes[who].applied == [4, 5, 6]
        member = agents[who].member
        assert member.record.aborted is None  # stayed: never gave up before c was found
        refused = [e["reason"] for e in member.ledger.entries() if e["kind"] == "round_failed"]
        assert len(refused) == 3 and all("refused the sum" in r for r in refused), refused
        assert member.learner.trainings == [str(k) for k in range(1, 7)]
    # Each trains every round (k-th training in round k): a's update is k, b's 2k (x STEP); the
    # refused rounds apply nothing, so the adapter is the averages of rounds 4-6: 1.5 * (4 + 5 + 6).
    assert np.allclose(adapters[0], np.full(SIZE, 22.5 * STEP), rtol=0, atol=NOISE)


def _run_federation(tmp_path, federation, member_classes: dict, join_s: float):
    """Serve the federation, run one agent per member until all stop; return agents, outcomes, state, a's view.

    An agent that stops on a refusal (the faulty one) has the exception as its outcome.
    """
    port = free_port()
    running = serve(federation, tmp_path / "coordinator", port)
    pin = (tmp_path / "coordinator" / "tls" / "fingerprint.txt").read_text().strip()
    url = f"https://127.0.0.1:{port}"
    agents, outcomes = {}, {}
    try:
        for who, member_class in member_classes.items():
            member = vector_member(federation.policy, who, tmp_path / "identities" / who, tmp_path / "members" / who,
                                   member_class)
            client = CoordinatorClient(url, federation.identities[who], "net-test", pin=pin, backoff=FAST)
            agents[who] = RoundDriver(member, client, federation.policy, tmp_path / "members" / who / "agent.json",
                                say=lambda _line: None, wait_s=1)

        def run(who: str) -> None:
            try:
                outcomes[who] = agents[who].run()
            except Exception as exc:  # the faulty member's agent may stop on a refusal
                outcomes[who] = exc

        threads = [threading.Thread(target=run, args=(who,)) for who in agents]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=join_s)
        assert not any(thread.is_alive() for thread in threads)
        return agents, outcomes, running.hub.state, running.hub.view_for("a")
    finally:
        for agent in agents.values():
            agent.client.close()
        running.stop()
