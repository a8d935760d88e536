"""The agent's HTTP client of the coordinator: signed requests, TLS pinning, retries with backoff.

Every request is signed afresh (new nonce and timestamp) on every attempt, so a retry is never
mistaken for a replay. Network errors and 5xx replies are retried with exponential backoff and
jitter until `give_up_after_s`; 4xx replies are not retried and raise `CoordinatorRefused`, whose
`status` the agent inspects. A certificate that does not match the pin is never retried.
"""

from __future__ import annotations

import base64
import random
import ssl
import time
from dataclasses import dataclass
from typing import Callable
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from confide.errors import BadInput
from confide.formats import ContributionStatement, DeclaredSpend, KeyCertificate, RevealStatement
from confide.identity import Identity, unb64
from confide.platform.driver import CoordinatorRefused
from confide.platform.messages import (
    AppliedReply,
    AppliedReport,
    DeclineReply,
    DeclineRequest,
    ErrorReply,
    FederationView,
    Health,
    KeyCertificateReply,
    KeySetupReply,
    KeySetupRequest,
    ReceiptReply,
    ReportReply,
    RevealReply,
    RoundContributions,
    UndecryptableReport,
    UnmaskRequest,
)
from confide.platform.protocol import Refusal
from confide.platform.service.errors import REFUSAL_OF_STATUS, ServiceError
from confide.platform.service.signing import sign_request
from confide.platform.service.tls import (
    TlsError,
    ca_context,
    fetch_certificate,
    is_loopback,
    pinned_context,
    scheme_mismatch,
)


class CoordinatorUnreachable(ServiceError):
    """No answer from the coordinator for longer than the client was willing to wait."""


@dataclass(frozen=True)
class Backoff:
    """Retry timing: first delay, growth factor, ceiling, and when to give up (None: never)."""

    first_s: float = 0.5
    factor: float = 2.0
    max_s: float = 15.0
    give_up_after_s: float | None = 3600.0

    def delay(self, attempt: int) -> float:
        return min(self.max_s, self.first_s * self.factor**attempt) * random.uniform(0.5, 1.0)


def _cert_problem(exc: BaseException) -> bool:
    seen = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def key_setup_request(key_id: str, layout_hash: str, public_context: bytes, sealed: dict[str, bytes],
                      n_values: int, certificate: KeyCertificate) -> KeySetupRequest:
    """The key set-up as the coordinator takes it: binary parts in base64, the certificate's signature
    (the coordinator rebuilds the certificate from the rest, and refuses it unless it verifies)."""
    return KeySetupRequest(key_id=key_id, layout_hash=layout_hash, n_values=n_values,
                           public_context=base64.b64encode(public_context).decode(),
                           sealed={m: base64.b64encode(blob).decode() for m, blob in sealed.items()},
                           certificate_signature=certificate.signature)


def spend_query(declared: DeclaredSpend) -> dict:
    """A declared spend as upload query parameters: floats as `repr`, which reads back to the same float."""
    return {k: repr(v) if isinstance(v, float) else v for k, v in declared.to_dict().items()}


class CoordinatorClient:
    """Signed calls to one coordinator for one institution of one federation."""

    def __init__(
        self,
        url: str,
        identity: Identity,
        federation_id: str,
        pin: str | None = None,
        ca_file=None,
        backoff: Backoff = Backoff(),
        say: Callable[[str], None] = lambda _line: None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ServiceError(f"coordinator URL {url!r} must look like https://HOST:PORT")
        if parts.scheme == "http" and not is_loopback(parts.hostname):
            raise TlsError(f"plain http is allowed to a loopback coordinator only, not {parts.hostname}",
                           "use the https:// URL and --pin the fingerprint the coordinator printed")
        try:
            port = parts.port
        except ValueError as exc:  # out of range or not a number
            raise ServiceError(f"coordinator URL {url!r}: {exc}", "give a port from 1 to 65535") from None
        self.url = url.rstrip("/")
        self.host, self.port = parts.hostname, port or (443 if parts.scheme == "https" else 80)
        self.tls = parts.scheme == "https"
        self.identity, self.federation_id = identity, federation_id
        self.pin, self.ca_file = pin, ca_file
        if self.tls and not pin:
            ca_context(ca_file)  # a CA file that cannot be read is refused now, not retried for ever
        self.backoff, self.say = backoff, say
        self._http: httpx.Client | None = None

    # -- plumbing -----------------------------------------------------------------------------
    def _connect(self) -> httpx.Client:
        if self._http is None:
            verify: ssl.SSLContext | bool = False
            if self.tls:
                verify = pinned_context(fetch_certificate(self.host, self.port), self.pin) if self.pin \
                    else ca_context(self.ca_file)
            self._http = httpx.Client(base_url=self.url, verify=verify, timeout=httpx.Timeout(60.0, connect=10.0))
        return self._http

    def _refuse_wrong_scheme(self) -> None:
        """Raise TlsError when the coordinator's port speaks the other protocol than this URL's scheme."""
        mismatch = scheme_mismatch(self.host, self.port, self.tls)
        if mismatch is not None:
            other = "http" if self.tls else "https"
            raise TlsError(f"coordinator URL {self.url}: {mismatch}",
                           f"use {other}://{self.host}:{self.port}" + ("" if self.tls else " with --pin or --ca"))

    def _once(self, method: str, path: str, params: dict | None, content: bytes, content_type: str | None,
              timeout_s: float) -> httpx.Response:
        http = self._connect()
        request = http.build_request(method, path, params=params, content=content,
                                     headers={"content-type": content_type} if content_type else None,
                                     timeout=httpx.Timeout(timeout_s, connect=10.0))
        target = request.url.raw_path.decode("latin-1")
        request.headers.update(sign_request(self.identity, self.federation_id, method, target, content))
        return http.send(request)

    def call(self, method: str, path: str, params: dict | None = None, content: bytes = b"",
             content_type: str | None = None, timeout_s: float = 120.0) -> httpx.Response:
        """Send a signed request, retrying network errors and 5xx; raise CoordinatorRefused on 4xx."""
        started, attempt = time.monotonic(), 0
        while True:
            try:
                response = self._once(method, path, params, content, content_type, timeout_s)
                if response.status_code < 500:
                    break
                problem = f"HTTP {response.status_code}"
            except TlsError:
                raise
            except (httpx.TransportError, OSError) as exc:
                if _cert_problem(exc):
                    raise TlsError(f"the coordinator's certificate does not verify: {exc}",
                                   "check the --pin (or --ca) against what the coordinator printed") from None
                if attempt == 0:
                    self._refuse_wrong_scheme()
                problem = f"{type(exc).__name__}: {exc}"
            waited = time.monotonic() - started
            limit = self.backoff.give_up_after_s
            if limit is not None and waited > limit:
                raise CoordinatorUnreachable(f"{method} {path}: no answer from {self.url} for {waited:.0f} s "
                                             f"({problem})", "check that the coordinator is running")
            delay = self.backoff.delay(attempt)
            if attempt in (0, 3) or attempt % 10 == 0:
                self.say(f"{method} {path}: {problem}; retrying in {delay:.1f} s")
            time.sleep(delay)
            attempt += 1
        if response.status_code >= 400:
            try:
                detail = ErrorReply.model_validate_json(response.content).detail
            except ValidationError:
                detail = response.text[:300]
            raise CoordinatorRefused(REFUSAL_OF_STATUS.get(response.status_code, Refusal.INVALID), detail,
                                     response.status_code)
        return response

    @staticmethod
    def _parse(response: httpx.Response, model: type[BaseModel]):
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadInput(f"the coordinator sent a malformed {model.__name__}: {exc.errors()[0]['msg']}") from None

    # -- API ----------------------------------------------------------------------------------
    def health(self) -> Health:
        return self._parse(self.call("GET", "/health"), Health)

    def federation(self, after_revision: int | None = None, wait_s: float = 0.0) -> FederationView:
        """The federation as this member sees it; with `after_revision`, long-polls up to `wait_s`."""
        params = {} if after_revision is None else {"after_revision": after_revision, "wait_s": wait_s}
        return self._parse(self.call("GET", "/v1/federation", params=params, timeout_s=wait_s + 60), FederationView)

    def publish_keys(self, key_id: str, layout_hash: str, public_context: bytes,
                     sealed: dict[str, bytes], n_values: int, certificate: KeyCertificate) -> KeySetupReply:
        """Publish the key set-up (key holder); `n_values`, the adapter layout's size, lets the
        coordinator refuse an update of the wrong size on arrival instead of failing the round;
        the certificate's signature lets every member check the set-up came from us."""
        body = key_setup_request(key_id, layout_hash, public_context, sealed, n_values, certificate)
        response = self.call("PUT", "/v1/keys", content=body.model_dump_json().encode(),
                             content_type="application/json")
        return self._parse(response, KeySetupReply)

    def sealed_key(self) -> bytes:
        return self.call("GET", f"/v1/keys/sealed/{self.identity.institution_id}").content

    def key_certificate(self) -> KeyCertificate:
        return self._parse(self.call("GET", "/v1/keys/certificate"), KeyCertificateReply).certificate

    def public_context(self) -> bytes:
        return self.call("GET", "/v1/keys/public-context").content

    def upload(self, round_index: int, envelope: bytes, ledger_head: str | None,
               declared: DeclaredSpend | None, statement: ContributionStatement | None,
               shares: bytes = b"") -> ReceiptReply:
        """Upload our envelope for the round (a retry of the same envelope gets the same receipt).

        The body is the envelope followed by `shares`, our mask shares sealed to the committee
        (`shares_bytes` says where the envelope ends).

        `ledger_head` is our newest ledger entry's hash and `declared` the round's DP-SGD spend; the
        coordinator checks the spend against the federation and signs both into the receipt.
        `statement` is our signed contribution statement: its tags and signature go along (the
        coordinator rebuilds the rest from the envelope). All travel as query parameters, which
        the request signature covers.
        """
        path = f"/v1/rounds/{round_index}/uploads/{self.identity.institution_id}"
        params: dict = {"ledger_head": ledger_head} if ledger_head else {}
        if declared is not None:
            params.update(spend_query(declared))
        if statement is not None:
            params.update(tags=",".join(statement.tags), min_cohort=statement.min_cohort,
                          statement_signature=statement.signature, previous_sum=statement.previous_sum)
        params["shares_bytes"] = len(shares)
        response = self.call("PUT", path, params=params, content=envelope + shares,
                             content_type="application/octet-stream", timeout_s=600)
        return self._parse(response, ReceiptReply)

    def decline(self, round_index: int, reason: str) -> DeclineReply:
        body = DeclineRequest(reason=reason[:2000] or "declined")
        path = f"/v1/rounds/{round_index}/declines/{self.identity.institution_id}"
        response = self.call("POST", path, content=body.model_dump_json().encode(), content_type="application/json")
        return self._parse(response, DeclineReply)

    def report_undecryptable(self, round_index: int, sum_sha256: str, reason: str) -> ReportReply:
        """Tell the coordinator the round's sum failed our decryption checks. Send it before answering
        the next round: the coordinator narrows its suspects when it sums that round."""
        body = UndecryptableReport(sum_sha256=sum_sha256, reason=reason[:500] or "does not decrypt")
        path = f"/v1/rounds/{round_index}/reports/{self.identity.institution_id}"
        response = self.call("POST", path, content=body.model_dump_json().encode(), content_type="application/json")
        return self._parse(response, ReportReply)

    def round_sum(self, round_index: int) -> bytes:
        return self.call("GET", f"/v1/rounds/{round_index}/sum", timeout_s=600).content

    def round_contributions(self, round_index: int) -> RoundContributions:
        """The signed statements of the uploads in the round's sum, in the sum's order, and the reveals."""
        return self._parse(self.call("GET", f"/v1/rounds/{round_index}/contributions"), RoundContributions)

    def unmask_request(self, round_index: int) -> tuple[list[ContributionStatement], dict[str, bytes]]:
        """As a committee member: the round's contributors' statements and the shares they sealed to us."""
        path = f"/v1/rounds/{round_index}/unmask/{self.identity.institution_id}"
        reply = self._parse(self.call("GET", path), UnmaskRequest)
        return reply.statements, {sender: unb64(text, f"the share from {sender}") for sender, text in
                                  reply.shares.items()}

    def reveal(self, round_index: int, reveal: RevealStatement) -> RevealReply:
        """As a committee member: hand the coordinator our signed reveal for the round."""
        path = f"/v1/rounds/{round_index}/reveals/{self.identity.institution_id}"
        response = self.call("POST", path, content=reveal.model_dump_json().encode(), content_type="application/json")
        return self._parse(response, RevealReply)

    def report_applied(self, round_index: int, sum_sha256: str, signature: str) -> AppliedReply:
        """Hand the coordinator our signed statement of the sum we applied (shown to the other members)."""
        body = AppliedReport(sum_sha256=sum_sha256, signature=signature)
        path = f"/v1/rounds/{round_index}/applied/{self.identity.institution_id}"
        response = self.call("POST", path, content=body.model_dump_json().encode(), content_type="application/json")
        return self._parse(response, AppliedReply)

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
