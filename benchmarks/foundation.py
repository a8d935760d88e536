"""Benchmark: DP-LoRA on a real pretrained causal LM (bundled:smollm2-135m) against non-private LoRA.

Model and adapter: those of `examples/federation-smollm2.yaml` (SmolLM2-135M-Instruct dequantized to
float32; LoRA rank 8 on q/k/v/o of the top two of 30 layers, A frozen; the frozen prefix memoised).
Data: BBC News articles (random token ids if the corpus is missing), truncated to the sequence
length. Both sides use the same causal-LM loss code, the example's optimizer and physical batch limit, and the same
logical batches (the DP sampler's draws, reproduced from its seed).

- Step time: the two sides alternate round by round in this process (the first side alternating
  too) after one warm-up round each, which also fills the memo of the frozen prefix for the records
  drawn; `overhead_ratio` is the median paired ratio DP / non-private.
- Records per second of a round: a DP round's records over its wall time, with the memo warm
  (`dp_records_per_s`, the steady state) and cold (`dp_records_per_s_cold`: the first round, which
  runs every drawn record through all 30 layers once).
- Peak memory: each side again in a fresh child process (resident set size sampled every
  millisecond while training; CUDA: peak allocated), with its footprint before training.
- `--federation`: the example's federation itself (`confide simulate` of the three hospitals: real
  DP, CKKS, ledgers, one worker process each), its wall time, and that time over the DP training
  compute it contains at this run's measured records per second (`federation_over_training`:
  loading, memo, evaluation, encryption, protocol and three processes sharing the cores).

Prints one JSON object. Not a test: nothing gates on time.

Usage: PYTHONPATH=src python benchmarks/foundation.py [--quick] [--rounds 3] [--steps 2] [--batch 32]
       [--seq 48] [--federation]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from dp import PeakRss, nonprivate_round, poisson_batches, rss_mb
from torch.utils.data import TensorDataset

from confide.platform.models import build_adapter_model
from confide.policies import FederationPolicy, load_federation
from confide.privacy.objective import IGNORE_INDEX
from confide.privacy.trainable import trainable_parameters
from confide.privacy.training import DPSettings, run_dp_round

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
RECORDS_PER_BATCH = 8  # records = 8 x batch: sample rate 0.125, about the example's


def federation(seq: int) -> FederationPolicy:
    """The example federation's model and adapter, at sequence length `seq`."""
    data = load_federation(EXAMPLES / "federation-smollm2.yaml").model_dump(mode="json")
    data["model"]["max_length_tokens"] = seq
    return FederationPolicy.model_validate(data)


def dataset(tokenizer, seq: int, records: int) -> TensorDataset:
    try:
        from confide.platform.corpus import bbc_records

        rows = bbc_records()
    except Exception:  # no corpus: random tokens of full length exercise the same compute
        rows = []
    if len(rows) >= records:
        texts = [r["text"] for r in random.Random(0).sample(rows, records)]
        encoded = tokenizer(texts, truncation=True, max_length=seq, padding="max_length", return_tensors="pt")
        ids, mask = encoded["input_ids"], encoded["attention_mask"]
    else:
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(1000, tokenizer.vocab_size, (records, seq), generator=generator)
        mask = torch.ones_like(ids)
    return TensorDataset(ids, mask, ids.masked_fill(mask == 0, IGNORE_INDEX))


def dp_settings(fed: FederationPolicy, batch: int, records: int, steps: int) -> DPSettings:
    return DPSettings(noise_multiplier=1.0, sample_rate=batch / records, steps=steps, clipping_norm=1.0,
                      max_physical_batch_size=fed.training.max_physical_batch_size,
                      learning_rate=fed.training.learning_rate, optimizer=fed.training.optimizer)


def plain_optimizer(fed: FederationPolicy, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The non-private side's optimizer: the example's, at its learning rate."""
    kind = torch.optim.SGD if fed.training.optimizer == "sgd" else torch.optim.AdamW
    return kind(list(trainable_parameters(model).values()), lr=fed.training.learning_rate)


def measure_memory(mode: str, seq: int, batch: int, steps: int, device: str, threads: int, queue) -> None:
    """Child process: build everything, then train `steps` steps of `mode`; report peak memory in MB."""
    torch.set_num_threads(threads)
    fed = federation(seq)
    built = build_adapter_model(fed, torch.device(device))
    data = dataset(built.tokenizer, seq, batch * RECORDS_PER_BATCH)
    settings = dp_settings(fed, batch, len(data), steps)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    with PeakRss() as sampler:
        if mode == "dp":
            run_dp_round(built.model, data, "causal_lm", settings, seed=0)
        else:
            optimizer = plain_optimizer(fed, built.model)
            batches = poisson_batches(len(data), settings.sample_rate, steps, seed=0)
            nonprivate_round(built.model, data, batches, settings.max_physical_batch_size, optimizer, "causal_lm")
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else sampler.peak_mb
    queue.put({"peak_mb": peak, "before_training_mb": before})


def memory_in_child(mode: str, seq: int, batch: int, steps: int, device: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=measure_memory, args=(mode, seq, batch, steps, device, torch.get_num_threads(),
                                                         queue))
    child.start()
    result = queue.get(timeout=1800)
    child.join()
    return result


def example_federation_seconds() -> dict:
    """Run the example federation (three hospitals, the example's schedule) as `confide simulate` does."""
    from confide.platform.data import read_records
    from confide.platform.demo import EXAMPLES as DEMO_EXAMPLES
    from confide.platform.demo import demo_policies, ensure_demo_data
    from confide.platform.simulation import Simulation, run_simulation

    chosen = DEMO_EXAMPLES["smollm2"]
    data_dir = ensure_demo_data(EXAMPLES)
    fed, institutions = demo_policies(EXAMPLES, False, "smollm2")
    test = read_records(data_dir / "test.jsonl", "jsonl", "text", "label")[:: chosen.test_stride]
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = run_simulation(Simulation(fed, institutions, Path(out), test, len(institutions), own_registry=True))
        seconds = time.perf_counter() - started
    trained = sum(fed.training.expected_batch_size * fed.training.steps_per_round * s["rounds_trained"]
                  for s in summary["institutions"].values())
    last = summary["rounds"][-1]
    return {"federation_s": round(seconds, 1), "federation_records_trained_expected": trained,
            "federation_final_perplexity": round(math.exp(last["loss"]), 2) if last["loss"] is not None else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 timed rounds, no memory children")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per side (after one warm-up)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=None, help="tokens per record (default: the example's)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--federation", action="store_true", help="also time the example federation (minutes)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seq = args.seq or load_federation(EXAMPLES / "federation-smollm2.yaml").model.max_length_tokens
    rounds = args.rounds or (2 if args.quick else 3)
    steps = args.steps
    device = "cuda" if torch.cuda.is_available() else "cpu"

    fed = federation(seq)
    started = time.perf_counter()
    built = build_adapter_model(fed, torch.device(device))
    load_s = time.perf_counter() - started
    data = dataset(built.tokenizer, seq, args.batch * RECORDS_PER_BATCH)
    dp_model, plain_model = built.model, copy.deepcopy(built.model)  # the copy holds its own memo
    optimizer = plain_optimizer(fed, plain_model)
    settings = dp_settings(fed, args.batch, len(data), steps)

    def timed(side: str, seed: int) -> tuple[float, int]:
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        if side == "dp":
            used = run_dp_round(dp_model, data, "causal_lm", settings, seed=seed).examples
        else:
            batches = poisson_batches(len(data), settings.sample_rate, steps, seed)
            used = nonprivate_round(plain_model, data, batches, settings.max_physical_batch_size, optimizer,
                                    "causal_lm")
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, used

    times: dict[str, list[float]] = {"dp": [], "nonprivate": []}
    records: dict[str, list[int]] = {"dp": [], "nonprivate": []}
    cold: dict[str, float] = {}
    for index in range(rounds + 1):  # round 0 warms both up (and fills their memos) and is not counted
        order = ("dp", "nonprivate") if index % 2 else ("nonprivate", "dp")
        used = {}
        for side in order:
            elapsed, used[side] = timed(side, seed=index)
            if index:
                times[side].append(elapsed)
                records[side].append(used[side])
            else:
                cold[side] = used[side] / elapsed
        if used["dp"] != used["nonprivate"]:
            raise RuntimeError(f"the two sides saw different batches ({used})")
    ratios = [d / p for d, p in zip(times["dp"], times["nonprivate"])]
    result = {
        "dp_step_s": round(statistics.median(times["dp"]) / steps, 3),
        "nonprivate_step_s": round(statistics.median(times["nonprivate"]) / steps, 3),
        "overhead_ratio": round(statistics.median(ratios), 3),
        "overhead_ratio_min": round(min(ratios), 3),
        "overhead_ratio_max": round(max(ratios), 3),
        "dp_records_per_s": round(sum(records["dp"]) / sum(times["dp"]), 2),
        "nonprivate_records_per_s": round(sum(records["nonprivate"]) / sum(times["nonprivate"]), 2),
        "dp_records_per_s_cold": round(cold["dp"], 2),
        "model_load_s": round(load_s, 1),
    }
    if not (args.no_memory or args.quick):
        dp_memory = memory_in_child("dp", seq, args.batch, steps, device)
        plain_memory = memory_in_child("nonprivate", seq, args.batch, steps, device)
        result.update({
            "dp_peak_mb": round(dp_memory["peak_mb"], 1),
            "nonprivate_peak_mb": round(plain_memory["peak_mb"], 1),
            "peak_memory_ratio": round(dp_memory["peak_mb"] / plain_memory["peak_mb"], 3),
            "dp_before_training_mb": round(dp_memory["before_training_mb"], 1),
            "nonprivate_before_training_mb": round(plain_memory["before_training_mb"], 1),
        })
    if args.federation:
        del dp_model, plain_model, built
        found = example_federation_seconds()
        found["federation_over_training"] = round(
            found["federation_s"] / (found["federation_records_trained_expected"] / result["dp_records_per_s"]), 2)
        result.update(found)
    result.update({
        "device": device, "threads": torch.get_num_threads(), "model": fed.model.source, "seq_len": seq,
        "batch": args.batch, "records": len(data), "sample_rate": settings.sample_rate, "steps_per_round": steps,
        "timed_rounds": rounds, "adapter": f"LoRA r={fed.adapter.rank} on {'/'.join(fed.adapter.target_modules)} "
        f"of layers {fed.adapter.layers}, A frozen", "noise_multiplier": 1.0,
    })
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
