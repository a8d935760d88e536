"""`confide audit adapter DIR LEDGER...`: does an adapter's card say what the ledgers and receipts say?

The card (`privacy.json`, see `confide.privacy.guarantee`) is checked field by field:
- its weights (the SHA-256 of adapter_model.safetensors) and its displayed `README.md`, which must
  be exactly what confide renders from privacy.json (`confide.privacy.card_readme`), so every
  number a reader sees is one checked here;
- model, task, labels, LoRA settings, rounds planned and roster size against the federation file;
  rounds applied against the `applied` entries of the ledgers of the institutions it lists; a card
  that lists no institution states no guarantee and fails;
- per institution: a ledger handed in for it, holding the head the card names; its epsilon equal to
  the federation accountant's composition of the federation's spends up to that head (relative
  1e-9: floating-point noise, nothing more) and not below dp_accounting's PLD recomputation beyond
  the accountants' disagreement; its replace-one epsilon equal to the PLD recomputation; rounds
  trained equal to those spends; the dataset's epsilon equal to the one the ledger records at the
  head; the budget equal to the institution policy's; delta and accountant as the federation file
  requires; no later spend of the federation left out; a head no older than the newest receipt.
Institutions the receipts show uploading but the card leaves out are listed: a member's own card
rightly states only its own guarantee. The ledgers themselves are verified as by `confide audit`
(integrity, receipts, accounting, budgets), requiring ledgers of the card's institutions only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.text import Text

from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.accounting import epsilon, spend_history
from confide.privacy.audit.console import _checks_table, audit_renderables
from confide.privacy.audit.inputs import load_policies, public_key
from confide.privacy.audit.integrity import ledger_owner
from confide.privacy.audit.receipts import UploadReceipt, load_federation_receipts
from confide.privacy.audit.recompute import DEFAULT_TOLERANCE, Tolerance, pld_epsilon
from confide.privacy.audit.result import EXIT_CHECK_FAILED, EXIT_INCOMPLETE, EXIT_VERIFIED, AuditResult, Check
from confide.privacy.audit.verify import _entries, audit_ledgers
from confide.privacy.card_readme import CARD_README, base_model_path, render_card
from confide.privacy.errors import AccountingError
from confide.privacy.guarantee import (
    AdapterGuarantee,
    InstitutionGuarantee,
    federation_spends,
    read_guarantee,
    weights_digest,
)
from confide.privacy.ledger_entries import Kind, entries_of

RECOMPUTED_REL_TOL = 1e-9
"""A number the card states and the auditor recomputes with the same function must agree to this
relative precision: floating-point noise, not a tolerance an edited card could hide in."""


def _same(stated: float | None, recomputed: float | None) -> bool:
    if stated is None or recomputed is None:
        return stated is recomputed
    return math.isclose(stated, recomputed, rel_tol=RECOMPUTED_REL_TOL, abs_tol=1e-12)


@dataclass(frozen=True)
class AdapterAudit:
    """The card's checks and the audit of the ledgers it rests on."""

    adapter_dir: str
    card: AdapterGuarantee
    checks: list[Check] = field(default_factory=list)
    ledgers: AuditResult = field(default_factory=AuditResult)

    @property
    def passed(self) -> bool:
        return self.ledgers.passed and all(c.passed is not False for c in self.checks)

    @property
    def verdict(self) -> str:
        if not self.passed:
            return "failed"
        if self.ledgers.verdict == "incomplete" or any(c.passed is None for c in self.checks):
            return "incomplete"
        return "verified"

    @property
    def exit_code(self) -> int:
        return {"verified": EXIT_VERIFIED, "failed": EXIT_CHECK_FAILED, "incomplete": EXIT_INCOMPLETE}[self.verdict]

    def to_dict(self) -> dict[str, Any]:
        return {"adapter": self.adapter_dir, "verdict": self.verdict, "passed": self.passed,
                "card": self.card.to_dict(), "checks": [asdict(c) for c in self.checks],
                "ledgers": self.ledgers.to_dict()}


def _head_index(entries: list[dict], head: str | None) -> int | None:
    """Index of the entry the card names (by hash) as the ledger head, or None if the ledger has none."""
    return next((index for index, entry in enumerate(entries) if head and entry.get("hash") == head), None)


def _institution_checks(g: InstitutionGuarantee, federation: str, entries: list[dict] | None,
                        receipts: list[UploadReceipt] | None, policy: InstitutionPolicy | None,
                        tolerance: Tolerance) -> list[Check]:
    who = g.institution
    if entries is None:
        return [Check("card_ledger", False, f"{who}: no ledger of dataset {g.dataset} was handed in, so "
                      "its stated guarantee cannot be checked")]
    index = _head_index(entries, g.ledger_head)
    if index is None:
        return [Check("card_head", False, f"{who}: the ledger holds no entry with the hash the card names "
                      "(the ledger was rewritten or rolled back, or the card belongs to another ledger)")]
    seq = entries[index].get("seq")
    checks = [Check("card_head", True, f"{who}: the ledger holds the card's head (entry {seq})", seq=seq)]
    upto, later = federation_spends(entries[: index + 1], federation), federation_spends(entries[index + 1:],
                                                                                          federation)
    checks += _budget_checks(g, entries[: index + 1], policy)
    if not g.private:
        noiseless = entries_of(entries[: index + 1], Kind.NONPRIVATE, federation=federation)
        checks.append(Check("card_epsilon", True if noiseless and not upto else False,
                            f"{who}: the card claims no guarantee; the ledger records {len(noiseless)} noiseless "
                            f"and {len(upto)} private rounds of {federation}"))
        return checks
    checks += _epsilon_checks(g, federation, spend_history(upto), tolerance)
    checks.append(Check("card_rounds", g.rounds_trained == len(upto),
                        f"{who}: card says {g.rounds_trained} rounds trained, the ledger {len(upto)} up to the head"))
    checks.append(Check("card_complete", not later,
                        f"{who}: " + (f"the ledger records {len(later)} later spend(s) of {federation} after the "
                                      "card's head: the card understates" if later else
                                      "no spend of this federation after the card's head")))
    if receipts is not None:
        mine = [r for r in receipts if r.institution == g.institution and r.federation == federation]
        if mine:
            # A receipt names its upload's ledger entry by hash: up to the card's head, or later.
            upto_hashes = {e.get("hash") for e in entries[: index + 1]}
            later_receipts = [r for r in mine if r.ledger_head not in upto_hashes]
            checks.append(Check("card_receipts", not later_receipts,
                                f"{who}: " + (f"a receipt (round {later_receipts[0].round}) names a ledger entry "
                                              "after the card's head" if later_receipts else
                                              f"all {len(mine)} receipts name ledger entries up to the card's "
                                              f"head (entry {seq})")))
    return checks


def _epsilon_checks(g: InstitutionGuarantee, federation: str, history: list, tolerance: Tolerance) -> list[Check]:
    """The card's epsilon is its accountant's composition of `history` (exactly) and not below PLD's;
    its replace-one epsilon is PLD's for replace-one neighbours."""
    who = g.institution
    try:
        composed = epsilon(history, g.delta, g.accountant)
    except (AccountingError, ValueError) as exc:
        return [Check("card_epsilon", False, f"{who}: the card's accountant cannot compose the spends ({exc})")]
    independent = pld_epsilon(history, g.delta)
    stated = g.epsilon if g.epsilon is not None else math.inf
    exact, above = _same(stated, composed), not tolerance.is_below(stated, independent)
    checks = [Check("card_epsilon", exact and above,
                    f"{who}: card epsilon {stated:.6g}, {g.accountant.upper()} composition of the ledger's "
                    f"{len(history)} spends of {federation} {composed:.6g}, PLD {independent:.6g} (delta {g.delta:g})"
                    + ("" if exact else ": the card's epsilon is not its accountant's composition")
                    + ("" if above else ": below the independent recomputation"))]
    swapped = pld_epsilon(history, g.delta, replace_one=True)
    stated_swap = g.replace_one_epsilon if g.replace_one_epsilon is not None else math.inf
    checks.append(Check("card_replace_one", _same(stated_swap, swapped),
                        f"{who}: card replace-one epsilon {stated_swap:.6g}, PLD recomputation {swapped:.6g}"))
    return checks


def _budget_checks(g: InstitutionGuarantee, upto: list[dict], policy: InstitutionPolicy | None) -> list[Check]:
    """The dataset's epsilon is the one the ledger records at the head; the budget is the policy's."""
    spends = entries_of(upto, Kind.SPEND)
    recorded = float(spends[-1]["epsilon"]) if spends and isinstance(spends[-1].get("epsilon"), (int, float)) \
        else 0.0
    checks = [Check("card_dataset_epsilon", _same(g.dataset_epsilon, recorded),
                    f"{g.institution}: card says the dataset spent {g.dataset_epsilon!r}, its ledger records "
                    f"{recorded:.6g} at the card's head")]
    if policy is None:
        checks.append(Check("card_budget", None, f"{g.institution}: no institution policy (--policy): the card's "
                            f"budget {g.budget_epsilon!r} is not compared"))
    else:
        checks.append(Check("card_budget", _same(g.budget_epsilon, policy.budget.epsilon),
                            f"{g.institution}: card budget {g.budget_epsilon!r}, the policy's "
                            f"{policy.budget.epsilon:g}"))
    return checks


def _rounds_applied_check(card: AdapterGuarantee, heads: list[list[dict]]) -> Check:
    """The card's rounds applied is the last round of the federation whose sum one of its
    institutions' ledgers records applying (up to the card's head)."""
    applied = sorted({max((e["round"] for e in entries_of(entries, Kind.APPLIED, federation=card.federation)
                           if isinstance(e.get("round"), int)), default=0)
                      for entries in heads})
    return Check("card_rounds_applied", card.rounds_applied in applied and card.rounds_applied <= card.rounds_planned,
                 f"card says {card.rounds_applied} of {card.rounds_planned} rounds applied; the ledgers of its "
                 f"institutions record applying up to round {', '.join(map(str, applied)) or 'none'}")


def _readme_check(adapter_dir: Path, card: AdapterGuarantee) -> Check:
    """The displayed README.md must be exactly the one rendered from privacy.json."""
    path = adapter_dir / CARD_README
    try:
        shown = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return Check("card_readme", False, f"{path}: missing or unreadable; confide writes it beside privacy.json")
    expected = render_card(card, base_model_path(adapter_dir))
    if shown == expected:
        return Check("card_readme", True, f"{CARD_README} shows exactly the numbers of privacy.json")
    pairs = zip(shown.splitlines() + [""], expected.splitlines() + [""])
    line, (got, want) = next((n, p) for n, p in enumerate(pairs, start=1) if p[0] != p[1])
    return Check("card_readme", False, f"{CARD_README} line {line} shows {got.strip()[:80]!r}, privacy.json gives "
                 f"{want.strip()[:80]!r}: the displayed card was edited", line=line)


def _federation_checks(card: AdapterGuarantee, federation: FederationPolicy | None) -> list[Check]:
    if federation is None:
        return [Check("card_federation", None, f"no federation file for {card.federation} (pass --federation): "
                      "model, task, adapter, rounds, delta and accountant are not compared")]
    privacy, lora = federation.privacy, federation.adapter
    labels = list(federation.model.labels) if federation.model.task == "sequence_classification" else []
    adapter = {"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules),
               "freeze_a": lora.freeze_a}
    pairs = [("base model", card.base_model, federation.model.source), ("task", card.task, federation.model.task),
             ("labels", card.labels, labels), ("adapter", card.adapter, adapter),
             ("rounds planned", card.rounds_planned, federation.rounds),
             ("institutions", card.institutions, len(federation.roster))]
    pairs += [(f"{g.institution} delta", g.delta, privacy.delta) for g in card.guarantees]
    pairs += [(f"{g.institution} accountant", g.accountant, privacy.accountant) for g in card.guarantees]
    wrong = [f"{name} {ours!r} != {theirs!r}" for name, ours, theirs in pairs if ours != theirs]
    return [Check("card_federation", not wrong, "; ".join(wrong) if wrong else
                  f"model, task, labels, adapter, rounds, roster, delta and accountant agree with {card.federation}'s "
                  "file")]


def _listed_checks(card: AdapterGuarantee) -> list[Check]:
    names = [g.institution for g in card.guarantees]
    if not names:
        return [Check("card_guarantees", False, "the card lists no institution's guarantee: it states nothing an "
                      "auditor can check")]
    twice = sorted({n for n in names if names.count(n) > 1})
    return [Check("card_guarantees", not twice, f"listed more than once: {', '.join(twice)}" if twice else
                  f"the card states the guarantee of {', '.join(names)}")]


def _key_check(card: AdapterGuarantee, heads: list[list[dict]]) -> Check:
    """The card's federation key is the one the ledgers recorded installing (all of them, the same one)."""
    recorded = {e.get("fingerprint") for entries in heads
                for e in entries_of(entries, Kind.KEY, federation=card.federation)}
    if not recorded:
        return Check("card_key", card.key_fingerprint is None,
                     "neither the card nor the ledgers name a federation key" if card.key_fingerprint is None
                     else "the card names a federation key no ledger recorded installing")
    ok = recorded == {card.key_fingerprint}
    return Check("card_key", ok, f"the ledgers installed the key the card names ({str(card.key_fingerprint)[:16]}...)"
                 if ok else f"the card names key {str(card.key_fingerprint)[:16]}..., the ledgers recorded "
                 f"{', '.join(sorted(str(f)[:16] for f in recorded))}")


def card_checks(
    adapter_dir: Path,
    card: AdapterGuarantee,
    ledgers: Sequence[Path],
    federations: Sequence[Path] = (),
    receipts: Sequence[Path] = (),
    coordinator_keys: Sequence[str | Path] = (),
    policies: Sequence[Path] = (),
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> list[Check]:
    """The checks of `card` (read from `adapter_dir`) against the ledgers, receipts, federation files
    and institution policies; see the module docstring.

    Only the card is checked here; `audit_adapter` also verifies the ledgers themselves.
    """
    adapter_dir = Path(adapter_dir)
    digest = weights_digest(adapter_dir)
    checks = [Check("card_weights", digest == card.weights_sha256,
                    "adapter_model.safetensors is the file the card was written for" if digest == card.weights_sha256
                    else f"adapter_model.safetensors has SHA-256 {digest[:16]}..., the card names "
                    f"{card.weights_sha256[:16]}...: the card belongs to other weights")]
    checks.append(_readme_check(adapter_dir, card))
    institutions, feds = load_policies(list(policies), list(federations))
    checks += _federation_checks(card, feds.get(card.federation))
    checks += _listed_checks(card)
    by_owner: dict[tuple, list[dict]] = {}
    for path in ledgers:
        entries = _entries(Path(path))
        by_owner.setdefault(ledger_owner(entries), entries)
    keys = [public_key(k, "--coordinator-key") for k in coordinator_keys]
    export = load_federation_receipts([Path(r) for r in receipts], keys, card.federation).get(card.federation)
    usable = export.trusted if export is not None else None
    heads = []
    for g in card.guarantees:
        entries = by_owner.get((g.institution, g.dataset))
        checks += _institution_checks(g, card.federation, entries, usable, institutions.get(g.institution), tolerance)
        index = _head_index(entries, g.ledger_head) if entries is not None else None
        if index is not None:
            heads.append(entries[: index + 1])
    if heads:
        checks.append(_rounds_applied_check(card, heads))
        checks.append(_key_check(card, heads))
    if usable is not None:
        stated = {g.institution for g in card.guarantees}
        others = sorted({r.institution for r in usable} - stated)
        if others:
            checks.append(Check("card_covers", True, f"{', '.join(others)} uploaded to {card.federation} (receipts); "
                                "the card states no guarantee for them (a member's own card lists only its own), "
                                "and claims none"))
    return checks


def audit_adapter(
    adapter_dir: Path,
    ledgers: Sequence[Path],
    policies: Sequence[Path] = (),
    federations: Sequence[Path] = (),
    receipts: Sequence[Path] = (),
    coordinator_keys: Sequence[str | Path] = (),
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> AdapterAudit:
    """Check the card of `adapter_dir` against `ledgers` (see `card_checks`) and verify the ledgers
    as `confide audit` does (integrity, receipts, accounting, the policies' budgets); the receipts
    then require the ledgers of the card's institutions only.

    Raises GuaranteeError (no or malformed privacy.json, no weights file), AuditInputError or
    PolicyError (all BadInput) for unreadable inputs.
    """
    adapter_dir = Path(adapter_dir)
    card = read_guarantee(adapter_dir)
    checks = card_checks(adapter_dir, card, ledgers, federations, receipts, coordinator_keys, policies, tolerance)
    ledger_audit = audit_ledgers(ledgers, policies=policies, federations=federations, receipts=receipts,
                                 coordinator_keys=coordinator_keys, tolerance=tolerance,
                                 required={g.institution for g in card.guarantees})
    return AdapterAudit(str(adapter_dir), card, checks, ledger_audit)


def adapter_audit_renderables(audit: AdapterAudit) -> list[Any]:
    """The card's checks, then the ledgers' audit, then one verdict for both."""
    parts = audit_renderables(audit.ledgers)[:-1]  # its own verdict line is replaced by the combined one
    text = {"verified": "the card agrees with the ledgers, and every ledger verifies",
            "failed": "verification failed (see the FAIL rows)",
            "incomplete": "incomplete: nothing failed, but some checks could not be made (see the n/a rows)"}
    style = {"verified": "green", "failed": "bold red", "incomplete": "bold yellow"}[audit.verdict]
    return [_checks_table(f"card of {audit.adapter_dir}", audit.checks), *parts,
            Text("verdict: ") + Text(text[audit.verdict], style=style)]
