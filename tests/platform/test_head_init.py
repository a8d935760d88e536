"""The zero-shot head: each class's row starts at the model's own embedding of its label name."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from confide.errors import BadInput
from confide.platform.corpus import bbc_records
from confide.platform.data import Record, tokenize
from confide.platform.evaluation import evaluate_classifier
from confide.platform.head_init import GRID, resolved_head_init
from confide.platform.models import build_adapter_model
from confide.policies import FederationPolicy, load_federation
from tests.privacy.helpers import make_federation

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LABELS = ["apple_pie", "weather", "red-car"]


def _head(model) -> torch.nn.Linear:
    return model.base_model.model.classifier.modules_to_save.default


@pytest.mark.parametrize("head_init, pooling, resolved", [
    ("auto", "mean", "labels"), ("auto", "cls", "zero"), ("labels", "cls", "labels"),
    ("zero", "mean", "zero"), ("normal", "mean", "normal"),
])
def test_auto_reads_label_names_only_over_mean_pooled_sentence_embeddings(head_init, pooling, resolved):
    assert resolved_head_init(head_init, pooling) == resolved


def test_label_rows_are_the_scaled_mean_pooled_embeddings_of_the_names_on_a_grid():
    settings = {"model": {"pooling": "mean", "labels": LABELS}, "adapter": {"head_init_scale": 3.0}}
    built = build_adapter_model(make_federation(**settings), torch.device("cpu"))
    again = build_adapter_model(make_federation(**settings), torch.device("cpu"))
    head = _head(built.model)
    assert torch.equal(head.weight, _head(again.model).weight)  # every member starts identical
    assert torch.count_nonzero(head.bias) == 0
    assert torch.equal(torch.round(head.weight / GRID) * GRID, head.weight)
    # Independently: the backbone's token states for the names ("_" and "-" as spaces), masked mean, unit norm.
    zero = build_adapter_model(make_federation(model=settings["model"], adapter={"head_init": "zero"}),
                               torch.device("cpu"))
    assert torch.count_nonzero(_head(zero.model).weight) == 0
    batch = zero.tokenizer(["apple pie", "weather", "red car"], padding=True, return_tensors="pt")
    with torch.no_grad():
        states = zero.model.base_model.model.bert.embeddings(input_ids=batch["input_ids"])
        for layer in zero.model.base_model.model.bert.encoder.layer:
            mask = (1.0 - batch["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
            out = layer(states, attention_mask=mask)
            states = out[0] if isinstance(out, tuple) else out
    weights = batch["attention_mask"].unsqueeze(-1).float()
    pooled = torch.nn.functional.normalize((states * weights).sum(1) / weights.sum(1), dim=-1)
    torch.testing.assert_close(head.weight, 3.0 * pooled, rtol=0, atol=GRID)


@pytest.mark.integration  # loads the real MiniLM weights
def test_the_label_name_head_starts_well_above_chance_on_real_news():
    federation = load_federation(EXAMPLES / "federation.yaml")
    articles = bbc_records()[::15]  # every class, in the corpus' fixed order; nothing is trained
    records = [Record(a["text"], a["label"], i + 1) for i, a in enumerate(articles)]
    scores = {}
    for init in ("labels", "zero"):
        chosen = federation.model_copy(update={"adapter": federation.adapter.model_copy(update={"head_init": init})})
        built = build_adapter_model(chosen, torch.device("cpu"))
        scores[init] = evaluate_classifier(built.model, tokenize(records, built.tokenizer, chosen.model),
                                           list(chosen.model.labels))["accuracy"]
    # Zero logits tie on every record (the first class wins); the names alone sort most records right.
    assert scores["labels"] > max(0.45, scores["zero"] + 0.2), scores


@pytest.mark.parametrize("line", ["head_init: labels", "head_init_scale: 2.0", "head_bias: trained"])
def test_head_settings_are_refused_for_a_model_without_a_classifier_head(tmp_path, line):
    text = (EXAMPLES / "federation-causal.yaml").read_text()
    assert "\n  freeze_a: true" in text
    path = tmp_path / "federation.yaml"
    path.write_text(text.replace("\n  freeze_a: true", f"\n  freeze_a: true\n  {line}", 1))
    field = line.split(":")[0]
    with pytest.raises(BadInput, match=rf"federation.yaml:\d+: adapter.{field}: has no effect.*no classifier head"):
        load_federation(path)


def test_a_causal_policy_read_back_from_its_own_dump_is_still_valid():
    # Simulations and sweeps re-validate dumped policies, which then set every field to its default.
    policy = load_federation(EXAMPLES / "federation-causal.yaml")
    again = FederationPolicy.model_validate(policy.model_dump(mode="json"))
    assert again.adapter == policy.adapter
