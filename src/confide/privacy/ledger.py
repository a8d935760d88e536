"""The privacy ledger: an append-only, hash-chained, signed record of what one dataset has spent.

One JSON Lines file per (institution, dataset id): the budget belongs to the dataset the institution
names, not to one version of its content (see `confide.privacy.dataset_ledger`). Every entry carries
`seq` (1, 2, ...), `time` (UTC, ISO 8601, never decreasing), `institution`, `dataset`,
`federation`, `round`, `kind`, `prev_hash` (the previous entry's `hash`; 64 zeros for the first),
`hash` = SHA-256 (hex) of the canonical JSON of the entry without `hash` and `signature`, and
`signature` = base64 Ed25519 signature by the institution's identity key over the ASCII bytes of
`confide-ledger-v1:` followed by `hash`. Canonical JSON: keys sorted, separators `,` and `:`,
ASCII only, no NaN or infinity.

A `spend` entry is written and fsynced before the round trains (write-ahead), with
`noise_multiplier`, `sample_rate`, `steps`, `clipping_norm`, `delta`, `accountant` and `epsilon`,
the cumulative epsilon over every spend entry so far including itself. Other kinds record what
happened, with free-form fields.

An interrupted append leaves at most one line without its newline at the end of the file. Readers
ignore it and report it; the next append moves it to a side file, records a `repair` entry and
carries on (the torn entry never returned to its caller, so no training followed it). Any other
damage (bad hash, broken chain, bad signature, gap in seq, time going back) makes the ledger
refuse appends with LedgerBrokenError; a ledger behind a witness of its head (a restored older
copy, a deleted file) refuses them with LedgerRollbackError.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import fcntl
import hashlib
import json
import logging
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from confide.formats import fsync_directory, write_atomically
from confide.identity import Identity, PublicIdentity
from confide.privacy.accounting import ACCOUNTANTS, History, epsilon, spend_history
from confide.privacy.errors import DoubleSpendError, LedgerBrokenError, LedgerError, LedgerRollbackError
from confide.privacy.ledger_entries import Kind, entries_of, entry_problem
from confide.privacy.ledger_format import (  # re-exported: the format is part of the ledger's API
    BASE_FIELDS,
    GENESIS_HASH,
    SEALED_FIELDS,
    SPEND_FIELDS,
    LedgerProblem,
    ParsedLedger,
    canonical_json,
    check_epsilons,
    check_signatures,
    check_structure,
    entry_hash,
    parse_ledger,
    parse_time,
    signed_message,
)

__all__ = [
    "BASE_FIELDS", "GENESIS_HASH", "SEALED_FIELDS", "SPEND_FIELDS", "LedgerProblem", "LedgerTransaction",
    "LedgerView", "PrivacyLedger",
    "canonical_json", "entry_hash", "ledger_path", "parse_ledger", "signed_message",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_KIND = re.compile(r"^[a-z][a-z_]{0,31}$")
WITNESS_SUFFIX = ".head"


def ledger_path(state_dir: Path, institution: str, dataset: str) -> Path:
    """Where the ledger of `institution`'s dataset `dataset` (its dataset id) lives under `state_dir`."""
    return Path(state_dir) / "ledger" / f"{institution}.{dataset}.jsonl"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _check_spend_fields(fields: dict) -> None:
    missing = [f for f in SPEND_FIELDS if f not in fields]
    if missing:
        raise LedgerError(f"spend entry lacks {', '.join(missing)}", "pass every DP-SGD parameter of the round")
    if "epsilon" in fields:
        raise LedgerError("spend entry: epsilon is computed by the ledger, not passed in")
    sigma, rate, steps = fields["noise_multiplier"], fields["sample_rate"], fields["steps"]
    checks = [
        (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0, "noise_multiplier must be > 0"),
        (isinstance(rate, (int, float)) and 0 < rate <= 1, "sample_rate must be in (0, 1]"),
        (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1, "steps must be a positive integer"),
        (isinstance(fields["clipping_norm"], (int, float)) and fields["clipping_norm"] > 0,
         "clipping_norm must be > 0"),
        (isinstance(fields["delta"], (int, float)) and 0 < fields["delta"] < 1, "delta must be in (0, 1)"),
        (fields["accountant"] in ACCOUNTANTS, f"accountant must be one of {', '.join(ACCOUNTANTS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise LedgerError(f"spend entry: {message}")


class LedgerView:
    """Questions about a ledger's entries, answered the same way for a plain read and inside a transaction."""

    def entries(self) -> list[dict]:  # pragma: no cover - both subclasses define it
        raise NotImplementedError

    def spend_entries(self) -> list[dict]:
        return entries_of(self.entries(), Kind.SPEND)

    def spend_history(self) -> History:
        """Accountant history `[(noise_multiplier, sample_rate, steps), ...]` of every spend entry."""
        return spend_history(self.spend_entries())

    def epsilon_spent(self) -> float:
        """Cumulative epsilon recorded by the last spend entry (0.0 if nothing was spent)."""
        spends = self.spend_entries()
        return float(spends[-1]["epsilon"]) if spends else 0.0

    def spend_for(self, federation: str, round_index: int) -> dict | None:
        """The spend entry of (`federation`, `round_index`), or None if that round spent nothing."""
        return next(
            (e for e in self.spend_entries() if e.get("federation") == federation and e.get("round") == round_index),
            None,
        )

    def has_spend(self, federation: str, round_index: int) -> bool:
        """True if (`federation`, `round_index`) already has a spend entry: never train that round again."""
        return self.spend_for(federation, round_index) is not None

    def rounds_taken(self, federation: str) -> int:
        """Number of rounds of `federation` this dataset has spent privacy on."""
        return sum(1 for e in self.spend_entries() if e.get("federation") == federation)

    def last_of(self, *kinds: Kind, federation: str | None = None, round_index: int | None = None) -> dict | None:
        """The newest entry of any of `kinds` (of that federation and round, if given), or None."""
        found = entries_of(self.entries(), *kinds, federation=federation, round_index=round_index)
        return found[-1] if found else None

    def applied_sums(self, federation: str) -> dict[int, str]:
        """Round -> SHA-256 of the sum applied in it, for every round of `federation` whose sum we applied."""
        return {int(e["round"]): str(e["sum_sha256"])
                for e in entries_of(self.entries(), Kind.APPLIED, federation=federation)}

    def head(self) -> tuple[int, str] | None:
        """`(seq, hash)` of the newest entry, or None for an empty ledger."""
        entries = self.entries()
        return (int(entries[-1]["seq"]), str(entries[-1]["hash"])) if entries else None


class PrivacyLedger(LedgerView):
    """The ledger of one institution's dataset. Reads are plain; appends are signed, locked and fsynced.

    Besides the ledger file, every append leaves a witness of the new head (`seq` and `hash`) in
    each witness directory (the ledger's own directory, plus any the institution names elsewhere).
    A ledger that lacks what a witness saw was restored from an older copy or replaced, and refuses
    to be appended to: `LedgerRollbackError`.
    """

    def __init__(
        self,
        path: Path,
        institution: str | None = None,
        dataset: str | None = None,
        identity: Identity | None = None,
        clock: Callable[[], datetime] = _utc_now,
        witness_dirs: Sequence[Path] = (),
    ) -> None:
        self.path = Path(path)
        self.institution = institution
        self.dataset = dataset
        self._identity = identity
        self._clock = clock
        self.witness_dirs = [self.path.parent, *[Path(d) for d in witness_dirs]]

    @classmethod
    def open(
        cls,
        state_dir: Path,
        institution: str,
        dataset: str,
        identity: Identity | None = None,
        clock: Callable[[], datetime] = _utc_now,
        witness_dirs: Sequence[Path] = (),
    ) -> "PrivacyLedger":
        """The ledger for (`institution`, `dataset` id) under `state_dir`; created by the first append.

        Without `identity` the ledger is read-only. `witness_dirs` are further directories (ideally
        on another disk or host) that keep a copy of the ledger's head. Raises LedgerError for ids
        unsafe in a file name or an identity of another institution.
        """
        for what, value in (("institution", institution), ("dataset", dataset)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise LedgerError(f"{what} {value!r} is not a valid id", "lowercase letters, digits, '.', '_', '-'")
        if identity is not None and identity.institution_id != institution:
            raise LedgerError(
                f"identity belongs to {identity.institution_id!r}, not {institution!r}", "check identity_dir"
            )
        return cls(ledger_path(state_dir, institution, dataset), institution, dataset, identity, clock, witness_dirs)

    # ----- reading

    def _read(self) -> ParsedLedger:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        return parse_ledger(data)

    def entries(self) -> list[dict]:
        """Every complete entry, oldest first (a torn last line is left out). Copies: safe to modify."""
        return copy.deepcopy(self._read().entries)

    def verify(self, public: PublicIdentity | None = None, recompute_epsilon: bool = False) -> list[LedgerProblem]:
        """Every problem in the file: torn last line, format, seq gaps, chain, hashes, time order,
        owner, and (given `public`) signatures; with `recompute_epsilon`, also each spend's epsilon.

        Returns an empty list for a sound ledger. Never raises for file content.
        """
        return self._problems(self._read(), public, recompute_epsilon)

    def _problems(self, parsed: ParsedLedger, public: PublicIdentity | None,
                  recompute_epsilon: bool = False) -> list[LedgerProblem]:
        problems = list(parsed.problems)
        problems += check_structure(parsed.entries, self.institution, self.dataset)
        if public is not None:
            problems += check_signatures(parsed.entries, public)
        if recompute_epsilon:
            problems += check_epsilons(parsed.entries)
        return sorted(problems, key=lambda p: p.line)

    def ensure_intact(self) -> None:
        """Raise LedgerBrokenError if the ledger has any problem other than a torn last line, and
        LedgerRollbackError if it lacks an entry one of its witnesses saw (or is missing)."""
        self._ensure_intact(self._read())

    def _ensure_intact(self, parsed: ParsedLedger) -> None:
        public = self._identity.public if self._identity is not None else None
        broken = [p for p in self._problems(parsed, public) if p.kind != "truncated"]
        if broken:
            raise LedgerBrokenError(str(self.path), broken)
        self._check_witnesses(parsed.entries)

    # ----- witnesses of the head

    def _witness_file(self, directory: Path) -> Path:
        return directory / (self.path.stem + WITNESS_SUFFIX)

    def _check_witnesses(self, entries: list[dict]) -> None:
        for directory in self.witness_dirs:
            if not directory.is_dir():
                if directory == self.path.parent or not entries:
                    continue  # nothing witnessed yet: the first append creates it
                raise LedgerRollbackError(
                    f"{self.path}: witness directory {directory} is not there",
                    "mount it again, or remove it from the policy's ledger_witness_dirs if it is gone for good")
            witness = self._read_witness(directory)
            if witness is not None:
                self.require_holds(witness["seq"], witness["hash"], f"the witness {self._witness_file(directory)}",
                                   entries)

    def _read_witness(self, directory: Path) -> dict | None:
        path = self._witness_file(directory)
        try:
            witness = json.loads(path.read_text())
            return {"seq": int(witness["seq"]), "hash": str(witness["hash"])}
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            raise LedgerRollbackError(f"{path}: unreadable ledger witness",
                                      "restore it, or delete it only if the ledger is known to be the newest copy"
                                      ) from None

    def require_holds(self, seq: int, hash_hex: str, seen_by: str, entries: list[dict] | None = None) -> None:
        """Raise LedgerRollbackError unless the ledger's entry `seq` has hash `hash_hex` (as `seen_by` saw)."""
        entries = self._read().entries if entries is None else entries
        if len(entries) >= seq >= 1 and entries[seq - 1].get("hash") == hash_hex:
            return
        raise self._rolled_back(entries, f"but {seen_by} saw entry {seq} with hash {hash_hex[:16]}...")

    def _rolled_back(self, entries: list[dict], seen: str) -> LedgerRollbackError:
        where = "is missing" if not entries and not self.path.exists() else f"holds {len(entries)} entries"
        return LedgerRollbackError(
            f"{self.path} {where}, {seen}: the ledger was restored from an older copy or replaced, and "
            "spending on it could reopen spent budget",
            "restore the newest copy of the ledger (one holding that entry); nothing is spent until then. "
            "If no such copy exists the spent budget cannot be recovered: retire this dataset_id",
        )

    def witness_hash(self, hash_hex: str, seen_by: str) -> None:
        """`witness` for a head another party knows by its hash alone (a coordinator's receipt names no
        position). Raises LedgerRollbackError if no entry of the ledger has that hash."""
        with self._locked():
            entries = self._read().entries
            seq = next((int(e["seq"]) for e in entries if e.get("hash") == hash_hex), None)
        if seq is None:
            raise self._rolled_back(entries, f"none with hash {hash_hex[:16]}... that {seen_by} saw")
        self.witness(seq, hash_hex, seen_by)

    def witness(self, seq: int, hash_hex: str, seen_by: str) -> None:
        """Check a head seen by another party (a coordinator's receipt) and remember it locally.

        Raises LedgerRollbackError if the ledger does not hold it.
        """
        with self._locked():
            entries = self._read().entries
            self.require_holds(seq, hash_hex, seen_by, entries)
            current = self._read_witness(self.path.parent)
            if current is None or current["seq"] < seq:
                self._write_witnesses(seq, hash_hex, dirs=[self.path.parent])

    def copy_head_to(self, directory: Path) -> None:
        """Make `directory` a witness of the ledger's current head (nothing to copy for an empty ledger)."""
        with self._locked():
            head = self.head()
            if head is not None:
                self._write_witnesses(*head, dirs=[Path(directory)])

    def _write_witnesses(self, seq: int, hash_hex: str, dirs: Sequence[Path] | None = None) -> None:
        body = canonical_json({"institution": self.institution, "dataset": self.dataset, "seq": seq,
                               "hash": hash_hex, "ledger": self.path.name})
        for directory in self.witness_dirs if dirs is None else dirs:
            directory.mkdir(parents=True, exist_ok=True)
            write_atomically(self._witness_file(directory), body + b"\n")

    # ----- writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock file beside the ledger: every reader-then-writer (reservations, appends, agents of
        # other federations, other processes) on this dataset takes it, so a check and the append
        # it leads to can never interleave with another's.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def transaction(self) -> Iterator["LedgerTransaction"]:
        """Hold the dataset's lock: read the ledger, decide, append, with nobody else in between.

        Raises LedgerError (read-only ledger), LedgerBrokenError (damaged) or LedgerRollbackError
        (behind a witness) before yielding.
        """
        identity = self._identity
        if identity is None or self.institution is None or self.dataset is None:
            raise LedgerError(f"{self.path}: opened read-only", "open it with the institution's identity to append")
        with self._locked():
            parsed = self._read()  # once: nobody else writes while the lock is held
            self._ensure_intact(parsed)
            created = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                if created:
                    fsync_directory(self.path.parent)
                tx = LedgerTransaction(self, fd, identity, list(parsed.entries))
                if parsed.torn:
                    tx._repair(parsed)
                yield tx
            finally:
                os.close(fd)

    def append(self, kind: str, federation: str, round_index: int, **fields: Any) -> dict:
        """Append one signed entry and fsync it before returning it (see `LedgerTransaction.append`)."""
        with self.transaction() as tx:
            return tx.append(kind, federation, round_index, **fields)


class LedgerTransaction(LedgerView):
    """The ledger as it is while its lock is held; `append` writes through to the file."""

    def __init__(self, ledger: PrivacyLedger, fd: int, identity: Identity, entries: list[dict]) -> None:
        self.ledger, self._fd, self._identity, self._entries = ledger, fd, identity, entries

    def entries(self) -> list[dict]:
        return copy.deepcopy(self._entries)

    def append(self, kind: str, federation: str, round_index: int, **fields: Any) -> dict:
        """Append one signed entry and fsync it (and the witnesses of the new head) before returning it.

        A `spend` needs every field of SPEND_FIELDS; its `epsilon` is computed here over all spends
        including this one. Raises LedgerError (bad kind or fields) or DoubleSpendError (a second
        spend for one round).
        """
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise LedgerError(f"kind {kind!r} is not a lowercase word", "e.g. spend, outcome, decline, abort")
        if not isinstance(federation, str) or not federation:
            raise LedgerError(f"federation {federation!r} must be a non-empty id")
        if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
            raise LedgerError(f"round {round_index!r} must be a non-negative integer")
        reserved = sorted(set(fields) & set(BASE_FIELDS + SEALED_FIELDS))
        if reserved:
            raise LedgerError(f"fields {', '.join(reserved)} are set by the ledger itself")
        if kind == Kind.SPEND:
            _check_spend_fields(fields)
            fields = self._spend_fields(federation, round_index, fields)
        return self._write(kind, federation, round_index, fields)

    def _spend_fields(self, federation: str, round_index: int, fields: dict) -> dict:
        spends = self.spend_entries()
        if self.has_spend(federation, round_index):
            raise DoubleSpendError(
                f"{self.ledger.path}: round {round_index} of {federation} already has a spend entry",
                "its privacy is already counted; record an abort and do not train the round again",
            )
        history = spend_history(spends)
        history.append((fields["noise_multiplier"], fields["sample_rate"], fields["steps"]))
        total = epsilon(history, fields["delta"], fields["accountant"])
        return {**fields, "epsilon": total}

    def _repair(self, parsed: ParsedLedger) -> None:
        """Move a torn last line to a side file, cut it off, and record that in a `repair` entry."""
        path = self.ledger.path
        side = path.with_name(f"{path.name}.torn-{len(parsed.entries) + 1}")
        side.write_bytes(parsed.torn)
        os.ftruncate(self._fd, parsed.complete_bytes)
        os.fsync(self._fd)
        log.warning("%s: removed an interrupted last line (%d bytes), kept in %s", path, len(parsed.torn), side)
        detail = {"torn_bytes": len(parsed.torn), "torn_sha256": hashlib.sha256(parsed.torn).hexdigest(),
                  "kept_in": side.name}
        self._write(Kind.REPAIR, "-", 0, detail)

    def _write(self, kind: str, federation: str, round_index: int, fields: dict) -> dict:
        ledger, entries = self.ledger, self._entries
        last = entries[-1] if entries else None
        now = ledger._clock().astimezone(timezone.utc)
        previous = parse_time(last["time"]) if last else None
        if previous is not None and now < previous:
            now = previous  # the wall clock went back (NTP); the ledger's time must not
        entry = {
            **fields,
            "seq": len(entries) + 1,
            "time": now.isoformat(timespec="microseconds"),
            "institution": ledger.institution,
            "dataset": ledger.dataset,
            "federation": federation,
            "round": round_index,
            "kind": kind,
            "prev_hash": last["hash"] if last else GENESIS_HASH,
        }
        try:
            entry = json.loads(canonical_json(entry))  # what a reader will parse is what gets hashed
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"entry fields are not plain JSON values: {exc}",
                              "use numbers, strings, lists, dicts") from None
        entry["hash"] = entry_hash(entry)
        entry["signature"] = base64.b64encode(self._identity.sign(signed_message(entry["hash"]))).decode("ascii")
        problem = entry_problem(entry)
        if problem is not None:  # what a reader would refuse is never written
            raise LedgerError(f"{ledger.path}: {problem}", "pass the fields confide.privacy.ledger_entries "
                              "defines for the kind")
        line = canonical_json(entry) + b"\n"
        written = os.write(self._fd, line)
        if written != len(line):
            raise LedgerError(f"{ledger.path}: short write ({written} of {len(line)} bytes)", "check free disk space")
        os.fsync(self._fd)
        entries.append(entry)
        ledger._write_witnesses(entry["seq"], entry["hash"])
        return copy.deepcopy(entry)
