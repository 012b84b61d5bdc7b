"""The ``dask`` strategy: replicates as tasks on a dask.distributed cluster.

This module stays light: dask itself is imported only when a run starts. It
refuses to import when dask.distributed is missing, so that ``crystallize
strategies`` reports the strategy as broken with the fix, instead of failing
mid-run. The core's dispatch engine drives the replicates; this package
supplies the cluster (``crystallize_dask._core``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from crystallize_core import Capabilities, ConfigurationError, hookimpl
from crystallize_core.options import (
    check_batch_size,
    check_connect_timeout,
    check_max_retries,
    check_max_workers,
    check_progress,
    strategy_options,
    whole_number,
)

if importlib.util.find_spec("distributed") is None:
    raise ImportError("crystallize-dask needs dask.distributed, which is not installed: pip install 'distributed'")

__version__ = "0.4.0"
__all__ = ["ADDRESS_VARIABLE", "DaskExecution", "__version__"]

#: The environment variable read for a scheduler address when none is given.
ADDRESS_VARIABLE = "DASK_SCHEDULER_ADDRESS"


@strategy_options
class DaskExecution:
    """Run replicates as tasks on a dask.distributed cluster.

    With no ``address`` and no ``DASK_SCHEDULER_ADDRESS`` in the environment,
    each run starts a ``LocalCluster`` of ``n_workers`` single-threaded worker
    processes on 127.0.0.1 (default: ``max_workers``, else one per CPU; at
    most one per replicate) and closes it, with every process it started,
    when the run ends. ``max_workers`` caps the replicates running at once
    (None: as many as the cluster's worker threads).

    With an address (``"tcp://host:8786"``, or ``cluster.scheduler_address``
    of any dask cluster, dask-jobqueue's included) the run uses that
    scheduler's workers and leaves the cluster running. This process's
    default dask client (the last ``Client`` made), when it is connected to
    that scheduler, is used as it is and left open; otherwise each run
    connects a client of its own and closes it at the end. It waits up to
    ``connect_timeout`` seconds for the scheduler to answer and for
    ``n_workers`` workers (default 1) to join; when the scheduler cannot be
    reached or has no worker, the run stops with
    [`StrategyUnavailableError`][crystallize_core.StrategyUnavailableError] naming the address:
    a run chosen for a cluster never runs elsewhere unnoticed. The folders
    of the driver's own modules are put on the workers' import path where
    they exist there.

    The replicate function is pickled once, and each worker process
    unpickles it once; tasks carry ranges of replicate positions, batched
    automatically (``batch_size="auto"``) or ``batch_size`` at a time. A
    pickled experiment of up to 64 KB (most are a few hundred bytes) goes
    with every task; a larger one only to the worker processes that lack it.

    A worker that dies costs only the replicate that killed it: dask gives up
    on a task once its workers have died under it more than the scheduler's
    ``distributed.scheduler.allowed-failures`` times (0 for a cluster started
    here), then the replicates that were running are run again one at a
    time, alone, and the one whose worker dies more than ``max_retries``
    times is recorded as ``WorkerDied``. A running dask task cannot be
    stopped, so per-replicate timeouts are refused; Ctrl-C returns at once
    with the finished replicates (replicates still running on a cluster
    that was not started here run to their end, and their results are
    dropped). ``progress`` shows a progress bar while several replicates
    run: True also off a terminal, False never, None (the default) on a
    terminal only; a run's own ``progress`` wins over it.
    """

    capabilities = Capabilities(retries_dead_workers=True, ships_work=True)

    def __init__(
        self,
        address: str | None = None,
        n_workers: int | None = None,
        max_retries: int = 1,
        batch_size: int | str = "auto",
        connect_timeout: float = 10.0,
        max_workers: int | None = None,
        progress: bool | None = None,
    ):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigurationError(
                f"address must be a Dask scheduler address such as 'tcp://host:8786', or None, got {address!r}"
            )
        if n_workers is not None and not whole_number(n_workers, minimum=1):
            raise ConfigurationError(f"n_workers must be a positive integer or None, got {n_workers!r}")
        self.address = address.strip() if address is not None else None
        self.n_workers = n_workers
        self.max_retries = check_max_retries(max_retries)
        self.batch_size = check_batch_size(batch_size)
        self.connect_timeout = check_connect_timeout(connect_timeout)
        self.max_workers = check_max_workers(max_workers)
        self.progress = check_progress(progress)

    @hookimpl
    def run_experiment_loop(self, experiment: Any, replicate_fn: Any) -> Sequence[Any]:
        from crystallize_dask._core import run_on_dask

        return run_on_dask(self, experiment, replicate_fn)

    def __repr__(self) -> str:
        return (
            f"DaskExecution(address={self.address!r}, n_workers={self.n_workers!r}, max_retries={self.max_retries}, "
            f"batch_size={self.batch_size!r}, connect_timeout={self.connect_timeout:g}, "
            f"max_workers={self.max_workers!r}, progress={self.progress!r})"
        )
