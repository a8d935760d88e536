"""Is the ledger file the one the institution wrote? Hashes, chain, seq, time, owner, signatures.

The rules themselves (canonical JSON, entry hash, signed message, what a broken chain is) belong to
`confide.privacy.ledger`, the module that writes ledgers; this module only runs its verifier as an
auditor and turns each problem into a check naming the entry at fault.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from confide.identity import PublicIdentity
from confide.privacy.audit.result import Check
from confide.privacy.ledger import LedgerProblem, PrivacyLedger

# Every kind of problem the ledger's verifier reports, in the order a reader expects them, with
# what a clean result means.
INTEGRITY_CHECKS: dict[str, str] = {
    "format": "every line is a JSON entry with all base fields",
    "hash": "every entry's hash matches its content",
    "chain": "every prev_hash is the previous entry's hash",
    "seq": "seq runs 1, 2, 3, ... without gaps or reordering",
    "time": "times are ISO 8601 UTC and never go back",
    "owner": "every entry is of the same institution and dataset",
    "signature": "every entry is signed by the institution's key",
}


def ledger_owner(entries: list[dict]) -> tuple[str | None, str | None]:
    """The institution and dataset most entries name (one altered entry must not change the owner)."""
    def most_common(field: str) -> str | None:
        values = Counter(e.get(field) for e in entries if isinstance(e.get(field), str))
        return values.most_common(1)[0][0] if values else None

    return most_common("institution"), most_common("dataset")


def _entry_seq(entries: list[dict], line: int) -> int | None:
    """The `seq` the entry on `line` claims (what an auditor searches for), else its line number."""
    if 1 <= line <= len(entries):
        seq = entries[line - 1].get("seq")
        return seq if isinstance(seq, int) and not isinstance(seq, bool) else line
    return None


def _describe(problem: LedgerProblem, entries: list[dict]) -> str:
    seq = _entry_seq(entries, problem.line)
    where = f"line {problem.line}" if seq in (None, problem.line) else f"line {problem.line} (seq {seq})"
    return f"{where}: {problem.message}"


def integrity_checks(
    path: Path, entries: list[dict], key: PublicIdentity | None, key_source: str
) -> list[Check]:
    """One check per problem found, and one passing check per kind of problem not found.

    Without a key, signatures cannot be verified; that is a failure, not a pass, because nothing
    then ties the entries to the institution.
    """
    institution, dataset = ledger_owner(entries)
    ledger = PrivacyLedger(Path(path), institution, dataset)
    problems = ledger.verify(key)
    checks: list[Check] = []
    for problem in problems:
        if problem.kind == "truncated":
            # An interrupted append: the writer never returned that entry, so nothing trained on it.
            checks.append(Check("complete", None, f"{_describe(problem, entries)} (not counted)"))
        else:
            seq = _entry_seq(entries, problem.line)
            checks.append(Check(problem.kind, False, _describe(problem, entries), seq, problem.line))
    found = {p.kind for p in problems}
    for name, meaning in INTEGRITY_CHECKS.items():
        if name == "signature" and key is None:
            checks.append(Check(
                "signature", False,
                f"no public key for {institution!r}: pass a federation file listing it, or --key; "
                "the entries are not verified to be the institution's",
            ))
        elif name not in found:
            suffix = f" ({key_source})" if name == "signature" else ""
            checks.append(Check(name, True, f"{meaning}{suffix} ({len(entries)} entries)"))
    order = list(INTEGRITY_CHECKS) + ["complete"]
    return sorted(checks, key=lambda c: (order.index(c.name) if c.name in order else len(order), c.seq or 0))
