"""Formats both sides of a federation share: canonical JSON, hashing, atomic writes, the signed receipt.

One definition each. The coordinator signs receipts, the member checks and keeps them, the auditor
verifies them; if each had its own copy of the signed bytes, the three would drift apart. This
module imports nothing of confide's, so every package may use it. The signed documents members
exchange through the coordinator (key certificate, contribution and applied statements) live here too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

GENESIS_HASH = "0" * 64

# Round and federation status literals, as the coordinator's state and the wire spell them.
RoundStatus = Literal["open", "collecting", "unmasking", "summed", "closed", "failed"]
FederationStatus = Literal["setup", "running", "finished"]
ROUND_ACTIVE: tuple[RoundStatus, ...] = ("open", "collecting")
"""A round that still takes uploads and declines."""
ROUND_PENDING: tuple[RoundStatus, ...] = (*ROUND_ACTIVE, "unmasking")
"""A round the coordinator has not settled yet: still taking answers, or waiting for the committee."""
ROUND_SUMMED: tuple[RoundStatus, ...] = ("summed", "closed")
"""A round with an encrypted sum to fetch (`closed`: summed after its deadline with those who answered)."""

# A member's own view of one round (confide.platform.member.engine): its answer, then how it settled.
MemberRoundState = Literal["declining", "declined", "reserved", "trained", "receipted", "missed",
                           "applied", "failed", "aborted"]
MEMBER_ROUND_ANSWERED: tuple[MemberRoundState, ...] = ("declined", "receipted", "missed")
"""The coordinator has our answer (or the round closed without it): nothing more to send."""
MEMBER_ROUND_SETTLED: tuple[MemberRoundState, ...] = ("applied", "failed", "aborted")
"""Terminal: the round's outcome is applied to (or kept out of) our adapter."""


def canonical_json(value: Any) -> bytes:
    """Keys sorted, separators `,` and `:`, ASCII only, no NaN or infinity: the bytes that get hashed and signed.

    Raises ValueError for NaN/infinity and TypeError for values that are not plain JSON.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def sha256(data: bytes) -> str:
    """SHA-256 of `data` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the whole new one.

    The file and its directory entry are fsynced. `mode` applies to the new file (0o600 for
    anything only its owner may read: secrets, decrypted results).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not widen or narrow what was asked for
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make a new or renamed file's directory entry durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def policy_sha256(policy: Any) -> str:
    """SHA-256 of a policy's content (a pydantic model; not its file's formatting), as every side computes it."""
    return sha256(canonical_json(policy.model_dump(mode="json")))


RECEIPT_FIELDS = ("federation", "round", "institution", "envelope_sha256")
DECLARED_SPEND_FIELDS = ("noise_multiplier", "sample_rate", "steps", "clipping_norm", "delta", "accountant")


@dataclass(frozen=True)
class DeclaredSpend:
    """The DP-SGD round behind an upload, as its member declares it and the coordinator signs it.

    The fields are those of the member's ledger entry that accounts for the round (a `spend`, or a
    `nonprivate` entry of a no-noise experiment, whose noise multiplier is 0), and `entry_hash` is
    that entry's hash. Signed into the receipt by another party, they pin what the round spent: a
    ledger re-signed later with other parameters contradicts a signature its owner cannot forge.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float
    delta: float
    accountant: str
    entry_hash: str

    def to_dict(self) -> dict:
        return {**{f: getattr(self, f) for f in DECLARED_SPEND_FIELDS}, "entry_hash": self.entry_hash}

    @classmethod
    def from_dict(cls, data: dict) -> "DeclaredSpend":
        """Raises KeyError/TypeError/ValueError for a malformed declaration."""
        if not isinstance(data, dict):
            raise TypeError("a declared spend is a JSON object")
        steps = data["steps"]
        if isinstance(steps, bool) or not isinstance(steps, int):
            raise TypeError(f"steps {steps!r} is not an integer")
        return cls(float(data["noise_multiplier"]), float(data["sample_rate"]), steps,
                   float(data["clipping_norm"]), float(data["delta"]), str(data["accountant"]),
                   str(data["entry_hash"]))

    @classmethod
    def of_entry(cls, entry: dict) -> "DeclaredSpend":
        """The declaration for a ledger entry (`spend`, or `nonprivate` with its noise multiplier 0). Raises
        KeyError if it lacks a field."""
        return cls.from_dict({**{f: entry.get(f) for f in DECLARED_SPEND_FIELDS}, "entry_hash": entry["hash"]})

    def differences(self, entry: dict) -> list[str]:
        """The fields in which ledger entry `entry` disagrees with this declaration (empty: it matches)."""
        try:
            recorded = DeclaredSpend.of_entry(entry)
        except (KeyError, TypeError, ValueError):
            return ["the entry lacks DP-SGD parameters"]
        return [f"{name} {getattr(recorded, name)!r} (signed: {getattr(self, name)!r})"
                for name in (*DECLARED_SPEND_FIELDS, "entry_hash") if getattr(recorded, name) != getattr(self, name)]


@dataclass(frozen=True)
class Receipt:
    """The coordinator's signed statement that it accepted one upload.

    `ledger_head` is the hash of the uploading member's newest ledger entry when it uploaded: a
    witness, kept by another party, of how far that ledger had got. A ledger later found without
    that entry was rolled back or replaced. Only the hash travels, not the entry's position: a
    position would count the dataset's entries and show its rounds in other federations. `spend` is the round's DP-SGD
    parameters as the member declared them and the coordinator checked them against the
    federation file. The signature covers every field but itself.
    """

    federation: str
    round: int
    institution: str
    envelope_sha256: str
    ledger_head: str
    spend: DeclaredSpend
    signature: str = ""

    def body(self) -> dict:
        """The signed fields."""
        return {**{f: getattr(self, f) for f in RECEIPT_FIELDS}, "ledger_head": self.ledger_head,
                "spend": self.spend.to_dict()}

    def message(self) -> bytes:
        """The exact bytes the coordinator signs."""
        return canonical_json(self.body())

    def to_dict(self) -> dict:
        return {**self.body(), "signature": self.signature}

    @classmethod
    def from_dict(cls, data: dict) -> "Receipt":
        """A receipt from its dict form. Raises KeyError/TypeError/ValueError for a malformed one
        (a missing ledger head or spend included)."""
        return cls(str(data["federation"]), int(data["round"]), str(data["institution"]),
                   str(data["envelope_sha256"]), str(data["ledger_head"]),
                   DeclaredSpend.from_dict(data["spend"]), str(data.get("signature", "")))


# --------------------------------------------------------------------------------------------------
# Documents a member signs (or the key holder), relayed by the coordinator, which cannot forge them.
# Each signature covers `canonical_json({"document": <its name>, **fields})`: the name keeps a
# signature on one kind of document from being read as another, or as a signed request.


class SignedDocument(BaseModel):
    """Fields plus an Ed25519 signature (base64) over `message()`; `DOCUMENT` names the kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    DOCUMENT: ClassVar[str]
    signature: str = Field("", max_length=200, description="Ed25519 signature (base64) over the other fields.")

    def message(self) -> bytes:
        """The exact bytes the signer signs."""
        return canonical_json({"document": self.DOCUMENT, **self.model_dump(mode="json", exclude={"signature"})})


class KeyCertificate(SignedDocument):
    """The key holder's statement of the federation key: what every member checks before installing it.

    Signed with the key holder's roster key, it binds the key id to the federation, the CKKS
    parameters, the public context the coordinator holds and the digest of each member's sealed
    copy, so a coordinator that seals a key of its own to a member is refused.
    """

    DOCUMENT: ClassVar[str] = "confide key certificate v1"
    federation: str
    federation_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="`policy_sha256` of the federation file: "
                                   "a key made for an earlier federation of the same id is refused.")
    key_holder: str
    key_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    params: dict[str, Any] = Field(description="The CKKS parameters (confide.policies.CkksParameters).")
    public_context_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    layout_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    n_values: int | None = None
    sealed_sha256: dict[str, str] = Field(description="Member id -> SHA-256 of that member's sealed key.")

    @property
    def fingerprint(self) -> str:
        """SHA-256 naming the key, its parameters, its public context and who made it for which federation:
        the same at every member (unlike the sealed copies, which are drawn afresh on each set-up)."""
        return sha256(canonical_json(self.model_dump(mode="json", include={
            "federation", "federation_sha256", "key_holder", "key_id", "params", "public_context_sha256"})))


class ContributionStatement(SignedDocument):
    """A member's signed statement of its upload: which envelope, which seed, and its integrity tags.

    The tags are the member's share of the sum's check (`confide.aggregation.integrity`): members
    refuse a sum that is not exactly the contributions whose statements come with it.
    """

    DOCUMENT: ClassVar[str] = "confide contribution v1"
    federation: str
    round: int = Field(ge=1)
    institution: str
    key_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    envelope_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    seed: str = Field(pattern=r"^[0-9a-f]{64}$", description="The envelope's seed (hex): names its `a` polynomials.")
    tags: tuple[Annotated[str, Field(pattern=r"^(0|[1-9][0-9]{0,19})$")], ...] = Field(
        min_length=1, max_length=8, description="Integrity tags, decimal, below q0.")
    min_cohort: int = Field(1, ge=1, le=1_000_000, description="The fewest contributions the member lets a sum "
                            "holding its update have: no honest member opens a smaller one.")
    shares: dict[str, Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = Field(
        default_factory=dict, max_length=64,
        description="Committee member -> SHA-256 of its sealed share of this upload's mask (`aggregation.secagg`).")
    previous_sum: str = Field("", pattern=r"^([0-9a-f]{64})?$", description="SHA-256 of the sum the member "
                              "applied in the round before ('' if none): the committee unmasks no set whose "
                              "members were handed different sums.")


def contributors_sha256(statements: "Iterable[ContributionStatement]") -> str:
    """Names a contributor set: the digest of its (institution, envelope) pairs, in id order. A
    committee member reveals shares for one such set per round, and every reveal names it."""
    pairs = sorted((s.institution, s.envelope_sha256) for s in statements)
    return sha256(canonical_json([list(p) for p in pairs]))


class RevealStatement(SignedDocument):
    """A committee member's signed reveal: the sum of the mask shares it holds over one contributor set."""

    DOCUMENT: ClassVar[str] = "confide reveal v1"
    federation: str
    round: int = Field(ge=1)
    institution: str
    key_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    contributors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="`contributors_sha256` of the set.")
    share_sum: str = Field(max_length=200_000, description="The share sum: little-endian uint32 field elements, "
                           "base64.")


class StatementClaims(NamedTuple):
    """What an upload carries of its member's contribution statement: the fields only the member can
    give, and the signature. The coordinator rebuilds the rest from the envelope itself."""

    tags: tuple[str, ...]
    min_cohort: int
    signature: str
    previous_sum: str = ""

    @classmethod
    def of(cls, statement: ContributionStatement) -> "StatementClaims":
        return cls(tuple(statement.tags), statement.min_cohort, statement.signature, statement.previous_sum)


class AppliedStatement(SignedDocument):
    """A member's signed statement of the sum it applied in a round: members compare them (a split federation)."""

    DOCUMENT: ClassVar[str] = "confide applied sum v1"
    federation: str
    round: int = Field(ge=1)
    institution: str
    sum_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
