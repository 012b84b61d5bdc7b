"""Process mode under every start method, with real faults: signals, os._exit, child processes,
unpicklable values, a driver killed while its workers hold the GIL, slow worker start-up."""

import multiprocessing
import multiprocessing.connection
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

from crystallize_core import Experiment, ExperimentInterrupted, NotPicklableError, ReplicateFailed, SeedPlugin
from crystallize_core.testing import (
    InterruptAfter,
    KillWorkerOn,
    RecordRuns,
    SleepEach,
    SleepOn,
    StrategyConformance,
    live_child_processes,
    numbers,
    processes_started_since,
    record,
    wait_until,
)
from crystallize_parallel import ParallelExecution

START_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


class ProcessConformance(StrategyConformance):
    strategy_name = "parallel"
    start_method = "fork"

    def make_strategy(self):
        return ParallelExecution(executor_type="process", max_workers=2, start_method=self.start_method)


class TestForkConformance(ProcessConformance):
    start_method = "fork"


class TestSpawnConformance(ProcessConformance):
    start_method = "spawn"


class TestForkserverConformance(ProcessConformance):
    start_method = "forkserver"


def processes(start_method, workers=2, **options):
    return ParallelExecution(executor_type="process", max_workers=workers, start_method=start_method, **options)


# --- components (top level: they travel to spawned workers) -----------------------


class RecordInnerThreads:
    """Records the BLAS thread cap and the worker's process id."""

    def __call__(self, data, ctx):
        import numpy  # noqa: F401  a spawned worker loads BLAS only now, after the cap was set
        from threadpoolctl import threadpool_info

        ctx.metrics.add("blas_threads", max((p["num_threads"] for p in threadpool_info()), default=0))
        ctx.metrics.add("env", os.environ.get("OPENBLAS_NUM_THREADS", ""))
        ctx.metrics.add("pid", os.getpid())
        return data


class LockMetric:
    def __call__(self, data, ctx):
        import threading

        if ctx.replicate == 2:
            ctx.metrics.add("lock", threading.Lock())
        return data


def _refuse_in(pid):
    if os.getpid() == pid:
        raise RuntimeError("this value cannot be rebuilt in the driver")
    return "rebuilt"


class Poison:
    """Pickles anywhere, unpickles everywhere but in process ``driver``."""

    def __init__(self, driver):
        self.driver = driver

    def __reduce__(self):
        return (_refuse_in, (self.driver,))


class PoisonMetric:
    def __init__(self, driver):
        self.driver = driver

    def __call__(self, data, ctx):
        if ctx.replicate == 3:
            ctx.metrics.add("poison", Poison(self.driver))
        return data


class StartChildThenHang:
    """Starts a child process that would live for minutes, writes its pid, then hangs."""

    def __init__(self, folder):
        self.folder = folder

    def __call__(self, data, ctx):
        if ctx.replicate == 1:
            child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
            with open(os.path.join(self.folder, "child.pid"), "w") as out:
                out.write(str(child.pid))
            time.sleep(300)
        return data


# --- tests -----------------------------------------------------------------------


@pytest.mark.parametrize("start_method", START_METHODS)
def test_worker_blas_pools_are_capped_to_their_share_of_the_cores(start_method):
    import numpy  # noqa: F401  loaded in the driver, so forked workers inherit a started pool

    result = Experiment(numbers, [RecordInnerThreads(), record]).run(replicates=4, strategy=processes(start_method))
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    share = max(1, cpus // 2)
    assert set(result.metrics["baseline"]["env"]) == {str(share)}
    assert set(result.metrics["baseline"]["blas_threads"]) == {share}


def test_inner_threads_none_leaves_the_libraries_alone():
    result = Experiment(numbers, [RecordInnerThreads(), record]).run(
        replicates=2, strategy=processes("spawn", inner_threads=None)
    )
    assert set(result.metrics["baseline"]["env"]) == {os.environ.get("OPENBLAS_NUM_THREADS", "")}


@pytest.mark.parametrize("bad", [0, -1, "many", 1.5])
def test_inner_threads_is_checked(bad):
    from crystallize_core import ConfigurationError

    with pytest.raises(ConfigurationError, match="inner_threads"):
        ParallelExecution(executor_type="process", inner_threads=bad)


def test_an_unknown_start_method_lists_the_valid_ones():
    from crystallize_core import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"valid start methods here: .*spawn"):
        ParallelExecution(executor_type="process", start_method="vfork")


def test_more_workers_than_replicates_start_only_as_many_processes():
    result = Experiment(numbers, [RecordInnerThreads(), record]).run(replicates=2, strategy=processes("fork", 60))
    assert len(set(result.metrics["baseline"]["pid"])) <= 2


@pytest.mark.parametrize("start_method", START_METHODS)
def test_when_every_replicate_kills_its_worker_each_is_recorded_and_the_run_ends(start_method):
    killer = KillWorkerOn({i: "exit" for i in range(6)})
    result = Experiment(numbers, [killer, record]).run(replicates=6, strategy=processes(start_method, max_retries=0))
    assert sorted((e.replicate, e.exc_type) for e in result.errors) == [(i, "WorkerDied") for i in range(6)]


def test_an_unpicklable_metric_is_an_error_of_its_replicate_alike_under_every_strategy():
    seen = {}
    for strategy in ("serial", "parallel:executor_type=thread", processes("fork")):
        result = Experiment(numbers, [LockMetric(), record]).run(replicates=4, strategy=strategy)
        ((replicate, condition, kind, message),) = [
            (e.replicate, e.condition, e.exc_type, e.message) for e in result.errors
        ]
        seen[str(strategy)] = (replicate, condition, kind, message)
        assert result.metrics["baseline"]["replicate"] == [0, 1, None, 3]
    assert len(set(seen.values())) == 1, seen
    (replicate, condition, kind, message), *_ = seen.values()
    assert (replicate, kind) == (2, "crystallize_core.errors.NotPicklableError")
    assert "metric 'lock' cannot be pickled" in message and "_thread.lock" in message
    assert issubclass(NotPicklableError, TypeError)


def test_a_result_that_cannot_be_unpickled_in_the_driver_costs_only_its_replicate():
    experiment = Experiment(numbers, [PoisonMetric(os.getpid()), record])
    result = experiment.run(replicates=8, strategy=processes("fork"))
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(3, "UnpicklingError")]
    assert "cannot be rebuilt in the driver" in result.errors[0].message
    assert result.metrics["baseline"]["replicate"] == [None if i == 3 else i for i in range(8)]


@pytest.mark.parametrize("start_method", START_METHODS)
def test_a_timed_out_replicate_takes_its_child_processes_with_it(start_method, tmp_path):
    experiment = Experiment(numbers, [StartChildThenHang(str(tmp_path)), record])
    result = experiment.run(replicates=3, timeout=3, strategy=processes(start_method))
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(1, "ReplicateTimeout")]
    child = int((tmp_path / "child.pid").read_text())
    assert wait_until(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie", 10)


SLOW_IMPORT = """
import time
time.sleep(2)  # a heavy import: worker start-up, not replicate time


def slow_step(data, ctx):
    time.sleep(0.3)
    return data
"""


def test_under_spawn_worker_start_up_does_not_count_against_the_timeout(tmp_path, monkeypatch):
    (tmp_path / "heavy_study.py").write_text(SLOW_IMPORT)
    monkeypatch.syspath_prepend(str(tmp_path))
    import heavy_study

    experiment = Experiment(numbers, [heavy_study.slow_step, record])
    result = experiment.run(replicates=8, timeout=2.5, strategy=processes("spawn"))
    assert result.errors == []


@pytest.mark.parametrize("start_method", START_METHODS)
def test_fail_fast_stops_at_a_timeout(start_method):
    experiment = Experiment(numbers, [SleepOn(frozenset({0}), 60), SleepEach(0.2), record])
    began = time.monotonic()
    with pytest.raises(ReplicateFailed, match="ReplicateTimeout"):
        experiment.run(replicates=20, timeout=1.5, fail_fast=True, strategy=processes(start_method))
    assert time.monotonic() - began < 30


def test_a_resumed_runs_timeout_names_the_replicate_not_its_position(tmp_path):
    path = tmp_path / "checkpoint.sqlite"

    def experiment():
        return Experiment(numbers, [SleepOn(frozenset({7}), 60), record], plugins=[SeedPlugin(seed=1, auto_seed=False)])

    experiment().run(replicates=4, checkpoint=path)
    result = experiment().run(replicates=10, checkpoint=path, timeout=1.5, strategy=processes("fork"))
    ((error),) = result.errors
    assert error.replicate == 7 and "replicate 7 ran longer" in error.message


def test_a_second_ctrl_c_under_threads_keeps_what_finished(tmp_path):
    """The first Ctrl-C waits for running replicates and says so; a second stops waiting."""
    script = textwrap.dedent(
        """
        import logging, os, signal, sys, threading
        from crystallize_core import Experiment, ExperimentInterrupted
        from crystallize_core.testing import SleepOn, numbers, record, wait_until

        finished = []  # replicates past their last step (the pool's threads share it)
        waiting = threading.Event()  # the run said it waits for running replicates
        release = threading.Event()  # replicate 0 holds its thread until the run has returned
        zero_done = threading.Event()

        class NoticeTheWait(logging.Filter):
            def filter(self, record):
                if record.getMessage().startswith("Ctrl-C: waiting"):
                    waiting.set()
                return True

        logging.getLogger("crystallize").addFilter(NoticeTheWait())

        def hold_replicate_zero(data, ctx):
            if ctx.replicate == 0:
                release.wait(60)
                zero_done.set()
            return data

        def count(data, ctx):
            finished.append(ctx.replicate)
            return data

        FUTURES = os.path.join("concurrent", "futures", "_base.py")

        def main_thread_waits():
            # In concurrent.futures.wait: where the run waits after the first Ctrl-C.
            frame = sys._current_frames().get(threading.main_thread().ident)
            while frame is not None:
                if frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith(FUTURES):
                    return True
                frame = frame.f_back
            return False

        def interrupt_twice():
            assert wait_until(lambda: len(finished) >= 150, 60), "replicates did not run"
            os.kill(os.getpid(), signal.SIGINT)
            assert wait_until(lambda: waiting.is_set() and main_thread_waits(), 60), "the run did not wait"
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_twice, daemon=True).start()
        steps = [SleepOn(frozenset(range(2, 200)), 0.01), hold_replicate_zero, record, count]
        try:
            Experiment(numbers, steps).run(replicates=400, strategy="parallel:executor_type=thread,max_workers=2")
        except ExperimentInterrupted as stopped:
            print("replicate-0-still-running", not zero_done.is_set(), "finished", stopped.partial_result.replicates)
        finally:
            release.set()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, still_running, _, finished = done.stdout.split()
    assert int(finished) > 100, done.stdout
    assert "Ctrl-C: waiting for up to" in done.stderr
    # Replicate 0 still runs (a thread cannot be stopped), but the run has returned.
    assert still_running == "True", "the second Ctrl-C did not stop the wait"


GIL_HOLDER = textwrap.dedent(
    """
    import os, re, sys
    from crystallize_core import Experiment
    from crystallize_core.testing import numbers, record
    from crystallize_parallel import ParallelExecution

    class HoldTheGil:
        def __call__(self, data, ctx):
            with open(os.environ["PIDS"], "a") as out:
                out.write(f"{os.getpid()}\\n")
            re.match("(a+)+$", "a" * 64 + "b")  # catastrophic backtracking in C, never releasing the GIL
            return data

    if __name__ == "__main__":
        strategy = ParallelExecution(executor_type="process", max_workers=2, start_method=sys.argv[1])
        Experiment(numbers, [HoldTheGil(), record]).run(replicates=4, strategy=strategy)
    """
)


@pytest.mark.parametrize("start_method", START_METHODS)
def test_workers_holding_the_gil_die_with_a_killed_driver(start_method, tmp_path):
    script, pids = tmp_path / "gil_study.py", tmp_path / "pids.txt"
    script.write_text(GIL_HOLDER)
    driver = subprocess.Popen([sys.executable, str(script), start_method], env={**os.environ, "PIDS": str(pids)})
    try:
        assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) >= 2, 60), "no worker started"
        workers = [int(p) for p in pids.read_text().split()]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)

        def gone():
            return all(not psutil.pid_exists(p) or psutil.Process(p).status() == "zombie" for p in workers)

        assert wait_until(gone, 15), f"workers outlived their killed driver: {workers}"
    finally:
        driver.kill()


def test_interrupting_a_spawned_pool_leaves_nothing_behind(tmp_path):
    marker = str(tmp_path / "interrupted")
    experiment = Experiment(numbers, [SleepEach(0.2), record, InterruptAfter(2, os.getpid(), marker, "baseline")])
    before = live_child_processes()
    with pytest.raises(ExperimentInterrupted):
        experiment.run(replicates=30, strategy=processes("spawn"))
    assert wait_until(lambda: not processes_started_since(before), 10), processes_started_since(before)


class IgnoreTermThenSleep:
    """Replicate 0 ignores SIGTERM and sleeps; replicate 1 kills its worker once
    replicate 0 has said (a file in ``folder``) that it ignores SIGTERM."""

    def __init__(self, folder):
        self.ignoring = os.path.join(folder, "ignoring")

    def __call__(self, data, ctx):
        if ctx.replicate == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            open(self.ignoring, "w").close()
            time.sleep(2)  # the survivor's work, still running when its neighbour dies
        if ctx.replicate == 1:
            wait_until(lambda: os.path.exists(self.ignoring), 30)
            os._exit(1)
        return data


def test_a_survivor_that_ignores_sigterm_does_not_hang_the_recovery(tmp_path):
    experiment = Experiment(numbers, [IgnoreTermThenSleep(str(tmp_path)), record])
    result = experiment.run(replicates=4, strategy=processes("fork", max_retries=0))
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(1, "WorkerDied")]
    assert result.metrics["baseline"]["replicate"] == [0, None, 2, 3]


def test_threads_run_components_that_cannot_be_pickled_as_they_are():
    shared = []

    def note(data, ctx):  # a closure over the driver's list: threads share it
        shared.append(ctx.replicate)
        return data

    result = Experiment(numbers, [note, record]).run(replicates=6, strategy=ParallelExecution(max_workers=2))
    assert result.errors == [] and sorted(shared) == list(range(6))


def test_a_result_that_could_not_come_back_is_not_checkpointed_so_a_rerun_tries_it_again(tmp_path):
    path, log = tmp_path / "checkpoint.sqlite", tmp_path / "runs.txt"

    def experiment():
        steps = [RecordRuns(str(log)), PoisonMetric(os.getpid()), record]
        return Experiment(numbers, steps, plugins=[SeedPlugin(seed=2, auto_seed=False)])

    ran = []
    for _ in range(2):
        log.write_text("")
        result = experiment().run(replicates=5, checkpoint=path, strategy=processes("fork"))
        assert [(e.replicate, e.exc_type) for e in result.errors] == [(3, "UnpicklingError")]
        ran.append(sorted(int(line.split()[0]) for line in log.read_text().splitlines()))
    # The first run may rerun replicate 3's batch to find which result could not come back.
    assert set(ran[0]) == {0, 1, 2, 3, 4} and ran[1] == [3], ran


def _exit_with_1():
    os._exit(1)


def test_a_dead_worker_reaped_by_the_pools_thread_still_shows_its_exit_code():
    # The pool's own thread joins its workers too. When it reaps a dead one
    # first, the exit code appears only once that thread stores it; read too
    # early, the worker looked alive and its death was "cause unknown".
    from crystallize_parallel._processes import _settle_exit_codes

    worker = multiprocessing.get_context("fork").Process(target=_exit_with_1)
    worker.start()

    reaped = threading.Event()

    def reap_like_the_pool_then_store_late():
        _, status = os.waitpid(worker.pid, 0)
        reaped.set()
        time.sleep(0.3)  # the pool's thread is slow to store what it reaped: the case under test
        worker._popen.returncode = os.waitstatus_to_exitcode(status)

    reaper = threading.Thread(target=reap_like_the_pool_then_store_late)
    reaper.start()
    assert wait_until(lambda: multiprocessing.connection.wait([worker.sentinel], 0), 10)
    assert reaped.wait(10), "the reaper never reaped the worker"
    _settle_exit_codes([worker])
    assert worker.exitcode == 1
    reaper.join()


@pytest.mark.parametrize("start_method", START_METHODS)
def test_an_experiment_holding_a_numpy_array_runs_in_processes(start_method):
    # Protocol 5 pickles an array's data as a PickleBuffer: the picklability
    # check once asked it for a len() and refused every array over 64 KB.
    import numpy as np

    from crystallize_core import Treatment

    weights = Treatment("weighted", {"weights": np.arange(50_000, dtype=np.float64)})
    experiment = Experiment(numbers, [record], treatments=[weights], plugins=[SeedPlugin(seed=5, auto_seed=False)])
    strategy = ParallelExecution(executor_type="process", max_workers=2, start_method=start_method)
    result = experiment.run(replicates=6, strategy=strategy)
    assert result.errors == [] and result.metrics == experiment.run(replicates=6).metrics
