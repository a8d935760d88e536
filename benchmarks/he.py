"""Benchmark: confide's CKKS aggregation against TenSEAL's high-level ``ckks_vector``.

Both sides are measured in the same run on the same data: 10 institutions, updates drawn from
N(0, 0.01) (variance 0.01), unequal public aggregation weights (1 to 4, as policies set them),
each uploading ``weight * delta`` followed by the trailer ``[weight, 1]``.

confide's parameters follow from a precision requirement: the error bound of the decrypted
average must stay within 1e-4 and 100x below the DP noise in the same update. That noise is
measured here, not assumed: one DP round (8 steps, AdamW lr 0.02, sigma 0.3 = the example
federation's noise floor, clipping 1, batch 64) of a random tiny BERT with LoRA, run twice from
the same weights with the same Poisson batches, once with noise and once without; the standard
deviation of the difference per parameter is the DP noise in one update, and in the weighted
average it shrinks by sqrt(sum w**2) / sum w. The baseline is ``ts.ckks_vector`` with N=8192,
coeff_mod_bit_sizes [60, 40, 40, 60], scale 2**40, one ciphertext per 4096 values (TenSEAL's
own multi-ciphertext vectors are no faster and print a warning), added by a coordinator holding
a context without the secret key.

Prints one JSON object: one entry per size ({"100000": {...}, "1000000": {...}}; ``--quick``
runs 10**5 only). Throughputs are parameters per second: for encryption, parameters encrypted
(all institutions); for the sum, uploaded parameters added (institutions x size); for
decryption, parameters of the sum decrypted. The two pipelines run step by step in alternation
(encrypt institution 1 on each side, then institution 2, ...; sums and decryptions best of
three, alternating), so a change in load on the shared host hits both alike. The headline ratios
are single-process on both sides (from bytes in memory); "parallel" repeats encryption and the
sum with ``--workers`` spawned processes, the sum reading the uploads from files as the
coordinator does. Not a test: nothing here gates on time.

The coordinator's sum is also compared with a plaintext numpy float32 sum of the same updates
(the physical reference: ``sum_slowdown_vs_numpy_float32`` is how many times longer it takes).

Usage: python benchmarks/he.py [--quick] [--workers 2] [--institutions 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tenseal as ts

from confide.aggregation import (
    PublicContext,
    WorkerPool,
    create_key_material,
    decrypt_sum,
    encrypt_update,
    sum_envelopes,
)
from confide.aggregation.params import for_precision

#: The precision requirement: the average's error bound within this, and 100x below DP noise.
MAX_AVERAGE_ERROR = 1e-4
DP_NOISE_MARGIN = 100.0

BASELINE_DEGREE = 8192
BASELINE_BITS = [60, 40, 40, 60]
BASELINE_SCALE_BITS = 40
LAYOUT_HASH = "0" * 64  # the benchmark has no adapter; any fixed layout hash will do
REPEATS = 3


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def best_of(fn: Callable[[], Any], repeats: int = REPEATS) -> tuple[Any, float]:
    runs = [timed(fn) for _ in range(repeats)]
    return runs[-1][0], min(t for _, t in runs)


def make_updates(size: int, institutions: int, seed: int):
    rng = np.random.default_rng(seed)
    deltas = [rng.normal(0.0, 0.1, size) for _ in range(institutions)]
    weights = [float(w) for w in rng.integers(1, 5, institutions)]
    w = np.asarray(weights)
    reference = (w[:, None] * np.stack(deltas)).sum(axis=0) / w.sum()
    return deltas, weights, reference


class ConfideSide:
    """confide's pipeline: seeded symmetric CKKS at the last level, two reals per slot."""

    def __init__(self, params) -> None:
        self.material = create_key_material(params)
        self.coordinator = PublicContext.from_bytes(self.material.public_context_bytes())

    def encrypt(self, delta: np.ndarray, weight: float) -> bytes:
        return encrypt_update(self.material, delta, weight, LAYOUT_HASH)

    def upload_bytes(self, upload: bytes) -> int:
        return len(upload)

    def sum(self, uploads: list[bytes]) -> bytes:
        return sum_envelopes(self.coordinator, uploads)

    def decrypt(self, total: bytes) -> np.ndarray:
        return decrypt_sum(self.material, total, LAYOUT_HASH).average


class BaselineSide:
    """TenSEAL's high-level ckks_vector, one 4096-slot vector per chunk of the upload."""

    def __init__(self) -> None:
        self.context = ts.context(
            ts.SCHEME_TYPE.CKKS, BASELINE_DEGREE, coeff_mod_bit_sizes=BASELINE_BITS
        )
        self.context.global_scale = 2.0**BASELINE_SCALE_BITS
        self.public = ts.context_from(
            self.context.serialize(
                save_public_key=True,
                save_secret_key=False,
                save_galois_keys=False,
                save_relin_keys=False,
            )
        )
        self.slots = BASELINE_DEGREE // 2
        self.size = 0

    def encrypt(self, delta: np.ndarray, weight: float) -> list[bytes]:
        self.size = len(delta)
        values = np.concatenate([weight * delta, [weight, 1.0]])
        return [
            ts.ckks_vector(self.context, values[i : i + self.slots]).serialize()
            for i in range(0, len(values), self.slots)
        ]

    def upload_bytes(self, upload: list[bytes]) -> int:
        return sum(map(len, upload))

    def sum(self, uploads: list[list[bytes]]) -> list[bytes]:
        totals = [ts.ckks_vector_from(self.public, blob) for blob in uploads[0]]
        for upload in uploads[1:]:
            for total, blob in zip(totals, upload):
                total += ts.ckks_vector_from(self.public, blob)
        return [t.serialize() for t in totals]

    def decrypt(self, total: list[bytes]) -> np.ndarray:
        values = np.concatenate([ts.ckks_vector_from(self.context, b).decrypt() for b in total])
        return values[: self.size] / values[self.size]


def measure_sides(sides: dict[str, Any], deltas, weights, reference) -> dict[str, dict[str, Any]]:
    """Run both pipelines step by step, alternating between them, so that a change in machine
    load (the benchmark host is shared) hits both sides alike."""
    size, institutions = len(deltas[0]), len(deltas)
    uploads: dict[str, list[Any]] = {name: [] for name in sides}
    encrypt_s = dict.fromkeys(sides, 0.0)
    for delta, weight in zip(deltas, weights):
        for name, side in sides.items():
            upload, seconds = timed(lambda side=side, delta=delta, weight=weight: side.encrypt(delta, weight))
            uploads[name].append(upload)
            encrypt_s[name] += seconds
    totals: dict[str, Any] = {}
    sum_s = dict.fromkeys(sides, float("inf"))
    decrypt_s = dict.fromkeys(sides, float("inf"))
    averages: dict[str, np.ndarray] = {}
    for _ in range(REPEATS):
        for name, side in sides.items():
            totals[name], seconds = timed(lambda side=side, name=name: side.sum(uploads[name]))
            sum_s[name] = min(sum_s[name], seconds)
    for _ in range(REPEATS):
        for name, side in sides.items():
            averages[name], seconds = timed(lambda side=side, name=name: side.decrypt(totals[name]))
            decrypt_s[name] = min(decrypt_s[name], seconds)
    return {
        name: {
            "upload_bytes_per_param": float(
                np.mean([side.upload_bytes(u) for u in uploads[name]]) / size
            ),
            "encrypt_params_per_s": institutions * size / encrypt_s[name],
            "sum_s": sum_s[name],
            "sum_params_per_s": institutions * size / sum_s[name],
            "decrypt_params_per_s": size / decrypt_s[name],
            "max_abs_error": float(np.max(np.abs(averages[name] - reference))),
            "uploads": uploads[name],
            "total": totals[name],
        }
        for name, side in sides.items()
    }


def measure_files_and_parallel(
    side: ConfideSide, envelopes: list[bytes], deltas, weights, reference, workers: int
) -> dict[str, Any]:
    """The coordinator keeps uploads as files; with workers, each reads its share directly."""
    size, institutions = len(deltas[0]), len(deltas)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp) / f"upload-{i}.cfhe" for i in range(institutions)]
        for path, envelope in zip(paths, envelopes):
            path.write_bytes(envelope)
        out["sum_from_files_s"] = best_of(lambda: sum_envelopes(side.coordinator, paths))[1]
        if workers < 2:
            return out

        def start_pool() -> WorkerPool:
            pool = WorkerPool(workers)
            pool.map(abs, [0] * workers)  # wait until the spawned processes are up
            return pool

        pool, start_s = timed(start_pool)
        with pool:
            parallel_uploads, encrypt_s = timed(
                lambda: [
                    encrypt_update(side.material, d, w, LAYOUT_HASH, workers=pool)
                    for d, w in zip(deltas, weights)
                ]
            )
            total, sum_s = best_of(lambda: sum_envelopes(side.coordinator, paths, workers=pool))
    check = decrypt_sum(side.material, total, LAYOUT_HASH)
    out["parallel"] = {
        "workers": workers,
        "pool_start_s": start_s,
        "encrypt_params_per_s": institutions * size / encrypt_s,
        "sum_from_files_s": sum_s,
        "sum_params_per_s": institutions * size / sum_s,
        "max_abs_error": float(np.max(np.abs(check.average - reference))),
        "upload_bytes_per_param": float(np.mean([len(e) for e in parallel_uploads]) / size),
    }
    return out


def plaintext_sum_s(deltas, weights) -> float:
    scaled = [(w * d).astype(np.float32) for d, w in zip(deltas, weights)]

    def add_all() -> np.ndarray:
        total = scaled[0].copy()
        for s in scaled[1:]:
            total += s
        return total

    return best_of(add_all)[1]


def dp_noise_in_update(seed: int) -> float:
    """Standard deviation per parameter of the DP noise in one member's update (see the module
    docstring): two runs of one round that differ only in the Gaussian noise."""
    import copy

    import torch
    from torch.utils.data import TensorDataset

    from confide.identity import Identity
    from confide.platform.models import build_adapter_model
    from confide.policies import FederationPolicy
    from confide.privacy.training import DPSettings, run_dp_round

    roster = [Identity.generate(i).public.to_roster_entry(i) for i in ("a", "b")]
    federation = FederationPolicy.model_validate({
        "kind": "federation", "federation_id": "bench", "roster": roster, "rounds": 1,
        "model": {"source": "random:tiny-bert", "labels": ["x", "y"], "max_length_tokens": 16},
    })
    built = build_adapter_model(federation, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    records = 640
    ids = torch.randint(5, built.tokenizer.vocab_size, (records, 16), generator=generator)
    data = TensorDataset(ids, torch.ones_like(ids), torch.randint(0, 2, (records,), generator=generator))
    deltas = []
    for sigma in (0.3, 0.0):
        model = copy.deepcopy(built.model)
        settings = DPSettings(noise_multiplier=sigma, sample_rate=64 / records, steps=8, clipping_norm=1.0,
                              max_physical_batch_size=64, learning_rate=0.02, optimizer="adamw")
        delta = run_dp_round(model, data, "sequence_classification", settings, seed=seed).delta
        deltas.append(torch.cat([t.reshape(-1) for t in delta.values()]).double())
    return float((deltas[0] - deltas[1]).std())


def requirement(deltas, weights, dp_noise: float) -> tuple[Any, float, float]:
    """Parameters for this federation's sums, and the error required of the average."""
    w = np.asarray(weights)
    noise_in_average = dp_noise * float(np.sqrt((w**2).sum()) / w.sum())
    max_error = min(MAX_AVERAGE_ERROR, noise_in_average / DP_NOISE_MARGIN)
    reach = max(float(w.sum()), float(sum(wi * np.max(np.abs(d)) for d, wi in zip(deltas, w))))
    params = for_precision(reach, max_error * float(w.sum()), len(weights))
    return params, max_error, noise_in_average


def run_size(size: int, institutions: int, workers: int, seed: int, dp_noise: float) -> dict[str, Any]:
    deltas, weights, reference = make_updates(size, institutions, seed)
    params, required_error, noise_in_average = requirement(deltas, weights, dp_noise)
    confide_side, baseline_side = ConfideSide(params), BaselineSide()
    measured = measure_sides(
        {"confide": confide_side, "baseline": baseline_side}, deltas, weights, reference
    )
    ours, base = measured["confide"], measured["baseline"]
    envelopes, total = ours.pop("uploads"), ours.pop("total")
    del base["uploads"], base["total"]
    ours["params"] = confide_side.material.params.model_dump(mode="json")
    ours["sum_download_bytes_per_param"] = len(total) / size
    ours["error_bound"] = decrypt_sum(confide_side.material, total, LAYOUT_HASH).error_bound
    base["params"] = {
        "poly_modulus_degree": BASELINE_DEGREE,
        "coeff_mod_bit_sizes": BASELINE_BITS,
        "scale_bits": BASELINE_SCALE_BITS,
    }
    ours.update(
        measure_files_and_parallel(confide_side, envelopes, deltas, weights, reference, workers)
    )
    numpy_s = plaintext_sum_s(deltas, weights)
    result = {
        "n_params": size,
        "institutions": institutions,
        "upload_bytes_per_param": ours["upload_bytes_per_param"],
        "baseline_upload_bytes_per_param": base["upload_bytes_per_param"],
        "encrypt_speedup_vs_baseline": ours["encrypt_params_per_s"] / base["encrypt_params_per_s"],
        "sum_speedup_vs_baseline": base["sum_s"] / ours["sum_s"],
        "decrypt_speedup_vs_baseline": ours["decrypt_params_per_s"] / base["decrypt_params_per_s"],
        "max_abs_error": ours["max_abs_error"],
        "baseline_max_abs_error": base["max_abs_error"],
        "error_bound": ours["error_bound"],
        "required_average_error": required_error,
        "dp_noise_std_in_update": dp_noise,
        "dp_noise_std_in_average": noise_in_average,
        "dp_noise_over_max_abs_error": noise_in_average / ours["max_abs_error"],
        "plaintext_float32_sum_s": numpy_s,
        "sum_slowdown_vs_numpy_float32": ours["sum_s"] / numpy_s,
        "confide": ours,
        "baseline": base,
    }
    if "parallel" in ours:
        par = ours["parallel"]
        par["encrypt_speedup_vs_baseline"] = par["encrypt_params_per_s"] / base["encrypt_params_per_s"]
        par["sum_speedup_vs_baseline"] = base["sum_s"] / par["sum_from_files_s"]
        par["sum_slowdown_vs_numpy_float32"] = par["sum_from_files_s"] / numpy_s
    result["targets_met"] = {
        "upload_bytes_per_param_le_4": result["upload_bytes_per_param"] <= 4.0,
        "max_abs_error_le_1e-4": result["max_abs_error"] <= 1e-4,
        "error_100x_below_dp_noise": result["dp_noise_over_max_abs_error"] >= DP_NOISE_MARGIN,
        "sum_no_slower_than_baseline": result["sum_speedup_vs_baseline"] >= 1.0,
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10**5 parameters only")
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel runs")
    parser.add_argument("--institutions", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [10**5] if args.quick else [10**5, 10**6]
    dp_noise = dp_noise_in_update(args.seed)
    report = {str(n): run_size(n, args.institutions, args.workers, args.seed, dp_noise) for n in sizes}
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
