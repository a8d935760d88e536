"""The coordinator and the auditor run without the training side installed; the institutions' commands
say in one line what to install.

Where torch, transformers, peft and Opacus are absent (`roles_env`: a real virtualenv in CI), the
coordinator's and the auditor's modules import, and a command that trains exits 2 naming the extra.
A coordinator serving a real federation and an audit of real ledgers there are in
tests/network/test_federation_processes.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .roles_env import TRAINING_PACKAGES, roles_python

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

_PROBE = """
import importlib, sys
for name in {packages!r}:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    sys.exit(name + " is importable")
import confide.cli, confide.platform.service.server, confide.privacy.audit, confide.privacy.audit.verify
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({packages!r}))
sys.exit(f"loaded {{loaded}}" if loaded else 0)
"""


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    python, env = roles_python(tmp_path)
    return subprocess.run([python, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_the_coordinator_and_the_auditor_import_without_the_training_packages(tmp_path):
    probe = run(tmp_path, "-c", _PROBE.format(packages=TRAINING_PACKAGES))
    assert probe.returncode == 0, probe.stdout + probe.stderr


@pytest.mark.parametrize("command", [
    ["join", str(EXAMPLES / "hospital-a.yaml"), "--federation", str(EXAMPLES / "federation.yaml"),
     "--coordinator", "https://127.0.0.1:9", "--pin", "00"],
    ["simulate", str(EXAMPLES / "federation.yaml"), str(EXAMPLES / "hospital-a.yaml"),
     str(EXAMPLES / "hospital-b.yaml"), "--out", "sim-out"],
])
def test_a_command_that_trains_names_the_missing_extra_in_one_line(tmp_path, command):
    result = run(tmp_path, "-m", "confide.cli", *command)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'confide[training]'" in lines[0], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
