"""Per-round metrics of simulate, sweep and demo as TensorBoard event files, read back with TensorBoard's reader."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from confide.cli import app
from confide.platform.tracking import log_federation, log_runs, read_scalars
from tests.simulated_kit import simulated_run


def _summary(tmp_path, with_f1: bool) -> dict:
    ledger = tmp_path / "a.jsonl"
    spends = [{"kind": "spend", "federation": "fed", "round": r, "epsilon": 0.7 * r} for r in (1, 2, 3)]
    other = {"kind": "spend", "federation": "elsewhere", "round": 1, "epsilon": 9.0}
    ledger.write_text("".join(json.dumps(e) + "\n" for e in [other, *spends]) + '{"torn')
    rounds = []
    for r in (1, 2, 3):
        report = {"round": r, "status": "summed", "participants": ["a", "b"][: 1 + r % 2], "accuracy": 0.5 + r / 10,
                  "loss": 1.0 / r, "upload_bytes": 1000 * r, "seconds": 2.5 * r}
        if with_f1:
            report["macro_f1"] = 0.4 + r / 10
        rounds.append(report)
    rounds[1]["accuracy"] = None  # a round that was not evaluated
    return {"federation": "fed", "model": "random:tiny-bert", "rounds": rounds,
            "institutions": {"a": {"private": True, "ledger": str(ledger), "epsilon": 2.1}}}


def _same(series, expected) -> bool:
    """Same steps, same values up to TensorBoard's float32."""
    return [s for s, _ in series] == [s for s, _ in expected] and \
        [v for _, v in series] == pytest.approx([v for _, v in expected], rel=1e-6)


def test_events_read_back_hold_each_rounds_metrics_and_the_ledgers_epsilon(tmp_path):
    summary = _summary(tmp_path, with_f1=True)
    run = log_federation(summary, tmp_path / "tb")
    scalars = read_scalars(run)
    rounds = summary["rounds"]
    assert _same(scalars["round/accuracy"], [(r["round"], r["accuracy"]) for r in rounds if r["accuracy"] is not None])
    for name in ("loss", "macro_f1", "upload_bytes", "seconds"):
        assert _same(scalars[f"round/{name}"], [(r["round"], r[name]) for r in rounds])
    assert scalars["round/participants"] == [(r["round"], len(r["participants"])) for r in rounds]
    assert _same(scalars["epsilon/a"], [(1, 0.7), (2, 1.4), (3, 2.1)])  # this federation's spends only


def test_logging_a_run_again_replaces_it_and_runs_share_one_folder(tmp_path):
    summary = _summary(tmp_path, with_f1=False)
    first, again = log_runs([("federated", summary), ("federated", summary)], tmp_path / "tb")
    assert first == again and len(list(first.glob("events.out.tfevents.*"))) == 1
    scalars = read_scalars(first)
    assert "round/macro_f1" not in scalars and len(scalars["round/loss"]) == 3


@pytest.mark.integration
def test_simulate_with_tensorboard_logs_what_summary_json_and_the_ledgers_record():
    run = simulated_run()
    summary = json.loads((run.out / "summary.json").read_text())
    scalars = read_scalars(run.tensorboard / summary["federation"])
    assert [step for step, _ in scalars["round/accuracy"]] == [1, 2]
    assert [v for _, v in scalars["round/accuracy"]] == pytest.approx([r["accuracy"] for r in summary["rounds"]])
    assert [v for _, v in scalars["round/upload_bytes"]] == [r["upload_bytes"] for r in summary["rounds"]]
    assert [v for _, v in scalars["round/macro_f1"]] == pytest.approx([r["macro_f1"] for r in summary["rounds"]])
    for name, status in summary["institutions"].items():
        steps, values = zip(*scalars[f"epsilon/{name}"])
        assert steps == (1, 2) and values[-1] == pytest.approx(status["epsilon"])
        assert values[0] < values[1]


def test_tensorboard_option_refuses_a_file_in_one_line(tmp_path):
    target, federation = tmp_path / "taken", tmp_path / "fed.yaml"
    target.write_text("")
    federation.write_text("kind: federation\n")  # refused before the federation file is even read
    result = CliRunner().invoke(app, ["simulate", str(federation), "--out", str(tmp_path / "o"),
                                      "--tensorboard", str(target)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "is a file, not a directory" in result.output and "--tensorboard" in result.output


def test_a_causal_lm_federation_logs_perplexity_as_exp_of_the_loss(tmp_path):
    federation = tmp_path / "federation.yaml"
    federation.write_text("model: {task: causal_lm}\n")
    summary = {**_summary(tmp_path, with_f1=False), "federation_file": str(federation)}
    scalars = read_scalars(log_federation(summary, tmp_path / "tb"))
    assert _same(scalars["round/perplexity"], [(r["round"], math.exp(r["loss"])) for r in summary["rounds"]])
    federation.write_text("model: {task: sequence_classification}\n")
    assert "round/perplexity" not in read_scalars(log_federation(summary, tmp_path / "tb"))


@pytest.mark.integration
def test_the_example_causal_federation_trains_with_dp_ckks_and_ledgers_and_reports_perplexity(tmp_path):
    """examples/federation-causal.yaml, shortened (2 rounds of 2 steps) on small data files of its own."""
    from tests.platform.federation_kit import write_data

    examples = Path(__file__).resolve().parents[1] / "examples"
    federation = yaml.safe_load((examples / "federation-causal.yaml").read_text())
    federation.update(rounds=2, training={**federation["training"], "steps_per_round": 2, "expected_batch_size": 8,
                                          "max_physical_batch_size": 8})
    federation["model"]["max_length_tokens"] = 16
    (tmp_path / "federation.yaml").write_text(yaml.safe_dump(federation))
    paths = []
    for k, name in enumerate(("causal-hospital-a", "causal-hospital-b")):
        policy = yaml.safe_load((examples / f"{name}.yaml").read_text())
        policy["data"]["path"] = f"{name}.jsonl"
        policy["state_dir"] = f"state/{name}"
        write_data(tmp_path / f"{name}.jsonl", 40, seed=k)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(policy))
        paths.append(str(tmp_path / f"{name}.yaml"))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["simulate", str(tmp_path / "federation.yaml"), *paths, "--out", str(out),
                                      "--workers", "0", "--tensorboard", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert [r["status"] for r in summary["rounds"]] == ["summed", "summed"]
    assert all(0 < s["epsilon"] <= s["budget_epsilon"] for s in summary["institutions"].values())
    scalars = read_scalars(tmp_path / "tb" / summary["federation"])
    assert _same(scalars["round/perplexity"], [(r["round"], math.exp(r["loss"])) for r in summary["rounds"]])
    assert "perplexity by round: 1:" in result.output
    assert (out / "adapters" / "hospital-a" / "privacy.json").exists()


def test_a_sweep_logs_one_run_per_finished_point(tmp_path):
    from confide.platform.tracking import sweep_runs

    for key in ("p2", "p1"):
        run = tmp_path / "sweep" / "points" / key / "run"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({**_summary(tmp_path, with_f1=False), "federation": key}))
    (tmp_path / "sweep" / "points" / "unfinished" / "run").mkdir(parents=True)
    runs = sweep_runs(tmp_path / "sweep")
    assert [name for name, _ in runs] == ["p1", "p2"]
    logged = log_runs(runs, tmp_path / "tb")
    assert [p.name for p in logged] == ["p1", "p2"] and all(read_scalars(p)["round/loss"] for p in logged)
