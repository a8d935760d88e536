"""Releasing decrypted values to non-key-holders: flooding well above CKKS noise, rounding,
and a persisted per-key release limit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from confide.aggregation import (
    DecryptedSum,
    ReleaseCounter,
    ReleaseCounterError,
    ReleaseLimitReached,
    flood_and_round,
    release_average,
)
from confide.aggregation.release import secure_standard_normal

KEY = "ab" * 16
OTHER_KEY = "cd" * 16


def test_flooding_noise_is_two_to_the_flood_bits_times_the_error_bound(rng):
    values = np.zeros(20_000)
    released = flood_and_round(values, 1e-10, flood_bits=20, rng=rng)
    assert released.noise_std == pytest.approx(1e-10 * 2**20)
    assert np.std(released.values) == pytest.approx(released.noise_std, rel=0.05)
    assert abs(np.mean(released.values)) < 0.05 * released.noise_std


def test_released_values_lie_on_a_grid_just_below_the_noise(rng):
    released = flood_and_round(np.linspace(-1, 1, 1000), 1e-9, flood_bits=20, rng=rng)
    assert released.noise_std / 32 < released.grid_step <= released.noise_std / 16
    steps = released.values / released.grid_step
    assert np.array_equal(steps, np.round(steps))


def test_default_flooding_draws_from_the_os_csprng():
    a = flood_and_round(np.zeros(8), 1e-12).values
    b = flood_and_round(np.zeros(8), 1e-12).values
    assert not np.array_equal(a, b)
    samples = secure_standard_normal(50_001)
    assert samples.shape == (50_001,)
    assert abs(samples.mean()) < 0.03 and samples.std() == pytest.approx(1.0, rel=0.03)


def test_flooding_refuses_a_missing_error_bound_or_non_finite_values():
    from confide.aggregation import InvalidUpdate

    with pytest.raises(InvalidUpdate):
        flood_and_round(np.zeros(3), 0.0)
    with pytest.raises(InvalidUpdate):
        flood_and_round(np.array([np.inf]), 1e-9)


def test_release_counter_refuses_past_its_limit_and_persists_across_restarts(tmp_path):
    path = tmp_path / "releases.json"
    counter = ReleaseCounter(path, limit=2)
    assert counter.record(KEY) == 1
    assert ReleaseCounter(path, limit=2).record(KEY) == 2
    with pytest.raises(ReleaseLimitReached):
        ReleaseCounter(path, limit=2).record(KEY)
    assert ReleaseCounter(path, limit=2).count(KEY) == 2
    assert ReleaseCounter(path, limit=2).record(OTHER_KEY) == 1
    assert json.loads(path.read_text())["releases"] == {KEY: 2, OTHER_KEY: 1}


def test_corrupt_counter_file_refuses_releases(tmp_path):
    path = tmp_path / "releases.json"
    path.write_text('{"version": 1, "releases": {"x": -1}}')
    with pytest.raises(ReleaseCounterError):
        ReleaseCounter(path, limit=5).record(KEY)


def test_release_of_an_average_is_counted_before_it_is_flooded(tmp_path, rng):
    decrypted = DecryptedSum(np.full(100, 0.25), total_weight=10.0, count=3, error_bound=1e-12)
    counter = ReleaseCounter(tmp_path / "r.json", limit=1)
    released = release_average(decrypted, KEY, counter, flood_bits=20, rng=rng)
    assert counter.count(KEY) == 1
    assert released.noise_std == pytest.approx(1e-12 * 2**20)
    assert np.max(np.abs(released.values - 0.25)) < 10 * released.noise_std
    with pytest.raises(ReleaseLimitReached):
        release_average(decrypted, KEY, counter, rng=rng)
