"""`confide sweep`: split the data once, run every unfinished point, then write the report.

    DIR/data/            the split (site-1..N.jsonl and test.jsonl), as the points use it
    DIR/points/<key>/    each point's simulated federation: ledgers, coordinator state, adapters
    DIR/results.jsonl    one line per finished point (appended as each finishes)
    DIR/results.csv      the same, flat
    DIR/failures.jsonl   points that raised (they run again next time)
    DIR/tradeoff.png, DIR/pareto.csv, DIR/summary.md

Re-running the same command skips every point whose key is already in results.jsonl, so a killed
sweep resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from confide.formats import canonical_json, sha256
from confide.platform.split import split_to_files
from confide.platform.sweep.executors import EXECUTORS, SweepError, run_local, run_ray, threads_per_point
from confide.platform.sweep.job import PointJob, point_policies
from confide.platform.sweep.points import Point, base_settings, context_digest, expand_grid, plain
from confide.platform.sweep.report import write_report
from confide.platform.sweep.results import ResultStore
from confide.platform.sweep.spec import BUNDLED_BBC, LoadedSweep, load_sweep

Event = Callable[[dict], None]


@dataclass
class SweepReport:
    """What one invocation did."""

    out_dir: Path
    points: list[Point]
    skipped: list[str] = field(default_factory=list)
    """Keys already finished before this run."""
    ran: list[str] = field(default_factory=list)
    """Keys finished by this run."""
    failed: dict[str, str] = field(default_factory=dict)
    """Key -> error, for points that raised in this run."""
    paths: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def split_data(loaded: LoadedSweep, out_dir: Path) -> tuple[dict[str, list[dict]], str]:
    """Split the sweep's dataset into site-1..N and a test set under DIR/data; return the parts and their digest."""
    from confide.platform.data import read_records

    source = loaded.source
    if source == BUNDLED_BBC:
        from confide.platform.corpus import bbc_records

        records = bbc_records()
    else:
        data = loaded.template.data
        records = read_records(source, data.format if source == data.path else _format_of(source),
                               data.text_field, data.label_field)
    split = loaded.spec.split
    names = [f"site-{k + 1}" for k in range(split.institutions)]
    parts = split_to_files([{"text": r["text"], "label": r["label"]} for r in records], out_dir / "data", names,
                           split.alpha, split.test_fraction, split.seed)
    digest = sha256(canonical_json(parts))
    return parts, digest


def _format_of(path: Path) -> str:
    return "csv" if Path(path).suffix.lower() == ".csv" else "jsonl"


def plan_points(loaded: LoadedSweep, parts: dict[str, list[dict]], digest: str) -> list[Point]:
    """Every point of the sweep (federated grid, then baselines), keyed."""
    spec = loaded.spec
    names = [n for n in parts if n != "test"]
    context = context_digest(loaded.federation, loaded.template, spec.split.model_dump(mode="json"), digest)
    return expand_grid(spec.grid.model_dump(), base_settings(loaded.federation, loaded.template), names,
                       spec.baselines.alone, spec.baselines.central, context)


def make_job(loaded: LoadedSweep, point: Point, parts: dict[str, list[dict]], out_dir: Path, threads: int) -> PointJob:
    names = [n for n in parts if n != "test"]
    federation, institutions = point_policies(point, loaded.federation, loaded.template, names)
    if point.kind == "federated":
        datasets = {n: parts[n] for n in names}
    elif point.kind == "alone":
        datasets = {point.institution: parts[point.institution]}
    else:
        datasets = {institutions[0]["institution_id"]: [r for n in names for r in parts[n]]}
    return PointJob(point, federation, institutions, datasets, parts["test"], str(out_dir / "points" / point.key),
                    threads)


def _description(loaded: LoadedSweep, points: list[Point], parts: dict[str, list[dict]]) -> str:
    split, fed = loaded.spec.split, loaded.federation
    kinds = {k: sum(1 for p in points if p.kind == k) for k in ("federated", "alone", "central")}
    sizes = ", ".join(str(len(parts[n])) for n in parts if n != "test")
    return (f"{len(points)} points ({kinds['federated']} federated, {kinds['alone']} each-alone, "
            f"{kinds['central']} central) on `{fed.model.source}`: {split.institutions} institutions "
            f"(Dirichlet alpha {split.alpha:g}; records {sizes}), {len(parts['test'])} common test records, "
            f"delta {fed.privacy.delta:g}, accountant {fed.privacy.accountant}. Utility is the final round's "
            f"test accuracy (macro-F1 beside it). The baselines run the same grid, and each kind's "
            f"setting at an epsilon is its best mean over seeds: the same rule for all three.")


def run_sweep(sweep_path: str | Path, out_dir: str | Path, executor: str = "local", workers: int | None = None,
              ray_address: str | None = None, on_event: Event | None = None) -> SweepReport:
    """Run the sweep described by `sweep_path` into `out_dir`, skipping points finished earlier.

    `executor` is `local` (spawn worker processes; `workers` of them, 0 runs in this process) or
    `ray` (Ray tasks on a local instance, or the cluster at `ray_address`). `on_event` receives
    `{"type": "start", "total", "done"}` and `{"type": "point", "label", "row" | "error"}` events.
    Raises PolicyError for an invalid sweep or policy file, SweepError for bad arguments (or Ray
    missing), and the data and split errors for data that cannot be split as asked.
    """
    started = time.perf_counter()
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}", "use --executor local or --executor ray")
    if ray_address is not None and executor != "ray":
        raise SweepError("--ray-address goes with --executor ray")
    if workers is not None and workers < 0:
        raise SweepError(f"--workers must be >= 0, got {workers}")
    if executor == "ray":
        from confide.platform.workers import import_ray

        import_ray()  # fail before any work if Ray is missing
    loaded = load_sweep(sweep_path)
    out_dir = Path(out_dir)
    store = ResultStore(out_dir)
    store.open()
    parts, digest = split_data(loaded, out_dir)
    points = plan_points(loaded, parts, digest)
    (out_dir / "sweep.json").write_text(json.dumps(
        {"sweep": str(Path(sweep_path).resolve()), "points": [
            {"key": p.key, "kind": p.kind, "institution": p.institution,
             "settings": {k: plain(v) for k, v in p.settings.items()}} for p in points]}, indent=1) + "\n")
    finished = store.finished_keys()
    report = SweepReport(out_dir, points, skipped=[p.key for p in points if p.key in finished])
    todo = [p for p in points if p.key not in finished]
    emit = on_event or (lambda event: None)
    emit({"type": "start", "total": len(points), "done": len(report.skipped)})
    if executor == "local" and workers is None:
        workers = max(1, (os.cpu_count() or 1) // 2)
    # Points running at once share the cores; a Ray cluster without --workers runs one per CPU.
    threads = 1 if workers is None else threads_per_point(min(workers, len(todo)) or 1)
    jobs = [make_job(loaded, p, parts, out_dir, threads) for p in todo]

    def done(job: PointJob, row: dict | None, error: str | None) -> None:
        if row is not None:
            store.append(row)
            report.ran.append(job.point.key)
            emit({"type": "point", "label": job.point.label(), "row": row})
        else:
            store.record_failure(job.point.key, job.point.label(), error or "unknown error")
            report.failed[job.point.key] = error or "unknown error"
            emit({"type": "point", "label": job.point.label(), "error": error})

    tick = lambda: emit({"type": "tick"})  # noqa: E731
    if executor == "local":
        run_local(jobs, workers, done, tick)
    else:
        run_ray(jobs, workers, ray_address, done, tick)
    keys = {p.key for p in points}
    rows = [r for r in store.rows() if r["key"] in keys]
    failures = [f"{next(p.label() for p in points if p.key == k)}: {e}" for k, e in report.failed.items()]
    title = f"{loaded.federation.model.source}, {loaded.spec.split.institutions} institutions: accuracy vs epsilon"
    labels = loaded.federation.model.labels
    chance = 1 / len(labels) if loaded.federation.model.task == "sequence_classification" and labels else None
    report.paths = {"results": store.csv, "jsonl": store.jsonl,
                    **write_report(rows, out_dir, _description(loaded, points, parts), title, failures, chance)}
    report.seconds = round(time.perf_counter() - started, 1)
    return report
