"""Worker processes: one start method and one pool for every part of confide.

TenSEAL and torch's CPU kernels hold the GIL for long stretches, so parallel work needs processes,
and they are always started with ``spawn``: a fork after a TenSEAL context exists deadlocked, and a
spawned worker inherits nothing but what it is sent. Work that is a list of independent tasks
(encrypting or summing ciphertext ranges, the points of a sweep) runs in `process_pool`. The
simulation's member hosts (`confide.platform.workers`) keep members loaded between calls and route
each call to the process that holds its member, which a task pool cannot do; they start their
processes from `SPAWN`, the same context.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor

SPAWN = multiprocessing.get_context("spawn")
"""The one multiprocessing context confide starts processes from."""


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes for independent tasks (module-level functions over
    picklable arguments). Raises ValueError for fewer than one worker."""
    if workers < 1:
        raise ValueError("a process pool needs at least one worker")
    return ProcessPoolExecutor(max_workers=workers, mp_context=SPAWN)
