"""Running replicates on dask.distributed: the connection, the local cluster and the engine's backend.

The core's dispatch engine ([`crystallize_core.engine.drive`][]) owns
batching, order, progress, fault records, fail-fast and Ctrl-C; this module
only says where the replicates run. Tasks go through a ``concurrent.futures``
executor over the client (``TaskExecutor``) and carry a range of
positions. The pickled replicate function travels with every task when it
is small (most experiments: a few hundred bytes), and otherwise only to
worker processes that ask for it (the engine's ``run_shipped_span``
protocol, with the core's inline-payload rule); either way each worker process unpickles it once, and nothing
that a dying worker could lose is kept on the cluster between tasks.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import CancelledError, Executor, Future, InvalidStateError
from concurrent.futures import wait as concurrent_wait
from functools import partial
from typing import Any, cast

import dask
from distributed import Client, LocalCluster, default_client
from distributed import Future as DaskFuture
from distributed.comm import connect as dask_connect
from distributed.comm.addressing import parse_address, parse_host_port
from distributed.comm.registry import get_backend
from distributed.scheduler import KilledWorker, NoWorkerError

from crystallize_core import Capabilities, ConfigurationError, StrategyUnavailableError, WorkerLostError
from crystallize_core.engine import (
    Backend,
    cpu_count,
    drive,
    inline_payload,
    run_shipped_span,
    user_code_paths,
)
from crystallize_core.replicate import dumps_replicate_fn
from crystallize_dask import ADDRESS_VARIABLE

logger = logging.getLogger("crystallize")

#: Address schemes that run over TCP, so that reachability can be tested with a plain socket first.
TCP_SCHEMES = ("tcp", "tls", "ws", "wss")
#: Seconds a LocalCluster started here waits for a lost worker to be back
#: before it gives up its nanny: longer than any run, so never.
NANNY_PATIENCE_SECONDS = 7 * 24 * 3600
#: Seconds a LocalCluster started here may have no worker at all before the
#: tasks waiting for one fail (and the run with them, naming the cause): a
#: worker restarts in seconds, one that cannot (its preload fails, memory
#: runs out as it starts) would otherwise keep the run waiting for ever.
NO_WORKERS_SECONDS = 120
_TIMEOUTS = (TimeoutError, asyncio.TimeoutError)  # distinct classes before Python 3.11

# --- in a worker -----------------------------------------------------------------

_paths_seen: set[str] = set()


def _run_span(key: str, payload: bytes | None, paths: tuple[str, ...], start: int, stop: int) -> Any:
    """Run positions ``start .. stop - 1`` where a dask worker runs this task.

    ``paths`` are the driver's folders of user code: those that exist here
    go on the import path before the replicate function is unpickled.
    """
    for path in paths:
        if path not in _paths_seen:
            _paths_seen.add(path)
            if path not in sys.path and os.path.isdir(path):
                sys.path.append(path)
    return run_shipped_span(key, payload, start, stop)


# --- in the driver ---------------------------------------------------------------


def run_on_dask(strategy: Any, run: Any, replicate_fn: Any) -> Sequence[Any]:
    """Drive ``run`` on the strategy's cluster."""
    address, source = strategy.address, "address"
    if address is None and os.environ.get(ADDRESS_VARIABLE, "").strip():
        address, source = os.environ[ADDRESS_VARIABLE].strip(), ADDRESS_VARIABLE
    if address is None:
        backend = DaskBackend(n_workers=strategy.n_workers or strategy.max_workers)
    else:
        client, made_here = connect(address, source, strategy.n_workers or 1, strategy.connect_timeout)
        backend = DaskBackend(client=client, owns_client=made_here)
    try:
        return drive(
            run,
            replicate_fn,
            backend,
            max_retries=strategy.max_retries,
            batch_size=strategy.batch_size,
            max_workers=strategy.max_workers,
        )
    finally:
        backend.shutdown()  # drive() shuts it down too, except when it refuses the run before starting


def connect(address: str, source: str, workers: int, timeout: float) -> tuple[Client, bool]:
    """A client of the scheduler at ``address`` with at least one worker, and
    whether it was made here.

    This process's default dask client (the last ``Client`` made, as dask
    has it) is used when it is connected to ``address``: connecting costs
    tens of milliseconds a run. Waits up to ``timeout`` seconds in all for the
    scheduler to answer and for ``workers`` workers to join; with fewer, but
    some, the run goes ahead on those. ``source`` says where the address came
    from, for messages. A malformed address is a [`ConfigurationError`][];
    a scheduler that cannot be reached, or that has no worker, within
    ``timeout`` a [`StrategyUnavailableError`][] naming it.
    """
    try:
        scheme, location = parse_address(address)
        get_backend(scheme)  # an unknown scheme is a ValueError
        endpoint = parse_host_port(location) if scheme in TCP_SCHEMES else None
    except ValueError as exc:
        raise ConfigurationError(
            f"{source} {address!r} is not a Dask scheduler address ({exc}); use the form 'tcp://host:8786'"
        ) from None
    where = f"the Dask scheduler at {address} ({source})" if source != "address" else f"the Dask scheduler at {address}"
    deadline = time.monotonic() + timeout

    def left() -> float:
        return max(0.01, deadline - time.monotonic())

    if endpoint is not None:
        # A plain socket fails at once on a closed port, where dask's client
        # would retry until its timeout (and an existing client may not have
        # noticed yet that its scheduler went away).
        try:
            socket.create_connection(endpoint, timeout=left()).close()
        except OSError as exc:
            raise _unavailable(f"cannot reach {where} within {timeout:g} s: {exc.strerror or exc}") from None
    client = _default_client_of(address)
    made_here = client is None
    if client is None and scheme == "tcp":
        # dask's Client waits for ever on an address that accepts connections
        # and never answers (its own timeout does not cover the handshake):
        # ask the scheduler who it is, within the timeout, first.
        try:
            asyncio.run(asyncio.wait_for(_identity(address, left()), left()))
        except _TIMEOUTS:
            raise _unavailable(f"cannot connect to {where}: nothing answered within {timeout:g} s") from None
        except OSError as exc:
            raise _unavailable(f"cannot connect to {where}: {exc}") from None
        except Exception as exc:  # a server that speaks first, or another protocol (dask reads garbage sizes)
            raise _unavailable(
                f"cannot connect to {where}: what answers there is not a Dask scheduler ({type(exc).__name__})"
            ) from None
    if client is None:
        try:
            client = Client(address, timeout=left(), set_as_default=False)
        except (OSError, *_TIMEOUTS) as exc:
            raise _unavailable(f"cannot connect to {where} within {timeout:g} s: {exc}") from None
    try:
        client.wait_for_workers(workers, timeout=left())
    except _TIMEOUTS:
        joined = len(client.nthreads())
        if joined == 0:
            if made_here:
                client.close()
            raise _unavailable(f"{where} has no workers (waited {timeout:g} s)") from None
        logger.warning(
            "dask: %d of the %d workers asked for joined %s within %g s; running on those",
            joined,
            workers,
            where,
            timeout,
        )
    except BaseException:
        if made_here:
            client.close()
        raise
    return client, made_here


async def _identity(address: str, timeout: float) -> Any:
    """What the scheduler at ``address`` says it is."""
    comm = await dask_connect(address, timeout=timeout)
    try:
        await comm.write({"op": "identity", "reply": True})
        return await comm.read()
    finally:
        comm.abort()


def _default_client_of(address: str) -> Client | None:
    """This process's default dask client, if it is connected to ``address``."""
    try:
        client = default_client()
    except ValueError:  # there is none
        return None
    scheduler = getattr(client.scheduler, "address", None)
    return client if client.status == "running" and scheduler == address else None


def _unavailable(reason: str) -> StrategyUnavailableError:
    return StrategyUnavailableError(
        f"the 'dask' strategy {reason}. Start the cluster, correct the address (or {ADDRESS_VARIABLE}), "
        "or choose another strategy; leave the address out to start a local cluster for the run"
    )


def start_local_cluster(workers: int) -> tuple[LocalCluster, Client]:
    """A LocalCluster of ``workers`` single-threaded processes on 127.0.0.1, and a client of it."""
    # The engine reruns and records replicates whose worker died; dask's own
    # retries would only let such a replicate kill more workers first.
    try:
        no_retries = {"distributed.scheduler.allowed-failures": 0}
        with dask.config.set({**no_retries, "distributed.scheduler.no-workers-timeout": NO_WORKERS_SECONDS}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                preload=["crystallize_dask._worker"],
                # No dashboard, and the scheduler's remaining HTTP routes
                # (health, metrics) on a free loopback port, not on 8787.
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
    except Exception as exc:
        raise WorkerLostError(
            f"could not start a local Dask cluster of {workers} worker(s): {exc}. Its worker processes import "
            'the main script again: keep the code that runs the experiment under `if __name__ == "__main__":`'
        ) from exc
    try:
        return cluster, Client(cluster, set_as_default=False)
    except BaseException:
        cluster.close()
        raise


class TaskExecutor(Executor):
    """A client's tasks as [`concurrent.futures.Future`][] objects, every one of which settles.

    The client's own ``get_executor()`` leaves a future pending for ever when
    a task's result is lost with its worker before the client fetched it and
    the recomputation then fails (distributed's ``_cascade_future`` lets the
    gather's error escape instead of setting it on the future). Here a
    future gets the task's result, the task's error (``KilledWorker`` when
    its workers died), or, when the task did not fail but its result cannot
    be fetched (the scheduler or the connection to it went away), a
    [`CancelledError`][] caused by what went wrong.
    Cancelling a future releases its task without waiting on the scheduler.
    """

    def __init__(self, client: Client):
        self.client = client
        #: Futures not settled yet, and their tasks.
        self._unsettled: dict[Future, DaskFuture] = {}
        self._lock = threading.Lock()  # submit() runs in the driver, settling on dask's event loop
        self._shut_down = False

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future:
        if kwargs:  # Client.submit takes its own options as keywords
            fn, args = partial(fn, *args, **kwargs), ()
        loop = self.client.loop
        assert loop is not None, "a client that can submit has an event loop"
        with self._lock:
            if self._shut_down:
                raise RuntimeError("cannot schedule new futures after shutdown")
            task = self.client.submit(fn, *args, pure=False)
            future: Future = Future()
            self._unsettled[future] = task
        future.add_done_callback(partial(self._settled, task))
        try:
            # Raises on a closed loop, where tornado's add_callback would drop the coroutine unseen.
            asyncio.run_coroutine_threadsafe(self._settle(task, future), cast(Any, loop).asyncio_loop)
        except BaseException:
            future.cancel()
            raise
        return future

    async def _settle(self, task: DaskFuture, future: Future) -> None:
        try:
            outcome = await self.client.gather(task, asynchronous=True)
        except asyncio.CancelledError:  # the client is closing
            closed = CancelledError("the Dask client closed before the task finished")
            _set_unless_cancelled(future.set_exception, closed)
            raise
        except Exception as exc:
            if task.status != "error" and not isinstance(exc, CancelledError):
                lost = CancelledError(f"the result of a Dask task could not be fetched: {exc!r}")
                lost.__cause__ = exc
                exc = lost
            _set_unless_cancelled(future.set_exception, exc)
        else:
            _set_unless_cancelled(future.set_result, outcome)

    def unsettled(self) -> list[Future]:
        """The futures submitted here that have not settled, cancelled ones excepted."""
        with self._lock:
            return list(self._unsettled)

    def _settled(self, task: DaskFuture, future: Future) -> None:
        with self._lock:
            self._unsettled.pop(future, None)
        if future.cancelled():
            # As an executor's worker would on taking it: without this, wait() and
            # as_completed() do not count a cancelled future as done.
            future.set_running_or_notify_cancel()
            loop = self.client.loop
            if loop is not None:
                loop.add_callback(partial(self.client.cancel, [task], asynchronous=True))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Take no more tasks. Unless ``wait`` (and without ``cancel_futures``),
        cancel the futures not settled, releasing their tasks; with ``wait``,
        then wait until every future has settled."""
        with self._lock:
            self._shut_down = True
        unsettled = self.unsettled()
        if cancel_futures or not wait:
            for future in unsettled:
                future.cancel()
        if wait:
            concurrent_wait(unsettled)


def _set_unless_cancelled(setter: Any, value: Any) -> None:
    try:
        setter(value)
    except InvalidStateError:  # the driver cancelled the future meanwhile
        pass


class _HeldConfig:
    """A change to dask's (process-wide) config, in force while anyone holds
    it: runs in threads of one process start and end in any order."""

    def __init__(self, values: dict[str, Any]):
        self.values = values
        self._lock = threading.Lock()
        self._holders = 0
        self._change: Any = None

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                self._change = dask.config.set(self.values)
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                change, self._change = self._change, None
                change.__exit__(None, None, None)


# A LocalCluster closes a worker's nanny for good when no worker of that name
# is back this long after one was lost (read when a worker is removed): on a
# busy machine a worker that dies twice in a row is still restarting then,
# and a run that kills workers would end up waiting on a cluster of none.
_KEEP_NANNIES = _HeldConfig({"distributed.deploy.lost-worker-timeout": NANNY_PATIENCE_SECONDS})


class DaskBackend(Backend):
    """Replicates as tasks on a dask cluster: the given client's, or a LocalCluster started for the run.

    Tasks go through a ``TaskExecutor`` of the client and call a task
    function of this module, which puts the driver's code folders on the
    worker's import path before the replicate function is unpickled. The
    pickled replicate function goes with every task when it is small
    ([`inline_payload`][crystallize_core.engine.inline_payload]), otherwise
    only to the worker processes that ask for it (``resubmit_with_payload``).
    """

    capabilities = Capabilities(retries_dead_workers=True, ships_work=True)
    # Dask's own cost per task is about a millisecond of scheduler time:
    # batches of a tenth of a second keep a large cluster's scheduler idle.
    target_batch_seconds = 0.1
    # A dead worker fails every task the scheduler had placed on it, the ones
    # queued behind the running one too, so a failed task does not show which
    # replicate killed its worker: the engine reruns the replicates that were
    # out one at a time, alone, to find it (see restart()).
    failure_scope = "pool"

    def __init__(self, client: Client | None = None, n_workers: int | None = None, owns_client: bool = True):
        self.client = client
        #: Whether shutdown() closes the client (a given client that someone else uses is left open).
        self.owns_client = owns_client
        self.n_workers = n_workers
        self.cluster: LocalCluster | None = None
        self.executor: TaskExecutor | None = None
        self.key = uuid.uuid4().hex
        #: The pickled replicate function, and what of it goes with every task (None: too large).
        self.payload = b""
        self.inline: bytes | None = None
        self.paths: tuple[str, ...] = ()
        self._holds_nannies = False  # whether this backend holds _KEEP_NANNIES, until shutdown

    def start(self, run: Any, replicate_fn: Any) -> int:
        self.inline = inline_payload(replicate_fn)
        self.payload = self.inline if self.inline is not None else dumps_replicate_fn(replicate_fn)
        self.paths = tuple(user_code_paths())
        if self.client is None:
            workers = min(self.n_workers or cpu_count(), run.replicates)
            _KEEP_NANNIES.hold()
            self._holds_nannies = True
            self.cluster, self.client = start_local_cluster(workers)
        self.executor = TaskExecutor(self.client)
        return max(1, sum(self.client.nthreads().values()))

    def submit(self, span: range) -> Future:
        return self._submit(self.inline, span)

    def resubmit_with_payload(self, span: range) -> Future:
        """Submit ``span`` again with the pickled replicate function, for a worker process that lacks it."""
        return self._submit(self.payload, span)

    def _submit(self, payload: bytes | None, span: range) -> Future:
        assert self.executor is not None, "start() comes first"
        return self.executor.submit(_run_span, self.key, payload, self.paths, span.start, span.stop)

    def worker_lost(self, exc: BaseException) -> str | None:
        if isinstance(exc, KilledWorker):
            tries = exc.allowed_failures + 1
            return f"dask worker {exc.last_worker.address} was lost; dask gave up after {tries} worker(s) died"
        if isinstance(exc, NoWorkerError):
            raise WorkerLostError(
                f"the Dask cluster had no worker for {exc.timeout:g} s: its workers died and none came back "
                "(their nannies' log lines above say why), so the run cannot go on"
            ) from exc
        if isinstance(exc, CancelledError):
            # Nothing here cancels a task the engine still waits for: the
            # scheduler dropped it, with its connection or a restart.
            raise WorkerLostError(
                f"the Dask scheduler at {self.client.scheduler.address if self.client else '?'} dropped a task "
                f"(it shut down, restarted, or the connection to it was lost), so the run cannot go on: {exc}"
            ) from exc
        return None

    def restart(self) -> None:
        """After a worker died: wait until no task of this run is left running.

        Nannies replace dead workers by themselves. The engine is about to run
        the replicates that were out one at a time, to find the one that kills
        its worker; a cancelled dask task would go on running on its worker,
        and a death it caused would be blamed on the replicate running alone.
        So the tasks still out are waited for (the engine reruns them anyway).
        """
        if self.executor is not None:
            concurrent_wait(self.executor.unsettled())

    def shutdown(self, wait: bool = True) -> None:
        """Drop unfinished tasks, close the client unless it is someone else's, and close the
        cluster if it was started here.

        Nothing waits for running replicates, so ``wait`` changes nothing: a
        cluster started here is closed with its workers, and on a running
        scheduler the tasks are released.
        """
        executor, self.executor = self.executor, None
        client, self.client = self.client if self.owns_client or self.cluster is not None else None, None
        cluster, self.cluster = self.cluster, None
        try:
            if executor is not None:
                executor.shutdown(wait=False)
        finally:
            try:
                if client is not None:
                    client.close()
            finally:
                try:
                    if cluster is not None:
                        cluster.close()
                finally:
                    if self._holds_nannies:
                        self._holds_nannies = False
                        _KEEP_NANNIES.release()
