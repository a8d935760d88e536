"""`confide audit`: verify privacy ledgers for an auditor, one function from inputs to a result.

For each ledger: integrity (hash, chain, seq, time, owner, signatures; see `integrity`),
completeness against the coordinator's receipts (`receipts`), independent recomputation of every
recorded epsilon (`recompute`) and the policies' limits (`spending`). The result is plain data
(`AuditResult`); the CLI prints it and exits with `result.exit_code`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from confide.identity import PublicIdentity
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.audit.inputs import AuditInputError, load_policies, public_key, read_ledger_bytes, roster_key
from confide.privacy.audit.integrity import integrity_checks, ledger_owner
from confide.privacy.audit.receipts import (
    UploadReceipt,
    completeness_checks,
    ledger_receipt_checks,
    load_receipts,
    receipt_signature_checks,
    trusted_receipts,
)
from confide.privacy.audit.recompute import (
    DEFAULT_TOLERANCE,
    SpendParameters,
    Tolerance,
    pld_epsilon,
    recompute_spends,
)
from confide.privacy.audit.result import AuditResult, Check, LedgerAudit
from confide.privacy.audit.spending import (
    accounting_checks,
    federation_checks,
    institution_checks,
    parse_spends,
    schedule_checks,
)
from confide.privacy.ledger import parse_ledger


def _institution_key(
    institution: str | None, key: PublicIdentity | None, federations: dict[str, FederationPolicy]
) -> tuple[PublicIdentity | None, str]:
    if key is not None:
        return key, "key from --key"
    for fed in federations.values():
        found = roster_key(fed, institution) if institution else None
        if found is not None:
            return found, f"key from the roster of {fed.federation_id}"
    return None, ""


def _strictest_cap(policy: InstitutionPolicy | None, federations: dict[str, FederationPolicy]) -> float | None:
    caps = [policy.round_epsilon_cap] if policy and policy.round_epsilon_cap is not None else []
    caps += [f.privacy.max_round_epsilon for f in federations.values() if f.privacy.max_round_epsilon is not None]
    return min(caps) if caps else None


def audit_ledger(
    path: Path,
    entries: list[dict],
    institutions: dict[str, InstitutionPolicy],
    federations: dict[str, FederationPolicy],
    key: PublicIdentity | None = None,
    receipts: Sequence[UploadReceipt] | None = None,
    other_spends: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    coordinator: PublicIdentity | None = None,
) -> LedgerAudit:
    """Every check on one ledger's parsed `entries`. Pure apart from reading `path` for the verifier."""
    institution, dataset = ledger_owner(entries)
    signer, key_source = _institution_key(institution, key, federations)
    checks: list[Check] = integrity_checks(path, entries, signer, key_source)
    if receipts is not None:
        checks += completeness_checks(institution, entries, receipts, set(other_spends))
    checks += ledger_receipt_checks(entries, coordinator)
    spends, field_checks = parse_spends(entries)
    recomputed = recompute_spends(spends)
    policy = institutions.get(institution or "")
    checks += field_checks
    checks += accounting_checks(recomputed, tolerance)
    checks += institution_checks(recomputed, spends, policy, federations)
    checks += federation_checks(spends, federations)
    checks += schedule_checks(entries, spends, federations)
    return LedgerAudit(
        path=str(path), institution=institution, dataset=dataset, checks=checks, spends=recomputed,
        budget_epsilon=policy.budget.epsilon if policy else None,
        round_epsilon_cap=_strictest_cap(policy, federations),
        budget_delta=policy.budget.delta if policy else None,
        replace_one_epsilon=_replace_one_epsilon(spends),
    )


def _replace_one_epsilon(spends: Sequence[SpendParameters]) -> float | None:
    """The ledger's whole history for replace-one neighbours, at the last spend's delta (None: no spends)."""
    if not spends:
        return None
    try:
        return pld_epsilon([s.step for s in spends], spends[-1].delta, replace_one=True)
    except ValueError:
        return None  # invalid steps: the field checks already report them


def audit_ledgers(
    ledgers: Sequence[Path],
    policies: Sequence[Path] = (),
    federations: Sequence[Path] = (),
    key: str | Path | None = None,
    receipts: Path | None = None,
    coordinator_key: str | Path | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> AuditResult:
    """Verify each ledger file and recompute its epsilons independently; see the module docstring.

    `policies`: institution policy files (matched to ledgers by institution id); `federations`:
    federation files (rosters give the keys; spends are checked against their own federation's
    privacy requirements); `key`: the institution's Ed25519 public key (base64, or a file / its
    identity.json), overriding the roster; `receipts`: the coordinator's signed upload receipts,
    verified with `coordinator_key` (base64 or its identity.json) when given.

    Returns the result (exit code 0 when everything verifies, 1 when a check fails). Raises
    AuditInputError or PolicyError (both BadInput, exit 2) for a missing or unreadable file or key.
    """
    if not ledgers:
        raise AuditInputError("no ledger given (pass one or more ledger .jsonl files)")
    institution_policies, federation_policies = load_policies(list(policies), list(federations))
    explicit_key = public_key(key) if key is not None else None
    coordinator = public_key(coordinator_key, "--coordinator-key") if coordinator_key is not None else None
    parsed = [(Path(p), _entries(Path(p))) for p in ledgers]
    top: list[Check] = []
    usable: list[UploadReceipt] | None = None
    if receipts is not None:
        default_fed = next(iter(federation_policies)) if len(federation_policies) == 1 else None
        loaded = load_receipts(Path(receipts), default_fed)
        top += receipt_signature_checks(loaded, coordinator)
        usable = trusted_receipts(loaded, coordinator)
    owners = [ledger_owner(entries)[0] for _, entries in parsed]
    spent = [{(e.get("federation"), e.get("round")) for e in entries if e.get("kind") == "spend"}
             for _, entries in parsed]
    if usable is not None:
        unaudited = sorted({r.institution for r in usable} - {o for o in owners if o})
        top += [Check("receipts_ledgers", False, f"the coordinator's receipts list uploads by {who}, whose ledger "
                      "was not handed in: its spending cannot be verified") for who in unaudited]
    audits = []
    for index, (path, entries) in enumerate(parsed):
        # A receipt is also accounted for by a spend in the same institution's other (dataset's) ledger.
        others = set().union(*(spent[j] for j in range(len(parsed)) if j != index and owners[j] == owners[index]))
        audits.append(audit_ledger(path, entries, institution_policies, federation_policies, explicit_key,
                                   usable, others, tolerance, coordinator))
    return AuditResult(ledgers=audits, checks=top)


def _entries(path: Path) -> list[dict]:
    """The ledger's entries (an unparsable line becomes `{}`, a finding). Raises AuditInputError if
    no line at all is an entry: then it is not a ledger, and there is nothing to audit."""
    data = read_ledger_bytes(path)
    entries = parse_ledger(data).entries
    if data.strip() and not any(entries):
        raise AuditInputError(f"{path}: not a privacy ledger (no line is a JSON entry); pass the .jsonl ledger file")
    return entries
