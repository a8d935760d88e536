"""The privacy ledger's file format, and the checks any reader (agent or auditor) can run on it.

Format: JSON Lines, one entry per line, each line the canonical JSON of the entry (keys sorted,
separators `,` and `:`, ASCII only, no NaN or infinity) followed by a newline. See
`confide.privacy.ledger` for the fields and the writing rules.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from confide.formats import GENESIS_HASH, canonical_json
from confide.identity import PublicIdentity
from confide.privacy.accounting import epsilon
from confide.privacy.ledger_entries import Kind, entry_problem

SIGNATURE_CONTEXT = b"confide-ledger-v1:"
BASE_FIELDS = ("seq", "time", "institution", "dataset", "federation", "round", "kind", "prev_hash")
SEALED_FIELDS = ("hash", "signature")
SPEND_FIELDS = ("noise_multiplier", "sample_rate", "steps", "clipping_norm", "delta", "accountant")
# Recomputed epsilons may differ in the last digits across numerical library versions.
_EPSILON_RECOMPUTE_TOLERANCE = 1e-3


def entry_hash(entry: dict) -> str:
    """SHA-256 (hex) over the canonical JSON of `entry` without `hash` and `signature`."""
    body = {k: v for k, v in entry.items() if k not in SEALED_FIELDS}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def signed_message(hash_hex: str) -> bytes:
    """The bytes an entry's signature covers."""
    return SIGNATURE_CONTEXT + hash_hex.encode("ascii")


@dataclass(frozen=True)
class LedgerProblem:
    """One thing wrong with a ledger file, pinned to its line."""

    line: int
    kind: str
    """`truncated`, `format`, `seq`, `chain`, `hash`, `signature`, `time`, `owner` or `epsilon`."""
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


@dataclass
class ParsedLedger:
    """A ledger file split into its complete entries (parsed), their format problems, and a torn tail."""

    entries: list[dict]
    problems: list[LedgerProblem]
    complete_bytes: int
    """Length of the file up to and including the last newline."""
    torn: bytes
    """Bytes after the last newline: an interrupted append (empty if none)."""


def parse_time(value: Any) -> datetime | None:
    """An entry's `time` as an aware datetime, or None if it is not ISO 8601 with a UTC offset."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def check_structure(entries: list[dict], institution: str | None, dataset: str | None) -> list[LedgerProblem]:
    """Everything that can be checked without a public key: each entry's shape for its kind
    (`confide.privacy.ledger_entries`), seq, chain, hashes, time, owner."""
    problems = []
    prev_hash, prev_time = GENESIS_HASH, None
    for index, entry in enumerate(entries):
        line = index + 1
        missing = [f for f in (*BASE_FIELDS, *SEALED_FIELDS) if f not in entry]
        if missing:
            problems.append(LedgerProblem(line, "format", f"missing field(s) {', '.join(missing)}"))
            prev_hash = entry.get("hash", prev_hash)
            continue
        shape = entry_problem(entry)
        if shape is not None:
            problems.append(LedgerProblem(line, "format", shape))
        if entry["seq"] != line:
            problems.append(LedgerProblem(line, "seq", f"seq is {entry['seq']!r}, expected {line}"))
        if entry["prev_hash"] != prev_hash:
            problems.append(LedgerProblem(line, "chain", "prev_hash does not match the previous entry's hash"))
        try:
            actual = entry_hash(entry)
        except (TypeError, ValueError):
            actual = None
        if actual != entry["hash"]:
            problems.append(LedgerProblem(line, "hash", "hash does not match the entry's content (altered entry)"))
        when = parse_time(entry["time"])
        if when is None:
            problems.append(LedgerProblem(line, "time", f"time {entry['time']!r} is not an ISO 8601 UTC time"))
        elif prev_time is not None and when < prev_time:
            problems.append(LedgerProblem(line, "time", f"time {entry['time']} is earlier than the previous entry's"))
        for field, expected in (("institution", institution), ("dataset", dataset)):
            if expected is not None and entry[field] != expected:
                problems.append(LedgerProblem(line, "owner", f"{field} is {entry[field]!r}, expected {expected!r}"))
        prev_hash, prev_time = entry["hash"], when or prev_time
    return problems


def check_signatures(entries: list[dict], public: PublicIdentity) -> list[LedgerProblem]:
    """One problem per entry whose signature does not verify with `public`."""
    problems = []
    for index, entry in enumerate(entries):
        try:
            signature = base64.b64decode(str(entry.get("signature", "")).encode("ascii"), validate=True)
            ok = public.verify(signature, signed_message(str(entry.get("hash", ""))))
        except (ValueError, UnicodeEncodeError):
            ok = False
        if not ok:
            problems.append(
                LedgerProblem(index + 1, "signature", "signature does not verify with the institution's key"))
    return problems


def check_epsilons(entries: list[dict]) -> list[LedgerProblem]:
    """Recompute each spend entry's cumulative epsilon from the recorded spends before and at it."""
    problems, history = [], []
    for index, entry in enumerate(entries):
        if entry.get("kind") != Kind.SPEND:
            continue
        try:
            history.append((entry["noise_multiplier"], entry["sample_rate"], entry["steps"]))
            expected = epsilon(history, entry["delta"], entry["accountant"])
        except Exception as exc:  # any malformed spend is a finding, not a crash of the audit
            problems.append(LedgerProblem(index + 1, "epsilon", f"cannot recompute epsilon: {exc}"))
            continue
        recorded = entry.get("epsilon")
        allowed = _EPSILON_RECOMPUTE_TOLERANCE * max(1.0, expected)
        if not isinstance(recorded, (int, float)) or abs(recorded - expected) > allowed:
            problems.append(
                LedgerProblem(index + 1, "epsilon", f"epsilon {recorded!r} but the spends give {expected:.6g}"))
    return problems


def parse_ledger(data: bytes) -> ParsedLedger:
    """Split a ledger file's bytes into complete entries, problems with them, and a torn tail."""
    end = data.rfind(b"\n") + 1
    complete, torn = data[:end], data[end:]
    entries, problems = [], []
    for number, raw in enumerate(complete.split(b"\n")[:-1], start=1):
        try:
            entry = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            entry = None
        if not isinstance(entry, dict):
            problems.append(LedgerProblem(number, "format", "not a JSON object"))
            entry = {}
        entries.append(entry)
    if torn:
        problems.append(LedgerProblem(
            len(entries) + 1, "truncated",
            f"last line is incomplete ({len(torn)} bytes, an interrupted write); ignored",
        ))
    return ParsedLedger(entries, problems, end, torn)
