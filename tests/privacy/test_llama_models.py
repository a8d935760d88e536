"""Decoders of the Llama family (the architecture of bundled:smollm2-135m), on a tiny random Llama.

LoRA on q_proj/v_proj of chosen layers, the frozen-prefix memo, both tasks, the classifier's
pooling, and a DP round whose per-record gradients match the model run without the memo.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import LlamaForCausalLM, LlamaForSequenceClassification

from confide.platform import models
from confide.platform.decoder_pooling import pool_states
from confide.privacy.objective import evaluate
from confide.privacy.trainable import trainable_parameters
from confide.privacy.training import DPSettings, run_dp_round
from tests.privacy.helpers import make_federation

CAUSAL = {"source": "random:tiny-llama", "task": "causal_lm", "labels": []}
CLASSIFIER = {"source": "random:tiny-llama", "labels": ["sport", "tech"]}
LLAMA_LORA = {"target_modules": ["q_proj", "v_proj"], "layers": [1]}


def _records(count: int, seed: int, task: str, width: int = 12):
    """Right-padded records of several lengths: (ids, mask, labels) as the data module makes them."""
    generator = torch.Generator().manual_seed(seed)
    records = []
    for i in range(count):
        ids = torch.randint(5, 300, (width,), generator=generator)
        mask = torch.zeros(width, dtype=torch.long)
        mask[: int(torch.randint(3, width + 1, (1,), generator=generator))] = 1
        ids = ids.masked_fill(mask == 0, 0)
        label = torch.tensor(i % 2) if task == "sequence_classification" else ids.masked_fill(mask == 0, -100)
        records.append((ids, mask, label))
    return records


def test_tiny_llama_builds_for_both_tasks_with_lora_on_the_chosen_layers_only():
    causal = models.build_adapter_model(make_federation(model=CAUSAL, adapter=LLAMA_LORA), torch.device("cpu"))
    assert isinstance(causal.model.get_base_model(), LlamaForCausalLM)
    names = list(trainable_parameters(causal.model))
    assert names and all(".layers.1.self_attn." in n and "lora_B" in n for n in names)
    classifier = models.build_adapter_model(make_federation(model=CLASSIFIER, adapter=LLAMA_LORA),
                                            torch.device("cpu"))
    assert isinstance(classifier.model.get_base_model(), LlamaForSequenceClassification)
    names = list(trainable_parameters(classifier.model))
    assert any(n.endswith("score.modules_to_save.default.weight") for n in names)


def test_bert_target_modules_on_a_llama_name_the_llama_projections():
    with pytest.raises(models.ModelLoadError, match="q_proj/v_proj"):
        models.build_adapter_model(make_federation(model=CAUSAL, adapter={"target_modules": ["query", "value"]}),
                                   torch.device("cpu"))


@pytest.mark.parametrize("model", [CAUSAL, CLASSIFIER], ids=["causal_lm", "classifier"])
def test_memoised_llama_prefix_evaluates_like_the_plain_model_batch_after_batch(model):
    federation = make_federation(model=model, adapter=LLAMA_LORA)
    built = models.build_adapter_model(federation, torch.device("cpu"))
    plain = models.build_adapter_model(federation, torch.device("cpu"), memoise_prefix=False)
    assert plain.prefix_cache is None and built.prefix_cache is not None
    task = federation.model.task
    records = _records(7, 0, task)
    for _ in range(2):  # the second pass is served from the memo
        assert evaluate(built.model, records, task) == pytest.approx(evaluate(plain.model, records, task), rel=1e-5)
    assert (built.prefix_cache.misses, built.prefix_cache.hits) == (7, 7)
    # Records again, in another order and in a batch of another width (the states depend on earlier tokens only).
    wider = [(torch.cat([ids, torch.zeros(5, dtype=torch.long)]), torch.cat([mask, torch.zeros(5, dtype=torch.long)]),
              label if task == "sequence_classification" else torch.cat([label, torch.full((5,), -100)]))
             for ids, mask, label in records[::-1]]
    assert evaluate(built.model, wider, task) == pytest.approx(evaluate(plain.model, wider, task), rel=1e-5)
    assert built.prefix_cache.hits == 14


def test_dp_round_on_a_memoised_llama_matches_the_uncached_round():
    federation = make_federation(model=CAUSAL, adapter={**LLAMA_LORA, "rank": 4, "alpha": 8})
    cached = models.build_adapter_model(federation, torch.device("cpu"))
    plain = models.build_adapter_model(federation, torch.device("cpu"), memoise_prefix=False)
    records = _records(16, 3, "causal_lm")
    settings = DPSettings(noise_multiplier=0.8, sample_rate=0.5, steps=3, clipping_norm=1.0,
                          max_physical_batch_size=8, learning_rate=0.05, optimizer="adamw")
    deltas = [run_dp_round(m.model, records, "causal_lm", settings, seed=11).delta for m in (plain, cached)]
    assert deltas[0].keys() == deltas[1].keys() and deltas[0]
    for name in deltas[0]:
        assert deltas[0][name].abs().sum() > 0  # the LoRA weights moved (Opacus issue 820)
        torch.testing.assert_close(deltas[1][name], deltas[0][name], rtol=1e-4, atol=1e-6)
    assert cached.prefix_cache.hits > 0


def test_decoder_pooling_reads_the_last_real_token_or_the_masked_mean():
    hidden = torch.tensor([[[3.0, 0.0], [0.0, 4.0], [9.0, 9.0]], [[1.0, 1.0], [5.0, 5.0], [2.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool_states(hidden, mask, "last"), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    torch.testing.assert_close(pool_states(hidden, mask, "mean"), torch.tensor([[0.6, 0.8], [0.8, 0.6]]))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_a_llama_classifier_ignores_padding_and_reads_its_pooling(pooling):
    federation = make_federation(model={**CLASSIFIER, "pooling": pooling}, adapter=LLAMA_LORA)
    built = models.build_adapter_model(federation, torch.device("cpu"), memoise_prefix=False)
    model = built.model.eval()
    ids = torch.tensor([[7, 8, 9, 0, 0]])
    with torch.no_grad():
        short = model(input_ids=ids[:, :3], attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
        padded = model(input_ids=ids, attention_mask=torch.tensor([[1, 1, 1, 0, 0]])).logits
        other_end = model(input_ids=torch.tensor([[7, 8, 10]]), attention_mask=torch.ones(1, 3,
                                                                                         dtype=torch.long)).logits
    torch.testing.assert_close(padded, short)
    # The zero-initialised head gives equal odds; a head that reads the states tells records apart.
    assert torch.count_nonzero(short) == 0
    with torch.no_grad():
        head = built.model.base_model.model.score.modules_to_save.default
        head.weight.normal_(generator=torch.Generator().manual_seed(0))
        copied = copy.deepcopy(model)
        a = copied(input_ids=ids[:, :3], attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
        b = copied(input_ids=torch.tensor([[7, 8, 10]]), attention_mask=torch.ones(1, 3, dtype=torch.long)).logits
    assert other_end.shape == a.shape and not torch.allclose(a, b)


def test_pooling_that_does_not_fit_the_architecture_is_refused_with_the_alternative():
    with pytest.raises(models.ModelLoadError, match="pooling: last"):
        models.build_adapter_model(make_federation(model={**CLASSIFIER, "pooling": "cls"}, adapter=LLAMA_LORA),
                                   torch.device("cpu"))
    with pytest.raises(models.ModelLoadError, match="mean or cls"):
        models.build_adapter_model(make_federation(model={"pooling": "last"}), torch.device("cpu"))
    with pytest.raises(models.ModelLoadError, match="head_init: zero"):
        models.build_adapter_model(make_federation(model=CLASSIFIER, adapter={**LLAMA_LORA, "head_init": "labels"}),
                                   torch.device("cpu"))
