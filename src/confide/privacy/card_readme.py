"""The model card's `README.md`: what Hugging Face tools display, rendered from `privacy.json`.

One definition of the displayed card: the platform writes it when a member saves its adapter
(`confide.platform.model_card.write_card`), and `confide audit adapter` renders it again from the
card it checked and requires the README to be exactly that, so no number a reader sees can differ
from the numbers checked against the ledgers.
"""

from __future__ import annotations

import json
from pathlib import Path

from confide.privacy.guarantee import AdapterGuarantee

CARD_README = "README.md"


def base_model_path(adapter_dir: Path) -> str | None:
    """The base model peft recorded in the adapter's adapter_config.json (None: not readable)."""
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("base_model_name_or_path")
    return str(value) if value else None


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_card(card: AdapterGuarantee, base_model_path: str | None = None) -> str:
    """The README.md: YAML front matter for the Hugging Face hub, then the guarantee in words and a table."""
    base = card.base_model_id or base_model_path or card.base_model
    front = ["---", f"base_model: {json.dumps(base)}", "library_name: peft", "tags:",
             "- lora", "- differential-privacy", "- federated-learning", "- confide", "---", ""]
    private = [g for g in card.guarantees if g.private]
    lines = [
        f"# LoRA adapter of federation `{card.federation}`",
        "",
        f"Fine-tuned by confide from `{card.base_model}` ({card.task}) by a federation of {card.institutions} "
        f"institutions: {card.rounds_applied} of {card.rounds_planned} planned rounds applied. Each institution "
        "trained on its own records with DP-SGD (Opacus) and sent only a CKKS-encrypted update.",
        "",
        f"LoRA rank {card.adapter.get('rank')}, alpha {card.adapter.get('alpha')}, on "
        f"{', '.join(card.adapter.get('target_modules', []))}; "
        + ("A frozen, B trained (FFA-LoRA)." if card.adapter.get("freeze_a") else "A and B trained."),
    ]
    if card.base_model_file:
        lines += ["", f"Base weights: `{base}` as the GGUF file `{card.base_model_file}`, dequantized to float32 "
                  "(the adapter was trained on exactly those weights; another quantization scores differently)."]
    if card.labels:
        lines += ["", "Labels, in output order: " + ", ".join(f"`{label}`" for label in card.labels) + "."]
    if card.key_fingerprint:
        lines += ["", f"Federation key (certified by its key holder): `{card.key_fingerprint}`."]
    lines += ["", "## Privacy guarantee", ""]
    if private:
        lines.append("For each institution below, this adapter is (epsilon, delta)-differentially private with "
                     "respect to one record of that institution's dataset: epsilon composes the DP-SGD steps "
                     "its ledger records for this federation, with the accountant named. `dataset eps` is all "
                     "its ledger has spent on the dataset, in every federation.")
        lines.append("")
        lines.append("That epsilon is for one record added or removed. The coordinator learns each "
                     "institution's record count (from the sample rate its spends declare), so against the "
                     "coordinator together with a member who decrypts, what holds is `replace-one eps`: one "
                     "record swapped for another, composed by dp_accounting's PLD accountant.")
    if len(private) < len(card.guarantees):
        lines.append("")
        lines.append("Institutions marked `no DP` trained without noise (a reference run): the adapter has no "
                     "privacy guarantee for their records.")
    lines += ["", "| institution | dataset | epsilon | replace-one eps | delta | accountant | rounds | dataset eps | "
              "budget | ledger head |", "|---|---|---|---|---|---|---|---|---|---|"]
    for g in card.guarantees:
        head = g.ledger_head[:16] if g.ledger_head else "-"
        lines.append(f"| {g.institution} | {g.dataset} | {_number(g.epsilon) if g.private else 'no DP'} | "
                     f"{_number(g.replace_one_epsilon) if g.private else 'no DP'} | {g.delta:g} | "
                     f"{g.accountant} | {g.rounds_trained} | {_number(g.dataset_epsilon)} | "
                     f"{_number(g.budget_epsilon, 2)} | `{head}` |")
    if len(card.guarantees) < card.institutions:
        lines += ["", f"This card lists {len(card.guarantees)} of the {card.institutions} institutions: a member "
                  "states only the guarantee its own ledger holds; the others' are in their own cards."]
    lines += [
        "",
        "## Checking it",
        "",
        "`privacy.json` holds the same numbers, the full ledger head hashes and the SHA-256 of "
        f"`adapter_model.safetensors` (`{card.weights_sha256[:16]}...`). An auditor checks them against the "
        "signed ledgers and the coordinator's receipts:",
        "",
        "```",
        "confide audit adapter ADAPTER_DIR LEDGER.jsonl... --receipts RECEIPTS.jsonl --federation FEDERATION.yaml",
        "```",
        "",
        "## Loading",
        "",
        *_loading(card, base),
        "",
    ]
    return "\n".join(front + lines)


def _loading(card: AdapterGuarantee, base: str) -> list[str]:
    """The code that loads the adapter onto its base, with plain transformers and peft."""
    auto = "AutoModelForCausalLM" if card.task == "causal_lm" else "AutoModelForSequenceClassification"
    labels = f", num_labels={len(card.labels)}" if card.labels else ""
    if card.base_model_file:
        load = (f'base_model = {auto}.from_pretrained(DIR, gguf_file={json.dumps(card.base_model_file)}, '
                f'dtype=torch.float32{labels})  # DIR: the folder holding that file')
    else:
        load = f"base_model = {auto}.from_pretrained({json.dumps(base)}{labels})"
    return ["```python", "import torch", f"from transformers import {auto}", "from peft import PeftModel", load,
            "model = PeftModel.from_pretrained(base_model, ADAPTER_DIR)", "```"]
