"""`confide audit adapter DIR LEDGER...`: does an adapter's card say what the ledgers and receipts say?

The card (`privacy.json`, see `confide.privacy.guarantee`) is checked for: its weights (the SHA-256
of adapter_model.safetensors), and per institution it lists: a ledger handed in for it, the ledger
holding the head the card names, the card's epsilon not below an independent PLD recomputation of
the federation's spends up to that head (and its replace-one epsilon, where the card states one, not
below the same recomputation for replace-one neighbours), the same number of rounds, no later spend
of the federation the card leaves out, delta and accountant as the federation file requires, and a
head no older than the newest receipt of the institution's uploads. Institutions the receipts show
uploading but the card leaves out are listed (a member's own card states only its own guarantee).
The ledgers themselves are verified as by `confide audit` (integrity, receipts, accounting,
budgets).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.text import Text

from confide.privacy.accounting import spend_history
from confide.privacy.audit.console import _checks_table, audit_renderables
from confide.privacy.audit.inputs import load_policies, public_key
from confide.privacy.audit.integrity import ledger_owner
from confide.privacy.audit.receipts import UploadReceipt, load_receipts, trusted_receipts
from confide.privacy.audit.recompute import DEFAULT_TOLERANCE, Tolerance, pld_epsilon
from confide.privacy.audit.result import EXIT_CHECK_FAILED, EXIT_INCOMPLETE, EXIT_VERIFIED, AuditResult, Check
from confide.privacy.audit.verify import _entries, audit_ledgers
from confide.privacy.guarantee import (
    AdapterGuarantee,
    InstitutionGuarantee,
    federation_spends,
    read_guarantee,
    weights_digest,
)


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


def _head_index(entries: list[dict], seq: int | None, head: str | None) -> int | None:
    """Index of the entry the card names as the ledger head, or None if the ledger has no such entry."""
    for index, entry in enumerate(entries):
        if entry.get("seq") == seq and entry.get("hash") == head:
            return index
    return None


def _institution_checks(g: InstitutionGuarantee, federation: str, entries: list[dict] | None,
                        receipts: list[UploadReceipt] | None, tolerance: Tolerance) -> list[Check]:
    who = g.institution
    if entries is None:
        return [Check("card_ledger", False, f"{who}: no ledger of dataset {g.dataset} was handed in, so "
                      "its stated guarantee cannot be checked")]
    index = _head_index(entries, g.ledger_seq, g.ledger_head)
    if index is None:
        return [Check("card_head", False, f"{who}: the ledger holds no entry {g.ledger_seq} with the hash the card "
                      "names (the ledger was rewritten or rolled back, or the card belongs to another ledger)",
                      seq=g.ledger_seq)]
    checks = [Check("card_head", True, f"{who}: the ledger holds the card's head {g.ledger_seq}", seq=g.ledger_seq)]
    upto, later = federation_spends(entries[: index + 1], federation), federation_spends(entries[index + 1:],
                                                                                          federation)
    if not g.private:
        noiseless = [e for e in entries[: index + 1] if e.get("kind") == "nonprivate" and e.get("federation") ==
                     federation]
        checks.append(Check("card_epsilon", True if noiseless and not upto else False,
                            f"{who}: the card claims no guarantee; the ledger records {len(noiseless)} noiseless "
                            f"and {len(upto)} private rounds of {federation}"))
        return checks
    history = spend_history(upto)
    recomputed = pld_epsilon(history, g.delta)
    stated = g.epsilon if g.epsilon is not None else float("inf")
    checks.append(Check("card_epsilon", not tolerance.is_below(stated, recomputed),
                        f"{who}: card epsilon {stated:.4f}, PLD recomputation of the ledger's {len(upto)} spends "
                        f"of {federation} {recomputed:.4f} (delta {g.delta:g})"))
    if g.replace_one_epsilon is not None:  # version 1 cards do not state it
        swapped = pld_epsilon(history, g.delta, replace_one=True)
        checks.append(Check("card_replace_one", not tolerance.is_below(g.replace_one_epsilon, swapped),
                            f"{who}: card replace-one epsilon {g.replace_one_epsilon:.4f}, PLD recomputation "
                            f"{swapped:.4f}"))
    checks.append(Check("card_rounds", g.rounds_trained == len(upto),
                        f"{who}: card says {g.rounds_trained} rounds trained, the ledger {len(upto)} up to the head"))
    checks.append(Check("card_complete", not later,
                        f"{who}: " + (f"the ledger records {len(later)} later spend(s) of {federation} after the "
                                      "card's head: the card understates" if later else
                                      "no spend of this federation after the card's head")))
    if receipts is not None:
        mine = [r for r in receipts if r.institution == g.institution and r.federation == federation
                and r.ledger_seq is not None]
        if mine:
            newest = max(mine, key=lambda r: r.ledger_seq)
            checks.append(Check("card_receipts", newest.ledger_seq <= (g.ledger_seq or 0),
                                f"{who}: newest receipt (round {newest.round}) names ledger entry "
                                f"{newest.ledger_seq}; the card's head is {g.ledger_seq}"))
    return checks


def _federation_checks(card: AdapterGuarantee, federation) -> list[Check]:
    if federation is None:
        return [Check("card_federation", None, f"no federation file for {card.federation} (pass --federation): "
                      "model, task, rounds, delta and accountant are not compared")]
    privacy = federation.privacy
    pairs = [("base model", card.base_model, federation.model.source), ("task", card.task, federation.model.task),
             ("rounds planned", card.rounds_planned, federation.rounds),
             ("institutions", card.institutions, len(federation.roster))]
    pairs += [(f"{g.institution} delta", g.delta, privacy.delta) for g in card.guarantees]
    pairs += [(f"{g.institution} accountant", g.accountant, privacy.accountant) for g in card.guarantees]
    wrong = [f"{name} {ours!r} != {theirs!r}" for name, ours, theirs in pairs if ours != theirs]
    return [Check("card_federation", not wrong, "; ".join(wrong) if wrong else
                  f"model, task, rounds, roster, delta and accountant agree with {card.federation}'s file")]


def card_checks(
    adapter_dir: Path,
    card: AdapterGuarantee,
    ledgers: Sequence[Path],
    federations: Sequence[Path] = (),
    receipts: Path | None = None,
    coordinator_key: str | Path | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> list[Check]:
    """The checks of `card` (read from `adapter_dir`) against the ledgers, receipts and federation files.

    Only the card is checked here; `audit_adapter` also verifies the ledgers themselves.
    """
    digest = weights_digest(adapter_dir)
    checks = [Check("card_weights", digest == card.weights_sha256,
                    "adapter_model.safetensors is the file the card was written for" if digest == card.weights_sha256
                    else f"adapter_model.safetensors has SHA-256 {digest[:16]}..., the card names "
                    f"{card.weights_sha256[:16]}...: the card belongs to other weights")]
    _, feds = load_policies([], list(federations))
    checks += _federation_checks(card, feds.get(card.federation))
    by_owner: dict[tuple, list[dict]] = {}
    for path in ledgers:
        entries = _entries(Path(path))
        by_owner.setdefault(ledger_owner(entries), entries)
    usable = None
    if receipts is not None:
        coordinator = public_key(coordinator_key, "--coordinator-key") if coordinator_key is not None else None
        usable = trusted_receipts(load_receipts(Path(receipts), card.federation), coordinator)
    for g in card.guarantees:
        checks += _institution_checks(g, card.federation, by_owner.get((g.institution, g.dataset)), usable,
                                      tolerance)
    if usable is not None:
        stated = {g.institution for g in card.guarantees}
        for who in sorted({r.institution for r in usable if r.federation == card.federation} - stated):
            checks.append(Check("card_covers", None, f"{who} uploaded to {card.federation} (receipts) but the card "
                                "states no guarantee for it (a member's own card lists only its own)"))
    return checks


def audit_adapter(
    adapter_dir: Path,
    ledgers: Sequence[Path],
    policies: Sequence[Path] = (),
    federations: Sequence[Path] = (),
    receipts: Path | None = None,
    coordinator_key: str | Path | None = None,
    tolerance: Tolerance = DEFAULT_TOLERANCE,
) -> AdapterAudit:
    """Check the card of `adapter_dir` against `ledgers` (see `card_checks`) and verify the ledgers
    as `confide audit` does (integrity, receipts, accounting, the policies' budgets).

    Raises GuaranteeError (no or malformed privacy.json, no weights file), AuditInputError or
    PolicyError (all BadInput) for unreadable inputs.
    """
    adapter_dir = Path(adapter_dir)
    card = read_guarantee(adapter_dir)
    checks = card_checks(adapter_dir, card, ledgers, federations, receipts, coordinator_key, tolerance)
    ledger_audit = audit_ledgers(ledgers, policies=policies, federations=federations, receipts=receipts,
                                 coordinator_key=coordinator_key, tolerance=tolerance)
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
