"""The coordinator's signed upload receipts: evidence of contributions a ledger must account for.

A ledger alone cannot show that its last entries were deleted: a shorter chain is still a valid
chain. The coordinator, a different party, signs a receipt for every upload it accepts, so every
receipt of an institution must have a spend entry for its (federation, round) in that
institution's ledger.

Receipt file format: a JSON list, or JSON Lines, of objects
    {"federation": str, "round": int, "institution": str, "envelope_sha256": hex,
     "ledger_head": hex, "spend": {...}, "signature": base64}
or an object {"federation": str, "receipts": [...]} whose `federation` fills in receipts without one.
`ledger_head` is the hash of the institution's newest ledger entry when it uploaded; `spend` is the
round's DP-SGD parameters (noise_multiplier, sample_rate, steps, clipping_norm, delta, accountant)
and the hash of the ledger entry recording them, as the member declared them with the upload and
the coordinator checked them against the federation file. `signature` is the coordinator's Ed25519
signature over the canonical JSON (keys sorted, separators `,` and `:`, ASCII) of the other fields,
exactly `confide.formats.Receipt.message()`. A receipt without any of these fields is malformed. A
ledger without an entry of hash `ledger_head` was rewritten or rolled back after
the upload, whoever re-signed it; the ledger's entry for the round must declare the same spend.

One coordinator runs one federation, so an export holds one federation's receipts, and the key
that verifies them is that coordinator's: an auditor hands in one export and one key per
federation (`FederationReceipts`). A ledger's completeness in a federation is verified only with
that federation's receipts and its coordinator's key; without them it is unknown (an empty export
proves nothing either: no signature covers the export as a whole).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from confide.formats import RECEIPT_FIELDS, Receipt
from confide.identity import PublicIdentity
from confide.privacy.audit.inputs import AuditInputError
from confide.privacy.audit.result import Check
from confide.privacy.ledger_entries import ACCOUNTED, Kind, entries_of


@dataclass(frozen=True)
class UploadReceipt(Receipt):
    """One accepted upload, as the coordinator signed it (`confide.formats.Receipt`), and where it was read."""

    index: int = 0
    """Position in the receipts file (1-based), to name it in findings."""


def _receipt_from(record: dict, index: int, where: str = "receipt") -> UploadReceipt:
    """Raises AuditInputError for a malformed record (a field of the wrong type, a broken spend)."""
    try:
        parsed = Receipt.from_dict(record)
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditInputError(f"{where} {index}: malformed ({exc})") from None
    return UploadReceipt(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(Receipt)}, index=index)


def _records(path: Path, text: str) -> tuple[list[Any], str | None]:
    try:
        data = json.loads(text)
    except ValueError:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise AuditInputError(
                    f"{path}:{number}: not JSON (expected a JSON list or one receipt per line)") from None
        return records, None
    if isinstance(data, dict) and isinstance(data.get("receipts"), list):
        return data["receipts"], data.get("federation")
    if isinstance(data, dict):
        return [data], None
    if isinstance(data, list):
        return data, None
    raise AuditInputError(f"{path}: expected a JSON list of receipts")


def load_receipts(path: Path, default_federation: str | None = None) -> tuple[str | None, list[UploadReceipt]]:
    """Read a receipts file: the federation the file itself names (else None) and its receipts.

    A receipt without `federation` takes the file's own `federation`, else `default_federation`
    (the coordinator's database stores receipts of its one federation without it). Raises
    AuditInputError if the file is unreadable or a receipt lacks a field.
    """
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuditInputError(f"{path}: cannot read receipts ({exc})") from None
    records, file_federation = _records(Path(path), text)
    receipts = []
    for index, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise AuditInputError(f"{path}: receipt {index} is not a JSON object")
        record = {"federation": file_federation or default_federation, **record}
        missing = [f for f in (*RECEIPT_FIELDS, "signature") if record.get(f) is None]
        if missing:
            raise AuditInputError(f"{path}: receipt {index} lacks {', '.join(missing)}"
                                  + (" (pass --federation to supply it)" if missing == ["federation"] else ""))
        if not isinstance(record["round"], int) or isinstance(record["round"], bool):
            raise AuditInputError(f"{path}: receipt {index}: round {record['round']!r} is not an integer")
        receipts.append(_receipt_from(record, index, f"{path}: receipt"))
    return file_federation, receipts


@dataclass(frozen=True)
class FederationReceipts:
    """One federation's receipts export and the key of the coordinator that signed it."""

    federation: str
    source: str
    """The file they were read from, to name it in findings."""
    receipts: list[UploadReceipt]
    coordinator: PublicIdentity | None
    """None: no --coordinator-key for this export, so its receipts are used unverified."""

    @property
    def trusted(self) -> list[UploadReceipt]:
        """The receipts that may be held against a ledger: all when no key is given, else only verified ones."""
        if self.coordinator is None:
            return list(self.receipts)
        return [r for r in self.receipts if self.coordinator.signed(r)]


def load_federation_receipts(paths: Sequence[Path], keys: Sequence[PublicIdentity],
                             default_federation: str | None = None) -> dict[str, FederationReceipts]:
    """Each receipts export with the coordinator key given in the same position, by federation.

    An export's federation is the one its receipts (or its `{"federation": ...}` wrapper) name, else
    `default_federation`; an empty export naming none covers no federation. Raises AuditInputError
    when keys are given but not one per export, when one export mixes federations, or when two
    exports are of the same federation.
    """
    if keys and len(keys) != len(paths):
        raise AuditInputError(f"{len(paths)} --receipts but {len(keys)} --coordinator-key: give one key per "
                              "receipts export, in the same order (each federation's coordinator signs its own)")
    found: dict[str, FederationReceipts] = {}
    for index, path in enumerate(paths):
        named, receipts = _export(Path(path), default_federation)
        if named is None:
            continue
        if named in found:
            raise AuditInputError(f"{path}: a second receipts export of federation {named} (the first is "
                                  f"{found[named].source}); pass one export per federation")
        found[named] = FederationReceipts(named, str(path), receipts, keys[index] if keys else None)
    return found


def _export(path: Path, default_federation: str | None) -> tuple[str | None, list[UploadReceipt]]:
    """The federation an export is of (None: it is empty and names none) and its receipts."""
    named, receipts = load_receipts(path, default_federation)
    federations = sorted({r.federation for r in receipts} | ({named} if named else set()))
    if not federations and default_federation:
        federations = [default_federation]  # an empty export, with the audit's only federation file
    if len(federations) > 1:
        raise AuditInputError(f"{path}: receipts of {', '.join(federations)} in one export; an export holds one "
                              "federation's receipts (split it, and pass each with its coordinator's key)")
    return (federations[0] if federations else None), receipts


def receipt_signature_checks(exports: Sequence[FederationReceipts]) -> list[Check]:
    """Each receipt's coordinator signature. A forged receipt could frame an institution, so it fails."""
    checks: list[Check] = []
    for export in exports:
        receipts, coordinator = export.receipts, export.coordinator
        if coordinator is None:
            checks.append(Check("receipt_signature", None, f"{len(receipts)} receipts of {export.federation} not "
                                f"verified: no coordinator key for {export.source} (--coordinator-key)",
                                federation=export.federation))
            continue
        failures = [Check("receipt_signature", False,
                          f"receipt {r.index} ({r.institution}, round {r.round} of {r.federation}) is not signed by "
                          f"the coordinator key given for {export.source}", federation=r.federation)
                    for r in receipts if not coordinator.signed(r)]
        checks += failures or [Check("receipt_signature", True, f"{len(receipts)} receipts of {export.federation} "
                                     "signed by its coordinator", federation=export.federation)]
    return checks


def _uploaded_envelopes(entries: list[dict]) -> dict[tuple[str, int], tuple[str, int]]:
    """(federation, round) -> (envelope_sha256, seq) of the ledger's `outcome` entries that record an upload."""
    return {(e.get("federation"), e.get("round")): (e["envelope_sha256"], e.get("seq"))
            for e in entries_of(entries, Kind.OUTCOME) if isinstance(e.get("envelope_sha256"), str)}


def participated(entries: list[dict]) -> set[str]:
    """The federations a ledger spent privacy in (spend and nonprivate entries)."""
    return {e["federation"] for e in entries_of(entries, *ACCOUNTED) if isinstance(e.get("federation"), str)}


def completeness_checks(institution: str | None, entries: list[dict], exports: dict[str, FederationReceipts],
                        other_spends: set[tuple[str, int]]) -> list[Check]:
    """Per federation the ledger took part in (or whose receipts name `institution`): whether every
    upload the coordinator signed has its spend entry; see `federation_completeness_checks`.

    Completeness in a federation is not evaluated (a check with `passed` None, naming it) without
    that federation's receipts, without its coordinator's key, or when they hold none of ours.
    """
    named = {f for f, export in exports.items() if any(r.institution == institution for r in export.receipts)}
    checks: list[Check] = []
    for federation in sorted(participated(entries) | named):
        export = exports.get(federation)
        if export is None:
            checks.append(Check("receipts", None, f"no receipts of {federation} given (--receipts with its "
                                "--coordinator-key): deleted spends of it cannot be detected", federation=federation))
            continue
        checks += federation_completeness_checks(institution, entries, export.trusted, other_spends)
        if export.coordinator is None:
            checks.append(Check("receipts", None, f"the receipts of {federation} are not verified (no "
                                "--coordinator-key for them): they do not show completeness", federation=federation))
    return checks


def federation_completeness_checks(institution: str | None, entries: list[dict], receipts: Sequence[UploadReceipt],
                                   other_spends: set[tuple[str, int]]) -> list[Check]:
    """Every receipt of `institution` (of one federation) must have a spend entry for its
    (federation, round), and where the ledger records the upload, the same envelope hash.

    `other_spends` holds (federation, round) of spends in the institution's other audited ledgers
    (other datasets), which also account for an upload. A missing spend means entries were
    deleted or never written; the finding names the receipt and the ledger's last seq.
    """
    mine = [r for r in receipts if r.institution == institution]
    if not mine:
        federation = receipts[0].federation if receipts else None
        return [Check("receipts", None, f"no receipts for {institution!r}" + (f" in {federation}" if federation
                      else "") + ": deleted trailing entries cannot be detected", federation=federation)]
    federation = mine[0].federation
    spends = {(e.get("federation"), e.get("round")) for e in entries_of(entries, Kind.SPEND)} | other_spends
    uploads = _uploaded_envelopes(entries)
    last_seq = max((e.get("seq") for e in entries if isinstance(e.get("seq"), int)), default=0)
    by_hash = {e.get("hash"): e for e in entries if isinstance(e.get("hash"), str)}
    accounting = {(e.get("federation"), e.get("round")): e for e in entries_of(entries, *ACCOUNTED)}
    failures = []
    for r in mine:
        if (r.federation, r.round) not in spends:
            failures.append(Check(
                "receipts", False,
                f"receipt {r.index}: upload for round {r.round} of {r.federation} (envelope {r.envelope_sha256[:12]}) "
                f"has no spend entry; the ledger ends at seq {last_seq}: entries deleted or never written"))
        if r.ledger_head not in by_hash:
            failures.append(Check(
                "receipts", False,
                f"receipt {r.index}: when uploading round {r.round} of {r.federation} the ledger's newest entry "
                f"had hash {r.ledger_head[:12]}, this ledger has no such entry: it was rewritten or rolled back "
                "after the upload"))
        failures += _spend_matches(r, accounting.get((r.federation, r.round)))
        recorded = uploads.get((r.federation, r.round))
        if recorded is not None and recorded[0] != r.envelope_sha256:
            failures.append(Check(
                "receipts", False,
                f"receipt {r.index}: the coordinator accepted envelope {r.envelope_sha256[:12]} for round {r.round} "
                f"of {r.federation}, the ledger records {recorded[0][:12]}", recorded[1]))
    return failures or [Check("receipts", True, f"all {len(mine)} accepted uploads to {federation} have a spend "
                              f"entry, {len(mine)} match the spend the coordinator signed", federation=federation)]


def _spend_matches(receipt: UploadReceipt, entry: dict | None) -> list[Check]:
    """The spend the coordinator signed for an upload against the ledger's entry for that round.

    The member declared its round's DP-SGD parameters and that entry's hash with the upload, and
    the coordinator signed them: a ledger re-signed afterwards with other parameters (more noise,
    fewer steps, a smaller sample rate) or another entry in that place contradicts the receipt.
    Rounds accounted in another audited ledger of the institution (entry None) give no check here.
    """
    if entry is None:
        return []
    differences = receipt.spend.differences(entry)
    if not differences:
        return []
    return [Check("receipts", False,
                  f"receipt {receipt.index}: round {receipt.round} of {receipt.federation} was uploaded declaring "
                  f"another spend than this ledger records: {'; '.join(differences)}", entry.get("seq"))]


def ledger_receipt_checks(entries: list[dict], coordinators: dict[str, PublicIdentity]) -> list[Check]:
    """The receipts the institution itself kept in its ledger (`receipt` entries): each is a valid
    coordinator receipt of this institution, for a round with a spend entry, signed by the key of
    its own federation's coordinator (`coordinators`, by federation; a federation without one is
    not verified).

    Returns no check for a ledger without receipt entries.
    """
    spends = {(e.get("federation"), e.get("round")) for e in entries_of(entries, Kind.SPEND)}
    kept = entries_of(entries, Kind.RECEIPT)
    failures = []
    for entry in kept:
        seq, body = entry.get("seq"), entry.get("receipt")
        if not isinstance(body, dict) or any(body.get(f) is None for f in (*RECEIPT_FIELDS, "signature")):
            failures.append(
                Check("ledger_receipts", False, "receipt entry without a complete coordinator receipt", seq))
            continue
        try:
            receipt = _receipt_from(body, 0)
        except AuditInputError as exc:
            failures.append(Check("ledger_receipts", False, f"kept receipt cannot be read: {exc}", seq))
            continue
        where = f"round {receipt.round} of {receipt.federation}"
        if (receipt.federation, receipt.round, receipt.institution) != (
                entry.get("federation"), entry.get("round"), entry.get("institution")):
            failures.append(Check("ledger_receipts", False, f"the kept receipt is for {receipt.institution}, "
                                  f"{where}, not for this entry's institution and round", seq))
        coordinator = coordinators.get(receipt.federation)
        if coordinator is not None and not coordinator.signed(receipt):
            failures.append(Check("ledger_receipts", False, f"kept receipt for {where} is not signed by the "
                                  "coordinator key", seq))
        if (receipt.federation, receipt.round) not in spends:
            failures.append(Check("ledger_receipts", False, f"kept receipt for {where} has no spend entry", seq))
    if not kept:
        return []
    if failures:
        return failures
    unkeyed = sorted({e.get("federation") for e in kept} - set(coordinators), key=str)
    signed = (f"signatures of {', '.join(map(str, unkeyed))} unchecked (no coordinator key)" if unkeyed
              else "signed by their coordinator")
    return [Check("ledger_receipts", True, f"{len(kept)} kept receipts match spend entries, {signed}")]
