"""What crosses the wire between coordinator and agents: versioned pydantic documents.

Every JSON body, request or reply, is one of these models and carries `version`. Ciphertexts
(update and sum envelopes, the public context, sealed keys) are not JSON: they travel as
application/octet-stream with their own binary header, except inside `KeySetupRequest`, where the
small public context and sealed keys ride base64-encoded so the whole set-up is one document.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from confide.formats import (
    AppliedStatement,
    ContributionStatement,
    FederationStatus,
    KeyCertificate,
    Receipt,
    RevealStatement,
    RoundStatus,
)

WIRE_VERSION = 1

HEX64 = r"^[0-9a-f]{64}$"
HEX32 = r"^[0-9a-f]{32}$"
INSTITUTION = r"^[a-z0-9][a-z0-9_.-]{0,63}$"


class WireModel(BaseModel):
    """Base of every message: unknown fields are refused, the version is checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    version: Literal[1] = Field(WIRE_VERSION, description="Message schema version.")


class Health(WireModel):
    """Reply of `GET /health` (no authentication)."""

    status: Literal["ok"] = "ok"
    federation_id: str
    federation_status: FederationStatus


class ErrorReply(WireModel):
    """Every 4xx and 5xx reply: what was refused and why, in one line."""

    error: str = Field(description="Short machine-readable kind, e.g. `unauthorized`, `conflict`.")
    detail: str = Field(description="One line saying what is wrong and how to fix it.")


class RoundView(WireModel):
    """One round as a member sees it. Other members' identities and reasons are not disclosed."""

    index: int
    status: RoundStatus
    opened_at: float = Field(description="Unix time (s) the round opened.")
    deadline_at: float = Field(description="Unix time (s) after which it stops accepting contributions.")
    uploads: int = Field(description="Uploads accepted so far.")
    declines: int = Field(description="Declines recorded so far.")
    mine: Literal["uploaded", "declined"] | None = Field(description="What the asking member did in this round.")
    contributors: int = Field(description="Uploads in the sum (0 until summed).")
    sum_sha256: str | None = Field(description="SHA-256 of the sum envelope once summed.")
    failure: str | None = Field(description="Why the round failed, if it did.")
    left_out: int = Field(0, description="Accepted uploads kept out of the sum while a faulty member is sought.")
    mine_left_out: bool = Field(False, description="Whether the asking member's upload was kept out of the sum.")
    undecryptable: int = Field(0, description="Members that reported the sum does not decrypt.")
    applied: list[AppliedStatement] = Field(
        default_factory=list, description="Members' signed statements of the sum they applied (latest summed "
        "rounds only): each member checks them against the sum it applied.")


class FederationView(WireModel):
    """Reply of `GET /v1/federation`: everything an agent needs to decide what to do next."""

    federation_id: str
    policy_sha256: str = Field(description="SHA-256 of the federation file as the coordinator loaded it.")
    status: FederationStatus
    members: list[str]
    key_holder: str
    min_institutions: int
    total_rounds: int
    key_id: str | None = Field(description="The federation's CKKS key id once keys are published.")
    layout_hash: str | None = Field(description="The adapter layout every envelope must carry.")
    n_values: int | None = Field(None, description="Values every envelope must hold, if the key holder said.")
    coordinator_signing_key: str = Field(description="Ed25519 key (base64) that signs receipts.")
    revision: int = Field(description="Grows with every state change; pass it back as `after_revision`.")
    excluded: dict[str, str] = Field(
        default_factory=dict, description="Members whose uploads are refused because their sums kept not "
        "decrypting, with the reason.")
    rounds: list[RoundView]
    last_receipt: ReceiptReply | None = Field(
        None, description="The asking member's latest receipt: its ledger must hold the head it names.")


class KeySetupRequest(WireModel):
    """Body of `PUT /v1/keys` (key holder only): the public context and one sealed key per member."""

    key_id: str = Field(pattern=HEX32, description="The CKKS key id (32 hex characters).")
    layout_hash: str = Field(pattern=HEX64, description="SHA-256 (hex) of the adapter layout.")
    n_values: int | None = Field(
        None, ge=1, le=1 << 40, description="Adapter values in every update (the layout's size). When given, the "
        "coordinator refuses uploads with another count; optional so that older key holders still work.")
    public_context: str = Field(max_length=1 << 20, description="Public context bytes, base64.")
    sealed: dict[str, str] = Field(
        description="Member id -> that member's sealed secret key, base64. Exactly the roster.", max_length=1000
    )
    certificate_signature: str = Field(
        max_length=200, description="The key holder's Ed25519 signature (base64) of the key certificate this "
        "set-up makes (`confide.formats.KeyCertificate`): members verify it before installing the key.")


class KeyCertificateReply(WireModel):
    """Reply of `GET /v1/keys/certificate`: the key holder's signed certificate of the federation key."""

    certificate: KeyCertificate


class RoundContributions(WireModel):
    """Reply of `GET /v1/rounds/{round}/contributions`: the signed statements of the uploads in the sum, in
    order, and the committee's signed reveals for them (what unmasks the sum)."""

    round: int
    statements: list[ContributionStatement]
    reveals: list[RevealStatement] = Field(default_factory=list)


class UnmaskRequest(WireModel):
    """Reply of `GET /v1/rounds/{round}/unmask/{institution}`: what a committee member reveals over: the
    contributors' signed statements and the mask share each sealed to it (base64)."""

    round: int
    statements: list[ContributionStatement]
    shares: dict[str, str]


class RevealReply(WireModel):
    """Reply of `POST /v1/rounds/{round}/reveals/{institution}`."""

    round: int
    institution: str


class AppliedReport(WireModel):
    """Body of `POST /v1/rounds/{round}/applied/{institution}`: the member's signature of the sum it applied."""

    sum_sha256: str = Field(pattern=HEX64, description="SHA-256 of the sum envelope the member applied.")
    signature: str = Field(max_length=200, description="Ed25519 signature (base64) of the applied statement.")


class AppliedReply(WireModel):
    """Reply of a kept applied statement."""

    round: int
    institution: str


class KeySetupReply(WireModel):
    """Reply of `PUT /v1/keys`."""

    key_id: str
    sealed_for: list[str]


class DeclineRequest(WireModel):
    """Body of `POST /v1/rounds/{round}/declines/{institution}`."""

    reason: str = Field(min_length=1, max_length=2000, description="Why the member sits this round out.")


class DeclineReply(WireModel):
    """Reply of a recorded decline."""

    round: int
    institution: str


class UndecryptableReport(WireModel):
    """Body of `POST /v1/rounds/{round}/reports/{institution}`: the round's sum failed our decryption checks."""

    sum_sha256: str = Field(pattern=HEX64, description="SHA-256 of the sum envelope that did not decrypt.")
    reason: str = Field(min_length=1, max_length=500, description="Which check failed (count, padding, weight).")


class ReportReply(WireModel):
    """Reply of a recorded report: how many members reported this round's sum so far."""

    round: int
    institution: str
    reports: int


class DeclaredSpendReply(BaseModel):
    """The round's DP-SGD spend as the member declared it with its upload (`confide.formats.DeclaredSpend`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    noise_multiplier: float = Field(description="Noise standard deviation over the clipping norm (sigma).")
    sample_rate: float = Field(description="Poisson sampling probability per step.")
    steps: int = Field(description="DP-SGD steps in the round.")
    clipping_norm: float = Field(description="Per-sample gradient clipping norm.")
    delta: float = Field(description="The delta the round is accounted at.")
    accountant: str = Field(description="The accountant that turns the spend into epsilon.")
    entry_hash: str = Field(pattern=HEX64, description="Hash of the ledger entry that records the spend.")


class ReceiptReply(WireModel):
    """The coordinator's signed receipt for an accepted upload; the member keeps it in its ledger.

    The signature (Ed25519, base64) covers the canonical JSON of federation, round, institution,
    envelope_sha256, ledger_head and spend (see `confide.formats.Receipt.message`).
    """

    federation: str
    round: int
    institution: str
    envelope_sha256: str = Field(pattern=HEX64)
    size_bytes: int
    signature: str
    ledger_head: str = Field(pattern=HEX64, description="The hash of the member's newest ledger entry at upload.")
    spend: DeclaredSpendReply = Field(description="The round's declared DP-SGD spend, as signed.")

    def to_receipt(self) -> Receipt:
        """The signed receipt this reply carries (`size_bytes` is not part of it)."""
        return Receipt.from_dict(self.model_dump(exclude={"version", "size_bytes"}))


FederationView.model_rebuild()
