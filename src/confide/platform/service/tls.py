"""TLS for the coordinator: a self-signed certificate when none is given, and pinning for agents.

The coordinator's certificate is identified by the SHA-256 of its DER encoding (its fingerprint,
printed at start-up and written next to it). An agent given `--pin` trusts exactly that
certificate: it fetches the certificate once, compares the fingerprint, and then uses it as the
only trust anchor, so every later connection fails in the handshake if another certificate is
presented. Without a pin it verifies the chain and host name against a CA file or the system store.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from confide.platform.service.errors import ServiceError

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
FINGERPRINT_FILE = "fingerprint.txt"


class TlsError(ServiceError):
    """A certificate is missing, unreadable, or not the pinned one; or plain HTTP off loopback."""


@dataclass(frozen=True)
class ServerCertificate:
    """Paths of the certificate and key the coordinator serves, and the certificate's fingerprint."""

    cert_path: Path
    key_path: Path
    fingerprint: str


def fingerprint_of(pem_or_der: bytes) -> str:
    """SHA-256 fingerprint of a certificate (PEM or DER) as colon-separated upper-case hex."""
    der = ssl.PEM_cert_to_DER_cert(pem_or_der.decode()) if pem_or_der.lstrip().startswith(b"-----") else pem_or_der
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    """Accept `AB:CD:...`, `abcd...` or `sha256:...`; return the canonical colon form. Raises TlsError."""
    raw = text.strip().lower().removeprefix("sha256:").replace(":", "").replace(" ", "")
    if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
        raise TlsError(f"pin {text!r} is not a SHA-256 fingerprint",
                       "copy the fingerprint the coordinator printed (64 hex digits, colons allowed)")
    raw = raw.upper()
    return ":".join(raw[i : i + 2] for i in range(0, 64, 2))


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses (the only places plain HTTP is allowed)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    extra = {host, socket.gethostname()} - {"localhost", "127.0.0.1", "0.0.0.0", "::", ""}
    for name in sorted(extra):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(name))
    return names


def create_self_signed(directory: Path, host: str, valid_days: int = 825) -> ServerCertificate:
    """Create an ECDSA P-256 self-signed certificate for `host` (plus localhost) under `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "confide coordinator")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=valid_days))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path.write_bytes(pem)
    fingerprint = fingerprint_of(pem)
    (directory / FINGERPRINT_FILE).write_text(fingerprint + "\n")
    return ServerCertificate(cert_path, key_path, fingerprint)


def server_certificate(state_dir: Path, host: str, cert: Path | None, key: Path | None) -> ServerCertificate:
    """The certificate to serve: the given pair, or the state directory's own (created on first start)."""
    if (cert is None) != (key is None):
        raise TlsError("--tls-cert and --tls-key go together", "give both, or neither for a self-signed one")
    if cert is not None and key is not None:
        for path in (cert, key):
            if not path.is_file():
                raise TlsError(f"{path}: no such file")
        return ServerCertificate(cert, key, fingerprint_of(cert.read_bytes()))
    directory = state_dir / "tls"
    if (directory / CERT_FILE).is_file() and (directory / KEY_FILE).is_file():
        pem = (directory / CERT_FILE).read_bytes()
        return ServerCertificate(directory / CERT_FILE, directory / KEY_FILE, fingerprint_of(pem))
    return create_self_signed(directory, host)


def fetch_certificate(host: str, port: int, timeout_s: float = 10.0) -> bytes:
    """The PEM certificate a TLS server presents (not verified: the caller checks its fingerprint)."""
    return ssl.get_server_certificate((host, port), timeout=timeout_s).encode()


def scheme_mismatch(host: str, port: int, tls: bool, timeout_s: float = 5.0) -> str | None:
    """Why host:port cannot be the coordinator at this URL scheme, or None when it may be (or is unreachable).

    A TCP connection is opened and a TLS handshake tried, the certificate unchecked (only whether the
    server speaks TLS at all is asked). A plain-HTTP client at a TLS port, or a TLS client at a plain
    port, is not a transient fault: retrying would never succeed. A port that does not accept the
    connection is left to the caller's retries (the coordinator may be restarting).
    """
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with sock:
        try:
            with context.wrap_socket(sock, server_hostname=host):
                handshake = True
        except ssl.SSLError:
            handshake = False
        except OSError:  # reset or timed out mid-handshake: no conclusion
            return None
    if handshake and not tls:
        return f"{host}:{port} speaks HTTPS, not plain http"
    if tls and not handshake:
        return f"{host}:{port} does not speak TLS (a coordinator started with --insecure speaks plain http)"
    return None


def pinned_context(pem: bytes, pin: str) -> ssl.SSLContext:
    """A client SSL context that trusts exactly the certificate `pem`, after checking it has `pin`.

    Host names are not checked: the pin identifies the certificate more narrowly than a name would.
    Raises TlsError if the certificate's fingerprint is not the pin.
    """
    want, got = normalize_fingerprint(pin), fingerprint_of(pem)
    if want != got:
        raise TlsError(f"the coordinator presented certificate {got}, not the pinned {want}",
                       "someone may be intercepting the connection; check the pin with the coordinator operator")
    context = ssl.create_default_context(cadata=pem.decode())
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def ca_context(ca_file: Path | None) -> ssl.SSLContext:
    """A client SSL context verifying chain and host name against `ca_file` (or the system store)."""
    if ca_file is not None and not ca_file.is_file():
        raise TlsError(f"{ca_file}: no such CA file")
    try:
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except ssl.SSLError as exc:
        raise TlsError(f"{ca_file}: not a CA bundle ({exc.reason or exc})",
                       "pass the PEM file of the certificate authority that signed the coordinator's certificate") \
            from None
