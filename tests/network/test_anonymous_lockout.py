"""The anonymous lock-out of issue 34 (row 5), bounded, against the real coordinator on loopback (TLS).

Peers who know only roster ids (the roster is not secret) open forged uploads: plausible signature
headers, a declared length, 1,000 bytes, then one byte at a time. Before the gate admitted such bodies
under limits, they filled the connection cap and members' requests failed 12 times in 15. Here the
cap is 8 and the limits per claimed id and on spool are loose enough that the connection cap is what
binds: waves of forged uploads overfill it while the open ones keep trickling, and between the waves
a member's signed requests (the federation view, and an upload that gets its receipt) are each sent
once, without retries. Everything is bounded in count and time, and nothing asserts on time.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import numpy as np
import pytest

from confide.errors import BadInput
from confide.platform.secure_sum import share_digests
from confide.platform.service.client import Backoff, CoordinatorClient
from confide.platform.service.server import CoordinatorSettings, build_server

from .conftest import LEDGER_HEAD, Keys, contribution_statement, declared_spend, mask_shares
from .test_coordinator_limits import connect, forged_headers, tls_context
from .test_tls_client import free_port, serve

pytestmark = pytest.mark.timeout(120)

MAX_CONNECTIONS = 8  # the least `connection_limit` allows
PER_INSTITUTION = 4  # three claimed ids: up to 12 bodies, more than the connections
DECLARED_BYTES = 100_000
BUDGET_BYTES = 20 * DECLARED_BYTES
WAVES, PER_WAVE = 3, 12
NO_RETRY = Backoff(give_up_after_s=0)  # a request that fails once raises


class ForgedUploads:
    """Slow forged uploads from one thread of ours: opened in waves, then fed a byte at a time."""

    def __init__(self, port: int) -> None:
        self.port, self.context = port, tls_context()
        self.sockets: list[ssl.SSLSocket] = []
        self.failed_to_open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._trickle, daemon=True)

    def open_wave(self, count: int) -> None:
        for n in range(count):
            claimed = "abc"[n % 3]
            try:
                sock = connect(self.port, self.context, timeout_s=10)
                sock.sendall(f"PUT /v1/rounds/1/uploads/{claimed} HTTP/1.1\r\nHost: c\r\nContent-Length: "
                             f"{DECLARED_BYTES}\r\n{forged_headers(claimed)}\r\n".encode() + bytes(1000))
            except (OSError, ssl.SSLError):
                self.failed_to_open += 1
                continue
            with self._lock:
                self.sockets.append(sock)
        if not self._feeder.is_alive():
            self._feeder.start()

    def _trickle(self) -> None:
        for _ in range(300):  # at most 60 s, however long the test runs
            if self._stop.wait(0.2):
                return
            with self._lock:
                for sock in self.sockets:
                    try:
                        sock.send(b"x")
                    except (OSError, ssl.SSLError):
                        pass  # closed by the coordinator: counted in `outcomes`

    def outcomes(self) -> dict[str, int]:
        """Stop feeding; how each forged upload ended: refused with a reply, aborted, or still held."""
        self._stop.set()
        if self._feeder.is_alive():
            self._feeder.join(timeout=10)
        counts = {"refused": 0, "aborted": 0, "held": 0}
        for sock in self.sockets:
            sock.settimeout(0.05)  # replies and resets happened long before; only a held one times out
            try:
                data = sock.recv(4096)
                counts["refused" if data.startswith(b"HTTP/1.1 ") else "aborted"] += 1
            except socket.timeout:
                counts["held"] += 1
            except (OSError, ssl.SSLError):
                counts["aborted"] += 1
        return counts

    def close(self) -> None:
        self._stop.set()
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def attacked(tmp_path, federation):
    port = free_port()
    running = serve(federation, tmp_path / "state", port, max_connections=MAX_CONNECTIONS,
                    max_upload_bytes=2 * DECLARED_BYTES, unverified_bodies_per_institution=PER_INSTITUTION,
                    unverified_spool_budget_bytes=BUDGET_BYTES, header_timeout_s=60, body_idle_timeout_s=60)
    pin = (tmp_path / "state" / "tls" / "fingerprint.txt").read_text().strip()
    clients = {i: CoordinatorClient(f"https://127.0.0.1:{port}", federation.identities[i], "net-test", pin=pin,
                                    backoff=NO_RETRY) for i in ("a", "b")}
    attack = ForgedUploads(port)
    try:
        yield running, clients, attack
    finally:
        attack.close()
        for client in clients.values():
            client.close()
        running.stop()


def test_a_member_is_served_while_forged_slow_uploads_overfill_the_connection_cap(attacked, federation):
    running, clients, attack = attacked
    keys = Keys(federation, n_values=16)
    clients["a"].publish_keys(keys.secret.key_id, keys.request()["layout_hash"],
                              keys.secret.public_context_bytes(), keys.sealed, 16, keys.certificate)
    deadline = time.monotonic() + 20
    while running.hub.state.current is None:
        assert time.monotonic() < deadline, "round 1 did not open"
        time.sleep(0.05)
    member = clients["b"]
    envelope = keys.envelope(np.linspace(-1, 1, 16))
    shares = mask_shares(federation.policy, envelope, 1, "b")
    statement = contribution_statement(federation.identities["b"], envelope,
                                       shares=share_digests(federation.policy, shares))
    views, receipts = [], []
    for _ in range(WAVES):
        attack.open_wave(PER_WAVE)
        views += [member.federation() for _ in range(3)]
        receipts.append(member.upload(1, envelope, LEDGER_HEAD, declared_spend(federation.policy), statement, shares))
    ended = attack.outcomes()
    unverified = running.server.unverified
    print(f"\n[lockout] {WAVES * PER_WAVE} forged slow uploads against a cap of {MAX_CONNECTIONS} connections: "
          f"{ended}; {attack.failed_to_open} failed to open; at most {unverified.peak_bodies} unauthenticated "
          f"bodies ({unverified.peak_bytes} declared bytes) held at once; {len(views) + len(receipts)} member "
          "requests, each sent once, all served")
    assert [v.federation_id for v in views] == ["net-test"] * 3 * WAVES
    assert len({r.model_dump_json() for r in receipts}) == 1 and receipts[0].round == 1  # the same receipt
    assert list(running.hub.state.rounds[0].uploads) == ["b"]
    assert ended["aborted"] > 0, "the connection cap never evicted a forged upload: this test shows nothing"
    assert ended["held"] <= MAX_CONNECTIONS and attack.failed_to_open == 0
    assert unverified.peak_bodies <= MAX_CONNECTIONS and unverified.peak_bytes <= BUDGET_BYTES


def test_a_spool_budget_below_the_upload_limit_is_refused_at_start(tmp_path, federation):
    settings = CoordinatorSettings(port=free_port(), max_upload_bytes=2_000_000,
                                   unverified_spool_budget_bytes=1_000_000)
    with pytest.raises(BadInput, match="unverified_spool_budget_bytes"):
        build_server(federation.path, tmp_path / "state", settings, say=lambda _line: None)
