"""The institution's registry of ledgers: which records each ledger on this machine has charged.

A dataset id names a ledger, but the budget protects records: the same records under another
`dataset_id`, another policy file or another `state_dir` are the same records, and what was spent on
them under one ledger must count under any other. The identity directory is the institution's one
fixed place on the machine, so the registry lives beside it:

    <identity_dir>/ledgers/records.key        32 random bytes (0600): keys the record digests
    <identity_dir>/ledgers/<id>.json          one registered ledger: its path, dataset id, whether it spent
    <identity_dir>/ledgers/<id>.records       the ledger's records, one keyed digest a line (every version)
    <identity_dir>/ledgers/<id>/              the ledger's outside witness (a copy of its head)
    <identity_dir>/ledgers/registry.lock      held while a ledger is opened or a round reserved

`<id>` is derived from the ledger's absolute path. Digests are HMAC-SHA256 under `records.key` of
each record's content digest, so the registry does not reveal what the records say (a guess can
be checked only with the key). A ledger is refused, before anything is recorded in it, while any
of its records is charged under another ledger that spent on them: one ledger counts every spend
on a record, so its epsilon is the record's. The outside witness keeps each ledger's head where a
restore of the state directory does not reach, so a restored ledger is refused before it spends.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from confide.formats import write_atomically
from confide.privacy.errors import LedgerError, RecordsChargedElsewhereError
from confide.privacy.ledger import PrivacyLedger

REGISTRY_DIR = "ledgers"
KEY_FILE = "records.key"
_DIGEST = re.compile(r"^[0-9a-f]{32}$")


class RegistryError(LedgerError):
    """A file of the ledger registry is unreadable or malformed: what it charged cannot be known."""


@dataclass(frozen=True)
class RegisteredLedger:
    """One ledger the institution keeps on this machine, as the registry records it."""

    ledger: Path
    dataset_id: str
    spent: bool
    """A round was reserved on it (kept here too, so a deleted ledger file still counts)."""
    entry_file: Path

    @property
    def records_file(self) -> Path:
        return self.entry_file.with_suffix(".records")

    def has_spent(self) -> bool:
        return self.spent or bool(PrivacyLedger(self.ledger).spend_entries())

    def epsilon_spent(self) -> float:
        return PrivacyLedger(self.ledger).epsilon_spent()


def registry_dir(identity_dir: Path) -> Path:
    """Where the registry of the institution whose identity is in `identity_dir` lives."""
    return Path(identity_dir) / REGISTRY_DIR


def _entry_name(ledger: Path) -> str:
    return hashlib.sha256(str(Path(ledger).absolute()).encode()).hexdigest()[:24]


class LedgerRegistry:
    """The registry under `directory` (see the module docstring). Reads never create anything."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _corrupt(self, path: Path, why: str) -> RegistryError:
        return RegistryError(
            f"{path}: corrupt ledger registry ({why})",
            f"restore {self.directory} from the identity directory's backup; deleting the file forgets what "
            "its ledger charged",
        )

    # ----- reading

    def _key(self, create: bool) -> bytes | None:
        path = self.directory / KEY_FILE
        if not path.exists():
            if not create:
                return None
            self.directory.mkdir(parents=True, exist_ok=True)
            write_atomically(path, secrets.token_hex(32).encode() + b"\n", mode=0o600)
        try:
            key = bytes.fromhex(path.read_text().strip())
        except (OSError, ValueError, UnicodeDecodeError):
            raise self._corrupt(path, "not a hex key") from None
        if len(key) != 32:
            raise self._corrupt(path, f"a key of {len(key)} bytes, not 32")
        return key

    def keyed(self, digests: Iterable[bytes], create: bool = False) -> set[str]:
        """The registry's keyed digests of `digests` (empty if the registry has no key and `create` is False)."""
        key = self._key(create)
        if key is None:
            return set()
        return {hmac.new(key, d, hashlib.sha256).hexdigest()[:32] for d in digests}

    def ledgers(self) -> list[RegisteredLedger]:
        """Every registered ledger. Raises RegistryError naming a malformed entry."""
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                data = json.loads(path.read_text())
                entry = RegisteredLedger(Path(data["ledger"]), str(data["dataset_id"]), bool(data["spent"]), path)
            except (OSError, ValueError, KeyError, TypeError):
                raise self._corrupt(path, "not a registry entry") from None
            if path.stem != _entry_name(entry.ledger):
                raise self._corrupt(path, f"names {entry.ledger}, which is not this entry's ledger")
            found.append(entry)
        return found

    def _records(self, entry: RegisteredLedger) -> set[str]:
        try:
            lines = entry.records_file.read_text().split()
        except FileNotFoundError:
            raise self._corrupt(entry.records_file, "missing") from None
        except (OSError, UnicodeDecodeError):
            raise self._corrupt(entry.records_file, "unreadable") from None
        bad = next((line for line in lines if not _DIGEST.match(line)), None)
        if bad is not None:
            raise self._corrupt(entry.records_file, f"{bad[:40]!r} is not a record digest")
        return set(lines)

    def entry(self, ledger: Path) -> RegisteredLedger | None:
        return next((e for e in self.ledgers() if e.entry_file.stem == _entry_name(ledger)), None)

    def charged_elsewhere(self, ledger: Path, digests: Iterable[bytes]) -> list[tuple[RegisteredLedger, int]]:
        """Other ledgers that spent on any of the records `digests`, with how many they share."""
        mine = self.keyed(digests)
        found = []
        for entry in self.ledgers():
            if entry.entry_file.stem == _entry_name(ledger):
                continue
            shared = len(mine & self._records(entry))
            if shared and entry.has_spent():
                found.append((entry, shared))
        return found

    def refuse_charged_elsewhere(self, ledger: Path, dataset_id: str, digests: Iterable[bytes]) -> None:
        """Raise RecordsChargedElsewhereError if another ledger spent on any of these records."""
        found = self.charged_elsewhere(ledger, digests)
        if found:
            other, shared = found[0]
            raise RecordsChargedElsewhereError(
                f"{ledger}: {shared} of the records of dataset {dataset_id} are already charged under the ledger "
                f"{other.ledger} (dataset {other.dataset_id}, epsilon {other.epsilon_spent():.3g})",
                f"set this policy's state_dir to {other.ledger.parent.parent} and data.dataset_id to "
                f"{other.dataset_id}, so that one ledger counts every spend on them",
            )

    # ----- writing (hold `locked()`)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the registry's lock: nobody opens a ledger or reserves a round of this institution meanwhile."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "registry.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def register(self, ledger: PrivacyLedger, dataset_id: str, digests: Iterable[bytes]) -> Path:
        """Add `ledger` (or its new records) to the registry; return its outside witness directory.

        A ledger registered for the first time has its current head copied to the witness (what it
        held before there was a registry is taken on trust).
        """
        name = _entry_name(ledger.path)
        entry_file = self.directory / f"{name}.json"
        existing = self.entry(ledger.path)
        keyed = self.keyed(digests, create=True)
        known = self._records(existing) if existing is not None else set()
        if not keyed <= known:
            write_atomically(entry_file.with_suffix(".records"), "".join(f"{d}\n" for d in sorted(known | keyed))
                             .encode(), mode=0o600)
        witness = entry_file.with_suffix("")
        if existing is None:
            witness.mkdir(parents=True, exist_ok=True)
            ledger.copy_head_to(witness)
            self._write_entry(entry_file, ledger.path, dataset_id, bool(ledger.spend_entries()))
        return witness

    def mark_spent(self, ledger: Path) -> None:
        """Remember that `ledger` spent on its records (call after a granted reservation)."""
        entry = self.entry(ledger)
        if entry is not None and not entry.spent:
            self._write_entry(entry.entry_file, entry.ledger, entry.dataset_id, True)

    @staticmethod
    def _write_entry(path: Path, ledger: Path, dataset_id: str, spent: bool) -> None:
        body = {"version": 1, "ledger": str(Path(ledger).absolute()), "dataset_id": dataset_id, "spent": spent}
        write_atomically(path, json.dumps(body, indent=1).encode() + b"\n", mode=0o600)
