"""The privacy ledger's entries as types: one model per kind, a union discriminated by `kind`.

Every entry is checked against its kind's model when it is appended and when a ledger is read
(`confide.privacy.ledger_format.check_structure`), so an entry of an unknown kind, or one whose
field has the wrong type, is refused at the line it is on rather than misread later. The models
check shapes (which fields, of which JSON types); the rules over values (a budget, the federation's
noise floor, what an accountant accepts) stay with the budget checks and the auditor, which name
them. Fields a writer records for context (the data version trained on) are
kept as they are: every model allows extra fields.

Entries stay plain dicts (an auditor reads damaged ledgers too); code outside the ledger names their
kinds by `Kind` and selects them with `entries_of`.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, Iterable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Entry(BaseModel):
    """Fields every entry has (see `confide.privacy.ledger`)."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)
    seq: int
    time: str
    institution: str
    dataset: str
    federation: str
    round: Annotated[int, Field(ge=0)]
    prev_hash: Hex64
    hash: Hex64
    signature: str


class SpendEntry(_Entry):
    """A round's DP-SGD spend, written before training (write-ahead); `epsilon` is cumulative."""

    kind: Literal["spend"]
    noise_multiplier: Finite
    sample_rate: Finite
    steps: int
    clipping_norm: Finite
    delta: Finite
    accountant: str
    epsilon: Finite | None
    data_fingerprint: str | None = None
    train_records: int | None = None


class NonprivateEntry(_Entry):
    """A round trained without noise (experiments only): clipped, no epsilon bounds it."""

    kind: Literal["nonprivate"]
    noise_multiplier: Literal[0.0]
    sample_rate: Finite
    steps: int
    clipping_norm: Finite
    delta: Finite | None = None
    accountant: str | None = None
    """The federation's delta and accountant (entries before receipts signed spends lack them)."""


class DeclineEntry(_Entry):
    """The member sat a round out, and why."""

    kind: Literal["decline"]
    reasons: list[str]


class OutcomeEntry(_Entry):
    """What became of the round's training: `uploaded`, with the envelope's hash and public weight."""

    kind: Literal["outcome"]
    result: str | None = None
    envelope_sha256: Hex64 | None = None
    weight: Finite | None = None


class ReceiptEntry(_Entry):
    """The coordinator's signed receipt for our upload (`confide.formats.Receipt.to_dict`)."""

    kind: Literal["receipt"]
    receipt: dict[str, Any]


class AppliedEntry(_Entry):
    """The round's decrypted average was applied to the adapter."""

    kind: Literal["applied"]
    count: int
    sum_sha256: Hex64


class RoundFailedEntry(_Entry):
    """The round failed (at the coordinator, or its sum did not decrypt): nothing was applied."""

    kind: Literal["round_failed"]
    reason: str
    sum_sha256: Hex64 | None = None


class AbortEntry(_Entry):
    """The member left the federation, and why."""

    kind: Literal["abort"]
    reason: str
    count: int


class KeyEntry(_Entry):
    """The federation key this member installed, as the key holder's signed certificate names it."""

    kind: Literal["key"]
    key_id: str
    key_holder: str
    fingerprint: Hex64
    """`confide.formats.KeyCertificate.fingerprint`: the same at every member that holds the key."""


class DataVersionEntry(_Entry):
    """The dataset's content changed: a new version, which inherits every spend before it."""

    kind: Literal["data_version"]
    fingerprint: str
    records: int
    train_records: int
    previous_fingerprint: str | None
    epsilon_inherited: Finite


class RepairEntry(_Entry):
    """An interrupted last line was cut off and kept in a side file."""

    kind: Literal["repair"]
    torn_bytes: int
    torn_sha256: Hex64
    kept_in: str


LedgerEntry = Annotated[
    Union[SpendEntry, NonprivateEntry, DeclineEntry, OutcomeEntry, ReceiptEntry, AppliedEntry, RoundFailedEntry,
          AbortEntry, KeyEntry, DataVersionEntry, RepairEntry],
    Field(discriminator="kind"),
]
class Kind(str, Enum):
    """The kind of a ledger entry: what code outside the ledger names entries by (never a bare string)."""

    SPEND = "spend"
    NONPRIVATE = "nonprivate"
    DECLINE = "decline"
    OUTCOME = "outcome"
    RECEIPT = "receipt"
    APPLIED = "applied"
    ROUND_FAILED = "round_failed"
    ABORT = "abort"
    KEY = "key"
    DATA_VERSION = "data_version"
    REPAIR = "repair"


KINDS = tuple(kind.value for kind in Kind)
ACCOUNTED = (Kind.SPEND, Kind.NONPRIVATE)
"""The kinds that account for a round's training: a spend, or a no-noise experiment's record."""
_ADAPTER: TypeAdapter = TypeAdapter(LedgerEntry)


def entries_of(entries: Iterable[Any], *kinds: Kind, federation: str | None = None,
               round_index: int | None = None) -> list[dict]:
    """The entries (dicts) of any of `kinds`, of `federation` and `round_index` when given, in ledger
    order. Anything that is not a dict, as an unparsed ledger line may be, is skipped. Raises TypeError
    for a kind that is not a `Kind` (a federation or a round passed where a kind goes)."""
    if not kinds or not all(isinstance(kind, Kind) for kind in kinds):
        raise TypeError(f"entries_of takes Kind members as kinds, got {kinds!r}")
    return [e for e in entries if isinstance(e, dict) and e.get("kind") in kinds
            and (federation is None or e.get("federation") == federation)
            and (round_index is None or e.get("round") == round_index)]


def entry_problem(entry: dict) -> str | None:
    """Why `entry` is not a valid ledger entry of its kind, in one line (None: it is one)."""
    kind = entry.get("kind")
    if kind not in KINDS:
        return f"unknown kind {kind!r} (a ledger holds {', '.join(KINDS)})"
    try:
        _ADAPTER.validate_python(entry)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "entry"
        return f"{kind} entry: {where}: {first['msg'].lower()}"
    return None

