"""Experiment tracking: a finished federation's per-round metrics as TensorBoard event files (and MLflow).

`confide simulate`, `sweep` and `demo` call `log_federation` with `--tensorboard DIR` once a
federation is over, so what is logged is what summary.json and the ledgers record (the round
reports the coordinator settled, the epsilons the ledgers signed), never a live estimate. Each
federation is one run: `DIR/<run>/events.out.tfevents.*`. Scalars, by round:

    round/accuracy, round/loss, round/macro_f1 (when the evaluation reports it), round/upload_bytes,
    round/seconds, round/participants, epsilon/<institution> (cumulative, from its ledger),
    round/perplexity (causal LM: exp of the mean per-record token loss)

MLflow gets the same metrics when the `mlflow` package is installed and MLFLOW_TRACKING_URI is set
(nothing is written to a default ./mlruns the user did not ask for).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Iterable

import yaml

from confide.errors import BadInput
from confide.privacy.ledger_entries import Kind, entries_of

ROUND_METRICS = ("accuracy", "loss", "macro_f1", "upload_bytes", "seconds")


class TrackingError(BadInput):
    """Tracking was asked for but cannot be written."""


def _numbers(round_report: dict) -> dict[str, float]:
    values = {f"round/{k}": round_report.get(k) for k in ROUND_METRICS}
    values["round/participants"] = len(round_report.get("participants") or [])
    return {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _ledger_epsilons(ledger: Path, federation: str) -> list[tuple[int, float]]:
    """(round, cumulative epsilon) of each spend of `federation` in the ledger at `ledger`."""
    found = []
    try:
        lines = Path(ledger).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a torn last line: the ledger's own reader passes over it too
        for spend in entries_of([entry], Kind.SPEND, federation=federation):
            found.append((int(spend["round"]), float(spend["epsilon"])))
    return found


def federation_task(summary: dict) -> str | None:
    """The federation's task, from the federation file the summary names (None if it cannot be read)."""
    try:
        document = yaml.safe_load(Path(summary["federation_file"]).read_text(encoding="utf-8"))
        return str(document["model"]["task"])
    except (KeyError, TypeError, OSError, yaml.YAMLError):
        return None


def perplexities(summary: dict) -> list[tuple[int, float]]:
    """(round, exp(mean per-record token loss)) of a causal-LM federation's evaluated rounds; [] otherwise."""
    if federation_task(summary) != "causal_lm":
        return []
    return [(int(r["round"]), math.exp(r["loss"])) for r in summary.get("rounds", [])
            if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]


def federation_scalars(summary: dict) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series of one federation's summary (as run_simulation writes it), by tag."""
    series: dict[str, list[tuple[int, float]]] = {}
    for report in summary.get("rounds", []):
        for tag, value in _numbers(report).items():
            series.setdefault(tag, []).append((int(report["round"]), value))
    if perplexities(summary):
        series["round/perplexity"] = perplexities(summary)
    for name, status in sorted(summary.get("institutions", {}).items()):
        if status.get("private", True) and status.get("ledger"):
            points = _ledger_epsilons(Path(status["ledger"]), summary["federation"])
            if points:
                series[f"epsilon/{name}"] = points
    return series


def _run_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


def log_federation(summary: dict, log_dir: Path, run: str | None = None) -> Path:
    """Write one federation's scalars as TensorBoard events under `log_dir/run`; returns that folder.

    `run` defaults to the federation id. Raises TrackingError if tensorboard is not installed or
    the folder cannot be written.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise TrackingError("--tensorboard needs the tensorboard package: pip install 'confide[tracking]'") from None
    target = Path(log_dir) / _run_name(run or summary["federation"])
    series = federation_scalars(summary)
    for old in target.glob("events.out.tfevents.*"):  # logging the same run again replaces it
        old.unlink()
    try:
        writer = SummaryWriter(log_dir=str(target))
    except OSError as exc:
        raise TrackingError(f"{target}: cannot write TensorBoard events ({exc.strerror or exc})") from None
    try:
        for tag, points in series.items():
            for step, value in points:
                writer.add_scalar(tag, value, global_step=step)
    finally:
        writer.close()
    _log_mlflow(target.name, summary, series)
    return target


def _log_mlflow(run: str, summary: dict, series: dict[str, list[tuple[int, float]]]) -> None:
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    try:
        import mlflow
    except ImportError:
        return
    with mlflow.start_run(run_name=run):
        mlflow.set_tags({"confide.federation": summary["federation"], "confide.model": summary.get("model", "")})
        for tag, points in series.items():
            for step, value in points:
                mlflow.log_metric(tag.replace("/", "."), value, step=step)


def log_runs(runs: Iterable[tuple[str, dict]], log_dir: Path) -> list[Path]:
    """`log_federation` for several (run name, summary) pairs into one folder (runs overlay in TensorBoard)."""
    return [log_federation(summary, log_dir, name) for name, summary in runs]


def sweep_runs(out_dir: Path) -> list[tuple[str, dict]]:
    """(point key, summary) of every finished point of a sweep in `out_dir`."""
    found = []
    for path in sorted(Path(out_dir).glob("points/*/run/summary.json")):
        try:
            found.append((path.parent.parent.name, json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError):
            continue
    return found


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run folder, read back with TensorBoard's own event reader, by tag."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
