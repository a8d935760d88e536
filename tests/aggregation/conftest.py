"""Shared fixtures for the aggregation tests: keys are cheap (N=4096), so tests stay fast."""

from __future__ import annotations

import numpy as np
import pytest
from aggregation_helpers import lora_state_dict

from confide.aggregation import (
    AdapterLayout,
    PublicContext,
    SecretKeyMaterial,
    create_key_material,
    flatten,
)


@pytest.fixture(scope="session")
def material() -> SecretKeyMaterial:
    return create_key_material()


@pytest.fixture(scope="session")
def other_material() -> SecretKeyMaterial:
    """Key material of another federation (same parameters, different key)."""
    return create_key_material()


@pytest.fixture(scope="session")
def coordinator(material: SecretKeyMaterial) -> PublicContext:
    """The coordinator's context, as it would receive it: parsed from public bytes."""
    return PublicContext.from_bytes(material.public_context_bytes())


@pytest.fixture(scope="session")
def layout() -> AdapterLayout:
    """16,384 values: five ciphertexts per upload, the last one holding trailer and padding."""
    return flatten(lora_state_dict(rank=8, hidden=256))[1]


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
