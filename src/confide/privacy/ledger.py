"""The privacy ledger: an append-only, hash-chained, signed record of what one dataset has spent.

One JSON Lines file per (institution, dataset fingerprint). Every entry carries
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
refuse appends with LedgerBrokenError.
"""

from __future__ import annotations

import base64
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
from typing import Any, Callable

from confide.identity import Identity, PublicIdentity
from confide.privacy.accounting import ACCOUNTANTS, History, epsilon
from confide.privacy.errors import DoubleSpendError, LedgerBrokenError, LedgerError
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
    "BASE_FIELDS", "GENESIS_HASH", "SEALED_FIELDS", "SPEND_FIELDS", "LedgerProblem", "PrivacyLedger",
    "canonical_json", "entry_hash", "ledger_path", "parse_ledger", "signed_message",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_KIND = re.compile(r"^[a-z][a-z_]{0,31}$")


def ledger_path(state_dir: Path, institution: str, dataset: str) -> Path:
    """Where the ledger of `institution`'s dataset `dataset` (its fingerprint) lives under `state_dir`."""
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
        (isinstance(fields["clipping_norm"], (int, float)) and fields["clipping_norm"] > 0, "clipping_norm must be > 0"),
        (isinstance(fields["delta"], (int, float)) and 0 < fields["delta"] < 1, "delta must be in (0, 1)"),
        (fields["accountant"] in ACCOUNTANTS, f"accountant must be one of {', '.join(ACCOUNTANTS)}"),
    ]
    for ok, message in checks:
        if not ok:
            raise LedgerError(f"spend entry: {message}")


class PrivacyLedger:
    """The ledger of one institution's dataset. Reads are plain; appends are signed, locked and fsynced."""

    def __init__(
        self,
        path: Path,
        institution: str | None = None,
        dataset: str | None = None,
        identity: Identity | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.path = Path(path)
        self.institution = institution
        self.dataset = dataset
        self._identity = identity
        self._clock = clock

    @classmethod
    def open(
        cls,
        state_dir: Path,
        institution: str,
        dataset: str,
        identity: Identity | None = None,
        clock: Callable[[], datetime] = _utc_now,
    ) -> "PrivacyLedger":
        """The ledger for (`institution`, `dataset` fingerprint) under `state_dir`; created by the first append.

        Without `identity` the ledger is read-only. Raises LedgerError for ids unsafe in a file
        name or an identity of another institution.
        """
        for what, value in (("institution", institution), ("dataset", dataset)):
            if not isinstance(value, str) or not _NAME.match(value):
                raise LedgerError(f"{what} {value!r} is not a valid id", "lowercase letters, digits, '.', '_', '-'")
        if identity is not None and identity.institution_id != institution:
            raise LedgerError(
                f"identity belongs to {identity.institution_id!r}, not {institution!r}", "check identity_dir"
            )
        return cls(ledger_path(state_dir, institution, dataset), institution, dataset, identity, clock)

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

    def spend_entries(self) -> list[dict]:
        return [e for e in self.entries() if e.get("kind") == "spend"]

    def spend_history(self) -> History:
        """Accountant history `[(noise_multiplier, sample_rate, steps), ...]` of every spend entry."""
        return [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in self.spend_entries()]

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

    def verify(self, public: PublicIdentity | None = None, recompute_epsilon: bool = False) -> list[LedgerProblem]:
        """Every problem in the file: torn last line, format, seq gaps, chain, hashes, time order,
        owner, and (given `public`) signatures; with `recompute_epsilon`, also each spend's epsilon.

        Returns an empty list for a sound ledger. Never raises for file content.
        """
        parsed = self._read()
        problems = list(parsed.problems)
        problems += check_structure(parsed.entries, self.institution, self.dataset)
        if public is not None:
            problems += check_signatures(parsed.entries, public)
        if recompute_epsilon:
            problems += check_epsilons(parsed.entries)
        return sorted(problems, key=lambda p: p.line)

    def ensure_intact(self) -> None:
        """Raise LedgerBrokenError if the ledger has any problem other than a torn last line."""
        public = self._identity.public if self._identity is not None else None
        broken = [p for p in self.verify(public) if p.kind != "truncated"]
        if broken:
            raise LedgerBrokenError(str(self.path), broken)

    # ----- writing

    def append(self, kind: str, federation: str, round_index: int, **fields: Any) -> dict:
        """Append one signed entry and fsync it before returning it.

        A `spend` needs every field of SPEND_FIELDS; its `epsilon` is computed here over all spends
        including this one. Raises LedgerError (read-only ledger, bad kind or fields),
        DoubleSpendError (a second spend for one round) or LedgerBrokenError (damaged ledger).
        """
        identity = self._identity
        if identity is None or self.institution is None or self.dataset is None:
            raise LedgerError(f"{self.path}: opened read-only", "open it with the institution's identity to append")
        if not isinstance(kind, str) or not _KIND.match(kind):
            raise LedgerError(f"kind {kind!r} is not a lowercase word", "e.g. spend, outcome, decline, abort")
        if not isinstance(federation, str) or not federation:
            raise LedgerError(f"federation {federation!r} must be a non-empty id")
        if not isinstance(round_index, int) or isinstance(round_index, bool) or round_index < 0:
            raise LedgerError(f"round {round_index!r} must be a non-negative integer")
        reserved = sorted(set(fields) & set(BASE_FIELDS + SEALED_FIELDS))
        if reserved:
            raise LedgerError(f"fields {', '.join(reserved)} are set by the ledger itself")
        if kind == "spend":
            _check_spend_fields(fields)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        created = not self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            # One writer at a time: a second agent on the same dataset waits instead of forking the chain.
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.ensure_intact()
            parsed = self._read()
            entries = parsed.entries
            if parsed.torn:
                entries = entries + [self._repair(fd, parsed, identity)]
            if kind == "spend":
                entry_fields = self._spend_fields(entries, federation, round_index, fields)
            else:
                entry_fields = fields
            entry = self._write(fd, entries, identity, kind, federation, round_index, entry_fields)
        finally:
            os.close(fd)
        if created:
            _fsync_directory(self.path.parent)
        return entry

    def _spend_fields(self, entries: list[dict], federation: str, round_index: int, fields: dict) -> dict:
        spends = [e for e in entries if e.get("kind") == "spend"]
        if any(e["federation"] == federation and e["round"] == round_index for e in spends):
            raise DoubleSpendError(
                f"{self.path}: round {round_index} of {federation} already has a spend entry",
                "its privacy is already counted; record an abort and do not train the round again",
            )
        history = [(e["noise_multiplier"], e["sample_rate"], e["steps"]) for e in spends]
        history.append((fields["noise_multiplier"], fields["sample_rate"], fields["steps"]))
        total = epsilon(history, fields["delta"], fields["accountant"])
        return {**fields, "epsilon": total}

    def _repair(self, fd: int, parsed: ParsedLedger, identity: Identity) -> dict:
        """Move a torn last line to a side file, cut it off, and record that in a `repair` entry."""
        side = self.path.with_name(f"{self.path.name}.torn-{len(parsed.entries) + 1}")
        side.write_bytes(parsed.torn)
        os.ftruncate(fd, parsed.complete_bytes)
        os.fsync(fd)
        log.warning("%s: removed an interrupted last line (%d bytes), kept in %s", self.path, len(parsed.torn), side)
        detail = {"torn_bytes": len(parsed.torn), "torn_sha256": hashlib.sha256(parsed.torn).hexdigest(),
                  "kept_in": side.name}
        return self._write(fd, parsed.entries, identity, "repair", "-", 0, detail)

    def _write(self, fd: int, entries: list[dict], identity: Identity, kind: str, federation: str,
               round_index: int, fields: dict) -> dict:
        last = entries[-1] if entries else None
        now = self._clock().astimezone(timezone.utc)
        previous = parse_time(last["time"]) if last else None
        if previous is not None and now < previous:
            now = previous  # the wall clock went back (NTP); the ledger's time must not
        entry = {
            **fields,
            "seq": len(entries) + 1,
            "time": now.isoformat(timespec="microseconds"),
            "institution": self.institution,
            "dataset": self.dataset,
            "federation": federation,
            "round": round_index,
            "kind": kind,
            "prev_hash": last["hash"] if last else GENESIS_HASH,
        }
        try:
            entry = json.loads(canonical_json(entry))  # what a reader will parse is what gets hashed
        except (TypeError, ValueError) as exc:
            raise LedgerError(f"entry fields are not plain JSON values: {exc}", "use numbers, strings, lists, dicts") from None
        entry["hash"] = entry_hash(entry)
        entry["signature"] = base64.b64encode(identity.sign(signed_message(entry["hash"]))).decode("ascii")
        line = canonical_json(entry) + b"\n"
        written = os.write(fd, line)
        if written != len(line):
            raise LedgerError(f"{self.path}: short write ({written} of {len(line)} bytes)", "check free disk space")
        os.fsync(fd)
        return entry


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
