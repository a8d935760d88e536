"""`confide audit`: verify privacy ledgers for an auditor, one function from inputs to a result.

For each ledger: integrity (hash, chain, seq, time, owner, signatures; see `integrity`),
completeness against the coordinator's receipts (`receipts`), independent recomputation of every
recorded epsilon (`recompute`) and the policies' limits (`spending`). The result is plain data
(`AuditResult`); the CLI prints it and exits with `result.exit_code`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Collection, Sequence

from confide.identity import PublicIdentity
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.audit.inputs import AuditInputError, load_policies, public_key, read_ledger_bytes, roster_key
from confide.privacy.audit.integrity import integrity_checks, ledger_owner
from confide.privacy.audit.members import split_sum_checks
from confide.privacy.audit.receipts import (
    FederationReceipts,
    completeness_checks,
    ledger_receipt_checks,
    load_federation_receipts,
    receipt_signature_checks,
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
from confide.privacy.ledger_entries import Kind, entries_of


def named_federations(entries: list[dict]) -> set[str]:
    """Every federation a ledger's entries name (`-` marks entries of no federation, e.g. data versions)."""
    return {e["federation"] for e in entries if isinstance(e.get("federation"), str) and e["federation"] != "-"}


def _institution_key(
    institution: str | None, key: PublicIdentity | None, federations: dict[str, FederationPolicy], own: set[str]
) -> tuple[PublicIdentity | None, str]:
    """The key given with --key, else the institution's key on the roster of a federation its ledger names."""
    if key is not None:
        return key, "key from --key"
    for fed_id in sorted(own & set(federations)):
        found = roster_key(federations[fed_id], institution) if institution else None
        if found is not None:
            return found, f"key from the roster of {fed_id}"
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
    exports: dict[str, FederationReceipts] | None = None,
    other_spends: set[tuple[str, int]] = frozenset(),  # type: ignore[assignment]
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> LedgerAudit:
    """Every check on one ledger's parsed `entries`. Pure apart from reading `path` for the verifier.

    `exports`: each federation's receipts with its coordinator's key (see `load_federation_receipts`).
    """
    exports = exports or {}
    institution, dataset = ledger_owner(entries)
    signer, key_source = _institution_key(institution, key, federations, named_federations(entries))
    checks: list[Check] = integrity_checks(path, entries, signer, key_source)
    checks += completeness_checks(institution, entries, exports, set(other_spends))
    checks += ledger_receipt_checks(entries, {f: x.coordinator for f, x in exports.items() if x.coordinator})
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
    receipts: Sequence[Path] = (),
    coordinator_keys: Sequence[str | Path] = (),
    tolerance: Tolerance = DEFAULT_TOLERANCE,
    required: Collection[str] | None = None,
) -> AuditResult:
    """Verify each ledger file and recompute its epsilons independently; see the module docstring.

    `policies`: institution policy files (matched to ledgers by institution id); `federations`:
    federation files (rosters give the keys; spends are checked against their own federation's
    privacy requirements; a file of a federation no ledger names fails); `key`: the institution's
    Ed25519 public key (base64, or a file / its identity.json), overriding the roster; `receipts`:
    one export of the coordinator's signed upload receipts per federation, verified with the
    `coordinator_keys` given in the same order (base64 or identity.json; none at all: unverified);
    `required`: the institutions whose ledgers the receipts require (None: everyone they name).

    Returns the result: exit code 0 when everything verifies, 1 when a check fails, 3 when nothing
    failed but a budget, a federation's completeness (no receipts or key for it) or requirements
    (no federation file) could not be evaluated. Raises AuditInputError or PolicyError (both
    BadInput, exit 2) for a missing or unreadable file or key.
    """
    if not ledgers:
        raise AuditInputError("no ledger given (pass one or more ledger .jsonl files)")
    institution_policies, federation_policies = load_policies(list(policies), list(federations))
    explicit_key = public_key(key) if key is not None else None
    coordinators = [public_key(k, "--coordinator-key") for k in coordinator_keys]
    default_fed = next(iter(federation_policies)) if len(federation_policies) == 1 else None
    exports = load_federation_receipts([Path(r) for r in receipts], coordinators, default_fed)
    parsed = [(Path(p), _entries(Path(p))) for p in ledgers]
    owners = [ledger_owner(entries)[0] for _, entries in parsed]
    top: list[Check] = receipt_signature_checks(list(exports.values()))
    top += _unaudited_uploaders(exports, {o for o in owners if o}, required)
    top += _federation_file_checks(federation_policies, set().union(*(named_federations(e) for _, e in parsed)))
    top += split_sum_checks([(owners[i], entries) for i, (_, entries) in enumerate(parsed)])
    spent = [{(e.get("federation"), e.get("round")) for e in entries_of(entries, Kind.SPEND)}
             for _, entries in parsed]
    audits = []
    for index, (path, entries) in enumerate(parsed):
        # A receipt is also accounted for by a spend in the same institution's other (dataset's) ledger.
        others = set().union(*(spent[j] for j in range(len(parsed)) if j != index and owners[j] == owners[index]))
        audits.append(audit_ledger(path, entries, institution_policies, federation_policies, explicit_key,
                                   exports, others, tolerance))
    return AuditResult(ledgers=audits, checks=top)


def _unaudited_uploaders(exports: dict[str, FederationReceipts], audited: set[str],
                         required: Collection[str] | None) -> list[Check]:
    """An institution the trusted receipts show uploading, whose ledger was not handed in, fails."""
    checks = []
    for federation, export in sorted(exports.items()):
        uploaders = {r.institution for r in export.trusted}
        if required is not None:
            uploaders &= set(required)
        checks += [Check("receipts_ledgers", False, f"the coordinator's receipts of {federation} list uploads by "
                         f"{who}, whose ledger was not handed in: its spending cannot be verified",
                         federation=federation) for who in sorted(uploaders - audited)]
    return checks


def _federation_file_checks(federations: dict[str, FederationPolicy], named: set[str]) -> list[Check]:
    """A federation file must be of a federation the ledgers took part in: one that is not is the wrong
    file, or was edited after the run (its federation_id), and vouches for nothing."""
    return [Check("federation_file", fed_id in named,
                  f"the federation file of {fed_id} is of a federation the ledgers name" if fed_id in named else
                  f"the federation file of {fed_id!r} is of a federation no ledger names (they name "
                  f"{', '.join(sorted(named)) or 'none'}): the wrong file, or its federation_id was edited",
                  federation=fed_id) for fed_id in sorted(federations)]


def _entries(path: Path) -> list[dict]:
    """The ledger's entries (an unparsable line becomes `{}`, a finding). Raises AuditInputError if
    no line at all is an entry: then it is not a ledger, and there is nothing to audit."""
    data = read_ledger_bytes(path)
    entries = parse_ledger(data).entries
    if data.strip() and not any(entries):
        raise AuditInputError(f"{path}: not a privacy ledger (no line is a JSON entry); pass the .jsonl ledger file")
    return entries
