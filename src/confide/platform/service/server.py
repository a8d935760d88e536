"""Running the coordinator service: `confide coordinator FEDERATION --state DIR`.

TLS is on unless `insecure` is set, which is allowed on a loopback address only. Without a
certificate the coordinator makes a self-signed one under `<state>/tls/` (kept across restarts)
and prints its SHA-256 fingerprint for institutions to pin.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import uvicorn

from confide.platform.service.app import create_app
from confide.platform.service.hub import DEFAULT_MAX_UPLOAD_BYTES, CoordinatorHub
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


def build_server(federation_path: Path, state_dir: Path, settings: CoordinatorSettings,
                 say: Callable[[str], None] = print) -> tuple[uvicorn.Server, CoordinatorHub]:
    """Load the federation, open (or resume) its state, and configure uvicorn. Raises BadInput."""
    if settings.insecure and not is_loopback(settings.host):
        raise TlsError(f"--insecure (plain HTTP) is allowed on a loopback address only, not {settings.host}",
                       "drop --insecure: TLS with a self-signed certificate is the default")
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
    config = uvicorn.Config(
        create_app(hub, tick_s=settings.tick_s), host=settings.host, port=settings.port, log_level="warning",
        timeout_graceful_shutdown=3, **ssl,
    )
    return uvicorn.Server(config), hub


def run_coordinator(federation_path: Path, state_dir: Path, settings: CoordinatorSettings = CoordinatorSettings(),
                    say: Callable[[str], None] = print) -> None:
    """Serve the federation until interrupted (SIGINT/SIGTERM). Restarting on the same state resumes it."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
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
