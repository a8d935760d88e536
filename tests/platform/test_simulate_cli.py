"""`confide simulate` as a user runs it: a subprocess, files in, summary.json, ledgers and adapters out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from confide.identity import Identity
from confide.privacy.ledger import PrivacyLedger
from tests.platform.federation_kit import make_federation_files

pytestmark = pytest.mark.integration  # each test runs `confide` as a subprocess


def confide(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "confide.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def check_summary(out: Path, ids: list[str], rounds: int) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == list(range(1, rounds + 1))
    for r in summary["rounds"]:
        assert set(r) >= {"round", "participants", "declined", "accuracy", "loss", "upload_bytes", "seconds"}
        assert r["status"] == "summed" and sorted(r["participants"]) == sorted(ids)
        assert 0.0 <= r["accuracy"] <= 1.0 and r["upload_bytes"] > 0
    assert list(summary["institutions"]) == ids  # in roster order, whichever worker answered first
    for name, status in summary["institutions"].items():
        assert 0 < status["epsilon"] <= status["budget_epsilon"]
        ledger = PrivacyLedger(Path(status["ledger"]))
        identity = Identity.load(out / "identities" / name)
        assert ledger.verify(identity.public, recompute_epsilon=True) == []
        assert abs(ledger.epsilon_spent() - status["epsilon"]) < 1e-9
    weights = {n: (out / "adapters" / n / "adapter_model.safetensors").read_bytes() for n in ids}
    assert len(set(weights.values())) == 1, "members' final adapters differ"
    return summary


def test_simulate_policy_files_in_worker_processes(tmp_path):
    federation, institutions = make_federation_files(tmp_path / "files")
    out = tmp_path / "out"
    result = confide("simulate", federation, *institutions, "--out", out, "--workers", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    check_summary(out, ["a", "b", "c"], rounds=2)
    # An auditor verifies every ledger independently, with the coordinator's signed receipts.
    ledgers = sorted(out.glob("institutions/*/ledger/*.jsonl"))
    audit = confide("audit", *ledgers, "--federation", out / "federation.yaml",
                    *[arg for p in institutions for arg in ("--policy", p)], "--receipts", out / "receipts.jsonl",
                    "--coordinator-key", out / "coordinator" / "identity" / "identity.json", "--json")
    assert audit.returncode == 0, audit.stdout[-3000:]
    assert json.loads(audit.stdout)["passed"] is True
    ledger = sorted(out.glob("institutions/a/ledger/*.jsonl"))[0]
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text(ledger.read_text().replace('"steps":2', '"steps":1', 1))
    assert ledger.read_text() != tampered.read_text()
    result = confide("audit", tampered, "--federation", out / "federation.yaml")
    assert result.returncode == 1 and "FAIL" in result.stdout
    result = confide("audit", tmp_path / "missing.jsonl", "--federation", out / "federation.yaml")
    assert result.returncode == 2 and "missing.jsonl: file not found" in result.stderr
    assert "Traceback" not in result.stderr
    # The report is written whatever the verdict, and exits with it: 0 verified, 1 failed, 3 incomplete.
    # Verified needs the receipts too: without them, nothing shows the ledgers are complete.
    checked = [*ledgers, "--federation", out / "federation.yaml", *[a for p in institutions for a in ("--policy", p)],
               "--receipts", out / "receipts.jsonl", "--coordinator-key",
               out / "coordinator" / "identity" / "identity.json"]
    result = confide("report", *checked, "--out", tmp_path / "verified.html")
    assert result.returncode == 0 and "verdict: every ledger verifies" in result.stdout, result.stderr
    result = confide("report", ledger, "--federation", out / "federation.yaml", "--out", tmp_path / "report.html")
    assert result.returncode == 3 and "verdict: incomplete" in result.stdout, result.stderr
    assert "epsilon" in (tmp_path / "report.html").read_text().lower()
    result = confide("report", tampered, "--federation", out / "federation.yaml", "--out", tmp_path / "failed.md")
    assert result.returncode == 1 and "verdict: verification failed" in result.stdout, result.stderr
    assert "FAILED" in (tmp_path / "failed.md").read_text()
    # The adapter is a real PEFT adapter: it loads onto the federation's base model.
    from peft import PeftModel

    from confide.platform.models import load_base_model, load_tokenizer
    from confide.policies import load_federation

    settings = load_federation(federation).model
    base = load_base_model(settings, load_tokenizer(settings), seed=0)
    model = PeftModel.from_pretrained(base, str(out / "adapters" / "a"))
    assert any("lora_B" in name for name, _ in model.named_parameters())


def test_simulate_dirichlet_split_of_one_dataset(tmp_path):
    federation, institutions = make_federation_files(tmp_path / "files", records=120)
    out = tmp_path / "out"
    result = confide("simulate", federation, "--split", "dirichlet:1.0", "--institutions", "2",
                     "--template", institutions[0], "--out", out, "--workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "data" / "site-1.jsonl").exists() and (out / "data" / "test.jsonl").exists()
    check_summary(out, ["site-1", "site-2"], rounds=2)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_simulate_bad_data_line_is_one_line_with_exit_2_and_no_traceback(tmp_path, workers):
    federation, institutions = make_federation_files(tmp_path / "files")
    data = tmp_path / "files" / "b.jsonl"
    lines = data.read_text().splitlines()
    lines[4] = '{"text": "fig plum", "label": "zebra"}'
    data.write_text("\n".join(lines) + "\n")
    result = confide("simulate", federation, *institutions, "--out", tmp_path / "out", "--workers", workers)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"{data}:5" in result.stderr and "zebra" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_simulate_refuses_a_directory_that_holds_a_simulation(tmp_path):
    federation, institutions = make_federation_files(tmp_path / "files")
    (tmp_path / "out" / "coordinator").mkdir(parents=True)
    result = confide("simulate", federation, *institutions, "--out", tmp_path / "out")
    assert result.returncode == 2 and "already holds a simulation" in result.stderr
