"""Request authentication: every agent request is signed with the institution's Ed25519 key.

The signature covers a canonical text of the request::

    confide-request-v1 \\n federation \\n institution \\n METHOD \\n raw path?query \\n sha256(body)
        \\n timestamp \\n nonce

and travels in four headers (`X-Confide-Institution`, `-Timestamp`, `-Nonce`, `-Signature`). The
coordinator accepts a request only if the institution is on the roster, the signature verifies
under its roster key, the timestamp is within `window_s` of the coordinator's clock, and the nonce
was never seen before from that institution. Nonces are remembered in SQLite (durably, so a
restart does not reopen a replay window) for twice the window, after which the timestamp check
alone refuses the request.

Everything but the signature itself is checked by `precheck` from the headers alone, so the
service can refuse an unsigned, stale or unknown-identity request before it reads any body. The
reply to a refused request does not say whether the identity is on the roster: an unknown id and
a signature that does not verify get the same words (the log has the precise reason).
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from confide.errors import BadInput
from confide.identity import Identity, PublicIdentity, b64, roster_identities, unb64  # noqa: F401 (re-exported)
from confide.platform.service.errors import ServiceError

log = logging.getLogger("confide.service.auth")

SCHEME = "confide-request-v1"
HEADER_INSTITUTION = "X-Confide-Institution"
HEADER_TIMESTAMP = "X-Confide-Timestamp"
HEADER_NONCE = "X-Confide-Nonce"
HEADER_SIGNATURE = "X-Confide-Signature"
DEFAULT_WINDOW_S = 300.0
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
# ASCII digits only: str.isdigit() also accepts superscripts such as '\xb2', which int() refuses.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{86}==")
#: What a caller is told when the identity is unknown or the signature does not verify under it.
NOT_AUTHENTICATED = "request is not authenticated: the signature does not verify for this institution"


class Unauthorized(ServiceError):
    """A request whose signature, key, timestamp or nonce is not acceptable (HTTP 401).

    `str(exc)` is the precise reason (for the coordinator's log); `reply` is what the caller is
    told, the same for an unknown identity and for a wrong signature.
    """

    def __init__(self, message: str, hint: str = "", reply: str | None = None) -> None:
        super().__init__(message, hint)
        self.reply = reply if reply is not None else str(self)


def canonical_request(
    federation: str, institution: str, method: str, target: str, body: bytes, timestamp: str, nonce: str
) -> bytes:
    """The exact bytes an institution signs. `target` is the raw path plus `?query` if any."""
    return canonical_request_for_digest(federation, institution, method, target, hashlib.sha256(body).hexdigest(),
                                        timestamp, nonce)


def canonical_request_for_digest(
    federation: str, institution: str, method: str, target: str, body_sha256: str, timestamp: str, nonce: str
) -> bytes:
    """`canonical_request` given the body's SHA-256 (hex) instead of the body (a streamed upload)."""
    parts = [SCHEME, federation, institution, method.upper(), target, body_sha256, timestamp, nonce]
    return "\n".join(parts).encode()


def sign_request(
    identity: Identity, federation: str, method: str, target: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Headers that authenticate one request (fresh nonce and timestamp on every call)."""
    timestamp = str(int(time.time() if now is None else now))
    nonce = secrets.token_urlsafe(18)
    message = canonical_request(federation, identity.institution_id, method, target, body, timestamp, nonce)
    return {
        HEADER_INSTITUTION: identity.institution_id,
        HEADER_TIMESTAMP: timestamp,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: b64(identity.sign(message)),
    }


class NonceStore:
    """Nonces seen per institution, in SQLite; `remember` refuses one seen before."""

    def __init__(self, path: Path, keep_s: float) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.keep_s = keep_s
        self._lock = threading.Lock()
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS nonces (institution TEXT, nonce TEXT, seen_at REAL, "
            "PRIMARY KEY (institution, nonce))"
        )
        self._last_prune = 0.0

    def remember(self, institution: str, nonce: str, now: float) -> bool:
        """Record the nonce; False if this institution already used it (a replay)."""
        with self._lock:
            if now - self._last_prune > 60:
                self.db.execute("DELETE FROM nonces WHERE seen_at < ?", (now - self.keep_s,))
                self._last_prune = now
            try:
                self.db.execute("INSERT INTO nonces VALUES (?, ?, ?)", (institution, nonce, now))
            except sqlite3.IntegrityError:
                return False
            return True

    def close(self) -> None:
        self.db.close()


@dataclass
class RequestVerifier:
    """Checks signed requests against the roster's signing keys."""

    federation: str
    roster: dict[str, PublicIdentity]
    nonces: NonceStore
    window_s: float = DEFAULT_WINDOW_S

    def precheck(self, headers, now: float | None = None) -> str:
        """Check what the headers alone can show: all four present, the timestamp (ASCII whole
        seconds, inside the window), the nonce and signature formats, the identity on the roster.

        Returns the claimed institution (not yet authenticated); raises Unauthorized (and logs why).
        Cheap and body-free, so it runs before any body is read.
        """
        now = time.time() if now is None else now
        institution = headers.get(HEADER_INSTITUTION)
        try:
            self._precheck(headers, institution, now)
        except Unauthorized as exc:
            log.warning("rejected a request from %r before its body: %s", institution, exc)
            raise
        return institution

    def verify(self, method: str, target: str, body: bytes, headers, now: float | None = None) -> str:
        """Return the authenticated institution id, or raise Unauthorized (and log why)."""
        return self.verify_digest(method, target, hashlib.sha256(body).hexdigest(), headers, now)

    def verify_digest(self, method: str, target: str, body_sha256: str, headers, now: float | None = None) -> str:
        """`verify` given the body's SHA-256 (hex), for a body that was streamed and hashed."""
        now = time.time() if now is None else now
        institution = headers.get(HEADER_INSTITUTION)
        try:
            self._precheck(headers, institution, now)
            return self._verify(method, target, body_sha256, headers, institution, now)
        except Unauthorized as exc:
            log.warning("rejected %s %s from %r: %s", method, target, institution, exc)
            raise

    def _precheck(self, headers, institution, now) -> None:
        timestamp, nonce, signature = (headers.get(h) for h in (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE))
        if not institution or not timestamp or not nonce or not signature:
            raise Unauthorized("request is not signed", f"send the {HEADER_INSTITUTION}, -Timestamp, -Nonce "
                               "and -Signature headers (use the confide agent)")
        # Checks that do not depend on the identity come first, so their answers reveal nothing
        # about who is on the roster.
        if not _TIMESTAMP.fullmatch(timestamp):
            raise Unauthorized("timestamp must be whole Unix seconds (ASCII digits)")
        if abs(now - int(timestamp)) > self.window_s:
            raise Unauthorized(f"timestamp is {int(now) - int(timestamp)} s off the coordinator's clock "
                               f"(window {self.window_s:g} s); check the clock")
        if not _NONCE.fullmatch(nonce):
            raise Unauthorized("nonce must be 16-64 URL-safe characters")
        if institution not in self.roster:
            raise Unauthorized(f"{institution!r} is not on the roster of {self.federation}", reply=NOT_AUTHENTICATED)
        if not _SIGNATURE.fullmatch(signature):
            raise Unauthorized("signature is not 64 bytes of base64", reply=NOT_AUTHENTICATED)

    def _verify(self, method, target, body_sha256, headers, institution, now) -> str:
        timestamp, nonce, signature = (headers.get(h) for h in (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE))
        try:
            raw_signature = unb64(signature, "signature", 64)
        except BadInput:
            raise Unauthorized("signature is not 64 bytes of base64", reply=NOT_AUTHENTICATED) from None
        message = canonical_request_for_digest(self.federation, institution, method, target, body_sha256,
                                               timestamp, nonce)
        if not self.roster[institution].verify(raw_signature, message):
            raise Unauthorized(f"signature does not verify under {institution}'s roster key", reply=NOT_AUTHENTICATED)
        # Only a verified request may use up a nonce: otherwise anyone could burn a member's nonces.
        if not self.nonces.remember(institution, nonce, now):
            raise Unauthorized("nonce was already used (replayed request)")
        return institution
