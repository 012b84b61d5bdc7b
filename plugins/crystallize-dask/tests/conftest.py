import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from distributed import Client

STARTUP_SECONDS = 60


def _end_with_parent() -> Callable[[], None] | None:
    """On Linux, what a child runs before exec to get SIGTERM when the test
    session ends, even by a watchdog's ``os._exit`` or a kill, which skips
    every finalizer. ``prctl`` is found here, in the parent: after fork only
    the call is made."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    PR_SET_PDEATHSIG = 1
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the session ended before the call
            os._exit(1)

    return in_child


def _start(command: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    # A session of its own, so that the finalizer can end the process with
    # every process it started (a worker's nanny and its worker).
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_end_with_parent(),
        )


def _stop(process: subprocess.Popen) -> None:
    """End ``process`` gracefully, then whatever of its process group is left."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # a nanny's worker may outlive the nanny
    except ProcessLookupError:
        pass
    process.wait()


def start_cluster(folder: Path, workers: int) -> tuple[str, list[subprocess.Popen]]:
    """A real `dask scheduler` and ``workers`` single-threaded `dask worker`
    processes on 127.0.0.1, at ports the system picks, started in ``folder``
    (with no path to this checkout's tests or examples: the strategy must
    ship those). Returns the scheduler's address and the processes, for
    :func:`stop_cluster`. The scheduler lets dask retry a task whose worker
    died zero times, so that the worker-death tests kill few workers.
    """
    scheduler_file = folder / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DASK_SCHEDULER_ADDRESS")}
    env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "0"
    dask = str(Path(sys.executable).parent / "dask")
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    scheduler += ["--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file)]
    processes = [_start(scheduler, folder / "scheduler.log", env, folder)]
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        address = None
        while address is None:
            assert processes[0].poll() is None, (folder / "scheduler.log").read_text()
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        for n in range(workers):
            worker = [dask, "worker", address, "--nthreads", "1", "--no-dashboard"]
            worker += ["--dashboard-address", "127.0.0.1:0"]
            worker += ["--host", "127.0.0.1", "--local-directory", str(folder / f"worker-{n}")]
            processes.append(_start(worker, folder / f"worker-{n}.log", env, folder))
        wait_for_workers(address, workers)
    except BaseException:
        stop_cluster(processes)
        raise
    return address, processes


def stop_cluster(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        _stop(process)


@pytest.fixture(scope="session")
def dask_scheduler(tmp_path_factory):
    """The address of a real scheduler with two workers (:func:`start_cluster`)
    for the whole session, started before the tests that use it, so that its
    processes are no leftovers of theirs."""
    address, processes = start_cluster(tmp_path_factory.mktemp("dask-cluster"), workers=2)
    yield address
    stop_cluster(processes)


def wait_for_workers(address: str, count: int = 2) -> None:
    """Wait until the scheduler at ``address`` has ``count`` workers again (after a worker died)."""
    with Client(address, set_as_default=False, timeout=STARTUP_SECONDS) as client:
        client.wait_for_workers(count, timeout=STARTUP_SECONDS)


@pytest.fixture(autouse=True)
def _no_steering(monkeypatch):
    for name in (
        "CRYSTALLIZE_STRATEGY",
        "CRYSTALLIZE_BLOCK_STRATEGIES",
        "CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD",
        "DASK_SCHEDULER_ADDRESS",
    ):
        monkeypatch.delenv(name, raising=False)
