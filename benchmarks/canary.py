"""Benchmark: the canary audit's power and false-failure rate, and the table in docs/auditing.md from them.

Trains exactly what `confide audit canaries` trains (`run_canary_audit`, through `train_round`,
the function the agent's real rounds call) on `random:tiny-bert` with FFA-LoRA r=8 on
query/value and SGD, with the example federation's sampling: 8 steps a round, 5 rounds, sample
rate 0.112 (expected batch 14 of 125 records; hospital-a's rate in the demo is 128 / 1143). Per
budget (3, 5, 8, 10; no per-round cap) the noise is planned by the agent's own planner, then:
- honest: the training as it is, `--seeds` seeds (the false-failure rate);
- noise / 3 and no noise: the same training with its noise broken where real rounds draw it
  (Opacus' DPOptimizer inside `run_dp_round`, replaced in this process only), `--broken-seeds`
  seeds each (the power). The ledger-side settings stay as planned: the audit judges the run
  against what the ledger would record.
Each audit uses `--canaries` canaries (6000: six runs of 1000, tiny-bert's adapter holds 1,090
coordinates). A seed fixes the canaries and their inclusion; the training's sampling and noise
come from the OS, as in real rounds.

With `--policies FEDERATION INSTITUTION` it audits that pair instead (its model, data and budget;
e.g. the demo's `examples/federation.yaml examples/hospital-a.yaml`, MiniLM on BBC News), with
`--canaries` in one run where the adapter holds them.

Writes one JSON line per audit to `--out` as it goes (an interrupted grid keeps what it did;
`--resume` skips what is there), prints one JSON object (the summary), and with `--readme FILE`
rewrites the table between `<!-- canary-table -->` and `<!-- /canary-table -->` in FILE.
Machine load (`os.getloadavg`) is recorded at the start and end of every audit.

Usage: PYTHONPATH=src python benchmarks/canary.py [--budgets 3 5 8 10] [--seeds 20]
       [--broken-seeds 20] [--canaries 6000] [--out canary-grid.jsonl] [--readme docs/auditing.md]
       [--policies FEDERATION INSTITUTION] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from confide.identity import Identity
from confide.platform.data import load_institution_data
from confide.platform.models import build_adapter_model
from confide.policies import FederationPolicy, InstitutionPolicy, load_federation, load_institution
from confide.privacy import training
from confide.privacy.audit.canary_run import canary_settings, run_canary_audit

RECORDS = 125
EXPECTED_BATCH = 14
STEPS_PER_ROUND = 8
ROUNDS = 5
MODES = ("honest", "noise/3", "none")
TABLE_START, TABLE_END = "<!-- canary-table -->", "<!-- /canary-table -->"


def write_records(path: Path, count: int) -> None:
    """`count` short records of two classes whose words give the label away (as the tests' data)."""
    words = {"x": ["match", "goal", "team", "league", "coach"], "y": ["chip", "phone", "network", "robot", "data"]}
    lines = []
    for i in range(count):
        label = "xy"[i % 2]
        text = " ".join(words[label][(i * 7 + k * 3) % 5] for k in range(5)) + f" item {i}"
        lines.append(json.dumps({"text": text, "label": label}))
    path.write_text("\n".join(lines) + "\n")


def policies(tmp: Path, budget: float) -> tuple[FederationPolicy, InstitutionPolicy]:
    roster = [Identity.generate(i).public.to_roster_entry(i) for i in ("hospital-a", "hospital-b")]
    federation = FederationPolicy.model_validate({
        "kind": "federation", "federation_id": "canary-bench", "roster": roster, "rounds": ROUNDS,
        "model": {"source": "random:tiny-bert", "labels": ["x", "y"]},
        "adapter": {"rank": 8, "alpha": 16, "target_modules": ["query", "value"]},
        "training": {"steps_per_round": STEPS_PER_ROUND, "expected_batch_size": EXPECTED_BATCH,
                     "max_physical_batch_size": 64, "learning_rate": 0.05, "optimizer": "sgd"},
        "privacy": {"delta": 1e-5, "accountant": "pld", "min_noise_multiplier": 0.1},
    })
    data = tmp / "records.jsonl"
    if not data.exists():
        write_records(data, RECORDS)
    institution = InstitutionPolicy.model_validate({
        "kind": "institution", "institution_id": "hospital-a",
        "data": {"path": str(data), "format": "jsonl", "eval_fraction": 0},
        "budget": {"epsilon": budget, "delta": 1e-5}, "clipping_norm": 1.0, "state_dir": str(tmp / "state"),
    })
    return federation, institution


@contextmanager
def broken_noise(mode: str):
    """Divide (or remove) the noise where real rounds draw it: Opacus' DPOptimizer in `training`."""
    if mode == "honest":
        yield
        return
    real = training.DPOptimizer

    def broken(*args, noise_multiplier: float, **kwargs):
        return real(*args, noise_multiplier=0.0 if mode == "none" else noise_multiplier / 3, **kwargs)

    training.DPOptimizer = broken
    try:
        yield
    finally:
        training.DPOptimizer = real


def setups(args: argparse.Namespace, tmp: Path):
    """(label, budget, federation, institution) per audited setting."""
    if args.policies:
        federation, institution = load_federation(args.policies[0]), load_institution(args.policies[1])
        yield f"{federation.federation_id} / {institution.institution_id}", institution.budget.epsilon, \
            federation, institution
        return
    for budget in args.budgets:
        yield "tiny-bert", budget, *policies(tmp, budget)


def run_grid(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    done = set()
    if args.resume and args.out.exists():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row.get("setup", "tiny-bert"), row["budget"], row["mode"], row["seed"]))
    with tempfile.TemporaryDirectory() as tmp, args.out.open("a") as out:
        for setup, budget, federation, institution in setups(args, Path(tmp)):
            built = build_adapter_model(federation, device=torch.device("cpu"))
            data = load_institution_data(institution.data, federation.model, built.tokenizer)
            spend, rounds = canary_settings(federation, institution, len(data.train))
            for mode in MODES:
                for seed in range(args.seeds if mode == "honest" else args.broken_seeds):
                    if (setup, budget, mode, seed) in done:
                        continue
                    load, started = os.getloadavg()[0], time.perf_counter()
                    with broken_noise(mode):
                        audit = run_canary_audit(built.model, data.train, federation, institution, spend,
                                                 rounds=rounds, canaries=args.canaries, seed=seed)
                    decisive = audit.decisive
                    row = {"setup": setup, "budget": budget, "mode": mode, "seed": seed, "passed": audit.passed,
                           "accounted_epsilon": audit.accounted_epsilon, "noise_multiplier": spend.noise_multiplier,
                           "sample_rate": spend.sample_rate, "steps": spend.steps, "rounds": rounds,
                           "canaries": audit.canaries, "runs": audit.runs, "guess_in": decisive.guess_in,
                           "guess_out": decisive.guess_out, "correct": decisive.correct,
                           "allowed": decisive.allowed, "snj_epsilon": audit.epsilon_lower_bound,
                           "noiseless_would_fail": audit.noiseless_would_fail,
                           "seconds": round(time.perf_counter() - started, 1),
                           "load_start": load, "load_end": os.getloadavg()[0], "cpus": os.cpu_count()}
                    out.write(json.dumps(row) + "\n")
                    out.flush()


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (budget, mode): failures of runs, margins, SNJ bounds, time and load."""
    lines = []
    for setup, budget in sorted({(r.get("setup", "tiny-bert"), r["budget"]) for r in rows},
                                key=lambda key: (key[0] != "tiny-bert", key)):
        for mode in MODES:
            mine = [r for r in rows if r.get("setup", "tiny-bert") == setup and r["budget"] == budget
                    and r["mode"] == mode]
            if not mine:
                continue
            excess = [r["correct"] - r["allowed"] for r in mine]
            lines.append({
                "setup": setup, "budget": budget, "mode": mode, "runs": len(mine),
                "failed": sum(not r["passed"] for r in mine),
                "noise_multiplier": mine[0]["noise_multiplier"], "accounted_epsilon": mine[0]["accounted_epsilon"],
                "canaries": mine[0]["canaries"], "audit_runs": mine[0]["runs"],
                "sample_rate": mine[0]["sample_rate"], "steps": mine[0]["steps"], "rounds": mine[0]["rounds"],
                "excess_min": min(excess), "excess_max": max(excess),
                "snj_min": min(r["snj_epsilon"] for r in mine), "snj_max": max(r["snj_epsilon"] for r in mine),
                "seconds_median": statistics.median(r["seconds"] for r in mine),
                "load_min": min(min(r["load_start"], r["load_end"]) for r in mine),
                "load_max": max(max(r["load_start"], r["load_end"]) for r in mine),
            })
    return lines


def markdown_table(lines: list[dict]) -> str:
    label = {"honest": "honest", "noise/3": "noise / 3", "none": "no noise"}
    out = ["| setting | budget | training (sigma) | canaries | failed | right - allowed | SNJ (info) "
           "| s/audit | load |",
           "|---|---|---|---|---|---|---|---|---|"]
    for line in lines:
        sigma = {"honest": line["noise_multiplier"], "noise/3": line["noise_multiplier"] / 3, "none": 0.0}
        setting = (f"{line['setup']}, q {line['sample_rate']:.3g}, {line['steps']} steps x {line['rounds']}")
        runs = f"{line['canaries']} in {line['audit_runs']} run{'s' if line['audit_runs'] > 1 else ''}"
        low, high = line["excess_min"], line["excess_max"]
        out.append(
            f"| {setting} | {line['budget']:g} | {label[line['mode']]} ({sigma[line['mode']]:.3f}) | {runs} "
            f"| {line['failed']} of {line['runs']} | {f'{low:+d}' if low == high else f'{low:+d} to {high:+d}'} "
            f"| {line['snj_min']:.2f}-{line['snj_max']:.2f} | {line['seconds_median']:.0f} "
            f"| {line['load_min']:.1f}-{line['load_max']:.1f} |")
    return "\n".join(out)


def rewrite_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {TABLE_START} ... {TABLE_END} markers; add them where the table goes")
    readme.write_text(pattern.sub(lambda _: f"{TABLE_START}\n{table}\n{TABLE_END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.0, 5.0, 8.0, 10.0])
    parser.add_argument("--seeds", type=int, default=20, help="honest audits per budget")
    parser.add_argument("--broken-seeds", type=int, default=20, help="audits per budget with broken noise")
    parser.add_argument("--canaries", type=int, default=6000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=Path("canary-grid.jsonl"))
    parser.add_argument("--resume", action="store_true", help="skip audits already in --out")
    parser.add_argument("--policies", nargs=2, type=Path, metavar=("FEDERATION", "INSTITUTION"),
                        help="audit this federation and institution instead of the tiny-bert grid")
    parser.add_argument("--table-only", action="store_true", help="summarise --out without training")
    parser.add_argument("--readme", type=Path, help="rewrite the table between the markers in this file")
    args = parser.parse_args()
    if not args.table_only:
        run_grid(args)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    lines = summarise(rows)
    print(json.dumps({"benchmark": "canary", "summary": lines, "cpus": os.cpu_count()}))
    if args.readme is not None:
        rewrite_readme(args.readme, markdown_table(lines))


if __name__ == "__main__":
    main()
