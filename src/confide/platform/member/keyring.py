"""The member's federation key: made by the key holder, sealed to each member, certified, installed.

    <state_dir>/federations/<fed>/secret.key            the CKKS secret key material (0600)
    <state_dir>/federations/<fed>/key-certificate.json  the key holder's signed certificate of that key

Every member of the federation holds the same key, so the integrity key of the sums' tags
(`aggregation.integrity`) derives from it; the secure-aggregation masks (`secure_sum`) keep any one
upload unreadable even so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from confide.aggregation.integrity import integrity_key
from confide.aggregation.keys import SecretKeyMaterial, create_key_material, load_secret, open_sealed, seal_secret
from confide.aggregation.params import CkksParameters
from confide.formats import KeyCertificate, policy_sha256, sha256, write_atomically
from confide.identity import Identity, PublicIdentity, unb64
from confide.platform.member.errors import MemberError
from confide.platform.member_api import KeyBundle
from confide.platform.sum_evidence import certificate_problem
from confide.policies import FederationPolicy


class KeyRingError(MemberError):
    """The federation key cannot be made, installed or used as asked."""


class KeyRing:
    """The federation key files of one member, with the checks before a key is accepted."""

    def __init__(self, directory: Path, federation: FederationPolicy, roster: dict[str, PublicIdentity],
                 identity: Identity) -> None:
        self.dir = Path(directory)
        self.federation, self.roster, self.identity = federation, roster, identity
        self._secret: SecretKeyMaterial | None = None
        self._integrity: bytes | None = None

    @property
    def _key_file(self) -> Path:
        return self.dir / "secret.key"

    def has_key(self) -> bool:
        return self._key_file.exists()

    def key_id(self) -> str | None:
        """The federation key we hold, or None."""
        return self.secret.key_id if self.has_key() else None

    @property
    def secret(self) -> SecretKeyMaterial:
        if self._secret is None:
            if not self.has_key():
                raise KeyRingError(f"{self.identity.institution_id} has no federation key yet",
                                   "install the sealed key first")
            self._secret = load_secret(self._key_file.read_bytes())
        return self._secret

    @property
    def integrity_key(self) -> bytes:
        """The members' key for sum integrity tags (aggregation.integrity), derived from the federation key."""
        if self._integrity is None:
            self._integrity = integrity_key(self._key_file.read_bytes(), self.secret.key_id)
        return self._integrity

    def make(self, layout_hash: str, n_values: int, record: Callable[[KeyCertificate], None]) -> KeyBundle:
        """Key holder only: create the federation's CKKS key (once), seal it to every member, certify it.

        `record` keeps the certificate's fingerprint (in the ledger) before the bundle is returned.
        """
        me = self.identity.institution_id
        if self.federation.key_holder_id != me:
            raise KeyRingError(f"{me} is not the key holder ({self.federation.key_holder_id})")
        if not self.has_key():
            params = CkksParameters(**self.federation.ckks.model_dump())
            write_atomically(self._key_file, create_key_material(params).to_bytes(), mode=0o600)
        secret = self.secret
        raw = self._key_file.read_bytes()  # the exact bytes every member will hold: the integrity key derives from them
        sealed = {
            m.id: seal_secret(raw, unb64(m.sealing_key, f"roster {m.id} sealing_key", 32), m.id, secret.key_id)
            for m in self.federation.roster
        }
        public = secret.public_context().to_bytes()
        certificate = self.identity.sign_document(KeyCertificate(
            federation=self.federation.federation_id, federation_sha256=policy_sha256(self.federation),
            key_holder=me, key_id=secret.key_id, params=self.federation.ckks.model_dump(mode="json"),
            public_context_sha256=sha256(public), layout_hash=layout_hash, n_values=n_values,
            sealed_sha256={member: sha256(blob) for member, blob in sorted(sealed.items())}))
        self._keep(certificate, record)
        return KeyBundle(secret.key_id, layout_hash, public, sealed, n_values, certificate)

    def install(self, sealed: bytes, certificate: KeyCertificate, layout_hash: str, n_values: int,
                record: Callable[[KeyCertificate], None]) -> str:
        """Check the key holder's `certificate`, open our `sealed` copy of the key it certifies, and keep
        both (idempotent). Returns the key id installed.

        Raises KeyRingError, naming what does not hold, for a certificate the key holder's roster key
        did not sign, of other parameters, adapter (`layout_hash`, `n_values`) or federation, or one
        that does not name exactly this sealed key; a key that is not the certified one; another key
        than the one we hold.
        """
        me = self.identity.institution_id
        problem = certificate_problem(certificate, self.federation, self.roster, me, sealed)
        if problem is None and (certificate.layout_hash, certificate.n_values) != (layout_hash, n_values):
            problem = "the certified adapter layout is not ours (another model or adapter)"
        if problem is not None:
            raise KeyRingError(f"refused the federation key: {problem}", "the coordinator relayed a key the key "
                               "holder did not make for us; ask its operator and the key holder")
        secret = open_sealed(sealed, self.identity.sealing_private, me)
        material = load_secret(secret)
        if (material.key_id, sha256(material.public_context_bytes())) != (certificate.key_id,
                                                                         certificate.public_context_sha256):
            raise KeyRingError("refused the federation key: the sealed key is not the certified one")
        if self.has_key():
            if self.secret.key_id != material.key_id:
                raise KeyRingError(f"already hold key {self.secret.key_id}, offered {material.key_id}")
            return material.key_id
        # The certificate and its record first, the key last: the key file is what says "installed",
        # so a kill in between installs again (the ledger entry is written once) instead of losing it.
        self._keep(certificate, record)
        write_atomically(self._key_file, secret, mode=0o600)
        self._secret = material
        return material.key_id

    def _keep(self, certificate: KeyCertificate, record: Callable[[KeyCertificate], None]) -> None:
        write_atomically(self.dir / "key-certificate.json", certificate.model_dump_json(indent=1).encode())
        record(certificate)
