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
from confide.platform.service.app import create_app
from confide.platform.service.gate import BodyTimeouts, RequestGate
from confide.platform.service.hub import CoordinatorHub
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
def gate(tmp_path, federation):
    store = NonceStore(tmp_path / "nonces.sqlite", keep_s=600)
    verifier = RequestVerifier("net-test", roster_identities(federation.policy.roster), store, window_s=300)
    app = Echo()
    yield RequestGate(app, lambda _m, _p: 1 << 20, verifier, tmp_path / "spool",
                      timeouts=BodyTimeouts(idle_s=0.2), spool_memory_bytes=1024), app
    store.close()


def call(gate, path: str, headers: dict, chunks: list[bytes], stall: bool = False) -> tuple[dict, int]:
    """Run one request through the gate; returns (reply, how many body chunks the gate asked for).

    The body's Content-Length is the chunks' total unless `headers` give one (or None: no header).
    """
    headers = {"content-length": str(sum(map(len, chunks))), **headers}
    scope = {"type": "http", "method": "PUT", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(k.lower().encode("latin-1"), v if isinstance(v, bytes) else v.encode("latin-1"))
                         for k, v in headers.items() if v is not None]}
    pulled, sent = 0, []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks) or stall}
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    asyncio.run(gate(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return {"status": start["status"], "headers": dict(start["headers"]), "body": json.loads(body)}, pulled


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
