"""A faulty member cannot sink the federation: what the coordinator checks without the key.

The key holder declares the adapter's value count in the key set-up, and an upload with another
count is refused on arrival (422), before it can fail a round that honest members already paid for.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time

import numpy as np
import pytest

from confide.aggregation.envelope import encrypt_update
from confide.aggregation.errors import DecryptionCheckFailed
from confide.aggregation.params import CkksParameters
from confide.identity import roster_identities
from confide.platform.protocol import FederationState
from confide.platform.secure_sum import mask_upload
from confide.platform.service.agent import Agent
from confide.platform.service.client import Backoff, CoordinatorClient, CoordinatorRefused
from tests.aggregation.aggregation_helpers import update_under_another_key

from .conftest import LAYOUT, Keys, declared_spend, make_federation, snapshot
from .fake_member import SIZE, Contribution, FakeMember
from .test_tls_client import free_port, serve

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


class WrongSize(FakeMember):
    """A member whose adapter has one value too many (another model, a bug): every upload is refused."""

    def take_part(self, round_index: int) -> Contribution:
        blob = encrypt_update(self._secret(), np.ones(SIZE + 1), 1.0, LAYOUT)
        return Contribution("upload", envelope=blob, declared=declared_spend(self.federation))


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_the_federation_finishes_with_the_honest_members_when_one_uploads_the_wrong_size(tmp_path):
    federation = make_federation(tmp_path, rounds=2, min_institutions=2, deadline_s=4)
    agents, outcomes, state, _ = _run_federation(tmp_path, federation, {"a": FakeMember, "b": FakeMember,
                                                                         "c": WrongSize}, join_s=90)

    refused = outcomes["c"]
    assert isinstance(refused, CoordinatorRefused) and refused.status == 422 and "values" in refused.detail
    assert state.status == "finished" and [r.contributors for r in state.rounds] == [["a", "b"], ["a", "b"]]
    for who in ("a", "b"):
        assert outcomes[who].finished and outcomes[who].applied == [1, 2]
        # deltas 1 and 2 times the round: averages 1.5 then 3
        assert np.allclose(agents[who].member.adapter, np.full(SIZE, 4.5))


class ToleratesBadSums(FakeMember):
    """A member that settles a round as failed when its sum does not decrypt, marking the outcome
    undecryptable as the real Member does; the agent then reports it to the coordinator."""

    def apply_sum(self, round_index: int, sum_envelope: bytes, evidence):
        try:
            return super().apply_sum(round_index, sum_envelope, evidence)
        except DecryptionCheckFailed as exc:
            failed = self.note_failed_round(round_index, f"the sum does not decrypt: {exc}")
            return dataclasses.replace(failed, undecryptable=True)


class Undecryptable(ToleratesBadSums):
    """Uploads well-formed envelopes under the federation's key id whose ciphertexts were made with
    another secret key: nothing short of decrypting tells them from good ones."""

    def take_part(self, round_index: int) -> Contribution:
        key_id = self._secret().key_id
        envelope = update_under_another_key(CkksParameters(**self.federation.ckks.model_dump()), key_id, LAYOUT,
                                            np.ones(SIZE))
        shares = mask_upload(self.federation, roster_identities(self.federation.roster), key_id, round_index,
                             self.institution_id)[1]  # well-formed shares: only decrypting shows the fault
        (self.dir / f"r{round_index}.shares").write_bytes(shares)
        return self._upload(round_index, envelope)


@pytest.mark.integration
@pytest.mark.timeout(180)
def test_a_member_whose_uploads_do_not_decrypt_is_found_and_excluded_and_the_others_finish(tmp_path):
    federation = make_federation(tmp_path, rounds=6, min_institutions=2, deadline_s=20)
    agents, outcomes, state, view = _run_federation(
        tmp_path, federation, {"a": ToleratesBadSums, "b": ToleratesBadSums, "c": Undecryptable}, join_s=150)

    # c is refused (403) if it uploads while a round is open, or too late (409) once the others'
    # uploads are enough to sum without waiting for it.
    faulty = outcomes["c"]
    if isinstance(faulty, CoordinatorRefused):
        assert faulty.status == 403 and "excluded" in faulty.detail
    else:
        assert faulty.uploaded == [1, 2, 3, 4] and faulty.missed == [5, 6]
    assert list(state.excluded) == ["c"] and view.excluded == state.excluded
    assert state.status == "finished"
    # Rounds 1-3 held c's upload (round 2 left a out, round 3 b) and did not decrypt; from round 4
    # on c is kept out, and the honest two apply every sum.
    assert [r.contributors for r in state.rounds] == [["a", "b", "c"], ["b", "c"], ["a", "c"],
                                                      ["a", "b"], ["a", "b"], ["a", "b"]]
    assert [len(r.undecryptable) >= 2 for r in state.rounds] == [True, True, True, False, False, False]
    for who in ("a", "b"):
        assert outcomes[who].finished and outcomes[who].failed == [1, 2, 3] and outcomes[who].applied == [4, 5, 6]
        # deltas 1 and 2 times the round, averaged over rounds 4-6: 1.5 * (4 + 5 + 6)
        assert np.allclose(agents[who].member.adapter, np.full(SIZE, 22.5))


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
            member = member_class(federation.policy, federation.identities[who], tmp_path / "members" / who)
            client = CoordinatorClient(url, federation.identities[who], "net-test", pin=pin, backoff=FAST)
            agents[who] = Agent(member, client, federation.policy, tmp_path / "members" / who / "agent.json",
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
