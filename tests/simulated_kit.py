"""One tiny simulated federation (three institutions, tiny random BERT, 2 rounds), run once per test
session through `confide simulate` in this process and shared by the tests that read its outputs
(adapter cards, TensorBoard event files). Its files are removed when the session ends."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from confide.cli import app
from tests.platform.federation_kit import make_federation_files


@dataclass(frozen=True)
class SimulatedRun:
    root: Path
    out: Path
    tensorboard: Path
    federation: Path
    institutions: list[Path]

    @property
    def ledgers(self) -> list[Path]:
        return sorted(self.out.glob("institutions/*/ledger/*.jsonl"))

    def audit_args(self) -> list[str]:
        """The arguments an auditor passes besides the ledgers: receipts, key, federation, policies."""
        args = ["--receipts", str(self.out / "receipts.jsonl"),
                "--coordinator-key", str(self.out / "coordinator" / "identity" / "identity.json"),
                "--federation", str(self.out / "federation.yaml")]
        for path in self.institutions:
            args += ["--policy", str(path)]
        return args


@functools.cache
def simulated_run() -> SimulatedRun:
    root = Path(tempfile.mkdtemp(prefix="confide-simulated-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    federation, institutions = make_federation_files(root / "files")
    out, tensorboard = root / "out", root / "tb"
    result = CliRunner().invoke(app, ["simulate", str(federation), *map(str, institutions), "--out", str(out),
                                      "--workers", "0", "--tensorboard", str(tensorboard)])
    assert result.exit_code == 0, result.output[-3000:]
    return SimulatedRun(root, out, tensorboard, federation, institutions)
