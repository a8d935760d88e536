"""TLS and the agent's client: self-signed certificate, pinning, loopback-only plain HTTP, retries."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from confide.platform.driver import CoordinatorRefused
from confide.platform.service.client import Backoff, CoordinatorClient, CoordinatorUnreachable
from confide.platform.service.server import CoordinatorSettings, ServerThread, build_server
from confide.platform.service.tls import TlsError, fingerprint_of, normalize_fingerprint, server_certificate

FAST = Backoff(first_s=0.05, max_s=0.2, give_up_after_s=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(federation, state, port, **settings) -> ServerThread:
    server, hub = build_server(federation.path, state, CoordinatorSettings(port=port, tick_s=0.1, **settings),
                               say=lambda _line: None)
    return ServerThread(server, hub).start()


@pytest.fixture
def coordinator(tmp_path, federation):
    port = free_port()
    running = serve(federation, tmp_path / "state", port)
    yield running, port, tmp_path / "state"
    running.stop()


def test_self_signed_certificate_is_made_once_and_kept(tmp_path):
    first = server_certificate(tmp_path, "127.0.0.1", None, None)
    again = server_certificate(tmp_path, "127.0.0.1", None, None)
    assert first.fingerprint == again.fingerprint == fingerprint_of(first.cert_path.read_bytes())
    assert oct(first.key_path.stat().st_mode & 0o777) == "0o600"
    assert normalize_fingerprint(first.fingerprint.replace(":", "").lower()) == first.fingerprint


def test_pinned_client_talks_to_the_coordinator_over_tls(coordinator, federation):
    running, port, state = coordinator
    pin = (state / "tls" / "fingerprint.txt").read_text().strip()
    client = CoordinatorClient(f"https://127.0.0.1:{port}", federation.identities["b"], "net-test", pin=pin,
                               backoff=FAST)
    try:
        assert client.health().federation_status == "setup"
        assert client.federation().members == ["a", "b", "c"]
        with pytest.raises(CoordinatorRefused) as refused:
            client.sealed_key()
        assert refused.value.status == 409
    finally:
        client.close()


def test_a_wrong_pin_is_refused_without_sending_anything(coordinator, federation):
    _, port, _ = coordinator
    client = CoordinatorClient(f"https://127.0.0.1:{port}", federation.identities["b"], "net-test",
                               pin="AB" * 32, backoff=FAST)
    with pytest.raises(TlsError, match="not the pinned"):
        client.federation()
    client.close()


def test_an_unpinned_client_refuses_a_self_signed_certificate(coordinator, federation):
    _, port, _ = coordinator
    client = CoordinatorClient(f"https://127.0.0.1:{port}", federation.identities["b"], "net-test", backoff=FAST)
    with pytest.raises(TlsError, match="does not verify"):
        client.health()
    client.close()


def test_plain_http_only_on_loopback(tmp_path, federation):
    with pytest.raises(TlsError, match="loopback"):
        build_server(federation.path, tmp_path / "s", CoordinatorSettings(host="0.0.0.0", insecure=True))
    with pytest.raises(TlsError, match="loopback"):
        CoordinatorClient("http://coordinator.example:8443", federation.identities["a"], "net-test")


def test_a_bad_port_or_ca_file_is_refused_when_the_client_is_made_not_retried(tmp_path, federation):
    from confide.platform.service.errors import ServiceError

    identity = federation.identities["a"]
    for url in ("https://127.0.0.1:99999", "https://127.0.0.1:abc"):
        with pytest.raises(ServiceError, match="port from 1 to 65535"):
            CoordinatorClient(url, identity, "net-test", pin="ab" * 32)
    garbage = tmp_path / "ca.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsError, match="not a CA bundle"):
        CoordinatorClient("https://127.0.0.1:8443", identity, "net-test", ca_file=garbage)


def test_client_retries_until_the_coordinator_comes_up(tmp_path, federation):
    port = free_port()
    client = CoordinatorClient(f"http://127.0.0.1:{port}", federation.identities["a"], "net-test", backoff=FAST)
    result = {}
    caller = threading.Thread(target=lambda: result.setdefault("view", client.federation()))
    caller.start()
    time.sleep(0.8)
    running = serve(federation, tmp_path / "state", port, insecure=True)
    try:
        caller.join(timeout=20)
        assert result["view"].status == "setup"
    finally:
        running.stop()
        client.close()


def test_client_gives_up_after_its_limit(federation):
    client = CoordinatorClient(f"http://127.0.0.1:{free_port()}", federation.identities["a"], "net-test",
                               backoff=Backoff(first_s=0.05, max_s=0.1, give_up_after_s=0.5))
    with pytest.raises(CoordinatorUnreachable):
        client.federation()


def test_the_wrong_scheme_is_refused_at_once_not_retried(coordinator, tmp_path, federation):
    _, tls_port, state = coordinator
    pin = (state / "tls" / "fingerprint.txt").read_text().strip()
    identity = federation.identities["a"]
    # FAST gives up after 20 s: a client that retried instead would raise CoordinatorUnreachable.
    client = CoordinatorClient(f"http://127.0.0.1:{tls_port}", identity, "net-test", backoff=FAST)
    with pytest.raises(TlsError, match=f"speaks HTTPS, not plain http .*use https://127.0.0.1:{tls_port}"):
        client.health()
    client.close()
    plain_port = free_port()
    running = serve(federation, tmp_path / "plain", plain_port, insecure=True)
    try:
        for kwargs in ({"pin": pin}, {}):
            client = CoordinatorClient(f"https://127.0.0.1:{plain_port}", identity, "net-test", backoff=FAST,
                                       **kwargs)
            with pytest.raises(TlsError, match=f"does not speak TLS .*use http://127.0.0.1:{plain_port}"):
                client.health()
            client.close()
    finally:
        running.stop()
