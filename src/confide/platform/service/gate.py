"""The first thing every request meets: a size limit, then (on /v1) the signature check.

Both happen before FastAPI parses anything, so an unsigned or oversized request is refused with
401 or 413 whatever its body holds, and no route code runs for it. The authenticated institution
is handed to the routes in the ASGI scope.
"""

from __future__ import annotations

import json
from typing import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers

from confide.platform.service.messages import ErrorReply
from confide.platform.service.signing import RequestVerifier, Unauthorized

SCOPE_KEY = "confide.institution"


class RequestGate:
    """ASGI middleware: refuse bodies over `limit_for(path)` bytes (413) and unsigned /v1 requests (401).

    A declared Content-Length over the limit is refused before reading; a streamed body as soon as
    it crosses the limit. An accepted body is handed on unchanged.
    """

    def __init__(self, app, limit_for: Callable[[str], int], verifier: RequestVerifier, protected: str = "/v1/"):
        self.app = app
        self.limit_for = limit_for
        self.verifier = verifier
        self.protected = protected

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        limit = self.limit_for(path)
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await _refuse(send, 400, "bad_request", "Content-Length is not a number")
                return
            if int(declared) > limit:
                await _refuse(send, 413, "too_large", f"body of {int(declared)} bytes exceeds the limit of {limit}")
                return
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                await _refuse(send, 413, "too_large", f"body exceeds the limit of {limit} bytes")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if path.startswith(self.protected):
            target = (scope.get("raw_path") or path.encode()).decode("latin-1")
            if scope.get("query_string"):
                target += "?" + scope["query_string"].decode("latin-1")
            try:
                scope[SCOPE_KEY] = await run_in_threadpool(
                    self.verifier.verify, scope["method"], target, body, headers)
            except Unauthorized as exc:
                await _refuse(send, 401, "unauthorized", str(exc))
                return
        delivered = False

        async def replay():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _refuse(send, status: int, kind: str, detail: str) -> None:
    payload = json.dumps(ErrorReply(error=kind, detail=detail).model_dump()).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
    await send({"type": "http.response.body", "body": payload})
