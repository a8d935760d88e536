"""Every `confide` command answers bad usage and bad paths in one line with exit 2; bugs exit 1.

Runs the command in this process (typer's test runner), so it is part of the fast tier; each case
must fail before any real work starts.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from confide import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FED = str(EXAMPLES / "federation.yaml")
INST = str(EXAMPLES / "hospital-a.yaml")
SWEEP = str(EXAMPLES / "sweep.yaml")

# {FILE} is an existing regular file, {DIR} an existing directory, {MISSING} a path that does not
# exist, {LEDGER} an existing (empty) ledger file.
CASES = {
    "bad option value": [
        "calibrate --epsilon x --delta 1e-5 --sample-rate 0.01 --steps 10",
        "calibrate --epsilon 1 --delta 1e-5 --sample-rate 0.01 --steps ten",
        "simulate {FED} {INST} --out {DIR}/o --workers many",
        "demo --workers many --out {DIR}/o",
        "sweep {SWEEP} --out {DIR}/o --workers many",
        "audit canaries {FED} {INST} --canaries lots",
        "coordinator {FED} --state {DIR}/s --port http",
        "coordinator {FED} --state {DIR}/s --tick-s 0",
        "data bbc --out {DIR}/o --alpha low",
        "data bbc --out {DIR}/o --seed x",
    ],
    "missing required option": [
        "keys init",
        "calibrate --epsilon 1 --delta 1e-5 --sample-rate 0.01",
        "simulate {FED} {INST}",
        "sweep {SWEEP}",
        "report {LEDGER}",
        "coordinator {FED}",
        "join {INST} --coordinator https://127.0.0.1:1",
        "join {INST} --federation {FED}",
        "data bbc",
        "policy check",
        "policy explain {FED}",
        "audit ledgers",
        "audit canaries {FED}",
        "export-receipts --state {DIR}",
        "export-receipts --out {DIR}/r.jsonl",
    ],
    "unusable output path": [
        "keys init --out {FILE}/sub",
        "keys init --out {FILE}",
        "simulate {FED} {INST} --out {FILE}",
        "simulate {FED} {INST} --out {FILE}/sub",
        "demo --out {FILE}",
        "sweep {SWEEP} --out {FILE}",
        "report {LEDGER} --out {DIR}",
        "report {LEDGER} --out {FILE}/report.html",
        "coordinator {FED} --state {FILE}",
        "data bbc --out {FILE}/sub",
        "data bbc --out /proc/confide-test",
        "export-receipts --state {DIR} --out {DIR}",
    ],
    "nonexistent input file": [
        "policy check {MISSING}",
        "policy explain {MISSING} {INST}",
        "policy explain {FED} {MISSING}",
        "simulate {MISSING} {INST} --out {DIR}/o",
        "simulate {FED} {MISSING} --out {DIR}/o",
        "simulate {FED} --split dirichlet:0.5 --template {MISSING} --out {DIR}/o",
        "demo --examples {MISSING} --out {DIR}/o",
        "sweep {MISSING} --out {DIR}/o",
        "audit {MISSING}",
        "audit ledgers {MISSING}",
        "audit ledgers {LEDGER} --policy {MISSING}",
        "audit canaries {MISSING} {INST}",
        "report {MISSING} --out {DIR}/r.html",
        "coordinator {MISSING} --state {DIR}/s",
        "coordinator {FED} --state {DIR}/s --tls-cert {MISSING} --tls-key {FILE}",
        "join {MISSING} --federation {FED} --coordinator https://127.0.0.1:1",
        "join {INST} --federation {MISSING} --coordinator https://127.0.0.1:1",
        "export-receipts --state {MISSING} --out {DIR}/r.jsonl",
        "export-receipts --state {DIR} --out {DIR}/r.jsonl",
    ],
    "value out of range": [
        "calibrate --epsilon 3 --delta 1e-5 --sample-rate 1e-12 --steps 40",
        "calibrate --epsilon 1e6 --delta 1e-5 --sample-rate 0.2 --steps 40",
        "calibrate --epsilon 3 --delta 1e-300 --sample-rate 0.2 --steps 40",
        "calibrate --epsilon 3 --delta 1e-5 --sample-rate 0.2 --steps 99999999999999999999",
        "coordinator {FED} --state {DIR}/s --port 70000",
        "coordinator {FED} --state {DIR}/s --tls-cert {FILE} --tls-key {FILE}",
        "simulate {FED} {INST} --out {DIR}/o --workers -1",
        "simulate {FED} --split dirichlet:nan --template {INST} --out {DIR}/o",
        "simulate {FED} --split dirichlet:0.5 --template {INST} --test-fraction 2 --out {DIR}/o",
        "simulate {FED} --split dirichlet:0.5 --template {INST} --seed -1 --out {DIR}/o",
        "data bbc --out {DIR}/o --names ../escaped,b",
        "data bbc --out {DIR}/o --alpha nan",
        "data bbc --out {DIR}/o --seed -1",
        "data bbc --out {DIR}/o --test-fraction 1",
        "keys init --out {DIR}/k --id Bad-ID",
        "sweep {FED} --out {DIR}/o",
    ],
    "unknown command or option": [
        "nonsense",
        "policy nonsense",
        "keys nonsense",
        "data nonsense",
        "calibrate --epsilonn 1",
        "policy check --strict {FED}",
    ],
}


def _expand(template: str, tmp_path: Path) -> list[str]:
    (tmp_path / "a-file").write_text("not a directory\n")
    (tmp_path / "ledger.jsonl").write_text("")
    (tmp_path / "a-dir").mkdir(exist_ok=True)
    names = {"FED": FED, "INST": INST, "SWEEP": SWEEP, "FILE": str(tmp_path / "a-file"),
             "DIR": str(tmp_path / "a-dir"), "MISSING": str(tmp_path / "missing.yaml"),
             "LEDGER": str(tmp_path / "ledger.jsonl")}
    return [part.format(**names) for part in template.split()]


@pytest.mark.parametrize(
    "args", [pytest.param(a, id=f"{kind}: {a}") for kind, cases in CASES.items() for a in cases]
)
def test_bad_usage_or_path_is_one_line_with_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli.app, _expand(args, tmp_path), prog_name="confide")
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output and "╭" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    left = [p for p in (tmp_path / "a-dir").rglob("*")]
    assert left == [], f"the failed command left {left} behind"


def test_usage_error_names_the_problem_and_the_fix():
    result = CliRunner().invoke(cli.app, ["calibrate", "--epsilon", "x"], prog_name="confide")
    assert result.output.strip().startswith("confide calibrate: invalid value for '--epsilon'")
    assert result.output.strip().endswith("(see `confide calibrate --help`)")


def test_an_unusable_output_path_names_the_path(tmp_path):
    (tmp_path / "f").write_text("")
    result = CliRunner().invoke(cli.app, ["keys", "init", "--out", str(tmp_path / "f" / "sub")], prog_name="confide")
    assert result.output.startswith(f"{tmp_path / 'f' / 'sub'}: Not a directory (give --out ")


def test_insecure_ckks_is_refused_by_policy_check_with_file_and_line(tmp_path):
    text = (EXAMPLES / "federation.yaml").read_text()
    bad = tmp_path / "federation.yaml"
    bad.write_text(text.replace("  coeff_mod_bit_sizes: [60]", "  coeff_mod_bit_sizes: [60, 60]")
                   .replace("  scale_bits: 40", "  scale_bits: 59"))
    line = bad.read_text().splitlines().index("  coeff_mod_bit_sizes: [60, 60]") + 1
    result = CliRunner().invoke(cli.app, ["policy", "check", str(bad)], prog_name="confide")
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"{bad}:{line}: ckks.coeff_mod_bit_sizes: log2(q) = 120 exceeds the 128-bit security limit of 109 for "
        "N=4096 (use fewer or smaller primes, or poly_modulus_degree 8192)"
    ]


@pytest.mark.parametrize("text, expected", [
    ("kind: [federation]\n", ":1: kind: a list, not a name"),
    ("kind: " + "[" * 300 + "]" * 300 + "\n", ":1: kind: a list, not a name"),
    ("kind: " + "[" * 5000 + "]" * 5000 + "\n", ": YAML nested too deeply to read"),
])
def test_a_kind_that_is_not_a_name_or_yaml_nested_too_deep_is_one_line(text, expected, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = CliRunner().invoke(cli.app, ["policy", "check", str(bad)], prog_name="confide")
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith(f"{bad}{expected}")


def _example_federation_with(prefix: str, value: str, tmp_path: Path) -> tuple[Path, int]:
    """examples/federation.yaml with its first line starting `prefix` set to `value`; the file and that line."""
    lines = (EXAMPLES / "federation.yaml").read_text().splitlines()
    at = next(k for k, line in enumerate(lines) if line.startswith(prefix))
    lines[at] = f"{prefix} {value}"
    bad = tmp_path / "federation.yaml"
    bad.write_text("\n".join(lines) + "\n")
    return bad, at + 1


@pytest.mark.parametrize("prefix, value", [("  min_noise_multiplier:", ".inf"), ("  alpha:", ".nan"),
                                           ("round_deadline_s:", ".inf")])
def test_a_policy_number_must_be_finite(prefix, value, tmp_path):
    bad, line = _example_federation_with(prefix, value, tmp_path)
    result = CliRunner().invoke(cli.app, ["policy", "check", str(bad)], prog_name="confide")
    assert result.exit_code == 2, result.output
    assert f"{bad}:{line}: " in result.output and "Input should be a finite number" in result.output


@pytest.mark.parametrize("prefix, value, wanted", [("rounds:", "true", "an integer"),
                                                   ("  alpha:", "false", "a number")])
def test_a_boolean_is_not_read_as_a_number(prefix, value, wanted, tmp_path):
    bad, line = _example_federation_with(prefix, value, tmp_path)
    result = CliRunner().invoke(cli.app, ["policy", "check", str(bad)], prog_name="confide")
    assert result.exit_code == 2, result.output
    assert f"{bad}:{line}: " in result.output and f"expected {wanted}, got bool" in result.output


def test_data_names_cannot_leave_the_output_directory(tmp_path):
    out = tmp_path / "deep" / "out"
    result = CliRunner().invoke(cli.app, ["data", "bbc", "--out", str(out), "--names", "../../escaped,b"],
                                prog_name="confide")
    assert result.exit_code == 2 and "is not an id" in result.output
    assert not list(tmp_path.rglob("*.jsonl"))


def test_a_bug_is_exit_1_with_the_traceback_in_a_log_not_dressed_as_bad_input(tmp_path, monkeypatch):
    import tempfile

    from confide.privacy import calibration

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("something inside broke")

    monkeypatch.setattr(calibration, "calibrate", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = ["calibrate", "--epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "10"]
    result = CliRunner().invoke(cli.app, args, prog_name="confide")
    assert result.exit_code == 1
    (line,) = result.output.strip().splitlines()
    assert "internal error (ZeroDivisionError: something inside broke)" in line and "bug" in line
    (log,) = tmp_path.glob("confide-error-*.log")
    assert log.name in line
    assert "Traceback" in log.read_text() and "something inside broke" in log.read_text()


def test_an_os_error_on_a_path_the_user_did_not_give_is_a_bug(tmp_path, monkeypatch):
    import tempfile

    from confide.privacy import calibration

    def broken(*_args, **_kwargs):
        raise PermissionError(13, "Permission denied", "/var/lib/confide-internal")

    monkeypatch.setattr(calibration, "calibrate", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    args = ["calibrate", "--epsilon", "1", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "10"]
    result = CliRunner().invoke(cli.app, args, prog_name="confide")
    assert result.exit_code == 1 and "internal error (PermissionError" in result.output


def test_version_and_help_exit_0():
    result = CliRunner().invoke(cli.app, ["--version"], prog_name="confide")
    assert result.exit_code == 0 and result.output.startswith("confide ")
    result = CliRunner().invoke(cli.app, ["policy", "--help"], prog_name="confide")
    assert result.exit_code == 0 and "check" in result.output


def test_an_error_with_a_hint_reads_as_one_sentence_not_a_tuple(tmp_path):
    fed = tmp_path / "federation.yaml"
    fed.write_text((Path(__file__).parent.parent / "examples" / "federation.yaml").read_text())
    result = CliRunner().invoke(cli.app, ["simulate", str(fed), "--template", str(fed), "--out", str(tmp_path / "o")],
                                prog_name="confide")
    assert result.exit_code == 2, result.output
    assert "--template goes with --split (add --split dirichlet:ALPHA or drop --template)" in result.output
    assert "('" not in result.output


def test_policy_check_refuses_a_layer_the_model_does_not_have(tmp_path):
    bad, line = _example_federation_with("  layers:", "[4, 6]", tmp_path)
    result = CliRunner().invoke(cli.app, ["policy", "check", str(bad)], prog_name="confide")
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        f"{bad}:{line}: adapter.layers: layer 6 does not exist: bundled:minilm-l6 has 6 layers "
        "(layers count from 0, so use 0 to 5)"]
    good, _ = _example_federation_with("  layers:", "[0, 5]", tmp_path)
    assert CliRunner().invoke(cli.app, ["policy", "check", str(good)], prog_name="confide").exit_code == 0
