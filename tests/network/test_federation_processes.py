"""The whole networked federation as separate processes on 127.0.0.1 with TLS, with crashes.

The processes are the real commands, `confide coordinator` and `confide join`. The coordinator, and
the auditor that verifies the members' ledgers at the end, run where torch, transformers, peft and
Opacus are not installed (`tests/roles_env.py`): the roles install apart.

A coordinator and three agents (tiny random BERT, real DP training, real CKKS) run two rounds.
Agent c is killed as round 1 opens, so round 1 closes at its deadline with a and b; c is restarted
and catches up. The coordinator is killed with SIGKILL in the middle of round 2 and restarted on
the same state directory. At the end all three hold identical adapters, every round counted each
upload once, the ledgers hold one receipt per upload, and the coordinator's directory holds only
envelopes, the public context and sealed keys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from confide.aggregation.secagg import unpack_bundle
from confide.formats import ContributionStatement, KeyCertificate, RevealStatement
from confide.platform.service.client import Backoff, CoordinatorClient
from confide.privacy.ledger import PrivacyLedger

from ..roles_env import roles_python
from .conftest import make_federation
from .test_tls_client import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SRC = Path(__file__).resolve().parents[2] / "src"
TRAINING = "training:\n  steps_per_round: 3\n  expected_batch_size: 8\n  max_physical_batch_size: 8\n"
DEADLINE_S = 45


class Processes:
    """Child processes of the test, each logging to a file; all are killed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.running: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.roles = roles_python(root)  # the coordinator's interpreter: no training packages

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "a")
        python, env = self.roles if args[0] == "coordinator" else (sys.executable, self.env)
        process = subprocess.Popen([python, "-m", "confide.cli", *args], cwd=self.root,
                                   env=env, stdout=log, stderr=subprocess.STDOUT)
        self.running[name] = process
        return process

    def kill(self, name: str) -> None:
        process = self.running.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)

    def wait(self, name: str, timeout_s: float) -> int:
        code = self.running[name].wait(timeout=timeout_s)
        self.running.pop(name)
        return code

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text()

    def stop_all(self) -> None:
        for process in self.running.values():
            process.kill()
            process.wait(timeout=10)
        self.running.clear()


def wait_for(what: str, predicate, timeout_s: float, processes: Processes):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(processes.root.glob("*.log")))
    pytest.fail(f"timed out waiting for {what}\n{logs}")


def write_institution(root: Path, who: str, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma"]
    lines = [json.dumps({"text": " ".join(rng.choice(words, 6)), "label": "x" if n % 2 else "y"}) for n in range(64)]
    (root / f"{who}.jsonl").write_text("\n".join(lines) + "\n")
    path = root / f"{who}.yaml"
    path.write_text(f"kind: institution\ninstitution_id: {who}\ndata:\n  path: {who}.jsonl\n  format: jsonl\n"
                    "budget:\n  epsilon: 20\n  delta: 1.0e-5\nround_epsilon_cap: 8\n"
                    f"state_dir: state/{who}\nidentity_dir: identities/{who}\n")
    return path


def test_two_rounds_over_tls_survive_killed_agent_and_killed_coordinator(tmp_path):
    federation = make_federation(tmp_path, rounds=2, min_institutions=2, deadline_s=DEADLINE_S, extra=TRAINING)
    policies = {who: write_institution(tmp_path, who, n) for n, who in enumerate("abc")}
    port = free_port()
    url = f"https://127.0.0.1:{port}"
    state = tmp_path / "coordinator"
    coordinator_args = ("coordinator", str(federation.path), "--state", str(state), "--port", str(port),
                        "--tick-s", "0.2")
    procs = Processes(tmp_path)
    watcher = None
    try:
        procs.start("coordinator", *coordinator_args)
        fingerprint = wait_for("the certificate", lambda: (state / "tls" / "fingerprint.txt").exists()
                               and (state / "tls" / "fingerprint.txt").read_text().strip(), 60, procs)
        assert fingerprint in wait_for("the printed fingerprint",
                                       lambda: "fingerprint" in procs.log("coordinator") and procs.log("coordinator"),
                                       30, procs)
        watcher = CoordinatorClient(url, federation.identities["a"], "net-test", pin=fingerprint,
                                    backoff=Backoff(first_s=0.1, max_s=0.5, give_up_after_s=60))
        for who in "abc":
            procs.start(who, "join", str(policies[who]), "--federation", str(federation.path),
                        "--coordinator", url, "--pin", fingerprint)

        # Round 1: c dies as soon as the round opens; the round closes at its deadline with a and b.
        wait_for("round 1 to open", lambda: watcher.federation().rounds, 120, procs)
        procs.kill("c")
        view = wait_for("round 1 to be summed", lambda: (v := watcher.federation()).rounds[0].status
                        in ("summed", "closed") and v, DEADLINE_S + 60, procs)
        assert view.rounds[0].contributors == 2
        procs.start("c", "join", str(policies["c"]), "--federation", str(federation.path), "--coordinator", url,
                    "--pin", fingerprint)

        # Round 2: the coordinator is killed once an upload is in, and restarted on the same state.
        wait_for("a round-2 upload", lambda: len(watcher.federation().rounds) == 2
                 and watcher.federation().rounds[1].uploads >= 1, 120, procs)
        procs.kill("coordinator")
        time.sleep(1.0)
        procs.start("coordinator", *coordinator_args)

        for who in "abc":
            assert procs.wait(who, 150) == 0, procs.log(who)
        final = watcher.federation()
    finally:
        if watcher is not None:
            watcher.close()
        procs.stop_all()

    assert final.status == "finished" and [r.contributors for r in final.rounds] == [2, 3]
    # Each member keeps the adapter of its last applied round (round-named, see platform.member).
    adapters = [np.load(tmp_path / "state" / who / "federations" / "net-test" / "adapter-r2.npy") for who in "abc"]
    assert all(np.array_equal(adapters[0], other) for other in adapters[1:])
    assert np.abs(adapters[0]).sum() > 0
    for who in "abc":
        assert (tmp_path / "state" / who / "federations" / "net-test" / "final-adapter").is_dir()

    # Counts and ledgers: one receipt per accepted upload, matching what the coordinator stored.
    uploads = {1: {"a", "b"}, 2: {"a", "b", "c"}}
    for who in "abc":
        entries = [e for path in (tmp_path / "state" / who / "ledger").glob("*.jsonl")
                   for e in PrivacyLedger(path).entries() if e.get("federation") == "net-test"]
        receipts = sorted(e["round"] for e in entries if e["kind"] == "receipt")
        assert receipts == [r for r in (1, 2) if who in uploads[r]], who
        spends = [e["round"] for e in entries if e["kind"] == "spend"]
        assert len(spends) == len(set(spends)), f"{who} spent twice for one round"

    # The coordinator holds ciphertexts, the public context and sealed keys: nothing in clear.
    # Besides them, only public signed documents: the key certificate, the members' statements and the
    # committee's reveals (sums of shares over a whole set, which open no single upload).
    magics = {b"CFHE", b"CFPC", b"CFSL"}
    blobs = list((state / "blobs").iterdir())
    assert blobs
    for blob in blobs:
        if blob.name == "key-certificate.json":
            KeyCertificate.model_validate_json(blob.read_bytes())
        elif blob.name.endswith(".statement.json"):
            ContributionStatement.model_validate_json(blob.read_bytes())
        elif blob.name.endswith(".shares"):  # mask shares, each sealed to its committee member
            assert all(sealed[:4] == b"CFSL" for sealed in unpack_bundle(blob.read_bytes())), blob.name
        elif blob.name.startswith("reveal-"):  # a committee member's signed share sum over a whole set
            RevealStatement.model_validate_json(blob.read_bytes())
        else:
            assert blob.read_bytes()[:4] in magics, blob.name
    others = {p.relative_to(state).parts[0] for p in state.rglob("*") if p.is_file() and "blobs" not in p.parts}
    assert others <= {"state.sqlite", "state.sqlite-wal", "state.sqlite-shm", "nonces.sqlite", "nonces.sqlite-wal",
                      "nonces.sqlite-shm", "tls", "identity", "federation.sha256"}

    # An auditor without the training packages verifies the three ledgers, recomputes every epsilon and,
    # with the receipts the coordinator exports and its public key, their completeness: "verified" (0).
    python, env = procs.roles

    def confide(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([python, "-m", "confide.cli", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    exported = confide("export-receipts", "--state", str(state), "--out", str(tmp_path / "receipts.jsonl"))
    assert exported.returncode == 0 and "5 receipts written" in exported.stdout, exported.stdout + exported.stderr
    ledgers = sorted(str(p) for who in "abc" for p in (tmp_path / "state" / who / "ledger").glob("*.jsonl"))
    policy_args = [arg for who in "abc" for arg in ("--policy", str(policies[who]))]
    audit = confide("audit", *ledgers, "--federation", str(federation.path), *policy_args, "--json",
                    "--receipts", str(tmp_path / "receipts.jsonl"),
                    "--coordinator-key", str(state / "identity" / "identity.json"))
    assert audit.returncode == 0, audit.stdout + audit.stderr
    result = json.loads(audit.stdout)
    assert result["verdict"] == "verified" and len(result["ledgers"]) == 3
    checks = result["checks"] + [c for ledger in result["ledgers"] for c in ledger["checks"]]
    assert {c["name"] for c in checks if c["passed"]} >= {"epsilon_pld", "epsilon_accountant", "budget", "receipts"}
    # Without the receipts, completeness cannot be known: "incomplete" (3), never a pass.
    assert confide("audit", *ledgers, "--federation", str(federation.path), *policy_args).returncode == 3
