"""The first thing every request meets: size limits, the signature headers, a timed body, the signature.

The order bounds what an unauthenticated peer can make the coordinator spend. What is checked when:

1. Headers only, nothing read: a body must declare its length (a PUT or POST without Content-Length,
   or any chunked body, gets 411); a Content-Length that is not ASCII digits gets 400, one over the
   path's limit 413.
2. Headers only, on /v1: everything short of the signature (identity on the roster, timestamp format
   and window, nonce and signature format, see `RequestVerifier.precheck`): 401. The signature itself
   covers sha256(body) (see `signing`), so it cannot be checked before the body has arrived; the
   claimed roster id is all the gate knows of the sender until then.
3. Admission (`UnverifiedBodies`): a body with a non-zero declared length joins the bodies being read
   unauthenticated. At most `per_institution` of them per claimed id, and at most
   `spool_budget_bytes` declared in all; a new body over either evicts the oldest in its way (503,
   `connection: close`), so slow forged bodies can never keep a member's request out, and the disk
   they hold is bounded. The connection cap (see `connections`) evicts the oldest of them too.
4. The body is streamed and hashed as it arrives: at most `spool_memory_bytes` stay in memory, the
   rest goes to an unnamed temporary file under `spool_dir` (the kernel frees it when the request
   ends, or when the process dies). A chunk that does not arrive within `idle_s`, or a body still
   incomplete `idle_s + declared length / min_rate_bytes_per_s` after it started, gets 408.
5. Once read, the body leaves the unauthenticated set and the signature is verified over its
   sha256; only then does route code run, reading the body back from the spool.

Every refusal is sent with `connection: close`, so a peer cannot keep streaming into a connection
whose request was already refused. The authenticated institution is handed to the routes in the
ASGI scope.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from confide.platform.messages import ErrorReply
from confide.platform.service.signing import RequestVerifier, Unauthorized

log = logging.getLogger("confide.service.gate")

SCOPE_KEY = "confide.institution"
_LENGTH = re.compile(r"[0-9]{1,19}")
_CHUNK = 1 << 20
#: Methods whose requests carry a body in this API: they must declare its length.
_BODY_METHODS = frozenset({"PUT", "POST", "PATCH"})


@dataclass(frozen=True)
class BodyTimeouts:
    """How long a request body may take: per chunk (`idle_s`), and in all (`idle_s` + declared size / rate)."""

    idle_s: float = 30.0
    min_rate_bytes_per_s: float = 64 * 1024

    def total_s(self, declared_bytes: int) -> float:
        """Seconds a body of `declared_bytes` (its Content-Length, not the route's limit) may take in all."""
        return self.idle_s + declared_bytes / self.min_rate_bytes_per_s


class BodyRefused(Exception):
    """The body cannot be accepted: too large (413), too slow (408), or the peer left (status 0)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


@dataclass(eq=False)
class UnverifiedBody:
    """A request body being read before its signature can be checked.

    `institution` is the roster id the request claims (None on paths that take no signature),
    `declared_bytes` its Content-Length, `peer` the connection's (host, port) as the server names it.
    """

    institution: str | None
    declared_bytes: int
    peer: tuple | None = None
    evicted: asyncio.Event = field(default_factory=asyncio.Event)


class UnverifiedBodies:
    """The bodies being read unauthenticated, oldest first, and the rule for admitting one more.

    At most `per_institution` per claimed id (unsigned paths count as one id), and at most
    `spool_budget_bytes` of declared length in all (memory and spool file together). A new body
    never waits for room and is never refused for lack of it (unless it alone is over the budget):
    the oldest body of its claimed id, then the oldest of all, are evicted until it fits. A forged
    request can delay a member's only by being one of the `per_institution` newer ones claiming the
    same id (or one of those filling the budget) while the member's body is still arriving.
    `peak_bodies` and `peak_bytes` are the most ever held at once; `evictions` counts evicted bodies.
    """

    def __init__(self, per_institution: int = 4, spool_budget_bytes: int = 1 << 30) -> None:
        if per_institution < 1 or spool_budget_bytes < 1:
            raise ValueError("per_institution and spool_budget_bytes must be positive")
        self.per_institution = per_institution
        self.spool_budget_bytes = spool_budget_bytes
        self._bodies: list[UnverifiedBody] = []
        self.held_bytes = 0
        self.peak_bodies = self.peak_bytes = self.evictions = 0

    def __len__(self) -> int:
        return len(self._bodies)

    def oldest_first(self) -> list[UnverifiedBody]:
        return list(self._bodies)

    def admit(self, body: UnverifiedBody) -> list[UnverifiedBody]:
        """Add `body`, evicting what stands in its way (see class doc); return the evicted bodies, oldest first.

        Raises BodyRefused (413) for a body whose declared length alone is over the budget.
        """
        if body.declared_bytes > self.spool_budget_bytes:
            raise BodyRefused(413, "too_large", f"body of {body.declared_bytes} bytes exceeds the "
                              f"{self.spool_budget_bytes} bytes held for unauthenticated bodies")
        evicted = []
        same = [b for b in self._bodies if b.institution == body.institution]
        for old in same[:max(0, len(same) - self.per_institution + 1)]:
            evicted.append(self.evict(old))
        while self.held_bytes + body.declared_bytes > self.spool_budget_bytes:
            evicted.append(self.evict(self._bodies[0]))
        self._bodies.append(body)
        self.held_bytes += body.declared_bytes
        self.peak_bodies = max(self.peak_bodies, len(self._bodies))
        self.peak_bytes = max(self.peak_bytes, self.held_bytes)
        return evicted

    def evict(self, body: UnverifiedBody) -> UnverifiedBody:
        """Remove `body` and tell its reader to stop (`body.evicted`); return it."""
        self.release(body)
        body.evicted.set()
        self.evictions += 1
        return body

    def release(self, body: UnverifiedBody) -> None:
        """Remove `body` (authenticated, refused or gone); no-op if it is no longer held."""
        if body in self._bodies:
            self._bodies.remove(body)
            self.held_bytes -= body.declared_bytes


class RequestGate:
    """ASGI middleware: limits, signature headers, streamed and timed body, signature (see module doc).

    `limit_for(method, path)` is the largest body accepted there, in bytes; `unverified` holds the
    bodies being read (shared with the connection cap; a fresh one with default limits if None).
    """

    def __init__(self, app, limit_for: Callable[[str, str], int], verifier: RequestVerifier, spool_dir: Path,
                 protected: str = "/v1/", timeouts: BodyTimeouts = BodyTimeouts(),
                 spool_memory_bytes: int = 1 << 20, unverified: UnverifiedBodies | None = None):
        self.app = app
        self.unverified = unverified if unverified is not None else UnverifiedBodies()
        self.limit_for = limit_for
        self.verifier = verifier
        self.protected = protected
        self.timeouts = timeouts
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.spool_memory_bytes = spool_memory_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(scope["method"], path)
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is None:
            if scope["method"] in _BODY_METHODS or "transfer-encoding" in headers:
                await _refuse(send, 411, "length_required", f"{scope['method']} {path} needs a Content-Length "
                              "header: send the body with its length, not chunked")
                return
            declared = "0"
        if not _LENGTH.fullmatch(declared):
            await _refuse(send, 400, "bad_request", "Content-Length is not a number")
            return
        declared_bytes = int(declared)
        if declared_bytes > limit:
            await _refuse(send, 413, "too_large", f"body of {declared_bytes} bytes exceeds the limit of {limit}")
            return
        protected = path.startswith(self.protected)
        claimed = None
        if protected:
            try:
                claimed = self.verifier.precheck(headers)
            except Unauthorized as exc:
                await _refuse(send, 401, "unauthorized", exc.reply)
                return
        body = UnverifiedBody(claimed, declared_bytes, scope.get("client"))
        spool = tempfile.SpooledTemporaryFile(max_size=self.spool_memory_bytes, dir=self.spool_dir)
        try:
            try:
                if declared_bytes:
                    for old in self.unverified.admit(body):
                        log.info("evicted an unauthenticated body claiming %r from %s", old.institution,
                                 _peer(old.peer))
                digest, size = await self._read_body(receive, spool, limit, body)
            except BodyRefused as exc:
                log.info("%s %s from %s: %s", scope["method"], path, _peer(scope.get("client")), exc.detail)
                if exc.status:
                    await _refuse(send, exc.status, exc.kind, exc.detail)
                return
            finally:
                self.unverified.release(body)
            if protected:
                target = (scope.get("raw_path") or path.encode()).decode("latin-1")
                if scope.get("query_string"):
                    target += "?" + scope["query_string"].decode("latin-1")
                try:
                    scope[SCOPE_KEY] = await run_in_threadpool(
                        self.verifier.verify_digest, scope["method"], target, digest, headers)
                except Unauthorized as exc:
                    await _refuse(send, 401, "unauthorized", exc.reply)
                    return
            spool.seek(0)
            await self.app(scope, _replay(spool, size, receive), send)
        finally:
            spool.close()

    async def _read_body(self, receive, spool, limit: int, body: UnverifiedBody) -> tuple[str, int]:
        """Stream the body into `spool`, hashing it; return (sha256 hex, size).

        Raises BodyRefused: 408 when it is slower than `timeouts` allow for its declared length, 503 when
        `body` is evicted, 413 over `limit`, status 0 when the peer left.
        """
        hasher, total = hashlib.sha256(), 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s(body.declared_bytes)
        while True:
            wait_s = max(0.0, min(self.timeouts.idle_s, deadline - loop.time()))
            receiving = asyncio.ensure_future(receive())
            evicted = asyncio.ensure_future(body.evicted.wait())
            await asyncio.wait((receiving, evicted), timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
            evicted.cancel()
            if body.evicted.is_set():
                receiving.cancel()
                raise BodyRefused(503, "busy", "the coordinator holds its limit of unauthenticated request bodies "
                                  "and this was the oldest in the way of a newer one; retry")
            if not receiving.done():
                receiving.cancel()
                raise BodyRefused(408, "timeout", f"the request body stalled: nothing for {wait_s:.0f} s, or "
                                  "slower than the coordinator accepts for its declared length")
            message = receiving.result()
            if message["type"] == "http.disconnect":
                raise BodyRefused(0, "gone", "the client disconnected")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise BodyRefused(413, "too_large", f"body exceeds the limit of {limit} bytes")
            if chunk:
                hasher.update(chunk)
                spool.write(chunk)
            if not message.get("more_body", False):
                return hasher.hexdigest(), total


def _replay(spool, size: int, receive):
    """An ASGI `receive` that hands the spooled body on in chunks, then defers to the real one."""
    remaining = size
    started = False

    async def replay():
        nonlocal remaining, started
        if remaining > 0 or not started:
            started = True
            chunk = spool.read(min(_CHUNK, remaining)) if remaining > 0 else b""
            remaining -= len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": remaining > 0}
        return await receive()

    return replay


def _peer(client) -> str:
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


async def _refuse(send, status: int, kind: str, detail: str) -> None:
    payload = json.dumps(ErrorReply(error=kind, detail=detail).model_dump()).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
