"""The first thing every request meets: size limits, the signature headers, a timed body, the signature.

The order bounds what an unauthenticated peer can make the coordinator spend:

1. A declared Content-Length (ASCII digits only) over the path's limit: 413, nothing read.
2. On /v1, everything the headers alone can show (identity on the roster, timestamp format and
   window, nonce and signature format, see `RequestVerifier.precheck`): 401, nothing read.
3. The body is streamed and hashed as it arrives: at most `spool_memory_bytes` stay in memory, the
   rest goes to an unnamed temporary file under `spool_dir` (the kernel frees it when the request
   ends, or when the process dies). A chunk that does not arrive within `body_idle_timeout_s`, or
   a body still incomplete `body_timeout_s` after it started, gets 408; a body over the limit 413.
4. The signature is verified over sha256(body); only then does route code run, and it reads the
   body back from the spool.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from confide.platform.service.messages import ErrorReply
from confide.platform.service.signing import RequestVerifier, Unauthorized

log = logging.getLogger("confide.service.gate")

SCOPE_KEY = "confide.institution"
_LENGTH = re.compile(r"[0-9]{1,19}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BodyTimeouts:
    """How long a request body may take: per chunk (`idle_s`), and in all (`idle_s` + size / rate)."""

    idle_s: float = 30.0
    min_rate_bytes_per_s: float = 64 * 1024

    def total_s(self, limit_bytes: int) -> float:
        return self.idle_s + limit_bytes / self.min_rate_bytes_per_s


class BodyRefused(Exception):
    """The body cannot be accepted: too large (413), too slow (408), or the peer left (status 0)."""

    def __init__(self, status: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail = status, kind, detail


class RequestGate:
    """ASGI middleware: limits, signature headers, streamed and timed body, signature (see module doc).

    `limit_for(method, path)` is the largest body accepted there, in bytes.
    """

    def __init__(self, app, limit_for: Callable[[str, str], int], verifier: RequestVerifier, spool_dir: Path,
                 protected: str = "/v1/", timeouts: BodyTimeouts = BodyTimeouts(),
                 spool_memory_bytes: int = 1 << 20):
        self.app = app
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
        if declared is not None:
            if not _LENGTH.fullmatch(declared):
                await _refuse(send, 400, "bad_request", "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _refuse(send, 413, "too_large", f"body of {int(declared)} bytes exceeds the limit of {limit}")
                return
        protected = path.startswith(self.protected)
        if protected:
            try:
                self.verifier.precheck(headers)
            except Unauthorized as exc:
                await _refuse(send, 401, "unauthorized", exc.reply)
                return
        spool = tempfile.SpooledTemporaryFile(max_size=self.spool_memory_bytes, dir=self.spool_dir)
        try:
            try:
                digest, size = await self._read_body(receive, spool, limit)
            except BodyRefused as exc:
                log.info("%s %s from %s: %s", scope["method"], path, _peer(scope), exc.detail)
                if exc.status:
                    await _refuse(send, exc.status, exc.kind, exc.detail)
                return
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

    async def _read_body(self, receive, spool, limit: int) -> tuple[str, int]:
        """Stream the body into `spool`, hashing it; return (sha256 hex, size). Raises BodyRefused."""
        hasher, total = hashlib.sha256(), 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeouts.total_s(limit)
        while True:
            wait_s = min(self.timeouts.idle_s, deadline - loop.time())
            try:
                message = await asyncio.wait_for(receive(), max(wait_s, 0.0))
            except asyncio.TimeoutError:
                raise BodyRefused(408, "timeout", f"the request body stalled: nothing for {wait_s:.0f} s, or "
                                  "slower than the coordinator accepts") from None
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


def _peer(scope) -> str:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown peer"


async def _refuse(send, status: int, kind: str, detail: str) -> None:
    payload = json.dumps(ErrorReply(error=kind, detail=detail).model_dump()).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})
