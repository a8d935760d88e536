"""The frozen-prefix memo: the same outputs and DP updates as running the prefix every time."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from confide.platform import models
from confide.platform.prefix_cache import install_prefix_cache
from confide.privacy.objective import evaluate
from confide.privacy.training import DPSettings, run_dp_round
from tests.privacy.helpers import make_federation

VOCAB = 120


def _bert(dropout: float, seed: int = 0) -> BertForSequenceClassification:
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout,
                        num_labels=3, pad_token_id=0)
    torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def _twins(dropout: float = 0.0, max_bytes: int | None = None):
    """Two models with the same weights: the second memoises its layers 0-1 (adapters from layer 2)."""
    plain, cached = _bert(dropout), _bert(dropout)
    cached.load_state_dict(plain.state_dict())
    kwargs = {} if max_bytes is None else {"max_bytes": max_bytes}
    return plain, cached, install_prefix_cache(cached, [2], **kwargs)


def _batch(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _records(count: int, seed: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (count,), generator=generator).tolist()
    return [[101, *torch.randint(5, VOCAB, (n - 2,), generator=generator).tolist(), 102] for n in lengths]


def _logits(model, rows):
    ids, mask = _batch(rows)
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_memoised_prefix_gives_the_logits_of_running_it_whatever_the_batch():
    plain, cached, cache = _twins()
    plain.eval(), cached.eval()
    first, second = _records(4, 0), _records(3, 1)
    torch.testing.assert_close(_logits(cached, first), _logits(plain, first))
    assert (cache.misses, cache.hits) == (4, 0)
    # The same records again, then mixed with new ones in a batch of another width and order.
    torch.testing.assert_close(_logits(cached, first), _logits(plain, first))
    mixed = [second[0], first[2], second[1] + [7, 8, 9, 10, 11], first[0]]
    torch.testing.assert_close(_logits(cached, mixed), _logits(plain, mixed))
    assert (cache.misses, cache.hits) == (6, 6)


def test_prefix_runs_without_dropout_in_train_mode_and_keeps_module_names():
    plain, cached, _ = _twins(dropout=0.3)
    assert list(cached.state_dict()) == list(plain.state_dict())
    seen: list[torch.Tensor] = []
    for model in (plain, cached):
        model.bert.encoder.layer[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    rows = _records(3, 2)
    plain.eval()
    _logits(plain, rows)
    cached.train()
    _logits(cached, rows)  # computes the prefix
    _logits(cached, rows)  # serves it
    ids, mask = _batch(rows)
    for served in seen[1:]:
        # Padding positions are not computed (they are masked out downstream); real tokens must agree.
        torch.testing.assert_close(served * mask.unsqueeze(-1), seen[0] * mask.unsqueeze(-1))
    # The layers above the prefix still see their own dropout in train mode.
    assert not torch.equal(_logits(cached, rows), _logits(cached, rows))


def test_memo_stays_within_its_byte_bound_and_stays_correct():
    record_bytes = 8 * 32 * 4  # at most 8 tokens x 32 floats x 4 bytes
    plain, cached, cache = _twins(max_bytes=2 * record_bytes)
    plain.eval(), cached.eval()
    for seed in range(3):
        rows = _records(4, 10 + seed)
        torch.testing.assert_close(_logits(cached, rows), _logits(plain, rows))
        assert cache.bytes <= 2 * record_bytes
    assert 0 < len(cache.entries) <= 2


def test_a_batch_that_cannot_be_keyed_runs_the_prefix_uncached():
    plain, cached, cache = _twins()
    plain.eval(), cached.eval()
    rows = _records(2, 3)
    ids, mask = _batch(rows)
    ids, mask = ids.flip(1), mask.flip(1)  # left padding: the key (a prefix of ones) does not apply
    with torch.no_grad():
        expected = plain(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(cached(input_ids=ids, attention_mask=mask).logits, expected)
    assert (cache.misses, cache.hits, len(cache.entries)) == (0, 0, 0)


def test_an_unkeyed_batch_also_runs_the_prefix_without_dropout_in_train_mode():
    plain, cached, cache = _twins(dropout=0.3)
    seen: list[torch.Tensor] = []
    for model in (plain, cached):
        model.bert.encoder.layer[2].register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    ids, mask = _batch(_records(3, 4))
    ids, mask = ids.flip(1), mask.flip(1)  # left padding: run uncached
    plain.eval()
    cached.train()
    with torch.no_grad():
        plain(input_ids=ids, attention_mask=mask)
        cached(input_ids=ids, attention_mask=mask)
        cached(input_ids=ids, attention_mask=mask)
    assert (cache.misses, cache.hits) == (0, 0)
    for served in seen[1:]:
        torch.testing.assert_close(served, seen[0])


def test_token_types_and_positions_reach_the_prefix_and_its_key():
    plain, cached, cache = _twins()
    plain.eval(), cached.eval()
    ids, mask = _batch(_records(3, 5))
    second = (torch.arange(ids.shape[1]) >= 3).long().expand_as(ids) * mask  # a second segment from token 3
    shifted = (torch.arange(ids.shape[1]) + 2).expand_as(ids)
    with torch.no_grad():
        for kwargs in ({}, {"token_type_ids": second}, {"position_ids": shifted}, {"token_type_ids": second * 0}):
            expected = plain(input_ids=ids, attention_mask=mask, **kwargs).logits
            # Twice: the second call is served from the memo where the batch could be keyed.
            for _ in range(2):
                torch.testing.assert_close(cached(input_ids=ids, attention_mask=mask, **kwargs).logits, expected)
    # Plain ids and all-zero token types share keys (so the last case only hits); a second segment has
    # keys of its own; shifted positions run uncached.
    assert len(cache.entries) == 6 and cache.hits == 3 + 3 + 6


def test_no_memo_without_a_frozen_prefix():
    assert install_prefix_cache(_bert(0.0), None) is None
    assert install_prefix_cache(_bert(0.0), [0, 2]) is None
    federation = make_federation(model={"source": "random:tiny-gpt2", "task": "causal_lm", "labels": []},
                                 adapter={"target_modules": ["c_attn"], "layers": [1]})
    gpt2 = models.load_base_model(federation.model, models.load_tokenizer(federation.model), 7)
    assert install_prefix_cache(gpt2, [1]) is None


def test_dp_round_on_a_memoised_model_matches_the_uncached_round():
    federation = make_federation(adapter={"rank": 4, "alpha": 8, "layers": [1]})
    cached = models.build_adapter_model(federation, torch.device("cpu"))
    plain = models.build_adapter_model(federation, torch.device("cpu"), memoise_prefix=False)
    generator = torch.Generator().manual_seed(5)
    records = [(torch.randint(5, 200, (16,), generator=generator), torch.ones(16, dtype=torch.long),
                torch.tensor(i % 2)) for i in range(24)]
    for _ids, mask, _ in records[::3]:
        mask[int(torch.randint(4, 16, (1,), generator=generator)):] = 0
    settings = DPSettings(noise_multiplier=0.8, sample_rate=0.5, steps=3, clipping_norm=1.0,
                          max_physical_batch_size=8, learning_rate=0.05, optimizer="adamw")
    deltas = [run_dp_round(m.model, records, "sequence_classification", settings, seed=11).delta
              for m in (plain, cached)]
    assert deltas[0].keys() == deltas[1].keys()
    for name in deltas[0]:
        torch.testing.assert_close(deltas[1][name], deltas[0][name], rtol=1e-4, atol=1e-6)
    assert cached.prefix_cache.hits > 0  # records drawn twice were served from the memo


def test_adapter_model_memoises_below_its_lowest_adapted_layer_and_evaluates_the_same():
    federation = make_federation(adapter={"rank": 4, "alpha": 8, "layers": [1]})
    built = models.build_adapter_model(federation, torch.device("cpu"))
    plain = models.build_adapter_model(federation, torch.device("cpu"), memoise_prefix=False)
    assert plain.prefix_cache is None and built.prefix_cache is not None
    records = [(torch.randint(5, 200, (8,)), torch.ones(8, dtype=torch.long), torch.tensor(i % 2)) for i in range(6)]
    for _ in range(2):
        assert evaluate(built.model, records) == pytest.approx(evaluate(plain.model, records), rel=1e-5)
    assert (built.prefix_cache.misses, built.prefix_cache.hits) == (6, 6)


def test_a_deep_copy_of_a_memoised_mean_pooling_model_uses_its_own_memo_and_mask():
    federation = make_federation(model={"pooling": "mean"}, adapter={"rank": 4, "alpha": 8, "layers": [1]})
    built = models.build_adapter_model(federation, torch.device("cpu"))
    plain = models.build_adapter_model(federation, torch.device("cpu"), memoise_prefix=False)
    copied = copy.deepcopy(built.model)
    records = [(torch.randint(5, 200, (8,)), torch.tensor([1] * (3 + i) + [0] * (5 - i)), torch.tensor(i % 2))
               for i in range(4)]
    assert evaluate(copied, records) == pytest.approx(evaluate(plain.model, records), rel=1e-5)
    copied_cache = vars(copied.base_model.model.bert.encoder.layer[0])["forward"].__self__
    assert copied_cache is not built.prefix_cache
    assert (copied_cache.misses, built.prefix_cache.misses) == (4, 0)  # the copy filled its own memo
