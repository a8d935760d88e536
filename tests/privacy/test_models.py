"""Model sources: local directories load without the network; bad sources are one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from pydantic import ValidationError

from confide.platform.models import (
    ModelLoadError,
    build_adapter_model,
    build_model,
    load_base_model,
    load_tokenizer,
    resolved_pooling,
)
from confide.privacy.trainable import parameters_digest, trainable_state

from .helpers import make_federation


def test_local_hugging_face_directory_loads_and_seeds_the_new_head(tmp_path):
    settings = make_federation().model
    tokenizer = load_tokenizer(settings)
    load_base_model(settings, tokenizer, seed=3).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")

    federation = make_federation(model={"source": str(tmp_path / "base")})
    first, tokenizer = build_model(federation)
    second, _ = build_model(federation)
    assert parameters_digest(first, True) == parameters_digest(second, True)
    assert parameters_digest(first, False) == parameters_digest(second, False)
    assert any("modules_to_save" in name for name in trainable_state(first))
    assert tokenizer("a test")["input_ids"]


@pytest.mark.parametrize("overrides, message", [
    ({"model": {"source": "/no/such/model"}}, "no Hugging Face model directory"),
    ({"model": {"source": "random:tiny-t5"}}, "unknown model.source"),
    ({"model": {"source": "hub:bert-base"}}, "not a known source"),
    ({"adapter": {"target_modules": ["c_attn"]}}, "do not fit"),
    ({"model": {"source": "random:tiny-bert", "task": "causal_lm", "labels": []}}, "sequence_classification only"),
])
def test_bad_model_sources_and_settings_are_errors_with_a_hint(overrides, message):
    with pytest.raises(ModelLoadError, match=message):
        build_adapter_model(make_federation(**overrides))


def _inputs(federation, texts):
    tokenizer = load_tokenizer(federation.model)
    return tokenizer(texts, padding=True, return_tensors="pt")


def test_mean_pooling_classifies_the_unit_mean_of_unpadded_token_states():
    federation = make_federation(model={"pooling": "mean"}, adapter={"head_init": "normal"})
    model = build_adapter_model(federation).model.eval()
    batch = _inputs(federation, ["a much longer sentence about sport and tech", "short"])
    base = model.get_base_model()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        states = base.bert(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        mean = (states * mask).sum(1) / mask.sum(1)
        expected = base.classifier(torch.nn.functional.normalize(mean, dim=-1))
        alone = model(**_inputs(federation, ["short"])).logits
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(logits[1], alone[0], atol=1e-5)  # padding does not change a record's prediction


def test_auto_pooling_is_mean_for_sentence_embedding_models_and_cls_otherwise(tmp_path):
    plain, sentence = tmp_path / "plain", tmp_path / "sentence"
    plain.mkdir()
    sentence.mkdir()
    (sentence / "modules.json").write_text(json.dumps([
        {"idx": 0, "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "type": "sentence_transformers.models.Pooling"}]))
    settings = make_federation().model
    assert resolved_pooling(settings.model_copy(update={"source": "bundled:minilm-l6"})) == "mean"
    assert resolved_pooling(settings) == "cls"
    assert resolved_pooling(settings.model_copy(update={"source": str(sentence)})) == "mean"
    assert resolved_pooling(settings.model_copy(update={"source": str(plain)})) == "cls"
    assert resolved_pooling(settings.model_copy(update={"source": str(plain), "pooling": "mean"})) == "mean"


def test_zero_head_starts_every_class_at_equal_odds_and_normal_head_does_not():
    texts = ["sport today", "tech news"]
    zero = build_adapter_model(make_federation()).model.eval()
    normal = build_adapter_model(make_federation(adapter={"head_init": "normal"})).model.eval()
    with torch.no_grad():
        batch = _inputs(make_federation(), texts)
        assert torch.count_nonzero(zero(**batch).logits) == 0
        assert torch.count_nonzero(normal(**batch).logits) > 0


def test_adapter_layers_limit_lora_to_those_layers():
    model = build_adapter_model(make_federation(adapter={"layers": [1]})).model
    wrapped = {name.split(".layer.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_" in name}
    assert wrapped == {"1"}
    with pytest.raises(ModelLoadError, match="layers"):
        build_adapter_model(make_federation(adapter={"layers": [9]}))


def test_pooling_for_a_language_model_is_refused_at_policy_check():
    with pytest.raises(ValidationError, match="pooling"):
        make_federation(model={"source": "random:tiny-gpt2", "task": "causal_lm", "labels": [], "pooling": "mean"})
