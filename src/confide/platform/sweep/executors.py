"""Running point jobs: in local `spawn` worker processes, or as Ray tasks.

Both executors hand every finished job to `on_done(job, row, error)` in the calling process, as
soon as it finishes, and call `on_tick()` about once a second so a progress display can refresh.
A point that raises is reported with its error and does not stop the others.

Ray is an optional extra and imported only when asked for. Its tasks unpickle `run_point` by
reference, so every Ray node needs confide installed (on a local instance the driver's environment
is inherited).
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, wait
from typing import Callable

from confide.errors import BadInput
from confide.platform.sweep.job import PointJob, run_point
from confide.platform.workers import start_ray
from confide.processes import process_pool

OnDone = Callable[[PointJob, "dict | None", "str | None"], None]
EXECUTORS = ("local", "ray")


class SweepError(BadInput):
    """A sweep that cannot run as asked."""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BadInput):
        return "; ".join(exc.lines())
    return f"{type(exc).__name__}: {exc}"


def threads_per_point(workers: int) -> int:
    """Torch threads each concurrently running point gets, sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def run_local(jobs: list[PointJob], workers: int, on_done: OnDone, on_tick: Callable[[], None] = lambda: None) -> None:
    """Run `jobs` in `workers` spawn processes (0: one after another in this process)."""
    if workers <= 0:
        for job in jobs:
            try:
                row = run_point(job)
            except Exception as exc:  # noqa: BLE001 - recorded as a failed point; the sweep goes on
                on_done(job, None, _describe(exc))
            else:
                on_done(job, row, None)
            on_tick()
        return
    pool = process_pool(workers)
    try:
        futures = {pool.submit(run_point, job): job for job in jobs}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                error = future.exception()
                on_done(futures[future], None if error else future.result(), _describe(error) if error else None)
            on_tick()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def run_ray(jobs: list[PointJob], workers: int | None, address: str | None, on_done: OnDone,
            on_tick: Callable[[], None] = lambda: None) -> None:
    """Run `jobs` as Ray tasks, at most `workers` at a time (None: as many as the cluster has CPUs).

    Ray is started by `confide.platform.workers.start_ray` (the simulation's start-up too): the
    instance this process is already connected to, else the cluster at `address` (e.g.
    `ray://head:10001` or `auto`) or `RAY_ADDRESS`, else a local instance, which is shut down at the
    end. Each task asks Ray for one CPU. Raises ExecutorUnavailable (Ray missing or unreachable).
    """
    started_here = start_ray(workers or 1, address)
    import ray
    try:
        limit = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = ray.remote(run_point)
        waiting = list(jobs)
        running: dict = {}
        while waiting or running:
            while waiting and len(running) < limit:
                job = waiting.pop(0)
                # One CPU each: a request larger than any node's CPU count would never be scheduled.
                running[task.options(num_cpus=1, max_retries=0).remote(job)] = job
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                job = running.pop(ref)
                try:
                    row = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a task error is a failed point, not a failed sweep
                    on_done(job, None, _describe(getattr(exc, "cause", None) or exc))
                else:
                    on_done(job, row, None)
            on_tick()
    finally:
        if started_here:
            ray.shutdown()
