"""A dataset's ledger: opened by the dataset's id, carried across versions of the data.

The budget belongs to the dataset the institution names (`data.dataset_id`), not to one version of
its content. When the records change (added, removed, relabelled), the new version is recorded in
the same ledger as a `data_version` entry (content fingerprint, record counts) and inherits all
that was spent: every record, old or new, is charged the ledger's whole epsilon. That is
conservative (a record added today is charged for rounds it never took part in) and simple; it
never opens a fresh budget.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from confide.identity import Identity
from confide.privacy.ledger import PrivacyLedger
from confide.privacy.ledger_entries import Kind
from confide.privacy.ledger_registry import LedgerRegistry


@dataclass(frozen=True)
class DataVersion:
    """One version of a dataset's content, as the ledger records it."""

    fingerprint: str
    """SHA-256 over the records' content (order- and format-independent)."""
    records: int
    train_records: int


@dataclass(frozen=True)
class OpenedLedger:
    """What opening a dataset's ledger did, for the operator to see."""

    ledger: PrivacyLedger
    new_version: DataVersion | None
    """The data version recorded now (None: the data is the version already recorded)."""
    previous_fingerprint: str | None


def open_dataset_ledger(
    state_dir: Path,
    institution: str,
    dataset_id: str,
    identity: Identity,
    version: DataVersion,
    witness_dirs: Sequence[Path] = (),
    registry: LedgerRegistry | None = None,
    records: Sequence[bytes] = (),
) -> OpenedLedger:
    """Open the ledger of `dataset_id` and record `version` if it is new.

    All of it happens under the ledger's lock, before anything can be spent. With `registry` (the
    institution's registry of ledgers) and `records` (the data's record digests), the records are
    first checked against every other ledger the institution keeps, and then registered with this
    one, whose head the registry also witnesses. Raises LedgerBrokenError (the ledger is damaged),
    LedgerRollbackError (behind a witness of its head), RecordsChargedElsewhereError (another ledger
    spent on these records; nothing is recorded) or RegistryError (a corrupt registry).
    """
    with registry.locked() if registry is not None else contextlib.nullcontext():
        if registry is not None:
            ledger = PrivacyLedger.open(state_dir, institution, dataset_id, identity)
            registry.refuse_charged_elsewhere(ledger.path, dataset_id, records)
            witness_dirs = [*witness_dirs, registry.register(ledger, dataset_id, records)]
        return _open(state_dir, institution, dataset_id, identity, version, witness_dirs)


def _open(state_dir: Path, institution: str, dataset_id: str, identity: Identity, version: DataVersion,
          witness_dirs: Sequence[Path]) -> OpenedLedger:
    ledger = PrivacyLedger.open(state_dir, institution, dataset_id, identity, witness_dirs=witness_dirs)
    with ledger.transaction() as tx:
        last = tx.last_of(Kind.DATA_VERSION)
        previous = last.get("fingerprint") if last else None
        recorded = None
        if previous != version.fingerprint:
            tx.append(Kind.DATA_VERSION, "-", 0, fingerprint=version.fingerprint, records=version.records,
                      train_records=version.train_records, previous_fingerprint=previous,
                      epsilon_inherited=tx.epsilon_spent())
            recorded = version
    return OpenedLedger(ledger, recorded, previous)
