"""`confide simulate --executor ray`: members as Ray actors on a local Ray instance, same outcome
as the default executor (spawned worker processes)."""

from __future__ import annotations

import numpy as np
import pytest

from confide.platform.simulation import Simulation, SimulationError, run_simulation
from tests.platform.federation_kit import load_files, make_federation_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ray = pytest.importorskip("ray")


def _deterministic_federation(root):
    """Two institutions, one round, training that draws nothing at random: no noise (private=False)
    and an expected batch above the records, so Poisson sampling at rate 1 takes every record."""
    federation_path, institution_paths = make_federation_files(root, ids=("a", "b"), rounds=1)
    text = federation_path.read_text().replace("expected_batch_size: 8", "expected_batch_size: 500")
    federation_path.write_text(text)
    return load_files(federation_path, institution_paths)


def _adapter(path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_ray_executor_runs_a_dp_round_and_every_member_applies_the_same_sum(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path / "fed", ids=("a", "b"), rounds=1))
    out = tmp_path / "out"
    summary = run_simulation(Simulation(federation, institutions, out, workers=2, executor="ray"))
    assert not ray.is_initialized()  # the local instance the simulation started is gone
    assert summary["rounds"][0]["status"] == "summed"
    assert sorted(summary["rounds"][0]["participants"]) == ["a", "b"]
    assert list(summary["institutions"]) == ["a", "b"]  # in roster order, whichever actor answered first
    a, b = (_adapter(out / "adapters" / m) for m in ("a", "b"))
    assert a.keys() == b.keys()
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    assert any(np.max(np.abs(a[name])) > 0 for name in a if "lora_B" in name)  # B starts at zero


def test_ray_executor_gives_the_adapters_of_the_default_executor(tmp_path):
    federation, institutions = _deterministic_federation(tmp_path / "fed")
    runs = {}
    for executor, workers in (("local", 1), ("ray", 2)):
        out = tmp_path / executor
        summary = run_simulation(Simulation(federation, institutions, out, workers=workers, private=False,
                                            executor=executor))
        assert summary["rounds"][0]["status"] in ("summed", "closed")
        runs[executor] = {m: _adapter(out / "adapters" / m) for m in ("a", "b")}
    assert not ray.is_initialized()  # the local instance the simulation started is gone
    # Each run decrypts its own CKKS sum, whose error per value is within the parameters' bound
    # for two contributions of weight 1: the adapters agree within twice that.
    tolerance = 2 * federation.ckks.error_bound(2) / 2
    moved = 0.0
    for member in ("a", "b"):
        processes, on_ray = runs["local"][member], runs["ray"][member]
        assert processes.keys() == on_ray.keys()
        for name in processes:
            assert np.max(np.abs(processes[name] - on_ray[name])) <= tolerance, name
        # Within one run every member applied the same sum.
        for name in processes:
            assert np.array_equal(runs["ray"]["a"][name], on_ray[name])
            if "lora_B" in name:  # B starts at zero: what it holds now is the round's update
                moved = max(moved, float(np.max(np.abs(on_ray[name]))))
    assert moved > 10 * tolerance


def test_unknown_executor_is_refused(tmp_path):
    federation, institutions = _deterministic_federation(tmp_path / "fed")
    with pytest.raises(SimulationError, match="executor"):
        run_simulation(Simulation(federation, institutions, tmp_path / "out", workers=0, executor="threads"))
