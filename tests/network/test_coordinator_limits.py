"""A real coordinator process on 127.0.0.1 (TLS) under unauthenticated load.

The coordinator runs as its own process with a file-descriptor limit of 256, so its memory and
descriptors are its own. The test shows that an unsigned request declaring a huge body is refused
before any body byte is sent; that a request with plausible headers but a forged signature has its
body streamed to disk (the coordinator's peak memory grows by a small fraction of what was sent)
and is closed when it stalls; that connections which never finish their headers are closed by the
coordinator; and that a member is served while hundreds of idle connections are open, more than
the coordinator's descriptor limit. Every loop is bounded in count and time. The figures it prints
(run with -s) are the ones quoted in docs/network.md; nothing here asserts on time.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confide.platform.service.client import Backoff, CoordinatorClient

from .conftest import make_federation
from .test_tls_client import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SRC = Path(__file__).resolve().parents[2] / "src"
FILE_LIMIT = 256
HEADER_TIMEOUT_S = 2.0
BODY_IDLE_S = 2.0
IDLE_CONNECTIONS = 300
#: Long enough that the idle connections of the last test are all still waiting when the member calls.
PATIENT_HEADER_TIMEOUT_S = 120.0

SERVE = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, ({limit}, {limit}))
from confide.platform.service.server import CoordinatorSettings, run_coordinator
settings = CoordinatorSettings(port={port}, tick_s=0.2, header_timeout_s={header}, body_idle_timeout_s={body},
                               keep_alive_s=2.0)
run_coordinator(Path(sys.argv[1]), Path(sys.argv[2]), settings)
"""


def memory_kib(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the pin is checked by the member's client; these peers are hostile
    return context


def connect(port: int, context: ssl.SSLContext, timeout_s: float = 10.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout_s)
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def read_reply(sock: ssl.SSLSocket, timeout_s: float = 10.0) -> bytes:
    """Everything the coordinator sends until it closes the connection (bounded by `timeout_s`)."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError, socket.timeout):
            return data
        if not chunk:
            return data
        data += chunk


def closed_by_peer(sock: ssl.SSLSocket, timeout_s: float) -> bool:
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
        return True
    except socket.timeout:
        return False


def forged_headers(institution: str) -> str:
    """Signature headers that pass every check short of the signature itself."""
    return (f"X-Confide-Institution: {institution}\r\nX-Confide-Timestamp: {int(time.time())}\r\n"
            f"X-Confide-Nonce: {os.urandom(12).hex()}\r\nX-Confide-Signature: {'A' * 86}==\r\n")


class Coordinator:
    """A `confide` coordinator in its own process with a small descriptor limit, and a member's client."""

    def __init__(self, root: Path, header_timeout_s: float) -> None:
        federation = make_federation(root)
        self.port = free_port()
        state = root / "coordinator"
        self.log_path = root / "coordinator.log"
        script = SERVE.format(limit=FILE_LIMIT, port=self.port, header=header_timeout_s, body=BODY_IDLE_S)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-c", script, str(federation.path), str(state)],
                                        env={**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"},
                                        stdout=self._log, stderr=subprocess.STDOUT)
        fingerprint = state / "tls" / "fingerprint.txt"
        deadline = time.monotonic() + 60
        while True:
            assert self.process.poll() is None, self.log_path.read_text()
            if fingerprint.exists():
                try:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    break
                except OSError:
                    pass
            assert time.monotonic() < deadline, "the coordinator did not start"
            time.sleep(0.1)
        self.member = CoordinatorClient(f"https://127.0.0.1:{self.port}", federation.identities["b"], "net-test",
                                        pin=fingerprint.read_text().strip(),
                                        backoff=Backoff(first_s=0.1, max_s=0.5, give_up_after_s=30))

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.member.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


@pytest.fixture
def start(tmp_path):
    started: list[Coordinator] = []

    def start_one(header_timeout_s: float) -> Coordinator:
        started.append(Coordinator(tmp_path / f"run{len(started)}", header_timeout_s))
        return started[-1]

    yield start_one
    for running in started:
        running.stop()


def test_unauthenticated_bodies_are_not_held_in_memory_and_stalls_are_closed(start):
    running = start(HEADER_TIMEOUT_S)
    process, port, member, log_path = running.process, running.port, running.member, running.log_path
    context = tls_context()
    assert member.federation().members == ["a", "b", "c"]
    before = memory_kib(process.pid)

    # 1. Unsigned, declaring 200 MB: refused from the headers alone, before any body byte is sent.
    for _ in range(6):
        sock = connect(port, context)
        sock.sendall(b"PUT /v1/rounds/1/uploads/a HTTP/1.1\r\nHost: c\r\nContent-Length: 200000000\r\n"
                     b"Content-Type: application/octet-stream\r\n\r\n")
        reply = read_reply(sock)
        sock.close()
        assert reply.startswith(b"HTTP/1.1 401") and b"connection: close" in reply.lower(), reply[:300]

    # 2. Plausible headers, forged signature: the body streams to disk, then the stall is closed (408).
    sent, stalled = 0, []
    for _ in range(4):
        sock = connect(port, context)
        sock.sendall(f"PUT /v1/rounds/1/uploads/a HTTP/1.1\r\nHost: c\r\nContent-Length: 100000000\r\n"
                     f"{forged_headers('a')}\r\n".encode())
        chunk = os.urandom(1 << 20)
        for _ in range(24):
            sock.sendall(chunk)
            sent += len(chunk)
        stalled.append(sock)
    started = time.monotonic()
    replies = [read_reply(sock, timeout_s=BODY_IDLE_S * 10) for sock in stalled]
    stall_closed_s = time.monotonic() - started
    for sock in stalled:
        sock.close()
    assert all(r.startswith(b"HTTP/1.1 408") for r in replies), [r[:100] for r in replies]
    after = memory_kib(process.pid)
    growth_kib = after["VmHWM"] - before["VmHWM"]
    print(f"\n[limits] body storm: {sent / 2**20:.0f} MiB sent in 4 stalled forged uploads (+6 unsigned of "
          f"200 MB declared); coordinator RSS {before['VmRSS'] / 1024:.0f} -> {after['VmRSS'] / 1024:.0f} MiB, "
          f"peak grew {growth_kib / 1024:.1f} MiB; stalls closed {stall_closed_s:.1f} s after the last byte")
    assert growth_kib * 1024 < sent / 8, "the coordinator kept request bodies in memory"

    # 3. Connections that never finish their headers are closed by the coordinator.
    half_open = []
    for n in range(20):
        sock = connect(port, context)
        if n % 2:
            sock.sendall(b"GET /v1/federation HTTP/1.1\r\nHost: c\r\n")  # headers never end
        half_open.append(sock)
    assert all(closed_by_peer(sock, timeout_s=HEADER_TIMEOUT_S * 10) for sock in half_open)
    for sock in half_open:
        sock.close()

    log_bytes = log_path.stat().st_size
    text = log_path.read_text()
    print(f"[limits] coordinator log after the body storm: {log_bytes} bytes, {text.count(chr(10))} lines")
    assert "Traceback" not in text
    assert process.poll() is None


def test_a_member_is_served_while_more_idle_connections_are_open_than_the_coordinator_has_descriptors(start):
    running = start(PATIENT_HEADER_TIMEOUT_S)
    process, port, member, log_path = running.process, running.port, running.member, running.log_path
    context = tls_context()
    assert member.federation().members == ["a", "b", "c"]
    # More idle connections than the coordinator has file descriptors: a member is still served.
    idle, refused = [], 0
    started = time.monotonic()
    for _ in range(IDLE_CONNECTIONS):
        try:
            idle.append(connect(port, context))
        except (OSError, ssl.SSLError):
            refused += 1
    opened_s = time.monotonic() - started
    descriptors = open_descriptors(process.pid)
    served_started = time.monotonic()
    views = [member.federation() for _ in range(5)]
    served_s = time.monotonic() - served_started
    assert all(v.federation_id == "net-test" for v in views)
    still_open = sum(not closed_by_peer(sock, timeout_s=0.01) for sock in idle)
    print(f"[limits] {len(idle)} idle TLS connections opened in {opened_s:.1f} s ({refused} failed); coordinator "
          f"holds {descriptors} descriptors (limit {FILE_LIMIT}), {still_open} of ours still open; "
          f"5 member requests served in {served_s:.2f} s")
    for sock in idle:
        sock.close()
    assert len(idle) + refused == IDLE_CONNECTIONS
    assert still_open >= 100, "the idle connections did not stay open: this test shows nothing"
    assert descriptors < FILE_LIMIT
    text = log_path.read_text()
    print(f"[limits] coordinator log after the connection storm: {len(text)} bytes, {text.count(chr(10))} lines")
    assert "Traceback" not in text and "Too many open files" not in text
    assert process.poll() is None
