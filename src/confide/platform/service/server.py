"""Running the coordinator service: `confide coordinator FEDERATION --state DIR`.

TLS is on unless `insecure` is set, which is allowed on a loopback address only. Without a
certificate the coordinator makes a self-signed one under `<state>/tls/` (kept across restarts)
and prints its SHA-256 fingerprint for institutions to pin.

What the server itself bounds (see `connections` and `gate`): request headers must arrive within
`header_timeout_s`, idle keep-alive connections close after `keep_alive_s`, at most
`max_connections` are open (idle ones are evicted first, then the oldest unauthenticated body),
headers are at most `max_header_bytes`, and request bodies have per-route size limits, must declare
their length, get timeouts from that length and are read only after the signature headers passed;
at most `unverified_bodies_per_institution` per claimed id and `unverified_spool_budget_bytes` in
all are read unauthenticated at once. Repeated peer-driven warnings are throttled.
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import uvicorn

from confide.errors import BadInput
from confide.platform.hub import DEFAULT_MAX_UPLOAD_BYTES, CoordinatorHub
from confide.platform.service.app import create_app
from confide.platform.service.connections import ThrottledLog, attach, detach, guarded_h11
from confide.platform.service.gate import BodyTimeouts, UnverifiedBodies
from confide.platform.service.tls import TlsError, is_loopback, server_certificate
from confide.policies import load_federation

DEFAULT_PORT = 8443


@dataclass(frozen=True)
class CoordinatorSettings:
    """How to serve: address, TLS files (None: self-signed in the state dir), limits and tick period."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None
    insecure: bool = False
    tick_s: float = 1.0
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    header_timeout_s: float = 10.0
    keep_alive_s: float = 5.0
    body_idle_timeout_s: float = 30.0
    body_min_rate_bytes_per_s: float = 64 * 1024
    max_connections: int = 1000
    unverified_bodies_per_institution: int = 4
    unverified_spool_budget_bytes: int = 1 << 30
    max_header_bytes: int = 16 * 1024
    log_interval_s: float = 10.0


class CoordinatorServer(uvicorn.Server):
    """uvicorn's server with peer-driven log lines throttled while it runs; `unverified` is what its
    gate and connection cap hold of the bodies being read unauthenticated."""

    def __init__(self, config: uvicorn.Config, log_interval_s: float, unverified: UnverifiedBodies) -> None:
        super().__init__(config)
        self.log_filter = ThrottledLog(log_interval_s)
        self.unverified = unverified

    async def serve(self, sockets=None) -> None:
        attach(self.log_filter)
        try:
            await super().serve(sockets)
        finally:
            detach(self.log_filter)


def connection_limit(wanted: int, reserve: int = 64) -> int:
    """`wanted`, lowered so open connections leave `reserve` file descriptors for files and SQLite."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(8, min(wanted, soft - reserve))


def raise_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            return soft
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def build_server(federation_path: Path, state_dir: Path, settings: CoordinatorSettings,
                 say: Callable[[str], None] = print) -> tuple[CoordinatorServer, CoordinatorHub]:
    """Load the federation, open (or resume) its state, and configure uvicorn. Raises BadInput."""
    if settings.insecure and not is_loopback(settings.host):
        raise TlsError(f"--insecure (plain HTTP) is allowed on a loopback address only, not {settings.host}",
                       "drop --insecure: TLS with a self-signed certificate is the default")
    if settings.unverified_spool_budget_bytes < settings.max_upload_bytes:
        raise BadInput(f"unverified_spool_budget_bytes ({settings.unverified_spool_budget_bytes}) is below "
                       f"max_upload_bytes ({settings.max_upload_bytes})",
                       "give unauthenticated bodies room for at least one upload of the largest size")
    policy = load_federation(federation_path)
    hub = CoordinatorHub(policy, state_dir, max_upload_bytes=settings.max_upload_bytes)
    ssl: dict = {}
    scheme = "http"
    if not settings.insecure:
        cert = server_certificate(state_dir, settings.host, settings.tls_cert, settings.tls_key)
        ssl = {"ssl_certfile": str(cert.cert_path), "ssl_keyfile": str(cert.key_path)}
        scheme = "https"
        say(f"TLS certificate SHA-256 fingerprint (institutions pass it as --pin): {cert.fingerprint}")
    state = hub.state
    say(f"federation {state.federation_id}: {state.status}, round {state.current.index if state.current else 0}"
        f" of {state.total_rounds}; serving {scheme}://{settings.host}:{settings.port}")
    timeouts = BodyTimeouts(settings.body_idle_timeout_s, settings.body_min_rate_bytes_per_s)
    unverified = UnverifiedBodies(settings.unverified_bodies_per_institution, settings.unverified_spool_budget_bytes)
    config = uvicorn.Config(
        create_app(hub, tick_s=settings.tick_s, body_timeouts=timeouts, unverified=unverified),
        host=settings.host, port=settings.port,
        log_level="warning", timeout_graceful_shutdown=3, timeout_keep_alive=settings.keep_alive_s,
        http=guarded_h11(settings.header_timeout_s, connection_limit(settings.max_connections), unverified),
        h11_max_incomplete_event_size=settings.max_header_bytes, server_header=False, **ssl,
    )
    return CoordinatorServer(config, settings.log_interval_s, unverified), hub


def run_coordinator(federation_path: Path, state_dir: Path, settings: CoordinatorSettings = CoordinatorSettings(),
                    say: Callable[[str], None] = print) -> None:
    """Serve the federation until interrupted (SIGINT/SIGTERM). Restarting on the same state resumes it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    raise_file_limit()
    server, hub = build_server(federation_path, state_dir, settings, say)
    try:
        server.run()
    finally:
        hub.close()


class ServerThread:
    """A coordinator served from a background thread (tests, embedding); `stop()` shuts it down."""

    def __init__(self, server: uvicorn.Server, hub: CoordinatorHub) -> None:
        self.server, self.hub = server, hub
        self.thread = threading.Thread(target=server.run, daemon=True)

    def start(self, timeout_s: float = 20.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the coordinator did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.hub.close()
