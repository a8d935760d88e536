"""Whole tiny sweeps (tiny BERT, 2 epsilons x 2 ranks, baselines at every point): both executors, files
written, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from confide.platform.sweep import SweepError, run_sweep
from confide.platform.workers import ExecutorUnavailable
from tests.sweep.sweep_kit import write_tiny_sweep

REPO = Path(__file__).resolve().parents[2]


def csv_rows(out: Path) -> list[dict]:
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def jsonl_keys(out: Path) -> list[str]:
    return [json.loads(line)["key"] for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]


def assert_complete(out: Path, report) -> None:
    rows = csv_rows(out)
    assert sorted(r["key"] for r in rows) == sorted(p.key for p in report.points)
    assert all(r["accuracy"] not in ("", None) for r in rows)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"federated", "alone", "central"}
    private = [r for r in rows if r["epsilon"] != "inf"]
    assert private and all(0 < float(r["epsilon_spent"]) <= float(r["epsilon"]) + 1e-6 for r in private)
    assert all(r["epsilon_spent"] == "" for r in rows if r["epsilon"] == "inf")
    assert (out / "tradeoff.png").stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "| 2 | lora_rank=" in summary and "| inf (no DP) | lora_rank=" in summary
    assert "## Pareto front" in summary


@pytest.mark.integration
def test_local_sweep_completes_writes_results_plot_summary_and_a_rerun_skips_everything(tmp_path):
    sweep = write_tiny_sweep(tmp_path)
    report = run_sweep(sweep, tmp_path / "out", executor="local", workers=2)
    assert report.failed == {}
    assert len(report.points) == 4 * (1 + 2 + 1)  # every grid point: federated, 2 alone, 1 central
    assert len(report.ran) == len(report.points)
    assert_complete(tmp_path / "out", report)

    again = run_sweep(sweep, tmp_path / "out", executor="local", workers=2)
    assert again.ran == [] and sorted(again.skipped) == sorted(p.key for p in report.points)
    assert len(jsonl_keys(tmp_path / "out")) == len(report.points)


@pytest.mark.integration
def test_ray_sweep_completes_on_a_local_ray_instance(tmp_path):
    import ray  # installed by `make install` (the ray extra): its absence is a failure, not a skip
    sweep = write_tiny_sweep(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_sweep(sweep, tmp_path / "out", executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert report.failed == {}
    assert len(report.ran) == len(report.points) == 16
    assert_complete(tmp_path / "out", report)


# Run in a child process: the sweep kills its whole process group (itself and its worker) with
# SIGKILL right after the first point is recorded, so the crash lands at one known place, mid-run.
_DIE_AFTER_FIRST_POINT = """
import os, signal, sys
from confide.platform.sweep import run_sweep
from confide.platform.sweep.results import ResultStore

record = ResultStore.append

def record_then_die(self, row):
    record(self, row)
    os.killpg(0, signal.SIGKILL)

ResultStore.append = record_then_die
run_sweep(sys.argv[1], sys.argv[2], executor="local", workers=1)
"""


@pytest.mark.integration
def test_killed_sweep_resumes_with_only_the_missing_points(tmp_path):
    sweep = write_tiny_sweep(tmp_path, alone=False, central=False)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen([sys.executable, "-c", _DIE_AFTER_FIRST_POINT, str(sweep), str(out)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    assert process.wait(timeout=240) == -signal.SIGKILL
    before = jsonl_keys(out)
    assert len(before) == 1

    report = run_sweep(sweep, out, executor="local", workers=0)
    assert sorted(report.skipped) == sorted(before)
    assert sorted(report.ran) == sorted(p.key for p in report.points if p.key not in before)
    after = jsonl_keys(out)
    assert len(after) == len(set(after)) == 4
    assert len(csv_rows(out)) == 4


def test_unknown_executor_and_missing_ray_are_bad_input(tmp_path, monkeypatch):
    sweep = write_tiny_sweep(tmp_path)
    with pytest.raises(SweepError, match="unknown executor"):
        run_sweep(sweep, tmp_path / "out", executor="dask")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    # The simulation's Ray start-up says it (`confide.platform.workers.start_ray`): one message for both.
    with pytest.raises(ExecutorUnavailable, match=r"needs Ray.*pip install 'confide\[ray\]'"):
        run_sweep(sweep, tmp_path / "out", executor="ray")
    assert not (tmp_path / "out").exists()  # refused before doing anything
