"""DP-LoRA rounds on tiny models: clipping is per example, only the adapter moves, models are reusable."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.data import TensorDataset

from confide.platform.data import load_institution_data
from confide.platform.models import build_adapter_model
from confide.privacy import RoundSpend, TrainingError
from confide.privacy.objective import per_example_loss, trim_padding
from confide.privacy.trainable import (
    lora_matrix,
    parameters_digest,
    trainable_parameters,
    trainable_state,
)
from confide.privacy.training import DPSettings, evaluate, run_dp_round, train_round

from .helpers import make_federation, make_institution, write_jsonl


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A tiny BERT classifier with FFA-LoRA and 24 records (19 train, 5 eval)."""
    tmp = tmp_path_factory.mktemp("bert")
    write_jsonl(tmp / "a.jsonl", 24)
    federation = make_federation()
    institution = make_institution(tmp, data={"path": str(tmp / "a.jsonl"), "format": "jsonl", "eval_fraction": 0.2})
    built = build_adapter_model(federation)
    data = load_institution_data(institution.data, federation.model, built.tokenizer)
    return federation, built, data


def settings(**overrides) -> DPSettings:
    values = dict(noise_multiplier=1.0, sample_rate=0.25, steps=2, clipping_norm=1.0,
                  max_physical_batch_size=4, learning_rate=0.05, optimizer="adamw")
    values.update(overrides)
    return DPSettings(**values)


def test_noise_free_round_equals_manual_per_example_clipping(tiny_bert):
    _, built, data = tiny_bert
    model = copy.deepcopy(built.model)
    reference = copy.deepcopy(built.model)
    train = TensorDataset(*[t[:6] for t in data.train.tensors])
    clip = 0.05
    # Sample rate 1: every record is in the one logical batch, split 3 + 3 by the memory manager.
    result = run_dp_round(model, train, "sequence_classification",
                          settings(noise_multiplier=0.0, sample_rate=1.0, steps=1, clipping_norm=clip,
                                   max_physical_batch_size=4, optimizer="sgd", learning_rate=1.0), seed=0)

    params = trainable_parameters(reference)
    clipped_sum = {name: torch.zeros_like(p) for name, p in params.items()}
    norms = []
    for i in range(len(train)):
        example = trim_padding(tuple(t[i: i + 1] for t in train.tensors), "sequence_classification")
        reference.zero_grad()
        losses, _ = per_example_loss(reference, example, "sequence_classification")
        losses.sum().backward()
        norm = torch.sqrt(sum((p.grad ** 2).sum() for p in params.values()))
        norms.append(float(norm))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for name, p in params.items():
            clipped_sum[name] += factor * p.grad
    assert max(norms) > clip, "the test must exercise clipping"
    for name in params:
        expected = -clipped_sum[name] / len(train)
        torch.testing.assert_close(result.delta[name], expected, rtol=1e-4, atol=1e-7)


def test_round_moves_lora_and_head_but_not_frozen_weights(tiny_bert):
    _, built, data = tiny_bert
    model = copy.deepcopy(built.model)
    frozen_before = parameters_digest(model, trainable=False)
    before = trainable_state(model)

    result = run_dp_round(model, data.train, "sequence_classification", settings(), seed=1)

    assert parameters_digest(model, trainable=False) == frozen_before
    after = trainable_state(model)
    assert set(result.delta) == set(before)
    assert any(".lora_B." in n for n in before) and any("modules_to_save" in n for n in before)
    assert not any(".lora_A." in n for n in before), "FFA-LoRA freezes A"
    for name in before:
        assert not torch.equal(after[name], before[name]), f"{name} did not move"
        torch.testing.assert_close(after[name] - before[name], result.delta[name])
    assert result.steps == 2


def test_training_a_too_moves_the_a_matrices(tmp_path):
    federation = make_federation(adapter={"freeze_a": False})
    built = build_adapter_model(federation)
    write_jsonl(tmp_path / "a.jsonl", 12)
    data = load_institution_data(make_institution(tmp_path).data, federation.model, built.tokenizer)
    before = trainable_state(built.model)
    assert any(".lora_A." in n for n in before)
    result = run_dp_round(built.model, data.train, "sequence_classification", settings(), seed=2)
    assert all(result.delta[n].abs().sum() > 0 for n in before if ".lora_A." in n)


def test_the_head_bias_stays_at_zero_unless_trained(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", 12)
    moved = {}
    for head_bias in ("frozen", "trained"):
        federation = make_federation(adapter={"head_bias": head_bias})
        built = build_adapter_model(federation)
        data = load_institution_data(make_institution(tmp_path).data, federation.model, built.tokenizer)
        biases = [n for n in trainable_state(built.model) if "modules_to_save" in n and n.endswith(".bias")]
        result = run_dp_round(built.model, data.train, "sequence_classification", settings(), seed=3)
        head = built.model.base_model.model.classifier.modules_to_save.default
        moved[head_bias] = (biases, torch.count_nonzero(head.bias).item(), sorted(result.delta))
    biases, nonzero, delta = moved["frozen"]
    assert biases == [] and nonzero == 0 and not any(n.endswith("default.bias") for n in delta)
    biases, nonzero, delta = moved["trained"]
    assert biases == ["base_model.model.classifier.modules_to_save.default.bias"] and nonzero > 0
    assert set(delta) - set(moved["frozen"][2]) == set(biases), "only the bias differs between the two"


def test_identical_seeds_give_bit_identical_initial_adapters():
    # A seeded (normal) head, so that the trainable part differs between seeds too; the default zero
    # head starts equal for every seed, and only the frozen A matrices differ.
    normal = {"head_init": "normal"}
    first = build_adapter_model(make_federation(seed=11, adapter=normal))
    second = build_adapter_model(make_federation(seed=11, adapter=normal))
    other = build_adapter_model(make_federation(seed=12, adapter=normal))
    for trainable in (True, False):
        assert parameters_digest(first.model, trainable) == parameters_digest(second.model, trainable)
        assert parameters_digest(first.model, trainable) != parameters_digest(other.model, trainable)
    # The adapter starts as a no-op (B = 0) and the trained head starts equal to the frozen original.
    state = trainable_state(first.model)
    assert all(state[n].abs().sum() == 0 for n in state if ".lora_B." in n)


def test_model_survives_many_rounds_without_leftover_hooks_or_attributes(tiny_bert):
    _, built, data = tiny_bert
    model = copy.deepcopy(built.model)
    for round_index in range(12):
        run_dp_round(model, data.train, "sequence_classification", settings(steps=1), seed=round_index)
    hooks = sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == 0
    assert not hasattr(model, "autograd_grad_sample_hooks")
    for p in model.parameters():
        assert not any(hasattr(p, a) for a in ("grad_sample", "summed_grad", "_forward_counter"))
        assert p.grad is None
    # Still an ordinary model: a plain forward/backward works and evaluation runs.
    assert evaluate(model, data.eval, "sequence_classification")["examples"] == len(data.eval)


def test_round_restores_weights_and_unhooks_when_it_fails(tiny_bert):
    _, built, data = tiny_bert
    model = copy.deepcopy(built.model)
    before = trainable_state(model)
    broken = TensorDataset(data.train.tensors[0], data.train.tensors[1], data.train.tensors[2] + 100)
    with pytest.raises(IndexError):  # labels beyond the classifier's outputs
        run_dp_round(model, broken, "sequence_classification", settings(sample_rate=1.0), seed=3)
    after = trainable_state(model)
    assert all(torch.equal(after[n], before[n]) for n in before)
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_train_round_takes_its_settings_from_the_policies_and_reports_steps(tiny_bert, tmp_path):
    federation, built, data = tiny_bert
    model = copy.deepcopy(built.model)
    seen = []
    delta = train_round(model, data.train, federation, make_institution(tmp_path, clipping_norm=0.5),
                        RoundSpend(1.0, 0.2, 3), on_step=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert set(delta) == set(trainable_state(model))


def test_a_real_round_cannot_be_given_a_seed(tiny_bert, tmp_path, monkeypatch):
    import confide.privacy.training as training

    federation, built, data = tiny_bert
    institution = make_institution(tmp_path)
    with pytest.raises(TypeError, match="seed"):
        train_round(copy.deepcopy(built.model), data.train, federation, institution, RoundSpend(1.0, 0.5, 2), seed=5)

    # Nor by replacing the seedable research entry point: real rounds do not go through that name.
    real = training.run_dp_round
    monkeypatch.setattr(training, "run_dp_round", lambda *args, **kwargs: real(*args, **(kwargs | {"seed": 0})))
    deltas = [train_round(copy.deepcopy(built.model), data.train, federation, institution, RoundSpend(1.0, 0.5, 2))
              for _ in range(2)]
    assert any(not torch.equal(deltas[0][name], deltas[1][name]) for name in deltas[0])
    seeded = [training.run_dp_round(copy.deepcopy(built.model), data.train, "sequence_classification",
                                    settings(sample_rate=0.5)).delta for _ in range(2)]
    assert all(torch.equal(seeded[0][name], seeded[1][name]) for name in seeded[0])  # the patch itself works


def test_empty_poisson_batches_still_take_a_noisy_step(tiny_bert):
    _, built, data = tiny_bert
    model = copy.deepcopy(built.model)
    # At this rate almost every logical batch is empty; each must still be one (noise-only) step.
    result = run_dp_round(model, data.train, "sequence_classification", settings(sample_rate=0.001, steps=3), seed=6)
    assert result.steps == 3 and result.examples == 0
    assert all(t.abs().sum() > 0 for t in result.delta.values())


def test_invalid_settings_are_refused_before_training(tiny_bert):
    _, built, data = tiny_bert
    with pytest.raises(TrainingError, match="sample_rate"):
        run_dp_round(copy.deepcopy(built.model), data.train, "sequence_classification", settings(sample_rate=0.0))


def test_causal_lm_loss_of_an_example_does_not_depend_on_its_batch(tmp_path):
    federation = make_federation(model={"source": "random:tiny-gpt2", "task": "causal_lm", "labels": [],
                                        "max_length_tokens": 16},
                                 adapter={"target_modules": ["c_attn"]})
    built = build_adapter_model(federation)
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in
                                                ["short one", "a much longer line of text with many words in it",
                                                 "mid length text here", "tiny", "another record of words"] * 2) + "\n")
    data = load_institution_data(make_institution(tmp_path).data, federation.model, built.tokenizer)
    tensors = data.train.tensors
    assert (tensors[2][tensors[1] == 0] == -100).all(), "padding is ignored by the loss"
    alone, _ = per_example_loss(built.model, trim_padding(tuple(t[:1] for t in tensors), "causal_lm"), "causal_lm")
    together, _ = per_example_loss(built.model, trim_padding(tuple(t[:4] for t in tensors), "causal_lm"), "causal_lm")
    torch.testing.assert_close(alone[0], together[0], rtol=1e-5, atol=1e-6)

    frozen = parameters_digest(built.model, trainable=False)
    result = run_dp_round(built.model, data.train, "causal_lm", settings(sample_rate=0.5), seed=4)
    assert parameters_digest(built.model, trainable=False) == frozen
    assert all(t.abs().sum() > 0 for t in result.delta.values())
    assert evaluate(built.model, data.eval, "causal_lm")["examples"] == len(data.eval)


def test_adapter_learning_rate_scales_only_the_lora_step(tiny_bert):
    _, built, data = tiny_bert
    deltas = {}
    for adapter_lr in (None, 0.005):
        # Noise-free SGD on the same samples. The head starts at zero, so the first step moves only the
        # head, and the second step's gradients are then the same in both runs: steps are lr x gradient.
        deltas[adapter_lr] = run_dp_round(copy.deepcopy(built.model), data.train, "sequence_classification",
                                          settings(optimizer="sgd", steps=2, noise_multiplier=0.0,
                                                   adapter_learning_rate=adapter_lr),
                                          seed=8).delta
    lora = [n for n in deltas[None] if ".lora_" in n]
    head = [n for n in deltas[None] if ".lora_" not in n]
    assert lora and head
    for name in lora:
        torch.testing.assert_close(deltas[0.005][name], deltas[None][name] * 0.1)
    for name in head:
        torch.testing.assert_close(deltas[0.005][name], deltas[None][name])
    assert any(float(deltas[None][n].abs().sum()) > 0 for n in lora)


def test_lora_matrix_names_exactly_peft_s_lora_matrices(tiny_bert):
    from peft.tuners.lora import LoraLayer

    _, built, _ = tiny_bert
    expected = {}
    for prefix, module in built.model.named_modules():
        if isinstance(module, LoraLayer):
            for key in module.lora_A:
                expected[f"{prefix}.lora_A.{key}.weight"] = "A"
                expected[f"{prefix}.lora_B.{key}.weight"] = "B"
    named = dict(built.model.named_parameters())
    assert expected and set(expected) <= set(named)
    assert {name: lora_matrix(name) for name in named if lora_matrix(name) is not None} == expected
    # FFA-LoRA: the A matrices are frozen, the B matrices train.
    assert all(named[name].requires_grad == (matrix == "B") for name, matrix in expected.items())


def test_the_adapter_learning_rate_comes_from_the_federation_file(tmp_path):
    federation = make_federation(training={"adapter_learning_rate": 0.003})
    institution = make_institution(tmp_path)
    assert DPSettings.from_policies(federation, institution, RoundSpend(1.0, 0.5, 2)).adapter_learning_rate == 0.003
