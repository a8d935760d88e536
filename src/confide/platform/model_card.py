"""The model card of a saved adapter: `README.md` (what Hugging Face tools show) and `privacy.json`.

Written beside the PEFT files (`adapter_config.json`, `adapter_model.safetensors`), which stay as
peft wrote them, so `PeftModel.from_pretrained(base, DIR)` loads the directory as before. The
README is rendered from the same card as privacy.json (see `confide.privacy.guarantee`); an
auditor checks privacy.json with `confide audit adapter DIR LEDGER...`.

A member writes the guarantee it can vouch for: its own ledger's. A simulation, which holds every
member, then completes each card with every institution's (`complete_cards`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from confide.formats import write_atomically
from confide.platform.model_sources import gguf_file, public_name
from confide.policies import FederationPolicy, InstitutionPolicy
from confide.privacy.card_readme import CARD_README, base_model_path, render_card
from confide.privacy.guarantee import (
    AdapterGuarantee,
    InstitutionGuarantee,
    guarantee_from_entries,
    read_guarantee,
    weights_digest,
    write_guarantee,
)
from confide.privacy.ledger_entries import Kind

__all__ = ["CARD_README", "complete_cards", "member_card", "render_card", "write_card"]


def member_card(adapter_dir: Path, federation: FederationPolicy, policy: InstitutionPolicy, ledger: Any,
                rounds_applied: int, private: bool = True) -> AdapterGuarantee:
    """The card of the adapter just saved in `adapter_dir` by one member, with its own guarantee.

    `ledger` is the member's ledger (`entries()`, `last_of()`), `rounds_applied` the federation's
    rounds whose sum the member applied.
    """
    entries = ledger.entries()
    own = guarantee_from_entries(entries, policy.institution_id, policy.dataset_id, federation.federation_id,
                                 federation.privacy.delta, federation.privacy.accountant, private,
                                 policy.budget.epsilon)
    lora = federation.adapter
    return AdapterGuarantee(
        federation=federation.federation_id,
        base_model=federation.model.source,
        task=federation.model.task,
        labels=list(federation.model.labels) if federation.model.task == "sequence_classification" else [],
        rounds_planned=federation.rounds,
        rounds_applied=rounds_applied,
        institutions=len(federation.roster),
        adapter={"rank": lora.rank, "alpha": lora.alpha, "target_modules": list(lora.target_modules),
                 "freeze_a": lora.freeze_a},
        weights_sha256=weights_digest(adapter_dir),
        guarantees=[own],
        key_fingerprint=_key_fingerprint(ledger, federation.federation_id),
        base_model_id=public_name(federation.model.source),
        base_model_file=gguf_file(federation.model.source),
    )


def _key_fingerprint(ledger: Any, federation_id: str) -> str | None:
    entry = ledger.last_of(Kind.KEY, federation=federation_id)
    return entry["fingerprint"] if entry is not None else None


def write_card(adapter_dir: Path, card: AdapterGuarantee) -> None:
    """Write privacy.json and the README.md rendered from it (replacing peft's empty template).

    peft records the base model's local directory in adapter_config.json (a bundled model's is
    inside this machine's site-packages); it is replaced by the card's `base_model_id`, the name
    anyone can resolve. (Set before saving instead, peft would look the name up on the hub.)
    """
    adapter_dir = Path(adapter_dir)
    if card.base_model_id is not None:
        _name_base_model(adapter_dir, card.base_model_id)
    write_guarantee(adapter_dir, card)
    (adapter_dir / CARD_README).write_text(render_card(card, base_model_path(adapter_dir)), encoding="utf-8")


def _name_base_model(adapter_dir: Path, base_model_id: str) -> None:
    path = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no peft config (a card written on its own): nothing to name
    if config.get("base_model_name_or_path") != base_model_id:
        config["base_model_name_or_path"] = base_model_id
        write_atomically(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))


def complete_cards(adapter_dirs: Sequence[Path]) -> None:
    """Give every card of one federation every institution's guarantee (a simulation holds them all).

    Each institution's epsilon bounds its records' influence on any member's final adapter: the
    adapters differ only if a member stopped early, and then depend on fewer of the same steps.
    """
    dirs = [Path(d) for d in adapter_dirs if (Path(d) / "privacy.json").exists()]
    cards = {d: read_guarantee(d) for d in dirs}
    rows: dict[str, InstitutionGuarantee] = {}
    for card in cards.values():
        rows.update({g.institution: g for g in card.guarantees})
    for directory, card in cards.items():
        write_card(directory, card.with_guarantees(list(rows.values())))
