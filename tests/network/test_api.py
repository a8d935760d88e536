"""The coordinator's HTTP API in process: key set-up, uploads, receipts, sums, and refusals."""

from __future__ import annotations

import base64
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlencode

import numpy as np
import pytest

from confide.aggregation.envelope import decrypt_sum, sum_envelopes
from confide.formats import StatementClaims
from confide.identity import Identity, PublicIdentity, unb64
from confide.platform.coordinator import Receipt, sha256
from confide.platform.hub import CoordinatorHub
from confide.platform.service.app import Changes
from confide.platform.service.signing import HEADER_SIGNATURE, sign_request

from .conftest import LAYOUT, LEDGER_HEAD, Keys, declared_spend, snapshot, upload_request


def wait_until(predicate, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def set_up(served) -> Keys:
    hub, api, fed = served
    keys = Keys(fed)
    reply = api.request(fed.identities["a"], "PUT", "/v1/keys", json_body=keys.request())
    assert reply.status_code == 200, reply.text
    wait_until(lambda: hub.state.current is not None)
    return keys


def upload(api, identity: Identity, envelope: bytes, round_index: int = 1, institution: str | None = None):
    return api.upload(identity, envelope, round_index, institution)


def test_health_and_openapi_need_no_signature(served):
    _, api, _ = served
    assert api.request(None, "GET", "/health").json()["federation_status"] == "setup"
    document = api.request(None, "GET", "/openapi.json").json()
    assert "/v1/rounds/{round_index}/uploads/{institution}" in document["paths"]


def test_key_setup_gives_each_member_only_its_own_sealed_key(served):
    hub, api, fed = served
    keys = set_up(served)
    a, b = fed.identities["a"], fed.identities["b"]
    mine = api.request(b, "GET", "/v1/keys/sealed/b")
    assert mine.status_code == 200 and mine.content == keys.sealed["b"]
    assert api.request(b, "GET", "/v1/keys/sealed/a").status_code == 403
    context = api.request(a, "GET", "/v1/keys/public-context")
    assert context.content == keys.secret.public_context_bytes()
    view = api.request(a, "GET", "/v1/federation").json()
    assert view["status"] == "running" and view["key_id"] == keys.secret.key_id and view["rounds"][0]["index"] == 1


def test_only_the_key_holder_publishes_and_never_a_secret_key(served):
    hub, api, fed = served
    keys = Keys(fed)
    before = snapshot(hub)
    assert api.request(fed.identities["b"], "PUT", "/v1/keys", json_body=keys.request()).status_code == 403
    secret_as_public = base64.b64encode(keys.secret.to_bytes()).decode()
    reply = api.request(fed.identities["a"], "PUT", "/v1/keys", json_body=keys.request(public_context=secret_as_public))
    assert reply.status_code == 422 and "secret key" in reply.json()["detail"]
    partial = keys.request(sealed={"a": keys.request()["sealed"]["a"]})
    assert api.request(fed.identities["a"], "PUT", "/v1/keys", json_body=partial).status_code == 400
    swapped = keys.request(sealed={**keys.request()["sealed"], "b": keys.request()["sealed"]["c"]})
    assert api.request(fed.identities["a"], "PUT", "/v1/keys", json_body=swapped).status_code == 422
    assert snapshot(hub) == before


def test_round_sums_when_everyone_answered_and_receipts_verify(served, tmp_path):
    hub, api, fed = served
    keys = set_up(served)
    coordinator_key = unb64(api.request(fed.identities["a"], "GET", "/v1/federation").json()
                            ["coordinator_signing_key"], "key", 32)
    envelopes = {i: keys.envelope(np.full(8, float(n + 1)), weight=10.0) for n, i in enumerate(fed.identities)}
    for i in ("a", "b"):
        reply = upload(api, fed.identities[i], envelopes[i])
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["envelope_sha256"] == sha256(envelopes[i]) and body["round"] == 1
        receipt = Receipt.from_dict({k: v for k, v in body.items() if k not in ("version", "size_bytes")})
        assert receipt.spend == declared_spend(fed.policy)  # what the upload declared is what is signed
        assert PublicIdentity(coordinator_key, b"").verify(unb64(body["signature"], "sig"), receipt.message())
    decline = api.request(fed.identities["c"], "POST", "/v1/rounds/1/declines/c", json_body={"reason": "budget"})
    assert decline.status_code == 200
    wait_until(lambda: hub.state.rounds[0].status == "unmasking")
    api.reveal_round(fed.identities, 1, tmp_path / "reveals")
    wait_until(lambda: hub.state.rounds[0].status in ("summed", "closed"))
    total = api.request(fed.identities["c"], "GET", "/v1/rounds/1/sum")
    result = decrypt_sum(keys.secret, total.content, LAYOUT)
    assert result.count == 2 and np.allclose(result.average, 1.5)
    view = api.request(fed.identities["c"], "GET", "/v1/federation").json()
    assert view["rounds"][0]["mine"] == "declined" and view["rounds"][0]["contributors"] == 2


def test_repeated_upload_is_counted_once_and_gets_the_same_receipt(served):
    hub, api, fed = served
    keys = set_up(served)
    envelope = keys.envelope(np.ones(8))
    first = upload(api, fed.identities["a"], envelope)
    second = upload(api, fed.identities["a"], envelope)
    assert first.status_code == second.status_code == 200 and first.json() == second.json()
    assert len(hub.state.current.uploads) == 1
    other = upload(api, fed.identities["a"], keys.envelope(np.zeros(8)))
    assert other.status_code == 409


@pytest.mark.parametrize("case", ["unsigned", "bad_signature", "unknown_key", "replayed", "other_identity",
                                  "claims_other", "garbled", "oversized", "wrong_key_id", "wrong_layout",
                                  "sum_as_update", "truncated", "wrong_round"])
def test_refused_uploads_leave_the_state_unchanged(served, case):
    hub, api, fed = served
    keys = set_up(served)
    a, b = fed.identities["a"], fed.identities["b"]
    good = keys.envelope(np.ones(8))
    before = snapshot(hub)
    if case == "unsigned":
        reply, expected = upload(api, None, good, institution="a"), 401
    elif case == "bad_signature":
        reply = api.request(None, "PUT", "/v1/rounds/1/uploads/a", content=good,
                            headers={**sign_request(a, "net-test", "PUT", "/v1/rounds/1/uploads/a", b"other"),
                                     "content-type": "application/octet-stream"})
        expected = 401
    elif case == "unknown_key":
        reply, expected = upload(api, Identity.generate("a"), good), 401
    elif case == "replayed":
        params, body = upload_request(fed.policy, a, good)
        target = f"/v1/rounds/1/uploads/a?{urlencode(params)}"
        headers = sign_request(a, "net-test", "PUT", target, body)
        assert api.request(None, "PUT", target, content=body, headers=headers).status_code == 200
        before = snapshot(hub)
        reply, expected = api.request(None, "PUT", target, content=body, headers=headers), 401
    elif case == "other_identity":
        reply, expected = upload(api, b, good, institution="a"), 403
    elif case == "claims_other":
        headers = sign_request(b, "net-test", "PUT", "/v1/rounds/1/uploads/a", good)
        headers["X-Confide-Institution"] = "a"
        reply, expected = api.request(None, "PUT", "/v1/rounds/1/uploads/a", content=good, headers=headers), 401
    elif case == "garbled":
        garbled = bytearray(good)
        garbled[len(garbled) // 2: len(garbled) // 2 + 64] = bytes(64)
        reply, expected = upload(api, a, bytes(garbled)), 422
    elif case == "oversized":
        reply, expected = upload(api, a, good + bytes(2_000_001)), 413
    elif case == "wrong_key_id":
        reply, expected = upload(api, a, Keys(fed).envelope(np.ones(8))), 422
    elif case == "wrong_layout":
        reply, expected = upload(api, a, keys.envelope(np.ones(8), layout="0" * 64)), 422
    elif case == "sum_as_update":
        total = sum_envelopes(keys.secret.public_context(), [good, keys.envelope(np.ones(8))])
        reply, expected = upload(api, a, total), 422
    elif case == "truncated":
        reply, expected = upload(api, a, good[:-10]), 422
    else:
        reply, expected = upload(api, a, good, round_index=2), 409
    assert reply.status_code == expected, reply.text
    assert reply.json()["version"] == 1 and reply.json()["detail"]
    assert snapshot(hub) == before


def test_upload_before_key_setup_is_refused(served):
    hub, api, fed = served
    before = snapshot(hub)
    reply = upload(api, fed.identities["a"], b"CFHE" + bytes(200))
    assert reply.status_code in (409, 422)
    assert snapshot(hub) == before


def test_a_tampered_signature_header_is_refused(served):
    hub, api, fed = served
    a = fed.identities["a"]
    headers = sign_request(a, "net-test", "GET", "/v1/federation", b"")
    headers[HEADER_SIGNATURE] = "A" * 88
    assert api.request(None, "GET", "/v1/federation", headers=headers).status_code == 401


def test_restarted_hub_resumes_the_round_without_double_counting(tmp_path, served):
    hub, api, fed = served
    keys = set_up(served)
    envelope = keys.envelope(np.ones(8))
    first = upload(api, fed.identities["a"], envelope).json()
    again = CoordinatorHub(fed.policy, tmp_path / "coordinator")
    try:
        assert again.state.current.index == 1 and list(again.state.current.uploads) == ["a"]
        params, body = upload_request(fed.policy, fed.identities["a"], envelope)
        receipt = again.upload("a", 1, envelope, time.time(), LEDGER_HEAD, declared=declared_spend(fed.policy),
                               signed=StatementClaims(tuple(params["tags"].split(",")), 1,
                                                      params["statement_signature"]), shares=body[len(envelope):])
        assert receipt.model_dump() == first and len(again.state.current.uploads) == 1
    finally:
        again.close()


def test_a_different_federation_file_cannot_take_over_a_state_directory(tmp_path, served):
    from confide.errors import BadInput

    from .conftest import make_federation

    other = make_federation(tmp_path / "other")
    with pytest.raises(BadInput, match="another federation file"):
        CoordinatorHub(other.policy, tmp_path / "coordinator")


def test_round_closes_at_its_deadline_with_quorum(served, tmp_path):
    hub, api, fed = served
    keys = set_up(served)
    for i in ("a", "b"):
        assert upload(api, fed.identities[i], keys.envelope(np.ones(8))).status_code == 200
    opened = hub.state.current
    assert hub.tick(opened.opened_at + 1) is False  # c may still answer
    hub.tick(opened.deadline_at + 1)
    assert hub.state.rounds[0].status == "unmasking" and hub.state.rounds[0].contributors == ["a", "b"]
    api.reveal_round(fed.identities, 1, tmp_path / "reveals")
    hub.tick(opened.deadline_at + 2)
    assert hub.state.rounds[0].status == "closed"
    assert hub.state.current.index == 2


def test_round_fails_at_its_deadline_below_quorum(served):
    hub, api, fed = served
    keys = set_up(served)
    assert upload(api, fed.identities["a"], keys.envelope(np.ones(8))).status_code == 200
    hub.tick(hub.state.current.deadline_at + 1)
    assert hub.state.rounds[0].status == "failed" and "min_institutions" in hub.state.rounds[0].failure
    view = api.request(fed.identities["b"], "GET", "/v1/federation").json()
    assert view["rounds"][0]["status"] == "failed" and len(view["rounds"]) == 2
    assert api.request(fed.identities["b"], "GET", "/v1/rounds/1/sum").status_code == 409


def _record_parked_long_polls(monkeypatch) -> threading.Event:
    """An event set whenever a long-poll parks to wait for a change (instead of answering)."""
    parked = threading.Event()
    wait = Changes.wait

    async def wait_and_record(self, timeout_s: float) -> None:
        parked.set()
        await wait(self, timeout_s)

    monkeypatch.setattr(Changes, "wait", wait_and_record)
    return parked


def test_long_poll_answers_at_once_when_behind(served, monkeypatch):
    hub, api, fed = served
    b = fed.identities["b"]
    parked = _record_parked_long_polls(monkeypatch)
    revision = api.request(b, "GET", "/v1/federation").json()["revision"]
    behind = api.request(b, "GET", "/v1/federation", params={"after_revision": revision - 1, "wait_s": 30})
    assert behind.status_code == 200 and behind.json()["revision"] == revision
    assert not parked.is_set()


def test_long_poll_waits_for_a_change_when_up_to_date_and_then_answers_with_it(served, monkeypatch):
    hub, api, fed = served
    keys = set_up(served)
    b = fed.identities["b"]
    parked = _record_parked_long_polls(monkeypatch)
    revision = api.request(b, "GET", "/v1/federation").json()["revision"]
    with ThreadPoolExecutor(1) as pool:
        poll = pool.submit(api.request, b, "GET", "/v1/federation",
                           params={"after_revision": revision, "wait_s": 30})
        assert parked.wait(timeout=30), "the long-poll answered instead of waiting"
        assert not poll.done()
        assert upload(api, fed.identities["a"], keys.envelope(np.ones(8))).status_code == 200
        woken = poll.result(timeout=30)
    assert woken.status_code == 200 and woken.json()["revision"] > revision
