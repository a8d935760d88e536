"""A recipe change against the example recipe, on a validation split of the demo's training data.

Runs paired in-process federations of the demo's three members (examples/federation.yaml and
examples/hospital-{a,b,c}.yaml): the baseline is the example federation as it is, the candidate the
same file with the fields given by --set changed. Each member's training records lose a fixed 15%
to a validation split, which both runs are scored on; the demo's test set is never read. In both
runs each DP round's Poisson samples and noise are seeded by (seed, noise multiplier, round), so
two settings with the same noise multipliers draw the same DP samples and noise. The runs are still
not bit-identical (probably CKKS noise or thread order; not traced): two runs of one setting in
`--quick` scored up to 0.011 apart (3 of 267 records), so read a difference of that size as none.
Seeded noise is for this comparison only: a real round never seeds it (anyone who knew the seed
could subtract the noise).

    python benchmarks/recipe.py --set model.max_length_tokens=32 --seeds 0 1 2 3

prints one JSON object: the final validation accuracy per seed of both, the paired differences and
the seconds each run took (the baseline measured in the same run, as for every benchmark here).
`--quick` runs one round of two steps, to check the set-up.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALIDATION_FRACTION = 0.15


def parse_assignment(text: str) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], value), the value read as YAML (48, 0.05, true, [query, value])."""
    if "=" not in text:
        raise SystemExit(f"--set {text}: expected FIELD=VALUE, e.g. model.max_length_tokens=48")
    field, value = text.split("=", 1)
    return field.split("."), yaml.safe_load(value)


def changed(federation, assignments: list[tuple[list[str], object]]):
    from confide.policies import FederationPolicy

    data = federation.model_dump(mode="json")
    for path, value in assignments:
        node = data
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                raise SystemExit(f"--set {'.'.join(path)}: no field {key!r} in the federation file")
            node = node[key]
        node[path[-1]] = value
    return FederationPolicy.model_validate(data)


def validation_split(examples: Path, work: Path):
    """The demo's institutions on 85% of their training records, and the other 15% as one list."""
    from confide.platform.data import read_records
    from confide.platform.demo import DEMO_INSTITUTIONS, ensure_demo_data
    from confide.platform.split import write_jsonl
    from confide.policies import load_institution

    data_dir = ensure_demo_data(examples)
    institutions, validation = [], []
    for index, name in enumerate(DEMO_INSTITUTIONS):
        records = read_records(data_dir / f"{name}.jsonl", "jsonl", "text", "label")
        random.Random(1000 + index).shuffle(records)
        held = round(VALIDATION_FRACTION * len(records))
        validation += records[:held]
        train = work / "data" / f"{name}.jsonl"
        train.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(train, records[held:])
        policy = load_institution(examples / f"{name}.yaml")
        institutions.append(policy.model_copy(update={"data": policy.data.model_copy(update={"path": train})}))
    validation = [{"text": r["text"], "label": r["label"], "line": i} for i, r in enumerate(validation, 1)]
    return institutions, validation


@contextlib.contextmanager
def seeded_rounds(seed: int):
    """Seed every DP round's sampling and noise by (seed, noise multiplier, how many rounds before).

    Real rounds (`confide.privacy.training.train_round`) take no seed and draw from the OS. This
    benchmark replaces that function, for its own in-process runs only, with one that trains the
    round through the seedable research entry point `run_dp_round(seed=...)`: a benchmark-only
    path that no agent reaches.
    """
    import confide.privacy.training as training

    original = training.train_round
    counts: dict[float, int] = {}

    def seeded_train_round(model, train, federation, institution, spend, on_step=None):
        key = round(spend.noise_multiplier, 6)
        index = counts.get(key, 0)
        counts[key] = index + 1
        digest = hashlib.sha256(f"{seed}/{key}/{index}".encode()).hexdigest()
        settings = training.DPSettings.from_policies(federation, institution, spend)
        return training.run_dp_round(model, train, federation.model.task, settings, seed=int(digest[:12], 16),
                                     on_step=on_step).delta

    training.train_round = seeded_train_round
    try:
        yield
    finally:
        training.train_round = original


def final_accuracy(federation, institutions, validation, out: Path, seed: int) -> tuple[float, float]:
    from confide.platform.simulation import Simulation, run_simulation

    started = time.perf_counter()
    with seeded_rounds(seed):
        summary = run_simulation(Simulation(federation, institutions, out, validation, workers=0))
    return summary["rounds"][-1]["accuracy"], time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="FIELD=VALUE",
                        help="a federation-file field to change in the candidate (repeatable)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--examples", type=Path, default=ROOT / "examples")
    parser.add_argument("--quick", action="store_true", help="one round of two steps")
    args = parser.parse_args()
    if not args.assignments:
        raise SystemExit("give at least one --set FIELD=VALUE to compare against the example recipe")

    from confide.policies import load_federation

    base = load_federation(args.examples / "federation.yaml")
    if args.quick:
        base = changed(base, [(["rounds"], 1), (["training", "steps_per_round"], 2)])
    candidate = changed(base, [parse_assignment(a) for a in args.assignments])
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        institutions, validation = validation_split(args.examples, work)
        results: dict[str, dict] = {"baseline": {}, "candidate": {}}
        for seed in args.seeds:
            for name, federation in (("baseline", base), ("candidate", candidate)):
                accuracy, seconds = final_accuracy(federation, institutions, validation, work / f"{name}-{seed}", seed)
                results[name][seed] = {"accuracy": round(accuracy, 4), "seconds": round(seconds, 1)}
                print(f"seed {seed} {name}: {accuracy:.3f} in {seconds:.0f} s", file=sys.stderr)
    differences = [round(results["candidate"][s]["accuracy"] - results["baseline"][s]["accuracy"], 4)
                   for s in args.seeds]
    print(json.dumps({
        "benchmark": "recipe",
        "change": args.assignments,
        "validation_records": len(validation),
        "quick": args.quick,
        "baseline": results["baseline"],
        "candidate": results["candidate"],
        "paired_differences": differences,
        "mean_difference": round(sum(differences) / len(differences), 4),
        "candidate_wins": sum(d > 0 for d in differences),
    }, indent=2))


if __name__ == "__main__":
    main()
