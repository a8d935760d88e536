"""Request authentication: every agent request is signed with the institution's Ed25519 key.

The signature covers a canonical text of the request::

    confide-request-v1 \\n federation \\n institution \\n METHOD \\n raw path?query \\n sha256(body) \\n timestamp \\n nonce

and travels in four headers (`X-Confide-Institution`, `-Timestamp`, `-Nonce`, `-Signature`). The
coordinator accepts a request only if the institution is on the roster, the signature verifies
under its roster key, the timestamp is within `window_s` of the coordinator's clock, and the nonce
was never seen before from that institution. Nonces are remembered in SQLite (durably, so a
restart does not reopen a replay window) for twice the window, after which the timestamp check
alone refuses the request.
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
from confide.platform.service.errors import ServiceError
from confide.identity import Identity, PublicIdentity, b64, unb64

log = logging.getLogger("confide.service.auth")

SCHEME = "confide-request-v1"
HEADER_INSTITUTION = "X-Confide-Institution"
HEADER_TIMESTAMP = "X-Confide-Timestamp"
HEADER_NONCE = "X-Confide-Nonce"
HEADER_SIGNATURE = "X-Confide-Signature"
DEFAULT_WINDOW_S = 300.0
_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


class Unauthorized(ServiceError):
    """A request whose signature, key, timestamp or nonce is not acceptable (HTTP 401)."""


def canonical_request(
    federation: str, institution: str, method: str, target: str, body: bytes, timestamp: str, nonce: str
) -> bytes:
    """The exact bytes an institution signs. `target` is the raw path plus `?query` if any."""
    digest = hashlib.sha256(body).hexdigest()
    parts = [SCHEME, federation, institution, method.upper(), target, digest, timestamp, nonce]
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

    def verify(self, method: str, target: str, body: bytes, headers, now: float | None = None) -> str:
        """Return the authenticated institution id, or raise Unauthorized (and log why)."""
        now = time.time() if now is None else now
        institution = headers.get(HEADER_INSTITUTION)
        try:
            return self._verify(method, target, body, headers, institution, now)
        except Unauthorized as exc:
            log.warning("rejected %s %s from %r: %s", method, target, institution, exc)
            raise

    def _verify(self, method, target, body, headers, institution, now) -> str:
        timestamp, nonce, signature = (headers.get(h) for h in (HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE))
        if not institution or not timestamp or not nonce or not signature:
            raise Unauthorized("request is not signed", f"send the {HEADER_INSTITUTION}, -Timestamp, -Nonce "
                               "and -Signature headers (use the confide agent)")
        public = self.roster.get(institution)
        if public is None:
            raise Unauthorized(f"{institution!r} is not on the roster of {self.federation}")
        if not timestamp.isdigit() or len(timestamp) > 12:
            raise Unauthorized("timestamp must be whole Unix seconds")
        if abs(now - int(timestamp)) > self.window_s:
            raise Unauthorized(f"timestamp is {int(now) - int(timestamp)} s off the coordinator's clock "
                               f"(window {self.window_s:g} s); check the clock")
        if not _NONCE.match(nonce):
            raise Unauthorized("nonce must be 16-64 URL-safe characters")
        try:
            raw_signature = unb64(signature, "signature", 64)
        except BadInput:
            raise Unauthorized("signature is not 64 bytes of base64") from None
        message = canonical_request(self.federation, institution, method, target, body, timestamp, nonce)
        if not public.verify(raw_signature, message):
            raise Unauthorized(f"signature does not verify under {institution}'s roster key")
        # Only a verified request may use up a nonce: otherwise anyone could burn a member's nonces.
        if not self.nonces.remember(institution, nonce, now):
            raise Unauthorized("nonce was already used (replayed request)")
        return institution


def roster_identities(roster) -> dict[str, PublicIdentity]:
    """Roster members (from a FederationPolicy) as PublicIdentity by id."""
    return {
        m.id: PublicIdentity(unb64(m.signing_key, f"roster {m.id} signing_key", 32),
                             unb64(m.sealing_key, f"roster {m.id} sealing_key", 32))
        for m in roster
    }
