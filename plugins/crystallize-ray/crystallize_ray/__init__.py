"""The ``ray`` strategy: replicates as tasks on a Ray cluster.

This module stays light: Ray itself is imported only when a run starts. It
refuses to import when Ray is missing, so that ``crystallize strategies``
reports the strategy as broken with the fix, instead of failing mid-run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crystallize_core import ReplicateFn, ReplicateResult, RunView

if importlib.util.find_spec("ray") is None:
    raise ImportError("crystallize-ray needs Ray, which is not installed: pip install 'ray'")

__version__ = "0.4.0"
__all__ = ["RayExecution", "__version__"]


@strategy_options
class RayExecution:
    """Run replicates as Ray tasks, on a cluster or on a local Ray instance.

    ``address=None`` connects to the cluster in ``RAY_ADDRESS`` if it is set,
    otherwise starts a local Ray instance sized to this machine. A Ray
    connection that already exists in this process is used as it is. The
    strategy never shuts down a cluster it did not start; a local instance it
    started is reused by later runs in this process and shut down at exit.
    An address where no cluster answers within ``connect_timeout`` seconds
    stops the run with [`StrategyUnavailableError`][crystallize_core.StrategyUnavailableError]
    naming it: a strategy chosen to run on a cluster never hands the run to
    another.

    The replicate function goes with every task when it pickles to at most
    64 KB; a larger one is put in the object store once and tasks carry its
    reference (its NumPy arrays are shared, read-only, by a node's workers).
    Each Ray worker process unpickles it once. Tiny replicates are batched automatically
    (``batch_size="auto"``), or ``batch_size`` replicates go in each task.
    ``num_cpus``, ``num_gpus`` and ``resources`` are requested for every task
    (a GPU per replicate: ``num_gpus=1, batch_size=1``). ``runtime_env``
    ships code and packages: it becomes the job's when this strategy makes
    the connection (so local folders such as ``working_dir`` upload), and
    goes with every task when Ray was already connected. The folders of the
    driver's own modules are put on the workers' import path either way.

    ``max_workers`` caps the replicates running at once below what the
    cluster's resources allow (None: as many as they allow).

    A task lost to a dying worker or node is first retried by Ray itself up
    to ``task_retries`` times (Ray's own task option ``max_retries``;
    default 0); then each of its replicates is run again on its own, and one
    whose worker dies under it more than ``max_retries`` times is recorded
    as ``WorkerDied``, as under every strategy. ``progress`` shows a
    progress bar while several replicates run: True also off a terminal,
    False never, None (the default) on a terminal only; a run's own
    ``progress`` wins over it.
    Ctrl-C cancels outstanding tasks and returns the finished replicates.
    A running Ray task can be cancelled, but not reliably within a bound, so
    runs with a ``timeout`` pass this strategy over.
    """

    capabilities = Capabilities(cancellation=True, retries_dead_workers=True, ships_work=True)

    def __init__(
        self,
        address: str | None = None,
        num_cpus: float = 1,
        num_gpus: float = 0,
        resources: Mapping[str, float] | None = None,
        max_retries: int = 1,
        batch_size: int | str = "auto",
        runtime_env: Mapping[str, Any] | None = None,
        max_workers: int | None = None,
        task_retries: int = 0,
        connect_timeout: float = 10.0,
        progress: bool | None = None,
    ):
        if address is not None and (not isinstance(address, str) or not address.strip()):
            raise ConfigurationError(f"address must be a Ray address such as 'host:6379' or None, got {address!r}")
        for option, value in (("num_cpus", num_cpus), ("num_gpus", num_gpus)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ConfigurationError(f"{option} must be a non-negative number, got {value!r}")
        if num_cpus == 0 and num_gpus == 0 and not resources:
            raise ConfigurationError("a task must request some resource: num_cpus, num_gpus or resources")
        if resources is not None:
            if not isinstance(resources, Mapping):
                raise ConfigurationError(f"resources must be a mapping of name to amount, got {resources!r}")
            for key, amount in resources.items():
                if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
                    raise ConfigurationError(f"resource {key!r} must be a non-negative number, got {amount!r}")
        if runtime_env is not None and not isinstance(runtime_env, Mapping):
            raise ConfigurationError(f"runtime_env must be a mapping, got {runtime_env!r}")
        if not whole_number(task_retries, minimum=0):
            raise ConfigurationError(f"task_retries must be a non-negative integer, got {task_retries!r}")
        self.address = address
        self.num_cpus = num_cpus
        self.num_gpus = num_gpus
        self.resources = dict(resources) if resources else None
        self.max_retries = check_max_retries(max_retries)
        self.batch_size = check_batch_size(batch_size)
        self.runtime_env = dict(runtime_env) if runtime_env else None
        self.max_workers = check_max_workers(max_workers)
        self.task_retries = task_retries
        self.connect_timeout = check_connect_timeout(connect_timeout)
        self.progress = check_progress(progress)

    @hookimpl
    def run_experiment_loop(self, experiment: RunView, replicate_fn: ReplicateFn) -> Sequence[ReplicateResult]:
        from crystallize_core.engine import drive
        from crystallize_ray._core import RayBackend

        backend = RayBackend(self)
        return drive(
            experiment,
            replicate_fn,
            backend,
            max_retries=self.max_retries,
            batch_size=self.batch_size,
            max_workers=self.max_workers,
        )

    def __repr__(self) -> str:
        return (
            f"RayExecution(address={self.address!r}, num_cpus={self.num_cpus}, num_gpus={self.num_gpus}, "
            f"resources={self.resources!r}, max_retries={self.max_retries}, batch_size={self.batch_size!r}, "
            f"runtime_env={self.runtime_env!r}, max_workers={self.max_workers!r}, "
            f"task_retries={self.task_retries}, connect_timeout={self.connect_timeout:g}, "
            f"progress={self.progress!r})"
        )
