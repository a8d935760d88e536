"""The request gate in process: what is refused before any body is read, streamed bodies, timeouts,
uniform 401s, the 500 handler's log, and temporary files left by crashed writes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from confide.identity import Identity
from confide.platform.hub import CoordinatorHub
from confide.platform.service.app import create_app
from confide.platform.service.gate import BodyRefused, BodyTimeouts, RequestGate, UnverifiedBodies, UnverifiedBody
from confide.platform.service.signing import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NOT_AUTHENTICATED,
    NonceStore,
    RequestVerifier,
    roster_identities,
    sign_request,
)

from .conftest import SignedClient


class Echo:
    """An ASGI app that replies with the SHA-256 and size of the body it read, and who sent it."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += 1
        hasher, size = hashlib.sha256(), 0
        while True:
            message = await receive()
            hasher.update(message.get("body", b""))
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = json.dumps({"sha256": hasher.hexdigest(), "size": size,
                           "who": scope.get("confide.institution")}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture
def make_gate(tmp_path, federation):
    """`make_gate(timeouts, unverified)`: a gate over an Echo app (body limit 1 MiB, 1 KiB kept in memory)."""
    store = NonceStore(tmp_path / "nonces.sqlite", keep_s=600)
    verifier = RequestVerifier("net-test", roster_identities(federation.policy.roster), store, window_s=300)

    def make(timeouts: BodyTimeouts = BodyTimeouts(idle_s=0.2), unverified: UnverifiedBodies | None = None):
        app = Echo()
        return RequestGate(app, lambda _m, _p: 1 << 20, verifier, tmp_path / "spool", timeouts=timeouts,
                           spool_memory_bytes=1024, unverified=unverified), app

    yield make
    store.close()


@pytest.fixture
def gate(make_gate):
    return make_gate()


async def through(gate, path: str, headers: dict, chunks: list[bytes], stall: asyncio.Event | bool = False,
                  method: str = "PUT", trickle_s: float = 0.0, max_chunks: int = 0) -> tuple[dict | None, int]:
    """One request through the gate; returns (reply or None if none was sent, how many chunks the gate pulled).

    The body's Content-Length is the chunks' total unless `headers` give one (or None: no header). With
    `stall`, the body never ends: the peer goes quiet (until the event is set, then leaves). With
    `trickle_s`, an empty chunk every `trickle_s` after the given ones, at most `max_chunks` in all.
    """
    headers = {"content-length": str(sum(map(len, chunks))), **headers}
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.lower().encode("latin-1"), v if isinstance(v, bytes) else v.encode("latin-1"))
                         for k, v in headers.items() if v is not None]}
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1],
                    "more_body": pulled < len(chunks) or bool(stall) or bool(trickle_s)}
        if trickle_s and pulled < max_chunks:
            pulled += 1
            await asyncio.sleep(trickle_s)
            return {"type": "http.request", "body": b"", "more_body": True}
        if isinstance(stall, asyncio.Event):
            await stall.wait()
        elif stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await gate(scope, receive, send)
    start = next((m for m in sent if m["type"] == "http.response.start"), None)
    if start is None:
        return None, pulled
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": dict(start["headers"]), "body": json.loads(body)}, pulled


def call(gate, path: str, headers: dict, chunks: list[bytes], **options) -> tuple[dict | None, int]:
    """`through` on a fresh event loop."""
    return asyncio.run(through(gate, path, headers, chunks, **options))


def test_a_streamed_body_is_verified_and_handed_on_whole(gate, federation):
    middleware, app = gate
    body = bytes(range(256)) * 40  # 10 kB, over the 1 kB kept in memory
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", body)
    reply, _ = call(middleware, "/v1/things", headers, [body[:3000], body[3000:7000], body[7000:]])
    assert reply["status"] == 200
    assert reply["body"] == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body), "who": "a"}


@pytest.mark.parametrize("case", ["unsigned", "unknown_id", "stale", "bad_nonce", "non_ascii_timestamp"])
def test_requests_refused_from_their_headers_are_refused_before_any_body_is_read(gate, federation, case):
    middleware, app = gate
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", b"x" * 5000)
    if case == "unsigned":
        headers = {}
    elif case == "unknown_id":
        headers = sign_request(Identity.generate("zed"), "net-test", "PUT", "/v1/things", b"x" * 5000)
    elif case == "stale":
        headers[HEADER_TIMESTAMP] = "1000"
    elif case == "bad_nonce":
        headers["X-Confide-Nonce"] = "short\n"
    else:
        headers[HEADER_TIMESTAMP] = "\xb2" + headers[HEADER_TIMESTAMP][1:]  # '²'.isdigit() is True
    reply, pulled = call(middleware, "/v1/things", {**headers, "content-length": "5000"}, [b"x" * 5000])
    assert reply["status"] == 401 and pulled == 0 and app.calls == 0
    assert reply["headers"][b"connection"] == b"close"


def test_unknown_identity_and_wrong_signature_get_the_same_reply(gate, federation):
    middleware, _ = gate
    body = b"payload"
    unknown = sign_request(Identity.generate("zed"), "net-test", "PUT", "/v1/things", body)
    impostor = sign_request(Identity.generate("a"), "net-test", "PUT", "/v1/things", body)
    tampered = {**sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", body),
                HEADER_SIGNATURE: "A" * 86 + "=="}
    garbled = {**sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", body),
               HEADER_SIGNATURE: "not base64"}
    replies = [call(middleware, "/v1/things", headers, [body])[0] for headers in (unknown, impostor, tampered, garbled)]
    assert [r["status"] for r in replies] == [401] * 4
    assert {r["body"]["detail"] for r in replies} == {NOT_AUTHENTICATED}


@pytest.mark.parametrize("length", ["\xb2", "-1", "1e3", " 12"])
def test_a_content_length_that_is_not_ascii_digits_is_a_400(gate, federation, length):
    middleware, app = gate
    reply, pulled = call(middleware, "/v1/things", {"content-length": length}, [b"x"])
    assert reply["status"] == 400 and pulled == 0 and app.calls == 0


def test_a_declared_body_over_the_limit_is_refused_before_reading(gate, federation):
    middleware, app = gate
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", b"")
    reply, pulled = call(middleware, "/v1/things", {**headers, "content-length": str(2 << 20)}, [b"x"])
    assert reply["status"] == 413 and pulled == 0 and app.calls == 0


def test_a_body_that_grows_past_the_limit_is_refused(gate, federation):
    middleware, app = gate
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", b"")
    # A server holds the body to its Content-Length; the gate does not rely on that.
    reply, pulled = call(middleware, "/v1/things", {**headers, "content-length": "1000000"}, [bytes(600_000)] * 3)
    assert reply["status"] == 413 and pulled == 2 and app.calls == 0


def test_a_stalled_body_gets_408_and_never_reaches_the_route(gate, federation):
    middleware, app = gate
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", b"never finished")
    reply, _ = call(middleware, "/v1/things", headers, [b"never "], stall=True)
    assert reply["status"] == 408 and app.calls == 0
    assert reply["headers"][b"connection"] == b"close"


def test_a_put_without_content_length_gets_411_before_any_body_is_read(gate, federation):
    middleware, app = gate
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", b"x" * 100)
    reply, pulled = call(middleware, "/v1/things", {**headers, "content-length": None}, [b"x" * 100])
    assert reply["status"] == 411 and pulled == 0 and app.calls == 0
    assert reply["body"]["error"] == "length_required" and "Content-Length" in reply["body"]["detail"]
    assert "\n" not in reply["body"]["detail"] and reply["headers"][b"connection"] == b"close"


def test_a_chunked_body_gets_411_whatever_the_method(gate, federation):
    middleware, app = gate
    headers = {**sign_request(federation.identities["a"], "net-test", "GET", "/v1/things", b"x"),
               "content-length": None, "transfer-encoding": "chunked"}
    reply, pulled = call(middleware, "/v1/things", headers, [b"x"], method="GET")
    assert reply["status"] == 411 and pulled == 0 and app.calls == 0


def test_a_body_gets_time_for_its_declared_length_not_for_the_route_limit(make_gate, federation):
    # 100 bytes declared at 1,000 B/s: 1.1 s in all. From the route's 1 MiB limit it would be 1,049 s,
    # and this trickle (an empty chunk every 50 ms, never idle) would run out of chunks first.
    middleware, app = make_gate(BodyTimeouts(idle_s=1.0, min_rate_bytes_per_s=1000))
    headers = sign_request(federation.identities["a"], "net-test", "PUT", "/v1/things", b"x" * 100)
    reply, pulled = call(middleware, "/v1/things", {**headers, "content-length": "100"}, [b"x"], trickle_s=0.05,
                         max_chunks=400)
    assert reply is not None and reply["status"] == 408 and app.calls == 0
    assert pulled < 400 and "declared length" in reply["body"]["detail"]


def forged(institution: str, body: bytes) -> dict:
    """Headers that claim `institution` and pass every check short of the signature."""
    return sign_request(Identity.generate(institution), "net-test", "PUT", "/v1/things", body)


async def wait_held(unverified: UnverifiedBodies, institutions: list[str]) -> None:
    """Until the gate holds unauthenticated bodies claiming `institutions`, oldest first (at most 5 s)."""
    for _ in range(500):
        if [b.institution for b in unverified.oldest_first()] == institutions:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the gate never held bodies claiming {institutions}")


def test_forged_bodies_claiming_an_id_give_way_to_a_newer_request_claiming_it(make_gate, federation):
    unverified = UnverifiedBodies(per_institution=1)
    middleware, app = make_gate(BodyTimeouts(idle_s=60), unverified)
    body = b"member's body" * 100

    async def attack_then_member():
        leave = asyncio.Event()
        attacks = [asyncio.ensure_future(through(middleware, "/v1/things", forged(i, body), [body[:10]], stall=leave))
                   for i in ("a", "b")]
        await wait_held(unverified, ["a", "b"])
        member = await through(middleware, "/v1/things", sign_request(federation.identities["a"], "net-test", "PUT",
                                                                     "/v1/things", body), [body])
        held = [b.institution for b in unverified.oldest_first()]
        leave.set()
        return [await a for a in attacks], member, held

    (on_a, on_b), member, held = asyncio.run(attack_then_member())
    assert member[0]["status"] == 200 and member[0]["body"]["who"] == "a"
    assert on_a[0]["status"] == 503 and on_a[0]["body"]["error"] == "busy"
    assert on_b[0] is None and held == ["b"]  # another id's body was not touched; its peer left at the end
    assert len(unverified) == 0 and unverified.evictions == 1


def test_over_the_spool_budget_the_oldest_unauthenticated_body_is_evicted(make_gate, federation):
    unverified = UnverifiedBodies(per_institution=4, spool_budget_bytes=5000)
    middleware, app = make_gate(BodyTimeouts(idle_s=60), unverified)
    leave: asyncio.Event | None = None
    body = bytes(3000)

    def slow(institution: str):  # declares 3,000 bytes, sends 10 and goes quiet
        return through(middleware, "/v1/things", {**forged(institution, body), "content-length": "3000"},
                       [body[:10]], stall=leave)

    async def attack_then_member():
        nonlocal leave
        leave = asyncio.Event()
        first = asyncio.ensure_future(slow("a"))
        await wait_held(unverified, ["a"])
        second = asyncio.ensure_future(slow("b"))
        await wait_held(unverified, ["b"])  # 3000 + 3000 > 5000: the first gave way
        peak_after_attack = unverified.peak_bytes
        member = await through(middleware, "/v1/things", sign_request(federation.identities["c"], "net-test", "PUT",
                                                                     "/v1/things", body), [body])
        leave.set()
        return await first, await second, member, peak_after_attack

    first, second, member, peak = asyncio.run(attack_then_member())
    assert [first[0]["status"], second[0]["status"], member[0]["status"]] == [503, 503, 200]
    assert peak == 3000 and unverified.peak_bytes <= 5000 and unverified.held_bytes == 0


def test_a_body_alone_over_the_spool_budget_is_refused_before_reading(make_gate, federation):
    middleware, app = make_gate(unverified=UnverifiedBodies(spool_budget_bytes=5000))
    reply, pulled = call(middleware, "/v1/things", forged("a", bytes(6000)), [bytes(6000)])
    assert reply["status"] == 413 and pulled == 0 and app.calls == 0


def test_eviction_takes_the_oldest_body_of_the_claimed_id_then_the_oldest_of_all():
    unverified = UnverifiedBodies(per_institution=2, spool_budget_bytes=10)
    b1, a1, a2 = UnverifiedBody("b", 3), UnverifiedBody("a", 3), UnverifiedBody("a", 3)
    assert [unverified.admit(body) for body in (b1, a1, a2)] == [[], [], []]
    a3 = UnverifiedBody("a", 1)
    assert unverified.admit(a3) == [a1]  # a's oldest, though b1 is older
    c1 = UnverifiedBody("c", 6)
    assert unverified.admit(c1) == [b1]  # 3 + 3 + 1 + 6 > 10: the oldest of all
    assert unverified.oldest_first() == [a2, a3, c1] and unverified.held_bytes == 10
    assert a1.evicted.is_set() and b1.evicted.is_set() and not a2.evicted.is_set()


def test_unauthenticated_bodies_never_hold_more_than_the_spool_budget():
    unverified = UnverifiedBodies(per_institution=3, spool_budget_bytes=10_000)
    for n in range(200):
        unverified.admit(UnverifiedBody("abcde"[n % 5], (n * 7919) % 10_001))
        assert unverified.held_bytes <= 10_000
    assert unverified.peak_bytes <= 10_000 and unverified.peak_bodies <= 15 and unverified.evictions > 0
    with pytest.raises(BodyRefused) as refused:
        unverified.admit(UnverifiedBody("a", 10_001))
    assert refused.value.status == 413


def test_paths_without_a_body_route_take_only_a_small_body(served):
    hub, api, fed = served
    a = fed.identities["a"]
    for method, path in (("POST", "/v1/nothing-here"), ("GET", "/v1/federation"), ("POST", "/health")):
        reply = api.request(a, method, path, content=bytes(10_000))
        assert reply.status_code == 413, (path, reply.text)
    assert api.request(a, "PUT", "/v1/keys", content=bytes(10_000)).status_code == 422  # room for key set-ups


def test_the_500_handler_logs_the_traceback(served, caplog, monkeypatch):
    hub, api, fed = served

    def broken(_institution):
        raise RuntimeError("a bug in the view")

    monkeypatch.setattr(hub, "view_for", broken)
    with TestClient(create_app(hub), raise_server_exceptions=False) as client:
        with caplog.at_level(logging.ERROR, logger="confide.service.app"):
            reply = SignedClient(client).request(fed.identities["a"], "GET", "/v1/federation")
    assert reply.status_code == 500 and reply.json()["error"] == "internal"
    logged = [r for r in caplog.records if r.name == "confide.service.app"]
    assert logged and logged[0].exc_info and "a bug in the view" in str(logged[0].exc_info[1])
    assert "Traceback" in caplog.text


@pytest.mark.integration  # runs a subprocess for a pid that is surely dead
def test_temporary_files_of_crashed_writes_are_removed_when_the_coordinator_starts(tmp_path, federation):
    state = tmp_path / "coordinator"
    CoordinatorHub(federation.policy, state).close()
    dead_pid = int(Path("/proc/sys/kernel/pid_max").read_text()) + 1  # no process can have it
    blobs = state / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    crashed = blobs / f".upload-r1-a.bin.{dead_pid}.tmp"
    crashed.write_bytes(bytes(1000))
    in_progress = blobs / f".sum-r1.bin.{os.getpid()}.tmp"
    in_progress.write_bytes(b"being written by a live process")
    kept = blobs / "upload-r1-b.bin"
    kept.write_bytes(b"CFHE")
    CoordinatorHub(federation.policy, state).close()
    assert not crashed.exists() and in_progress.exists() and kept.exists()
