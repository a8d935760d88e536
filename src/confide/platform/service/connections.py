"""Connection-level limits of the coordinator's HTTP server, below the ASGI app.

uvicorn closes a keep-alive connection that stays idle after a response, but not one that never
finishes sending its request headers, and it has no cap on open connections. `guarded_h11` adds
both to its h11 protocol:

- a connection must deliver complete request headers within `header_timeout_s` of opening (or of
  its previous response); otherwise it is dropped;
- at most `max_connections` are open; a new one beyond that evicts a connection that is already
  closing (a TLS close waits for the peer's reply), else the one that has waited longest for
  headers, else the one reading the oldest body not yet authenticated (`gate.UnverifiedBodies`),
  or is closed at once if every open connection is busy with an authenticated request.

Evicted and timed-out connections are aborted, not closed politely: a polite TLS close keeps the
socket until the peer answers or 30 s pass, and such sockets would use up the file descriptors.

So neither idle connections nor slow unauthenticated bodies can lock members out: the newest
member's connection displaces the oldest idle one, or the oldest forged upload. `ThrottledLog`
keeps a flood of identical warnings (refused requests, accept errors) from filling the disk: one
line per kind and interval, a count of the rest, no tracebacks.
"""

from __future__ import annotations

import logging
import time
from typing import Iterable

from uvicorn.protocols.http.h11_impl import H11Protocol

from confide.platform.service.gate import UnverifiedBodies

log = logging.getLogger("confide.service.connections")


def guarded_h11(header_timeout_s: float, max_connections: int,
                unverified: UnverifiedBodies | None = None) -> type[H11Protocol]:
    """An h11 protocol class with a header timeout and a connection cap (see module doc).

    `unverified` is the app's gate's set of bodies being read unauthenticated (None: never evict those).
    """

    class GuardedH11Protocol(H11Protocol):
        awaiting_since: float | None = None
        _header_timer = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections and not self._make_room():
                log.warning("refused a connection: %d open, all busy (limit %d)", len(self.connections) - 1,
                            max_connections)
                transport.close()
                return
            self._await_headers()

        def data_received(self, data: bytes) -> None:
            if self.awaiting_since is None and (self.cycle is None or self.cycle.response_complete):
                self._await_headers()  # a keep-alive connection starts its next request
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:
                self._headers_arrived()

        def connection_lost(self, exc) -> None:
            self._headers_arrived()
            super().connection_lost(exc)

        def _await_headers(self) -> None:
            self._headers_arrived()
            self.awaiting_since = time.monotonic()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _headers_arrived(self) -> None:
            self.awaiting_since = None
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.awaiting_since is not None and not self.transport.is_closing():
                log.info("closed a connection that sent no complete request headers in %g s", header_timeout_s)
                self.awaiting_since = None
                self.transport.abort()  # no TLS goodbye: a silent peer would hold the socket 30 s more

        def _make_room(self) -> bool:
            others = [c for c in self.connections if c is not self]
            # A closing TLS connection waits up to 30 s for the peer's close_notify: drop those first.
            closing = [c for c in others if c.transport.is_closing()]
            if closing:
                closing[0].transport.abort()
                return True
            waiting = [c for c in others if getattr(c, "awaiting_since", None) is not None]
            if waiting:
                oldest = min(waiting, key=lambda c: c.awaiting_since)
                log.info("connection limit %d reached: closed the connection idle longest", max_connections)
                oldest._headers_arrived()
                oldest.transport.abort()
                return True
            return self._evict_unverified(others)

        def _evict_unverified(self, others) -> bool:
            """Abort the connection reading the oldest unauthenticated body; False if there is none."""
            if unverified is None:
                return False
            by_peer = {c.client: c for c in others if c.client is not None}
            for body in unverified.oldest_first():
                victim = by_peer.get(body.peer)
                if victim is not None:
                    unverified.evict(body)
                    log.info("connection limit %d reached: closed the connection with the oldest unauthenticated "
                             "body (claiming %r)", max_connections, body.institution)
                    victim.transport.abort()
                    return True
            return False

    return GuardedH11Protocol


class ThrottledLog(logging.Filter):
    """Lets through one record per (logger, message template) every `interval_s`; counts the rest.

    The next record let through says how many were suppressed. Tracebacks are dropped (the
    exception's one-line text is kept): a peer that provokes errors must not be able to fill the log.
    """

    def __init__(self, interval_s: float = 10.0, clock=time.monotonic) -> None:
        super().__init__()
        self.interval_s = interval_s
        self.clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._suppressed: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        if record.exc_info and record.exc_info[1] is not None:
            text = str(record.exc_info[1]).replace("%", "%%")
            record.msg = f"{record.msg} ({type(record.exc_info[1]).__name__}: {text})"
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        skipped = self._suppressed.pop(key, 0)
        if skipped:
            record.msg = f"{record.msg} [{skipped} similar message(s) suppressed in the last {self.interval_s:g} s]"
        if len(self._last) > 10_000:  # distinct templates are few; never let the table grow without end
            self._last.clear()
        return True


#: Loggers that a remote peer can make write: uvicorn's (invalid requests, limits), asyncio's (accept
#: errors such as running out of file descriptors) and ours for refused requests and connections.
PEER_DRIVEN_LOGGERS = ("uvicorn.error", "asyncio", "confide.service.auth", "confide.service.gate",
                       "confide.service.connections")


def attach(filter_: logging.Filter, names: Iterable[str] = PEER_DRIVEN_LOGGERS) -> None:
    for name in names:
        logging.getLogger(name).addFilter(filter_)


def detach(filter_: logging.Filter, names: Iterable[str] = PEER_DRIVEN_LOGGERS) -> None:
    for name in names:
        logging.getLogger(name).removeFilter(filter_)
