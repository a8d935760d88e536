"""Request signatures: what the coordinator accepts and refuses, and that nonces outlive a restart."""

from __future__ import annotations

import pytest

from confide.identity import Identity
from confide.platform.service.signing import (
    HEADER_TIMESTAMP,
    NonceStore,
    RequestVerifier,
    Unauthorized,
    roster_identities,
    sign_request,
)

NOW = 1_800_000_000.0


@pytest.fixture
def verifier(tmp_path, federation):
    store = NonceStore(tmp_path / "nonces.sqlite", keep_s=600)
    yield RequestVerifier("net-test", roster_identities(federation.policy.roster), store, window_s=300)
    store.close()


def signed(identity: Identity, body: bytes = b"{}", now: float = NOW, target: str = "/v1/federation") -> dict:
    return sign_request(identity, "net-test", "POST", target, body, now=now)


def test_a_fresh_signed_request_names_its_institution(verifier, federation):
    headers = signed(federation.identities["b"])
    assert verifier.verify("POST", "/v1/federation", b"{}", headers, now=NOW + 5) == "b"


@pytest.mark.parametrize("change, message", [
    (lambda h: h.pop(HEADER_TIMESTAMP), "not signed"),
    (lambda h: h.update({HEADER_TIMESTAMP: str(int(NOW) - 301)}), "off the coordinator's clock"),
    (lambda h: h.update({HEADER_TIMESTAMP: str(int(NOW) + 301)}), "off the coordinator's clock"),
    (lambda h: h.update({"X-Confide-Nonce": "short"}), "signature does not verify|nonce"),
    (lambda h: h.update({"X-Confide-Institution": "zed"}), "not on the roster"),
    (lambda h: h.update({"X-Confide-Signature": "not base64!"}), "64 bytes"),
])
def test_incomplete_stale_or_altered_headers_are_refused(verifier, federation, change, message):
    headers = signed(federation.identities["a"])
    change(headers)
    with pytest.raises(Unauthorized, match=message):
        verifier.verify("POST", "/v1/federation", b"{}", headers, now=NOW)


def test_the_signature_covers_method_path_and_body(verifier, federation):
    headers = signed(federation.identities["a"], body=b'{"reason": "x"}', target="/v1/rounds/1/declines/a")
    for method, target, body in (("PUT", "/v1/rounds/1/declines/a", b'{"reason": "x"}'),
                                 ("POST", "/v1/rounds/2/declines/a", b'{"reason": "x"}'),
                                 ("POST", "/v1/rounds/1/declines/a", b'{"reason": "y"}')):
        with pytest.raises(Unauthorized, match="does not verify"):
            verifier.verify(method, target, body, headers, now=NOW)


def test_a_nonce_is_refused_the_second_time_even_after_a_restart(tmp_path, verifier, federation):
    headers = signed(federation.identities["a"])
    verifier.verify("POST", "/v1/federation", b"{}", headers, now=NOW)
    with pytest.raises(Unauthorized, match="replayed"):
        verifier.verify("POST", "/v1/federation", b"{}", headers, now=NOW + 1)
    reopened = NonceStore(tmp_path / "nonces.sqlite", keep_s=600)
    again = RequestVerifier("net-test", verifier.roster, reopened, window_s=300)
    with pytest.raises(Unauthorized, match="replayed"):
        again.verify("POST", "/v1/federation", b"{}", headers, now=NOW + 2)
    reopened.close()


def test_a_forged_request_does_not_use_up_the_members_nonce(verifier, federation):
    genuine = signed(federation.identities["a"])
    forged = {**genuine, "X-Confide-Signature": signed(Identity.generate("a"))["X-Confide-Signature"]}
    with pytest.raises(Unauthorized, match="does not verify"):
        verifier.verify("POST", "/v1/federation", b"{}", forged, now=NOW)
    assert verifier.verify("POST", "/v1/federation", b"{}", genuine, now=NOW) == "a"
