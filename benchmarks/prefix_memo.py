"""Benchmark: DP rounds and evaluations with the frozen-prefix memo against the same model without it.

Model: the bundled MiniLM-L6 with the example federation's adapter (LoRA rank 8 on query/value of
layers 4-5, A frozen, head trained): layers 0-3 and the embeddings are frozen, so the memoised model
runs them once per record (`confide.platform.prefix_cache`). Data: BBC News articles (random tokens
if the corpus is missing) at the sequence length. Both sides train the same seeded DP rounds
(`run_dp_round`: Poisson sampling, per-example gradients, clipping, noise) and evaluate the same
held-out records.

The memo's first round computes the prefix for every record it draws, so it is reported apart
(`first_round_s`); later rounds and evaluations are served from the memo. The two sides alternate
round by round, the first side alternating too, so that load from other processes hits both alike;
`round_speedup` and `eval_speedup` are medians of the paired ratios (baseline / memo) over rounds
after the first.

Prints one JSON object. Not a test: nothing gates on time.

Usage: .venv/bin/python benchmarks/prefix_memo.py [--quick] [--rounds 4] [--steps 4] [--batch 128] [--seq 32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from dp import BBC_LABELS, dataset  # benchmarks/dp.py: the same data

from confide.identity import Identity
from confide.platform.models import build_adapter_model
from confide.policies import FederationPolicy
from confide.privacy.objective import evaluate
from confide.privacy.training import DPSettings, run_dp_round


def federation(seq: int) -> FederationPolicy:
    roster = [Identity.generate(i).public.to_roster_entry(i) for i in ("a", "b")]
    return FederationPolicy.model_validate({
        "kind": "federation", "federation_id": "bench", "roster": roster, "rounds": 1,
        "model": {"source": "bundled:minilm-l6", "labels": BBC_LABELS, "max_length_tokens": seq},
        "adapter": {"rank": 8, "alpha": 16, "target_modules": ["query", "value"], "layers": [4, 5]},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 steps at batch 64")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.steps, args.batch = 3, 2, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    fed = federation(args.seq)
    sides = {"memo": build_adapter_model(fed, torch.device("cpu")),
             "baseline": build_adapter_model(fed, torch.device("cpu"), memoise_prefix=False)}
    records = 5 * args.batch
    train = dataset(sides["memo"].tokenizer, args.seq, records + args.batch)
    held_out = torch.utils.data.Subset(train, range(records, records + args.batch))
    train = torch.utils.data.Subset(train, range(records))
    settings = DPSettings(noise_multiplier=1.0, sample_rate=args.batch / records, steps=args.steps,
                          clipping_norm=1.0, max_physical_batch_size=64, learning_rate=0.1, optimizer="adamw")
    times: dict[str, dict[str, list[float]]] = {name: {"round": [], "eval": []} for name in sides}
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(sides)[::-1]
        for name in order:
            model = sides[name].model
            started = time.perf_counter()
            run_dp_round(model, train, "sequence_classification", settings, seed=round_index)
            times[name]["round"].append(time.perf_counter() - started)
            started = time.perf_counter()
            evaluate(model, held_out)
            times[name]["eval"].append(time.perf_counter() - started)

    def paired(kind: str) -> float:
        return statistics.median(b / m for b, m in zip(times["baseline"][kind][1:], times["memo"][kind][1:]))

    memo = sides["memo"].prefix_cache
    print(json.dumps({
        "benchmark": "prefix_memo",
        "model": "bundled:minilm-l6, LoRA on layers 4-5 (prefix: embeddings + layers 0-3)",
        "seq": args.seq, "expected_batch": args.batch, "steps_per_round": args.steps, "rounds": args.rounds,
        "train_records": records, "eval_records": len(held_out), "threads": torch.get_num_threads(),
        "memo": {"first_round_s": round(times["memo"]["round"][0], 3),
                 "round_s_median": round(statistics.median(times["memo"]["round"][1:]), 3),
                 "eval_s_median": round(statistics.median(times["memo"]["eval"][1:]), 3),
                 "records_memoised": len(memo.entries), "memo_mb": round(memo.bytes / 2**20, 1)},
        "baseline": {"first_round_s": round(times["baseline"]["round"][0], 3),
                     "round_s_median": round(statistics.median(times["baseline"]["round"][1:]), 3),
                     "eval_s_median": round(statistics.median(times["baseline"]["eval"][1:]), 3)},
        "round_speedup": round(paired("round"), 2),
        "eval_speedup": round(paired("eval"), 2),
    }, indent=2))


if __name__ == "__main__":
    main()
