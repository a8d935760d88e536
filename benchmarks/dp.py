"""Benchmark: a DP-LoRA optimizer step against a non-private LoRA step on the same model and batch.

Model: the bundled MiniLM-L6 with the default adapter (LoRA rank 8 on query/value, A frozen,
classifier head trained). Data: BBC News articles (random token ids if the corpus is missing),
truncated to the sequence length, so every example is full length. Both sides use the same loss
code, optimizer (AdamW) and physical batch limit.

- DP: `confide.privacy.run_dp_round`, i.e. Poisson sampling at q = batch / records, Opacus
  per-example gradients (hooks), clipping, Gaussian noise (secure_mode: four draws per value, see
  `secure_noise_cost`, reported as `secure_noise_ratio` and its share of a DP step), BatchMemoryManager,
  plus the round's
  own set-up (wrapping, unwrapping, the before/after adapter copies) spread over its steps.
- Non-private: the very same logical batches (the DP sampler's draws, reproduced from its seed),
  split into the same physical batches, forward, backward with accumulation, AdamW step.

Time: the two sides alternate round by round in this process, with the first side alternating
too, so that load from other processes on a shared machine hits both alike. A step's time is the
median round time over its steps; `overhead_ratio` is the median over rounds of the paired ratio
DP / non-private (one warm-up round each is not counted); `overhead_ratio_cpu_time` is the same
median over the CPU time this process used, which other processes' load disturbs less.
Memory: each side runs again in a fresh child process; the peak resident set size sampled every
millisecond while training (CPU), or the peak allocated memory (CUDA), is reported, together
with the child's footprint just before training (model, data, tokenizer).

Prints one JSON object. Not a test: nothing gates on time.

Usage: PYTHONPATH=src python benchmarks/dp.py [--quick] [--rounds 5] [--steps 2] [--batch 32] [--seq 128]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing
import random
import resource
import statistics
import threading
import time

import torch
from torch.utils.data import TensorDataset

from confide.identity import Identity
from confide.platform.models import build_adapter_model
from confide.policies import FederationPolicy
from confide.privacy.objective import batch_loss, trim_padding
from confide.privacy.trainable import trainable_parameters
from confide.privacy.training import DPSettings, run_dp_round

BBC_LABELS = ["business", "entertainment", "politics", "sports", "tech"]
RECORDS_PER_BATCH = 10  # records = 10 x batch, so the sample rate is 0.1
LEARNING_RATE = 5e-3


def federation(seq: int) -> FederationPolicy:
    roster = [Identity.generate(i).public.to_roster_entry(i) for i in ("a", "b")]
    return FederationPolicy.model_validate({
        "kind": "federation", "federation_id": "bench", "roster": roster, "rounds": 1,
        "model": {"source": "bundled:minilm-l6", "labels": BBC_LABELS, "max_length_tokens": seq},
    })


def dataset(tokenizer, seq: int, records: int) -> TensorDataset:
    try:
        from confide.platform.corpus import bbc_records

        rows = bbc_records()
    except Exception:  # no corpus: random tokens of full length exercise the same compute
        rows = []
    if len(rows) >= records:
        rows = random.Random(0).sample(rows, records)
        encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=seq, padding="max_length",
                            return_tensors="pt")
        labels = torch.tensor([BBC_LABELS.index(r["label"]) for r in rows])
        return TensorDataset(encoded["input_ids"], encoded["attention_mask"], labels)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, tokenizer.vocab_size, (records, seq), generator=generator)
    return TensorDataset(ids, torch.ones_like(ids), torch.randint(0, len(BBC_LABELS), (records,), generator=generator))


def dp_settings(batch: int, records: int, steps: int) -> DPSettings:
    return DPSettings(noise_multiplier=1.0, sample_rate=batch / records, steps=steps, clipping_norm=1.0,
                      max_physical_batch_size=batch, learning_rate=LEARNING_RATE, optimizer="adamw")


def poisson_batches(records: int, rate: float, steps: int, seed: int) -> list[torch.Tensor]:
    """The logical batches `run_dp_round(..., seed=seed)` draws: Opacus' sampler takes one
    `torch.rand(records)` per step from a CPU generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.rand(records, generator=generator) < rate).nonzero().reshape(-1) for _ in range(steps)]


def nonprivate_round(model, data: TensorDataset, batches: list[torch.Tensor], max_physical: int, optimizer,
                     task: str = "sequence_classification") -> int:
    """Plain LoRA steps on the given logical batches, split into physical batches exactly as
    Opacus' BatchMemoryManager splits them, gradients accumulated; returns the examples used."""
    device = next(model.parameters()).device
    model.train()
    used = 0
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        chunks = torch.tensor_split(batch, max(1, math.ceil(len(batch) / max_physical))) if len(batch) else []
        for chunk in chunks:
            picked = trim_padding(tuple(t[chunk] for t in data.tensors), task)
            loss = batch_loss(model, tuple(t.to(device) for t in picked), task)
            (loss * len(chunk) / len(batch)).backward()
        optimizer.step()
        used += len(batch)
    return used


def build(seq: int, batch: int, device: str):
    built = build_adapter_model(federation(seq), torch.device(device))
    return built, dataset(built.tokenizer, seq, batch * RECORDS_PER_BATCH)


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 2**20


class PeakRss:
    """Samples this process's resident memory every millisecond while active; `peak_mb` is the largest seen."""

    def __init__(self) -> None:
        self.peak_mb = rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def measure_memory(mode: str, seq: int, batch: int, steps: int, device: str, threads: int, queue) -> None:
    """Child process: build everything, then train `steps` steps of `mode`; report peak memory in MB."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    built, data = build(seq, batch, device)
    model = built.model
    settings = dp_settings(batch, len(data), steps)
    optimizer = torch.optim.AdamW(list(trainable_parameters(model).values()), lr=LEARNING_RATE)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    with PeakRss() as sampler:
        if mode == "dp":
            run_dp_round(model, data, "sequence_classification", settings, seed=0)
        else:
            batches = poisson_batches(len(data), settings.sample_rate, steps, seed=0)
            nonprivate_round(model, data, batches, batch, optimizer)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = sampler.peak_mb
    queue.put({"peak_mb": peak, "before_training_mb": before})


def memory_in_child(mode: str, seq: int, batch: int, steps: int, device: str) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (mode, seq, batch, steps, device, torch.get_num_threads(), queue)
    child = context.Process(target=measure_memory, args=args)
    child.start()
    result = queue.get(timeout=1800)
    child.join()
    return result


def secure_noise_cost(model, repeats: int = 20) -> dict:
    """What `secure_mode` (each noise value the sum of four Gaussians halved, against the floating-point
    attack; real rounds use it) costs against one Gaussian per value, on the model's trainable parameters:
    the median seconds of one step's noise both ways, alternating, and their ratio."""
    from opacus.optimizers.optimizer import _generate_noise

    params = list(trainable_parameters(model).values())
    generator = torch.Generator(device=params[0].device).manual_seed(0)
    times: dict[bool, list[float]] = {True: [], False: []}
    for index in range(repeats + 1):
        for secure in ((True, False) if index % 2 else (False, True)):
            started = time.perf_counter()
            for param in params:
                _generate_noise(1.0, param, generator=generator, secure_mode=secure)
            if index:
                times[secure].append(time.perf_counter() - started)
    secure_s, plain_s = statistics.median(times[True]), statistics.median(times[False])
    return {"secure_noise_s": round(secure_s, 6), "plain_noise_s": round(plain_s, 6),
            "secure_noise_ratio": round(secure_s / plain_s, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="sequence length 64 and fewer rounds")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per side (after one warm-up)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per round")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 is steadier on a shared machine")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    seq = args.seq or (64 if args.quick else 128)
    rounds = args.rounds or (3 if args.quick else 5)
    steps = args.steps or 2
    device = "cuda" if torch.cuda.is_available() else "cpu"

    built, data = build(seq, args.batch, device)
    dp_model, plain_model = built.model, copy.deepcopy(built.model)
    optimizer = torch.optim.AdamW(list(trainable_parameters(plain_model).values()), lr=LEARNING_RATE)
    settings = dp_settings(args.batch, len(data), steps)

    def timed(side: str, seed: int) -> tuple[float, int]:
        if device == "cuda":
            torch.cuda.synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        if side == "dp":
            used = run_dp_round(dp_model, data, "sequence_classification", settings, seed=seed).examples
        else:
            batches = poisson_batches(len(data), settings.sample_rate, steps, seed)
            used = nonprivate_round(plain_model, data, batches, args.batch, optimizer)
        if device == "cuda":
            torch.cuda.synchronize()
        cpu_times[side].append(time.process_time() - cpu_started)
        return time.perf_counter() - started, used

    times: dict[str, list[float]] = {"dp": [], "nonprivate": []}
    cpu_times: dict[str, list[float]] = {"dp": [], "nonprivate": []}
    for index in range(rounds + 1):  # round 0 warms both up and is not counted
        # Both sides train on the very same logical batches (same seed); the order alternates so
        # that a slow spell on the shared machine does not always hit the same side.
        order = ("dp", "nonprivate") if index % 2 else ("nonprivate", "dp")
        used = {}
        for side in order:
            elapsed, used[side] = timed(side, seed=index)
            if index:
                times[side].append(elapsed)
        if used["dp"] != used["nonprivate"]:
            raise RuntimeError(f"the two sides saw different batches ({used})")
    ratios = [d / p for d, p in zip(times["dp"], times["nonprivate"])]
    # CPU seconds this process used: less disturbed than wall time by other processes' load.
    cpu_ratios = [d / p for d, p in zip(cpu_times["dp"][1:], cpu_times["nonprivate"][1:])]
    result = {
        "dp_step_s": round(statistics.median(times["dp"]) / steps, 4),
        "nonprivate_step_s": round(statistics.median(times["nonprivate"]) / steps, 4),
        "overhead_ratio": round(statistics.median(ratios), 3),
        "overhead_ratio_min": round(min(ratios), 3),
        "overhead_ratio_max": round(max(ratios), 3),
        "overhead_ratio_cpu_time": round(statistics.median(cpu_ratios), 3),
    }
    noise = secure_noise_cost(dp_model)
    # The part of a DP step that secure_mode adds (the DP side above already runs with it).
    noise["secure_noise_share_of_dp_step"] = round((noise["secure_noise_s"] - noise["plain_noise_s"])
                                                   / result["dp_step_s"], 4)
    result.update(noise)
    if not args.no_memory:
        dp_memory = memory_in_child("dp", seq, args.batch, steps, device)
        plain_memory = memory_in_child("nonprivate", seq, args.batch, steps, device)
        result.update({
            "dp_peak_mb": round(dp_memory["peak_mb"], 1),
            "nonprivate_peak_mb": round(plain_memory["peak_mb"], 1),
            "dp_before_training_mb": round(dp_memory["before_training_mb"], 1),
            "nonprivate_before_training_mb": round(plain_memory["before_training_mb"], 1),
        })
    result.update({
        "device": device, "threads": torch.get_num_threads(), "model": "bundled:minilm-l6", "seq_len": seq,
        "batch": args.batch, "records": len(data), "sample_rate": settings.sample_rate,
        "steps_per_round": steps, "timed_rounds": rounds,
        "adapter": "LoRA r=8 on query/value, A frozen, head trained", "noise_multiplier": 1.0,
    })
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
