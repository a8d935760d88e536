"""Whole tiny sweeps (tiny BERT, 2 epsilons x 2 ranks): both executors, files written, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from confide.platform.sweep import SweepError, run_sweep
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


def test_local_sweep_completes_writes_results_plot_summary_and_a_rerun_skips_everything(tmp_path):
    sweep = write_tiny_sweep(tmp_path)
    report = run_sweep(sweep, tmp_path / "out", executor="local", workers=2)
    assert report.failed == {}
    assert len(report.points) == 4 + 2 * (2 + 1)  # grid, then per epsilon: 2 alone + 1 central
    assert len(report.ran) == len(report.points)
    assert_complete(tmp_path / "out", report)

    again = run_sweep(sweep, tmp_path / "out", executor="local", workers=2)
    assert again.ran == [] and sorted(again.skipped) == sorted(p.key for p in report.points)
    assert len(jsonl_keys(tmp_path / "out")) == len(report.points)


def test_ray_sweep_completes_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'confide[ray]')")
    sweep = write_tiny_sweep(tmp_path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_sweep(sweep, tmp_path / "out", executor="ray", workers=2)
    finally:
        ray.shutdown()
    assert report.failed == {}
    assert len(report.ran) == len(report.points) == 10
    assert_complete(tmp_path / "out", report)


def test_killed_sweep_resumes_with_only_the_missing_points(tmp_path):
    sweep = write_tiny_sweep(tmp_path, alone=False, central=False)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(
        [sys.executable, "-m", "confide.cli", "sweep", str(sweep), "--out", str(out), "--workers", "1"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (out / "results.jsonl").exists() and jsonl_keys(out):
                break
            time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the sweep and its worker process, mid-run
        process.wait()
    before = jsonl_keys(out)
    assert 0 < len(before) < 4, "the sweep should have been killed after its first point"

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
    with pytest.raises(SweepError, match=r"needs Ray.*pip install 'confide\[ray\]'"):
        run_sweep(sweep, tmp_path / "out", executor="ray")
    assert not (tmp_path / "out").exists()  # refused before doing anything
