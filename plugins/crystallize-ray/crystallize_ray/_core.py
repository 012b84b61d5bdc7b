"""Running replicates on Ray: connecting, shipping the experiment once, batching, faults."""

from __future__ import annotations

import atexit
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import ray

from crystallize_core import ConfigurationError
from crystallize_core.batching import BatchSizer
from crystallize_core.replicate import check_picklable
from crystallize_core.result import pack_results, unpack_results

#: How long an unreachable cluster address may take to be reported.
CONNECT_TIMEOUT_SECONDS = 10.0
#: Tasks in flight per unit of parallelism: enough to keep the cluster busy,
#: few enough that memory does not grow with the run.
IN_FLIGHT_PER_SLOT = 2
TARGET_TASK_SECONDS = 0.1  # Ray's per-task cost is about a millisecond

_started_here = False

#: How Ray reports a task whose worker process or node went away (after its retries).
WORKER_LOST = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.OutOfMemoryError,
)


def connect(address: str | None, runtime_env: dict | None) -> bool:
    """Connect to ``address``, ``RAY_ADDRESS``, or a local instance started here.

    ``runtime_env`` becomes the job's, which is what lets Ray upload local
    folders (``working_dir``, ``py_modules``). An existing connection in this
    process is used as it is; then the return value is False and the caller
    passes ``runtime_env`` with each task instead.
    """
    global _started_here
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS") or None
    job_env = dict(runtime_env or {})
    env_vars = dict(job_env.get("env_vars") or {})
    env_vars.setdefault("PYTHONPATH", os.pathsep.join(_user_code_paths()))
    job_env["env_vars"] = env_vars
    if target is None:
        ray.init(include_dashboard=False, runtime_env=job_env)
        _started_here = True
        atexit.register(_shutdown_if_started_here)
        return True
    _check_reachable(target)
    try:
        ray.init(address=target, runtime_env=job_env)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigurationError(f"cannot connect to the Ray cluster at {target!r}: {exc}") from None
    return True


def _user_code_paths() -> list[str]:
    """Folders on this driver's import path that are not Python's or installed
    packages': where the experiment's own modules live (for example the folder
    of a `crystallize run path/to/file.py:NAME` target). Workers on this
    machine import from them too; other machines need a runtime_env."""
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = []
    for entry in sys.path:
        folder = os.path.realpath(entry or os.curdir)
        inside_installed = any(folder == root or folder.startswith(root + os.sep) for root in installed)
        if os.path.isdir(folder) and not inside_installed and folder not in paths:
            paths.append(folder)
    return paths


def _shutdown_if_started_here() -> None:
    if _started_here and ray.is_initialized():
        ray.shutdown()


def _check_reachable(address: str) -> None:
    """Fail within CONNECT_TIMEOUT_SECONDS, naming the address, when nothing listens there."""
    if address in ("auto", "local"):
        return
    parts = urlsplit(address if "://" in address else f"ray://{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ConfigurationError(f"Ray address {address!r} must look like host:port or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_SECONDS).close()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot reach the Ray cluster at {address!r} within {CONNECT_TIMEOUT_SECONDS:.0f} s: "
            f"{exc.strerror or exc}. Is the head node running (`ray start --head`) and the address right?"
        ) from None


# --- in a Ray worker ----------------------------------------------------------

_cached: tuple[str, Callable[[int], Any]] | None = None


def _replicate_fn(holder: list) -> Callable[[int], Any]:
    # The reference travels inside a list so that Ray does not resolve (and
    # unpickle) it for every task; each worker process fetches it once.
    global _cached
    (reference,) = holder
    key = reference.hex()
    if _cached is None or _cached[0] != key:
        _cached = (key, ray.get(reference))
    return _cached[1]


@ray.remote
def _run_span(holder: list, start: int, stop: int) -> tuple[list, float]:
    replicate_fn = _replicate_fn(holder)
    began = time.perf_counter()
    results = pack_results([replicate_fn(replicate) for replicate in range(start, stop)])
    return results, time.perf_counter() - began


# --- in the driver ------------------------------------------------------------


def run_on_ray(strategy: Any, replicate_fn: Callable[[int], Any], total: int) -> list:
    check_picklable(replicate_fn)  # the same refusal as every strategy that ships work, before any work
    job_has_env = connect(strategy.address, strategy.runtime_env)
    return _RayRun(strategy, replicate_fn, total, per_task_env=not job_has_env).run()


class _RayRun:
    def __init__(self, strategy: Any, replicate_fn: Callable[[int], Any], total: int, per_task_env: bool):
        self.replicate_fn = replicate_fn
        self.total = total
        options: dict[str, Any] = {
            "num_cpus": strategy.num_cpus,
            "num_gpus": strategy.num_gpus,
            "max_retries": strategy.max_retries,
            "retry_exceptions": False,  # errors in user code are captured, never retried
        }
        if strategy.resources:
            options["resources"] = strategy.resources
        if strategy.runtime_env and per_task_env:
            options["runtime_env"] = strategy.runtime_env
        self.task = _run_span.options(**options)
        slots = self._slots(strategy)
        self.window = max(1, slots * IN_FLIGHT_PER_SLOT)
        fixed = None if strategy.batch_size == "auto" else strategy.batch_size
        self.batches = BatchSizer(total, slots, target_seconds=TARGET_TASK_SECONDS, fixed=fixed)
        self.alone: list[int] = []  # replicates whose batch lost its worker for good
        self.results: list = [None] * total
        self.bar = None
        if strategy.progress and total > 1:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc="replicates", unit="rep")

    @staticmethod
    def _slots(strategy: Any) -> int:
        """How many tasks the cluster can run at once, by the scarcest resource asked for.

        A request no node can meet is refused here: Ray would otherwise wait
        for it forever.
        """
        available = ray.cluster_resources()
        asked = {"CPU": strategy.num_cpus, "GPU": strategy.num_gpus, **(strategy.resources or {})}
        counts = {name: int(available.get(name, 0) // amount) for name, amount in asked.items() if amount > 0}
        lacking = [
            f"{name} {asked[name]:g} (cluster total: {available.get(name, 0):g})" for name, n in counts.items() if n < 1
        ]
        if lacking:
            raise ConfigurationError(
                f"each task asks for more than the Ray cluster has: {', '.join(lacking)}. Lower the request, "
                "or add nodes that have it"
            )
        return max(1, min(counts.values(), default=1))

    def _next_span(self) -> range | None:
        if self.alone:
            replicate = self.alone.pop()
            return range(replicate, replicate + 1)
        return self.batches.next_span()

    def run(self) -> list:
        holder = [ray.put(self.replicate_fn)]
        in_flight: dict[ray.ObjectRef, range] = {}
        try:
            while True:
                while len(in_flight) < self.window:
                    span = self._next_span()
                    if span is None:
                        break
                    in_flight[self.task.remote(holder, span.start, span.stop)] = span
                if not in_flight:
                    return self.results
                done, _ = ray.wait(list(in_flight), num_returns=1)
                for reference in done:
                    self._collect(reference, in_flight.pop(reference))
        except KeyboardInterrupt as interrupt:
            self._harvest(in_flight)
            for reference in in_flight:
                ray.cancel(reference, force=True)
            interrupt.completed = [r for r in self.results if r is not None]
            raise
        except BaseException:
            for reference in in_flight:
                ray.cancel(reference, force=True)
            raise
        finally:
            if self.bar is not None:
                self.bar.close()

    def _collect(self, reference: ray.ObjectRef, span: range) -> None:
        try:
            batch, seconds = ray.get(reference)
        except WORKER_LOST as died:
            if len(span) > 1:  # which replicate killed it is unknown: run each on its own
                self.alone.extend(span)
                return
            self._store_error(span.start, died)
            return
        except ray.exceptions.RayTaskError as failed:
            # Only the core's own stops (fail_fast) get here: replicate errors are captured.
            raise (failed.cause or failed) from None
        self.results[span.start : span.stop] = unpack_results(batch)
        self.batches.record(len(span), seconds)
        if self.bar is not None:
            self.bar.update(len(span))

    def _store_error(self, replicate: int, died: BaseException) -> None:
        self.results[replicate] = self.replicate_fn.error_result(
            replicate,
            "WorkerDied",
            f"the Ray worker running this replicate died, and so did its retries ({type(died).__name__}: "
            f"{str(died).splitlines()[0] if str(died) else 'no detail'}). Common causes: running out of "
            "memory (the OOM killer), a crash in native code, os._exit(), or a node leaving the cluster.",
        )
        if self.bar is not None:
            self.bar.update()

    def _harvest(self, in_flight: dict) -> None:
        """Keep the batches that finished but were not collected yet."""
        if not in_flight:
            return
        done, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=0)
        for reference in done:
            try:
                batch, _ = ray.get(reference)
            except ray.exceptions.RayError:
                continue
            span = in_flight.pop(reference)
            self.results[span.start : span.stop] = unpack_results(batch)
