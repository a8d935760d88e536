"""A dataset's ledger: opened by the dataset's id, carried across versions of the data and older formats.

The budget belongs to the dataset the institution names (`data.dataset_id`), not to one version of
its content. When the records change (added, removed, relabelled), the new version is recorded in
the same ledger as a `data_version` entry (content fingerprint, record counts) and inherits all
that was spent: every record, old or new, is charged the ledger's whole epsilon. That is
conservative (a record added today is charged for rounds it never took part in) and simple; it
never opens a fresh budget.

Ledgers written before dataset ids existed were kept per content fingerprint
(`<institution>.<64 hex>.jsonl`). The first open of a dataset's ledger migrates them: each one's
spends are copied, in order, into the new ledger after a `migrated` entry naming the old file, its
head hash and its fingerprint, so the new ledger is charged everything the old ones spent. The old
files are verified first (a broken one is refused, not migrated) and then renamed to
`*.jsonl.migrated`, never deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from confide.formats import fsync_directory
from confide.identity import Identity
from confide.privacy.errors import LedgerBrokenError
from confide.privacy.ledger import SPEND_FIELDS, LedgerTransaction, PrivacyLedger
from confide.privacy.ledger_registry import LedgerRegistry

log = logging.getLogger(__name__)

_LEGACY = re.compile(r"^(?P<institution>[a-z0-9][a-z0-9_.-]*)\.(?P<fingerprint>[0-9a-f]{64})\.jsonl$")
MIGRATED_SUFFIX = ".migrated"


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
    migrated: tuple[str, ...]
    """Older per-fingerprint ledgers copied into this one (file names)."""
    new_version: DataVersion | None
    """The data version recorded now (None: the data is the version already recorded)."""
    previous_fingerprint: str | None


def legacy_ledgers(state_dir: Path, institution: str, dataset_id: str) -> list[Path]:
    """`institution`'s per-fingerprint ledgers under `state_dir` (the format before dataset ids)."""
    directory = Path(state_dir) / "ledger"
    if not directory.is_dir():
        return []
    found = []
    for path in sorted(directory.iterdir()):
        match = _LEGACY.match(path.name)
        if match and match["institution"] == institution and match["fingerprint"] != dataset_id:
            found.append(path)
    return found


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
    """Open the ledger of `dataset_id`, migrate older ledgers into it, and record `version` if it is new.

    All of it happens under the ledger's lock, before anything can be spent. With `registry` (the
    institution's registry of ledgers) and `records` (the data's record digests), the records are
    first checked against every other ledger the institution keeps, and then registered with this
    one, whose head the registry also witnesses. Raises LedgerBrokenError (this ledger or a legacy
    one is damaged), LedgerRollbackError (behind a witness of its head), RecordsChargedElsewhereError
    (another ledger spent on these records; nothing is recorded) or RegistryError (a corrupt registry).
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
    migrated: list[Path] = []
    with ledger.transaction() as tx:
        if not tx.entries():
            migrated = legacy_ledgers(state_dir, institution, dataset_id)
            for path in migrated:
                _copy_legacy(tx, path, identity)
        last = tx.last_of("data_version")
        previous = last.get("fingerprint") if last else None
        recorded = None
        if previous != version.fingerprint:
            tx.append("data_version", "-", 0, fingerprint=version.fingerprint, records=version.records,
                      train_records=version.train_records, previous_fingerprint=previous,
                      epsilon_inherited=tx.epsilon_spent())
            recorded = version
    for path in migrated:
        path.rename(path.with_name(path.name + MIGRATED_SUFFIX))
        log.warning("%s: migrated into %s, kept as %s%s", path, ledger.path, path.name, MIGRATED_SUFFIX)
    if migrated:
        fsync_directory(ledger.path.parent)
    return OpenedLedger(ledger, tuple(p.name for p in migrated), recorded, previous)


def _copy_legacy(tx: LedgerTransaction, path: Path, identity: Identity) -> None:
    match = _LEGACY.match(path.name)
    assert match is not None
    old = PrivacyLedger(path, match["institution"], match["fingerprint"])
    problems = [p for p in old.verify(identity.public) if p.kind != "truncated"]
    if problems:
        raise LedgerBrokenError(str(path), problems)
    entries = old.entries()
    data = path.read_bytes()
    tx.append("migrated", "-", 0, source=path.name, source_sha256=hashlib.sha256(data).hexdigest(),
              source_entries=len(entries), source_head=entries[-1]["hash"] if entries else None,
              fingerprint=match["fingerprint"])
    for entry in entries:
        if entry.get("kind") != "spend":
            continue
        tx.append("spend", entry["federation"], entry["round"], **{f: entry[f] for f in SPEND_FIELDS},
                  migrated_from=path.name, migrated_seq=entry["seq"], original_time=entry["time"])
