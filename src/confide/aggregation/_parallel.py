"""Work split across processes: TenSEAL holds the GIL, so threads would not help.

Always the ``spawn`` start method: forking a process after a TenSEAL context exists deadlocked
in our measurements, and a spawned worker inherits nothing but what it is sent. Tasks are
module-level functions over plain bytes and numpy arrays so they pickle across processes.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tenseal.sealapi as seal

from confide.aggregation import _seal
from confide.aggregation.wire import EnvelopeSource, read_ciphertext

#: A ciphertext reader for one envelope: ("bytes", [blob per position]) when the parent
#: already holds the bytes, or ("path", path, [(offset, length) per position]).
SourceSpec = tuple[Any, ...]


class WorkerPool:
    """A reusable pool of spawned worker processes, to pay the start-up (about 0.3 s per
    process: Python, numpy and TenSEAL imports) once for many encryptions or sums.

    Use as a context manager and pass it as ``workers=`` to ``encrypt_update``/``sum_envelopes``.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("a worker pool needs at least one process")
        self.processes = processes
        self._pool = multiprocessing.get_context("spawn").Pool(processes=processes)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.close()
        self._pool.join()

    def map(self, task: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        return self._pool.map(task, jobs)


def worker_count(workers: int | WorkerPool) -> int:
    """Number of processes ``workers`` stands for (an int, or a pool's size)."""
    return workers.processes if isinstance(workers, WorkerPool) else int(workers)


def run_spawned(
    task: Callable[[Any], Any], jobs: Sequence[Any], pool: int | WorkerPool
) -> list[Any]:
    """Run ``task`` over ``jobs`` in ``pool``, or in a pool spawned for this call only."""
    if isinstance(pool, WorkerPool):
        return pool.map(task, jobs)
    with WorkerPool(len(jobs)) as fresh:
        return fresh.map(task, jobs)


def split_ranges(n: int, parts: int) -> list[range]:
    """Split range(n) into ``parts`` contiguous, nearly equal, non-empty ranges."""
    parts = max(1, min(parts, n))
    bounds = np.linspace(0, n, parts + 1).round().astype(int)
    return [range(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def encrypt_task(job: tuple[bytes, np.ndarray]) -> list[bytes]:
    """Worker: encrypt rows of complex slots with the secret material sent along."""
    from confide.aggregation.keys import load_secret

    secret_bytes, rows = job
    material = load_secret(secret_bytes)
    with _seal.SealScratch() as scratch:
        return _seal.encrypt_rows(
            material.context, material.secret_key, rows, material.params.scale_bits, scratch
        )


def sum_positions(
    context: seal.SEALContext,
    scale_bits: int,
    readers: Sequence[Callable[[int], bytes | memoryview]],
    positions: range,
    scratch: _seal.SealScratch,
) -> list[bytes]:
    """Add, position by position, the ciphertexts every reader returns for that position.

    Memory holds one running ciphertext and one being added, whatever the number of readers.
    """
    evaluator = seal.Evaluator(context)
    out = []
    for j in positions:
        total = None
        for i, read in enumerate(readers):
            ct = _seal.load_update_ciphertext(
                scratch, context, read(j), scale_bits, f"ciphertext {j} of envelope {i}"
            )
            if total is None:
                total = ct
            else:
                evaluator.add_inplace(total, ct)
        out.append(scratch.dump(total))
    return out


def reader_for(spec: SourceSpec, first: int) -> Callable[[int], bytes | memoryview]:
    """A reader over a worker's share of one envelope; positions count from ``first``."""
    if spec[0] == "bytes":
        blobs = spec[1]
        return lambda j: blobs[j - first]
    _, path, slices = spec

    def read(j: int) -> bytes | memoryview:
        offset, length = slices[j - first]
        return read_ciphertext(path, offset, length)

    return read


def share_of(source: EnvelopeSource, offsets: Sequence[int], lengths: Sequence[int],
             positions: range) -> SourceSpec:
    """What a worker needs to read ``positions`` of one envelope (paths are read by the
    worker itself, so only the parent's bytes cross the process boundary)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source)
        return ("bytes", [bytes(view[offsets[j] : offsets[j] + lengths[j]]) for j in positions])
    return ("path", str(source), [(offsets[j], lengths[j]) for j in positions])


def sum_task(job: tuple[bytes, list[SourceSpec], range]) -> list[bytes]:
    """Worker: sum its range of ciphertext positions across all envelopes."""
    from confide.aggregation.keys import PublicContext

    public_bytes, specs, positions = job
    public = PublicContext.from_bytes(public_bytes)
    readers = [reader_for(spec, positions.start) for spec in specs]
    with _seal.SealScratch() as scratch:
        return sum_positions(public.context, public.params.scale_bits, readers, positions, scratch)
