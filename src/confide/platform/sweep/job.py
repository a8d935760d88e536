"""One point of a sweep as a self-contained job: policies, data and a working folder in, one result row out.

A job carries its data as records rather than file paths, so it runs the same in a local worker
process and in a Ray task on another node. `run_point` is the function both executors call.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from confide.platform.sweep.points import Point, plain
from confide.policies import FederationPolicy, InstitutionPolicy

CENTRAL = "central"


@dataclass(frozen=True)
class PointJob:
    """Everything `run_point` needs, as plain picklable data."""

    point: Point
    federation: dict
    """The point's federation policy (JSON form)."""
    institutions: list[dict]
    """The point's institution policies (JSON form); data paths are filled in by `run_point`."""
    datasets: dict[str, list[dict]]
    """Records (`text`, `label`) of each institution, by institution id."""
    test: list[dict]
    work_dir: str
    threads: int = 1


def point_policies(point: Point, federation: FederationPolicy, template: InstitutionPolicy,
                   names: list[str]) -> tuple[dict, list[dict]]:
    """The federation and institution policies (JSON form) of `point`.

    The institutions' budget is the point's epsilon (unchanged for `inf`, which trains without
    noise). Per-round caps and the federation's noise floor are lifted so that the member's plan
    calibrates the noise to spend exactly that budget over the planned rounds. Baselines are
    federations of one (min_institutions and min_cohort 1); the central one trains on the union
    of the data with an expected batch as large as the whole federation's per step.
    """
    s = point.settings
    fed = federation.model_dump(mode="json")
    fed["federation_id"] = f"sweep-{point.key}"
    fed["adapter"].update(rank=s["lora_rank"], freeze_a=s["freeze_a"])
    fed["training"].update(steps_per_round=s["local_steps"], expected_batch_size=s["expected_batch_size"],
                           learning_rate=s["learning_rate"])
    fed["model"]["max_length_tokens"] = s["max_length_tokens"]
    fed["privacy"].update(min_noise_multiplier=0.0, max_round_epsilon=None)
    fed.update(rounds=s["rounds"], seed=s["seed"])
    if point.kind == "federated":
        members = list(names)
    else:
        fed["min_institutions"] = 1
        members = [point.institution] if point.kind == "alone" else [CENTRAL]
    if point.kind == CENTRAL:
        fed["training"]["expected_batch_size"] *= len(names)
    institutions = []
    for name in members:
        inst = template.model_dump(mode="json")
        inst.update(institution_id=name, round_epsilon_cap=None, identity_dir=None,
                    max_rounds=max(template.max_rounds, s["rounds"]),
                    accepts={"federations": ["*"], "base_models": ["*"]},
                    min_cohort=min(template.min_cohort, len(members)))
        inst["data"].update(format="jsonl", text_field="text", label_field="label")
        if point.private:
            inst["budget"]["epsilon"] = s["epsilon"]
        institutions.append(inst)
    return fed, institutions


def run_point(job: PointJob) -> dict:
    """Run the point's simulated federation (real DP, real CKKS) and return its result row.

    Anything under `job.work_dir` from an earlier, interrupted attempt is removed first.
    """
    import torch

    from confide.platform.simulation import Simulation, run_simulation
    from confide.platform.split import write_jsonl

    os.environ["OMP_NUM_THREADS"] = str(job.threads)
    torch.set_num_threads(job.threads)
    work = Path(job.work_dir)
    shutil.rmtree(work, ignore_errors=True)
    data_dir = work / "data"
    for name, records in job.datasets.items():
        write_jsonl(data_dir / f"{name}.jsonl", records)
    federation = FederationPolicy.model_validate(job.federation)
    institutions = []
    for raw in job.institutions:
        name = raw["institution_id"]
        data = {**raw["data"], "path": str(data_dir / f"{name}.jsonl")}
        institutions.append(InstitutionPolicy.model_validate({**raw, "data": data, "state_dir": str(work / "state")}))
    started = time.perf_counter()
    summary = run_simulation(Simulation(federation, institutions, work / "run", job.test, workers=0, generated=True,
                                        private=job.point.private))
    return result_row(job.point, summary, time.perf_counter() - started)


def result_row(point: Point, summary: dict, seconds: float) -> dict:
    """The flat record kept for a finished point (JSON-safe: no infinities)."""
    rounds = summary["rounds"]
    scored = [r for r in rounds if r["accuracy"] is not None]
    spent = [s["epsilon"] for s in summary["institutions"].values() if s.get("epsilon") is not None]
    return {
        "key": point.key,
        "kind": point.kind,
        "institution": point.institution or "",
        **{axis: plain(value) for axis, value in point.settings.items()},
        "accuracy": scored[-1]["accuracy"] if scored else None,
        "macro_f1": scored[-1].get("macro_f1") if scored else None,
        "per_class_accuracy": scored[-1].get("per_class_accuracy") if scored else None,
        "loss": scored[-1]["loss"] if scored else None,
        "epsilon_spent": max(spent) if spent and point.private else None,
        "rounds_summed": sum(1 for r in rounds if r["accuracy"] is not None),
        "upload_mb": round(sum(r["upload_bytes"] for r in rounds) / 1e6, 3),
        "seconds": round(seconds, 1),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "accuracy_by_round": [r["accuracy"] for r in rounds],
        "institutions": {
            name: {"epsilon": s.get("epsilon"), "train_records": s.get("train_records")}
            for name, s in summary["institutions"].items()
        },
    }

