"""What an auditor hands in: ledger files, public keys, policies. Unreadable input raises AuditInputError.

A ledger whose content is wrong is not bad input: that is a finding, reported as a failed check.
Bad input is what stops the audit from starting at all: a missing file, a key that is not a key.
"""

from __future__ import annotations

import json
from pathlib import Path

from confide.errors import BadInput
from confide.identity import PUBLIC_FILE, SEALING_KEY_FILE, SIGNING_KEY_FILE, IdentityError, PublicIdentity, unb64
from confide.policies import FederationPolicy, InstitutionPolicy, load_federation, load_institution


class AuditInputError(BadInput):
    """An audit input (ledger, key, receipts, policy) cannot be read. The message names file and fix."""


def read_ledger_bytes(path: Path) -> bytes:
    """The raw bytes of a ledger file. Raises AuditInputError if it is missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise AuditInputError(f"{path}: no such ledger file (check the path)") from None
    except OSError as exc:
        raise AuditInputError(f"{path}: cannot read ledger ({exc.strerror})") from None


def public_key(value: str | Path, what: str = "--key") -> PublicIdentity:
    """An Ed25519 verification key from base64 text, a file holding it, an identity.json or its directory.

    Only the signing half is needed to verify, so the sealing half is left empty. Raises
    AuditInputError if `value` is none of those, or is an identity's private key file.
    """
    text = str(value).strip()
    path = Path(text)
    source = what
    if len(text) < 200 and path.is_dir():
        path = path / PUBLIC_FILE  # an identity directory: its public part
        if not path.exists():
            raise AuditInputError(f"{text}: a directory without an {PUBLIC_FILE}; pass the identity's {PUBLIC_FILE}")
    if len(text) < 200 and path.exists():
        source = str(path)
        if path.name in (SIGNING_KEY_FILE, SEALING_KEY_FILE):
            raise AuditInputError(f"{path}: a private key, which no audit needs (and no auditor should hold); "
                                  f"pass the {PUBLIC_FILE} beside it")
        try:
            content = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuditInputError(f"{path}: cannot read key file ({exc})") from None
        if content.startswith("{"):
            try:
                content = str(json.loads(content)["signing_key"])
            except (ValueError, KeyError, TypeError):
                raise AuditInputError(f"{path}: not an identity.json with a `signing_key`") from None
        text = content
    try:
        raw = unb64(text, source, 32)
    except IdentityError as exc:
        raise AuditInputError(
            f"{source}: not an Ed25519 public key ({exc}); pass the base64 `signing_key` or its identity.json"
        ) from None
    return PublicIdentity(signing_public=raw, sealing_public=b"")


def roster_key(federation: FederationPolicy, institution: str) -> PublicIdentity | None:
    """The institution's signing key from the federation roster, or None if it is not a member."""
    member = federation.member(institution)
    if member is None:
        return None
    return PublicIdentity(signing_public=unb64(member.signing_key, "roster signing_key", 32), sealing_public=b"")


def load_policies(
    institution_paths: list[Path], federation_paths: list[Path]
) -> tuple[dict[str, InstitutionPolicy], dict[str, FederationPolicy]]:
    """Institution policies by institution id and federation policies by federation id.

    Raises PolicyError (bad input) for an invalid file.
    """
    institutions = {p.institution_id: p for p in (load_institution(Path(path)) for path in institution_paths)}
    federations = {f.federation_id: f for f in (load_federation(Path(path)) for path in federation_paths)}
    return institutions, federations
