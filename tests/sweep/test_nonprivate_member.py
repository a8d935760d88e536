"""A simulation with `private=False`: clipped training without noise, recorded but never spent."""

from __future__ import annotations

from confide.platform.simulation import Simulation, run_simulation
from confide.privacy.ledger import PrivacyLedger
from tests.platform.federation_kit import load_files, make_federation_files


def test_nonprivate_simulation_trains_and_records_nonprivate_rounds_instead_of_spends(tmp_path):
    federation, institutions = load_files(*make_federation_files(tmp_path / "fed", rounds=1))
    summary = run_simulation(Simulation(federation, institutions, tmp_path / "out", workers=0, private=False))

    assert summary["rounds"][0]["status"] in ("summed", "closed")
    assert summary["rounds"][0]["accuracy"] is not None
    for status in summary["institutions"].values():
        assert status["private"] is False
        assert status["epsilon"] is None
        entries = PrivacyLedger(status["ledger"]).entries()
        kinds = [e["kind"] for e in entries]
        assert "spend" not in kinds
        assert kinds.count("nonprivate") == 1
        nonprivate = next(e for e in entries if e["kind"] == "nonprivate")
        assert nonprivate["steps"] == federation.training.steps_per_round
        assert "uploaded" in [e.get("result") for e in entries]
