"""The `confide` command as a user runs it: a real subprocess, exit codes, and no tracebacks."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration  # each test runs `confide` as a subprocess; test_cli_errors.py runs in-process

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def confide(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "confide.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_version_and_help():
    result = confide("--version")
    assert result.returncode == 0 and result.stdout.startswith("confide ")
    assert "policy" in confide("--help").stdout


def test_policy_check_accepts_the_examples():
    files = sorted(EXAMPLES.glob("*.yaml"))
    result = confide("policy", "check", *files)
    assert result.returncode == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("ok ")] == \
        [f"ok {f}" for f in files]
    # The sweep's summary counts its grid: epsilons x seeds federated points of examples/sweep.yaml.
    import yaml
    grid = yaml.safe_load((EXAMPLES / "sweep.yaml").read_text())["grid"]
    points = 1
    for values in grid.values():
        points *= len(values)
    summary = f"sweep.yaml: sweep of federation bbc-news-demo from template hospital-a: {points} federated point(s)"
    assert summary in result.stdout


def test_policy_check_reports_a_bad_sweep_file_with_its_line(tmp_path):
    text = (EXAMPLES / "sweep.yaml").read_text()
    bad = tmp_path / "sweep.yaml"
    bad.write_text(text.replace("federation: federation.yaml", f"federation: {EXAMPLES / 'federation.yaml'}")
                   .replace("template: hospital-a.yaml", f"template: {EXAMPLES / 'hospital-a.yaml'}")
                   .replace("  local_steps: [8]", "  local_steps: [0]"))
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if text.startswith("  local_steps:"))
    result = confide("policy", "check", bad)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert [line.split(" (")[0] for line in result.stderr.strip().splitlines()] == [
        f"{bad}:{line}: grid.local_steps.0: Input should be greater than or equal to 1"]


def test_policy_check_reports_bad_input_as_lines_with_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    text = (EXAMPLES / "hospital-a.yaml").read_text()
    bad.write_text(text.replace("min_cohort: 2", "min_cohort: -1"))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.startswith("min_cohort:"))
    result = confide("policy", "check", EXAMPLES / "federation.yaml", bad)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"{bad}:{line}: min_cohort:")


def test_policy_explain_exit_codes(tmp_path):
    result = confide("policy", "explain", EXAMPLES / "federation.yaml", EXAMPLES / "hospital-b.yaml")
    assert result.returncode == 0, result.stderr
    assert "may join" in result.stdout
    strict = tmp_path / "strict.yaml"
    text = (EXAMPLES / "hospital-b.yaml").read_text().replace("min_cohort: 2", "min_cohort: 3")
    strict.write_text(text.replace("path: data/", f"path: {EXAMPLES}/data/"))
    result = confide("policy", "explain", EXAMPLES / "federation.yaml", strict)
    assert result.returncode == 1
    assert "FAIL" in result.stdout and "may not join" in result.stdout
    result = confide("policy", "explain", EXAMPLES / "federation.yaml", tmp_path / "missing.yaml")
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr


def test_keys_init_writes_private_files_0600_and_refuses_to_overwrite(tmp_path):
    result = confide("keys", "init", "--out", tmp_path / "clinic")
    assert result.returncode == 0, result.stderr
    assert "fingerprint:" in result.stdout and "signing_key:" in result.stdout
    for name in ("signing.key", "sealing.key"):
        assert (tmp_path / "clinic" / name).stat().st_mode & 0o777 == 0o600
    again = confide("keys", "init", "--out", tmp_path / "clinic")
    assert again.returncode == 2 and "already holds an identity" in again.stderr


def test_sweep_with_a_missing_file_is_one_line_and_exit_2(tmp_path):
    result = confide("sweep", tmp_path / "missing.yaml", "--out", tmp_path / "out")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"{tmp_path / 'missing.yaml'}: file not found (check the path)"]
    assert not (tmp_path / "out").exists()
