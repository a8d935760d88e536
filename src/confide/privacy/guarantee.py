"""The privacy guarantee a saved adapter carries: `privacy.json` beside the PEFT files.

One definition of the format, read and written here: the platform writes it when a member saves
its adapter (and the model card `README.md` rendered from it), the auditor's `confide audit
adapter` reads it back and checks it against the ledgers and the coordinator's receipts.

An institution's guarantee is the epsilon of the DP-SGD steps its ledger records for *this*
federation, composed by the federation's accountant at its delta: the adapter is a function of
those steps only (post-processing), so it is (epsilon, delta)-DP with respect to one record of that
institution's dataset. The ledger's cumulative epsilon (all federations on the dataset) is stated
beside it, and the ledger head (seq, hash) says which record the numbers were read from.

That epsilon is for one record added or removed. The coordinator learns each member's record count
(every spend it signs declares a sample rate, expected batch / records), so against it, with a
member who decrypts, only the replace-one guarantee holds: one record swapped for another, the
count unchanged. The card states that epsilon too, composed by dp_accounting's PLD accountant
(the only one here that models replace-one neighbours).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from confide.errors import BadInput
from confide.formats import sha256, write_atomically
from confide.privacy.accounting import epsilon, spend_history
from confide.privacy.ledger_entries import Kind, entries_of

CARD_FILE = "privacy.json"
CARD_FORMAT = "confide-adapter-guarantee"
CARD_VERSION = 1
"""The card's format; a card of another version is refused (CHANGELOG.md: how formats change)."""
WEIGHTS_FILE = "adapter_model.safetensors"


class GuaranteeError(BadInput):
    """An adapter directory's privacy.json is missing, unreadable or not in this format."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message + (f" ({hint})" if hint else ""))


@dataclass(frozen=True)
class InstitutionGuarantee:
    """What one institution's ledger says about its part in the adapter."""

    institution: str
    dataset: str
    private: bool
    """False for a no-DP reference run (a sweep's): then there is no guarantee and `epsilon` is None."""
    epsilon: float | None
    """Composed epsilon of this federation's spends on the dataset (the adapter's guarantee)."""
    delta: float
    accountant: str
    rounds_trained: int
    """Rounds of this federation the dataset spent privacy on."""
    dataset_epsilon: float | None
    """Cumulative epsilon the ledger records for the dataset (every federation)."""
    budget_epsilon: float | None
    ledger_head: str | None
    """Hash of the ledger's newest entry when the guarantee was read from it (never its position, which
    would count the dataset's entries in other federations)."""
    replace_one_epsilon: float | None
    """Epsilon of the same spends for one record swapped for another (PLD; None: no DP)."""


@dataclass(frozen=True)
class AdapterGuarantee:
    """The whole card: what was trained, by which federation, under which guarantee per institution."""

    federation: str
    base_model: str
    task: str
    labels: list[str]
    rounds_planned: int
    rounds_applied: int
    institutions: int
    """Members on the federation's roster."""
    adapter: dict[str, Any]
    """LoRA settings: rank, alpha, target_modules, freeze_a."""
    weights_sha256: str
    """SHA-256 of adapter_model.safetensors, so the card cannot be moved onto other weights."""
    guarantees: list[InstitutionGuarantee] = field(default_factory=list)
    key_fingerprint: str | None = None
    """The federation key's fingerprint (`confide.formats.KeyCertificate.fingerprint`) as the member's
    ledger records it: every member of one federation holds the same; None for a card without it."""
    base_model_id: str | None = None
    """What anyone can resolve the base model by: a bundled model's Hugging Face hub id, else the source as
    given (`base_model` is the federation file's `model.source`, which an auditor compares)."""
    base_model_file: str | None = None
    """The file the base weights were read from when the hub id alone does not say (a GGUF quantization)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {"format": CARD_FORMAT, "version": CARD_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = CARD_FILE) -> "AdapterGuarantee":
        """Parse a card; raises GuaranteeError naming the field for anything malformed."""
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            raise GuaranteeError(f"{where}: not a confide adapter card (format is not {CARD_FORMAT!r})")
        if data.get("version") != CARD_VERSION:
            raise GuaranteeError(f"{where}: card format {data.get('version')!r}; this confide reads format "
                                 f"{CARD_VERSION}", "audit it with the confide that wrote it")
        body = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            rows = [InstitutionGuarantee(**g) for g in body.pop("guarantees")]
            return cls(**body, guarantees=rows)
        except (KeyError, TypeError) as exc:
            raise GuaranteeError(f"{where}: malformed card ({exc})", "regenerate it by saving the adapter") from None

    def with_guarantees(self, rows: Sequence[InstitutionGuarantee]) -> "AdapterGuarantee":
        """The same card listing `rows` (one per institution, sorted by id)."""
        by_id = {g.institution: g for g in rows}
        return AdapterGuarantee(**{**self.__dict__, "guarantees": [by_id[k] for k in sorted(by_id)]})


def federation_spends(entries: Sequence[dict], federation: str) -> list[dict]:
    """The ledger's spend entries for `federation`, in ledger order."""
    return entries_of(entries, Kind.SPEND, federation=federation)


def guarantee_from_entries(
    entries: Sequence[dict], institution: str, dataset: str, federation: str, delta: float, accountant: str,
    private: bool = True, budget_epsilon: float | None = None,
) -> InstitutionGuarantee:
    """Read an institution's guarantee for `federation` from its ledger entries (in file order).

    Raises AccountingError for a malformed spend history or an unknown accountant.
    """
    spends = federation_spends(entries, federation)
    history = spend_history(spends)
    all_spends = entries_of(entries, Kind.SPEND)
    head = entries[-1] if entries else None
    return InstitutionGuarantee(
        institution=institution,
        dataset=dataset,
        private=private,
        epsilon=epsilon(history, delta, accountant) if private else None,
        delta=delta,
        accountant=accountant,
        rounds_trained=len(spends) if private else 0,
        dataset_epsilon=float(all_spends[-1]["epsilon"]) if all_spends else 0.0,
        budget_epsilon=budget_epsilon,
        ledger_head=str(head["hash"]) if head else None,
        replace_one_epsilon=replace_one_epsilon(history, delta) if private else None,
    )


def replace_one_epsilon(history: Sequence[tuple[float, float, int]], delta: float) -> float:
    """Epsilon at `delta` of `history` for replace-one neighbours, by dp_accounting's PLD accountant."""
    return epsilon(history, delta, "pld", replace_one=True)


def weights_digest(adapter_dir: Path) -> str:
    """SHA-256 of the adapter's weights file; raises GuaranteeError if it is missing."""
    path = Path(adapter_dir) / WEIGHTS_FILE
    try:
        return sha256(path.read_bytes())
    except FileNotFoundError:
        raise GuaranteeError(f"{path}: file not found", "pass a directory written by confide's save_adapter") from None


def _json_number(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def write_guarantee(adapter_dir: Path, card: AdapterGuarantee) -> Path:
    """Write `privacy.json` atomically (infinite numbers as null); returns its path."""
    data = card.to_dict()
    data["guarantees"] = [{k: _json_number(v) for k, v in g.items()} for g in data["guarantees"]]
    path = Path(adapter_dir) / CARD_FILE
    write_atomically(path, (json.dumps(data, indent=2, sort_keys=False) + "\n").encode())
    return path


def read_guarantee(adapter_dir: Path) -> AdapterGuarantee:
    """The card of an adapter directory; raises GuaranteeError if absent or malformed."""
    path = Path(adapter_dir) / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GuaranteeError(f"{path}: file not found",
                             "the adapter was saved without a card; save it again with this confide") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise GuaranteeError(f"{path}: cannot read the card ({exc})") from None
    return AdapterGuarantee.from_dict(data, str(path))
