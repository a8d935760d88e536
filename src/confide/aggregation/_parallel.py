"""Work split across processes: TenSEAL holds the GIL, so threads would not help; and the
coordinator's summation, in numpy, as a streaming pass over the envelopes.

Processes come from `confide.processes` (always ``spawn``: forking after a TenSEAL context exists
deadlocked in our measurements). Tasks are module-level functions over plain bytes and numpy arrays
so they pickle across processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from confide.aggregation import _seal, bitpack, compact
from confide.aggregation.wire import EnvelopeHeader, EnvelopeSource, read_ciphertext
from confide.processes import process_pool

#: Ciphertext positions a summation reads from each envelope at once (64 x 4096 coefficients:
#: a few MB for the running block and one envelope's block).
SUM_BLOCK = 64


class WorkerPool:
    """A reusable pool of spawned worker processes, to pay the start-up (about 0.3 s per
    process: Python, numpy and TenSEAL imports) once for many encryptions or sums.

    Use as a context manager and pass it as ``workers=`` to ``encrypt_update``/``sum_envelopes``.
    """

    def __init__(self, processes: int) -> None:
        if processes < 1:
            raise ValueError("a worker pool needs at least one process")
        self.processes = processes
        self._pool = process_pool(processes)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def map(self, task: Callable[[Any], Any], jobs: Sequence[Any]) -> list[Any]:
        return list(self._pool.map(task, jobs))


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


def encrypt_task(job: tuple) -> list[bytes]:
    """Worker: encrypt rows of complex slots with the secret material sent along. The upload's
    seed and the rows' first position keep every ciphertext's ``a`` distinct; the upload's mask
    (`secagg.UploadMask`, or None) travels along too."""
    from confide.aggregation.keys import load_secret
    from confide.aggregation.secagg import RingProducts

    secret_bytes, rows, widths, seed, first, mask = job
    material = load_secret(secret_bytes)
    with _seal.SealScratch() as scratch:
        masks = None if mask is None else RingProducts(material.context, mask.seed, mask.secret, scratch).at
        return compact.encrypt_rows(
            material.context, material.secret_key, rows, material.params.scale_bits, widths,
            scratch, seed=seed, first_position=first, mask=masks,
        )[1]


@dataclass(frozen=True)
class EnvelopePart:
    """The bytes of a run of one envelope's ciphertexts, or the path to read them from: what a
    worker needs for its share (only a parent's in-memory bytes cross the process boundary)."""

    header: EnvelopeHeader
    path: str | None
    data: bytes | memoryview | None
    base: int

    def read(self, offset: int, length: int) -> bytes | memoryview:
        if self.path is not None:
            return read_ciphertext(self.path, offset, length)
        assert self.data is not None
        return memoryview(self.data)[offset - self.base : offset - self.base + length]


def part_of(source: EnvelopeSource, header: EnvelopeHeader, positions: range | None,
            copy: bool) -> EnvelopePart:
    """The part of ``source`` a summation of ``positions`` (all if None) reads."""
    if isinstance(source, (str, os.PathLike)):
        return EnvelopePart(header, str(source), None, 0)
    if positions is None or not copy:
        return EnvelopePart(header, None, source, 0)
    offsets, lengths = header.ciphertext_offsets(), header.ciphertext_lengths
    start, stop = offsets[positions.start], offsets[positions.stop - 1] + lengths[positions.stop - 1]
    return EnvelopePart(header, None, bytes(memoryview(source)[start:stop]), start)


def sum_positions(parts: Sequence[EnvelopePart], positions: range, q: int, full_bits: int,
                  block: int = SUM_BLOCK) -> list[bytes]:
    """Add, modulo ``q``, the ciphertexts every envelope holds at ``positions``; return them
    packed at ``full_bits``. Works through ``block`` positions at a time: memory holds one
    running block and one envelope's block, whatever the number of envelopes."""
    out: list[bytes] = []
    n = 2 * parts[0].header.slots
    modulus = np.uint64(q)
    for begin in range(positions.start, positions.stop, block):
        run = range(begin, min(begin + block, positions.stop))
        total = np.zeros(len(run) * n, dtype=np.uint64)
        for count, part in enumerate(parts, start=1):
            total += block_coefficients(part, run, q, full_bits)
            if count % compact.ADDS_PER_REDUCTION == 0:
                np.remainder(total, modulus, out=total)
        np.remainder(total, modulus, out=total)
        out.extend(bitpack.pack(poly, full_bits) for poly in total.reshape(len(run), n))
    return out


def block_coefficients(part: EnvelopePart, run: range, q: int, full_bits: int) -> np.ndarray:
    """One envelope's coefficients at positions ``run``, restored modulo ``q``, concatenated."""
    header = part.header
    n = 2 * header.slots
    offsets, lengths = header.ciphertext_offsets(), header.ciphertext_lengths
    raw = part.read(offsets[run.start], offsets[run.stop - 1] + lengths[run.stop - 1] - offsets[run.start])
    what = f"ciphertexts {run.start}..{run.stop - 1}"
    last = header.n_ciphertexts - 1
    # All but the envelope's last ciphertext share one width, so a run unpacks in one call.
    bulk = [j for j in run if j != last]
    pieces = []
    if bulk:
        size = lengths[0] * len(bulk)
        packed = bitpack.unpack(raw[:size], header.bits, n * len(bulk))
        pieces.append(compact.restore_coefficients(packed, full_bits - header.bits, q, what))
    if last in run:
        packed = bitpack.unpack(raw[len(raw) - lengths[last] :], header.last_bits, n)
        pieces.append(compact.restore_coefficients(packed, full_bits - header.last_bits, q, what))
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def sum_task(job: tuple[list[EnvelopePart], range, int, int]) -> list[bytes]:
    """Worker: sum its range of ciphertext positions across all envelopes."""
    parts, positions, q, full_bits = job
    return sum_positions(parts, positions, q, full_bits)
