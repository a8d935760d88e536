"""Hosting institutions in worker processes, so their local rounds train in parallel.

TenSEAL and torch's CPU kernels hold the GIL for long stretches, so parallelism needs processes.
They are started from `confide.processes.SPAWN`: a fork after a TenSEAL context exists deadlocked.
Unlike a task pool (`confide.processes.process_pool`), each worker hosts
one or more members for the whole simulation (models stay loaded between rounds); the main process
sends it calls and gets plain results back. A call names the function to run on the member (e.g.
`Member.take_part`, pickled by reference), never a method name as a string: a renamed method then fails
where it is referenced, not at run time in a worker. Progress events travel on a shared queue.

With `workers=0` the same members run in the calling process through the same interface, which is
what tests and debugging use. `RayMemberPool` hosts the members in Ray actors instead (a local Ray
instance, or the cluster `RAY_ADDRESS` names): each actor runs the very call handler a worker
process runs, so the two executors differ only in how calls travel. `start_ray` is the one way
confide starts or joins Ray (the sweep's Ray tasks use it too).
"""

from __future__ import annotations

import os
import threading
import traceback
from typing import Any, Callable

from confide.errors import BadInput
from confide.processes import SPAWN

Factory = Callable[..., Any]
MemberFunction = Callable[..., Any]
"""A function whose first argument is the member, e.g. an unbound method `Member.plan`."""


class WorkerFailed(RuntimeError):
    """A member raised inside a worker; the message carries the worker's traceback."""


class MemberRefused(BadInput):
    """A member in a worker refused bad input (a data file, a policy); the message is the member's own."""


class ExecutorUnavailable(BadInput):
    """The chosen executor cannot run here (Ray is not installed)."""


def _limit_threads(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _handle(members: dict[str, Any], factory: Factory, specs: dict[str, tuple], progress, message) -> tuple:
    """Run one call `(member_id, function, args, kwargs)` on a hosted member (built on first use);
    the reply is plain data: ("ok", result), ("bad_input", message) or ("error", details, exc)."""
    member_id, function, args, kwargs = message
    try:
        if member_id not in members:
            members[member_id] = factory(*specs[member_id], progress=progress)
        return ("ok", function(members[member_id], *args, **kwargs))
    except BadInput as exc:  # the user's mistake: its message travels, not the traceback
        return ("bad_input", str(exc))
    except BaseException as exc:  # sent back whole: the main process decides what is fatal
        return ("error", (type(exc).__name__, str(exc), traceback.format_exc()), exc if _picklable(exc) else None)


def _unwrap(member_id: str, reply: tuple) -> Any:
    """The result in a `_handle` reply, or the member's exception raised here."""
    if reply[0] == "bad_input":
        raise MemberRefused(reply[1])
    if reply[0] == "error":
        name, message, trace = reply[1]
        if reply[2] is not None:
            raise reply[2]
        raise WorkerFailed(f"{member_id}: {name}: {message}\n{trace}")
    return reply[1]


def _serve(factory: Factory, specs: dict[str, tuple], connection, progress, threads: int) -> None:
    _limit_threads(threads)
    members: dict[str, Any] = {}
    while True:
        message = connection.recv()
        if message is None:
            return
        connection.send(_handle(members, factory, specs, progress, message))


def _picklable(exc: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return False
    return True


class MemberPool:
    """Members spread over `workers` processes (0: in this process). Calls are by member id."""

    def __init__(self, factory: Factory, specs: dict[str, tuple], workers: int, progress=None) -> None:
        self.progress = progress
        self.local: dict[str, Any] = {}
        self.factory, self.specs = factory, specs
        self.route: dict[str, int] = {}
        self.processes, self.connections = [], []
        # Round drivers call members from several threads: one call at a time per worker (and
        # one at a time in this process, where members share torch and TenSEAL state).
        self._local_lock = threading.Lock()
        self._worker_locks: list[threading.Lock] = []
        if workers <= 0:
            return
        workers = min(workers, len(specs))
        threads = max(1, (os.cpu_count() or 1) // workers)
        # Processes of our own, not a pool: a member stays loaded in one process and every call to it
        # must reach that process, which a task pool's scheduling cannot promise.
        context = SPAWN
        ids = list(specs)
        for w in range(workers):
            mine = {i: specs[i] for i in ids[w::workers]}
            parent, child = context.Pipe()
            process = context.Process(target=_serve, args=(factory, mine, child, progress, threads), daemon=True)
            process.start()
            self.processes.append(process)
            self.connections.append(parent)
            self._worker_locks.append(threading.Lock())
            for i in mine:
                self.route[i] = w

    def _local(self, member_id: str) -> Any:
        if member_id not in self.local:
            self.local[member_id] = self.factory(*self.specs[member_id], progress=self.progress)
        return self.local[member_id]

    def call_many(self, calls: list[tuple[str, MemberFunction, tuple, dict]],
                  on_wait: Callable[[], None] | None = None) -> dict:
        """Run `(member_id, function, args, kwargs)` calls, one per member, in parallel across workers.

        Returns {member_id: result} in the calls' order. Calls to members of the same worker run one after another.
        Raises the member's own exception where it can travel between processes, else WorkerFailed.
        """
        if not self.processes:
            with self._local_lock:
                return {m: function(self._local(m), *args, **kwargs) for m, function, args, kwargs in calls}
        queues: dict[int, list] = {}
        for call in calls:
            queues.setdefault(self.route[call[0]], []).append(call)
        locks = [self._worker_locks[w] for w in sorted(queues)]  # always taken in one order: no deadlock
        for lock in locks:
            lock.acquire()
        try:
            return _in_call_order(calls, self._run(queues, on_wait))
        finally:
            for lock in reversed(locks):
                lock.release()

    def _run(self, queues: dict[int, list], on_wait: Callable[[], None] | None) -> dict:
        results: dict[str, Any] = {}
        pending = {w: q.pop(0) for w, q in queues.items()}
        for w, call in pending.items():
            self.connections[w].send(call)
        while pending:
            if on_wait is not None:
                on_wait()
            ready = [w for w in pending if self.connections[w].poll(0.1)]
            for w in ready:
                member_id = pending.pop(w)[0]
                results[member_id] = _unwrap(member_id, self.connections[w].recv())
                if queues[w]:
                    pending[w] = queues[w].pop(0)
                    self.connections[w].send(pending[w])
        return results

    def call(self, member_id: str, function: MemberFunction, *args, **kwargs) -> Any:
        """`function(member, *args, **kwargs)` on member `member_id`, wherever it lives."""
        return self.call_many([(member_id, function, args, kwargs)])[member_id]

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(None)
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


class _RayHost:
    """A Ray actor hosting some members: the worker process's handler behind an actor method."""

    def __init__(self, factory: Factory, specs: dict[str, tuple], progress, threads: int) -> None:
        _limit_threads(threads)
        self.factory, self.specs, self.progress = factory, specs, progress
        self.members: dict[str, Any] = {}

    def handle(self, message) -> tuple:
        return _handle(self.members, self.factory, self.specs, self.progress, message)


def ray_progress_queue():
    """A progress queue Ray actors can put events on (start Ray first: `start_ray`)."""
    from ray.util.queue import Queue

    return Queue()


def import_ray():
    """The `ray` module; raises ExecutorUnavailable saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ExecutorUnavailable("--executor ray needs Ray, which is not installed",
                                  "pip install 'confide[ray]' (or use --executor local)") from None
    return ray


def start_ray(workers: int, address: str | None = None) -> bool:
    """Connect this process to Ray unless it already is; True if this call did (the caller then shuts
    Ray down when done).

    Connects to `address` (e.g. `auto`, `ray://head:10001`), else to the cluster `RAY_ADDRESS` names,
    else starts a local instance with at least `workers` CPUs, so that `workers` one-CPU actors or
    tasks run at once. No dashboard; workers' output stays off the driver's console. Raises
    ExecutorUnavailable when Ray is not installed or the cluster cannot be reached.
    """
    ray = import_ray()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address is None:
        options.update(address="local", num_cpus=max(workers, os.cpu_count() or 1))
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except ConnectionError as exc:
        raise ExecutorUnavailable(f"cannot connect to the Ray cluster at {address}: {exc}",
                                  "check --ray-address or RAY_ADDRESS, or leave both out to start Ray "
                                  "locally") from None
    return True


class RayMemberPool:
    """Members spread over `workers` Ray actors; the same interface as `MemberPool`.

    Ray is started (`start_ray`) unless already running; whoever started it shuts it down.
    Without `RAY_ADDRESS`, Ray starts locally with at least `workers` CPUs (so no actor waits for
    another's CPU); with it, actors are placed on that cluster. An actor runs one call at a time,
    in the order calls were made, as a worker process does.
    """

    def __init__(self, factory: Factory, specs: dict[str, tuple], workers: int, progress=None) -> None:
        import ray

        start_ray(workers)
        workers = max(1, min(workers, len(specs)))
        threads = max(1, (os.cpu_count() or 1) // workers)
        host = ray.remote(num_cpus=1)(_RayHost)
        ids = list(specs)
        self.route: dict[str, Any] = {}
        self.actors = []
        for w in range(workers):
            mine = {i: specs[i] for i in ids[w::workers]}
            actor = host.remote(factory, mine, progress, threads)
            self.actors.append(actor)
            for i in mine:
                self.route[i] = actor

    def call_many(self, calls: list[tuple[str, MemberFunction, tuple, dict]],
                  on_wait: Callable[[], None] | None = None) -> dict:
        """Run the calls, one per member, in parallel across actors; see `MemberPool.call_many`."""
        import ray

        pending = {self.route[m].handle.remote((m, function, args, kwargs)): m for m, function, args, kwargs in calls}
        results: dict[str, Any] = {}
        while pending:
            if on_wait is not None:
                on_wait()
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.1)
            for ref in ready:
                member_id = pending.pop(ref)
                results[member_id] = _unwrap(member_id, ray.get(ref))
        return _in_call_order(calls, results)

    def call(self, member_id: str, function: MemberFunction, *args, **kwargs) -> Any:
        return self.call_many([(member_id, function, args, kwargs)])[member_id]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def _in_call_order(calls: list[tuple], results: dict) -> dict:
    """`results` keyed in the order of `calls` (workers answer in whatever order they finish)."""
    return {call[0]: results[call[0]] for call in calls}
