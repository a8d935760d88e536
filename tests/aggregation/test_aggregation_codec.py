"""Adapter <-> vector codec: exact round trip, canonical layout hash, foreign layouts refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aggregation_helpers import lora_state_dict

from confide.aggregation import AdapterLayout, InvalidUpdate, LayoutMismatch, flatten, unflatten


def test_flatten_then_unflatten_restores_every_tensor_exactly_with_its_dtype():
    state = lora_state_dict()
    state["extra.bias"] = torch.randn(7, dtype=torch.bfloat16)
    vector, layout = flatten(state)
    assert vector.dtype == np.float64 and vector.size == layout.size
    restored = unflatten(vector, layout)
    assert restored.keys() == state.keys()
    for name, tensor in state.items():
        assert restored[name].dtype == tensor.dtype
        assert torch.equal(restored[name], tensor)


def test_layout_hash_does_not_depend_on_state_dict_order():
    state = lora_state_dict()
    reversed_state = dict(reversed(list(state.items())))
    assert flatten(state)[1].hash == flatten(reversed_state)[1].hash
    assert np.array_equal(flatten(state)[0], flatten(reversed_state)[0])


def test_layout_survives_json_round_trip_with_the_same_hash():
    layout = flatten(lora_state_dict())[1]
    again = AdapterLayout.from_json(layout.to_json())
    assert again == layout and again.hash == layout.hash and len(layout.hash) == 64


def test_vector_of_another_length_is_refused_instead_of_misassigned():
    vector, layout = flatten(lora_state_dict())
    with pytest.raises(LayoutMismatch):
        unflatten(vector[:-1], layout)


def test_adapter_with_another_rank_is_refused_naming_the_tensor():
    expected = flatten(lora_state_dict(rank=4))[1]
    with pytest.raises(LayoutMismatch, match="lora_A"):
        flatten(lora_state_dict(rank=8), expected=expected)


def test_layout_check_refuses_a_foreign_hash():
    layout = flatten(lora_state_dict())[1]
    other = flatten(lora_state_dict(hidden=64))[1]
    with pytest.raises(LayoutMismatch):
        layout.require_hash(other.hash)


def test_non_finite_or_integer_tensors_are_refused():
    state = lora_state_dict()
    state[next(iter(state))][0, 0] = float("nan")
    with pytest.raises(InvalidUpdate, match="NaN"):
        flatten(state)
    with pytest.raises(InvalidUpdate, match="int64"):
        flatten({"steps": torch.tensor([3])})


def test_malformed_layout_json_is_refused():
    with pytest.raises(LayoutMismatch):
        AdapterLayout.from_json('{"version": 1, "entries": [["a", "x", 3]]}')
