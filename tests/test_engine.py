"""The dispatch engine: any executor as a backend, batching, faults and what a run shows."""

import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from functools import partial

import pytest

from crystallize_core import (
    Capabilities,
    ConfigurationError,
    ExecutorStrategy,
    Experiment,
    ExperimentInterrupted,
    ReplicateFailed,
    ReplicateResult,
    SeedPlugin,
    StrategyCapabilityError,
    WorkerLostError,
    WorkerSetupError,
)
from crystallize_core.batching import FIRST_BATCH_MAX, GROWTH, BatchSizer
from crystallize_core.engine import INLINE_PAYLOAD_BYTES, Backend, ExecutorBackend, drive
from crystallize_core.progress import MAX_REPORTED_ERRORS
from crystallize_core.testing import (
    CountUnpickles,
    FailOn,
    KillWorkerOn,
    StrategyConformance,
    live_child_processes,
    numbers,
    processes_started_since,
    record,
    wait_until,
)


class Ballast:
    """A datasource that pickles to at least ``size`` bytes."""

    def __init__(self, size):
        self.ballast = b"x" * size

    def __call__(self, ctx):
        return numbers(ctx)


class TestProcessPoolFactory(StrategyConformance):
    strategy_name = "ExecutorStrategy"

    def make_strategy(self):
        return ExecutorStrategy(partial(ProcessPoolExecutor, 2))


class TestThreadPoolFactory(StrategyConformance):
    strategy_name = "ExecutorStrategy"

    def make_strategy(self):
        return ExecutorStrategy(partial(ThreadPoolExecutor, 3), ships_work=False)


def seeded(*steps, plugins=()):
    return Experiment(numbers, [*steps, record], plugins=[SeedPlugin(seed=11, auto_seed=False), *plugins])


def test_an_executor_passed_as_the_strategy_runs_the_replicates_and_is_left_open():
    expected = seeded().run(replicates=30).metrics
    with ProcessPoolExecutor(2) as pool:
        result = seeded().run(replicates=30, strategy=pool)
        assert result.strategy == "ExecutorStrategy" and result.metrics == expected
        assert pool.submit(abs, -3).result() == 3  # the user's executor is still theirs


def test_a_passed_in_executor_gets_the_experiment_once_per_worker(tmp_path):
    log = tmp_path / "unpickles.txt"
    log.touch()
    experiment = Experiment(CountUnpickles(str(log)), [record])
    with ProcessPoolExecutor(2) as pool:
        experiment.run(replicates=200, strategy=pool)
    unpickled_in = log.read_text().split()
    assert 1 <= len(unpickled_in) <= 2 and len(set(unpickled_in)) == len(unpickled_in), unpickled_in


def test_a_worker_death_in_a_passed_in_executor_stops_with_what_finished():
    experiment = seeded(KillWorkerOn({5: "exit"}))
    with ProcessPoolExecutor(1) as pool, pytest.raises(WorkerLostError, match="cannot replace it") as caught:
        experiment.run(replicates=20, strategy=pool)
    partial = caught.value.partial_result
    assert partial is not None and not partial.complete and partial.strategy == "ExecutorStrategy"
    assert 0 < partial.replicates < 20 and 5 not in [r.replicate for r in partial.replicate_results]


def test_a_factory_replaces_a_broken_pool_and_blames_only_the_culprit():
    result = seeded(KillWorkerOn({4: "exit"})).run(
        replicates=12, strategy=ExecutorStrategy(partial(ProcessPoolExecutor, 2), max_retries=1)
    )
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(4, "WorkerDied")]
    assert "2 time(s) with the replicate running alone" in result.errors[0].message
    assert result.metrics["baseline"]["replicate"] == [None if i == 4 else i for i in range(12)]


class CountingPool(ProcessPoolExecutor):
    """A real process pool that counts the batches submitted to every instance."""

    submitted = 0

    def submit(self, fn, /, *args, **kwargs):
        CountingPool.submitted += 1
        return super().submit(fn, *args, **kwargs)


def test_a_death_among_many_replicates_is_pinned_by_halving_not_one_by_one():
    CountingPool.submitted = 0
    result = seeded(KillWorkerOn({1234: "exit"})).run(
        replicates=4000, strategy=ExecutorStrategy(partial(CountingPool, 2), max_retries=1)
    )
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(1234, "WorkerDied")]
    assert "2 time(s) with the replicate running alone" in result.errors[0].message
    assert result.metrics["baseline"]["replicate"] == [None if i == 1234 else i for i in range(4000)]
    # The batches lost with the pool held hundreds of replicates; rerunning
    # them one by one would take as many submissions.
    assert CountingPool.submitted < 150, CountingPool.submitted


class RefusingAfterDeath(CountingPool):
    """A real process pool that, once the batch holding ``KILLER`` is out,
    submits nothing more until that batch's worker has died: the next batch
    meets a broken pool and is refused."""

    KILLER = 1234
    refused = 0
    killer: object = None

    def submit(self, fn, /, *args, **kwargs):
        if RefusingAfterDeath.killer is not None:
            assert wait_until(RefusingAfterDeath.killer.done, 60)
            RefusingAfterDeath.killer = None
        try:
            future = super().submit(fn, *args, **kwargs)
        except Exception:
            RefusingAfterDeath.refused += 1
            raise
        start, stop = args[-2:]
        if start <= self.KILLER < stop:
            RefusingAfterDeath.killer = future
        return future


def test_a_batch_a_broken_pool_refused_is_sent_again_whole():
    CountingPool.submitted = RefusingAfterDeath.refused = 0
    result = seeded(KillWorkerOn({1234: "exit"})).run(
        replicates=4000, strategy=ExecutorStrategy(partial(RefusingAfterDeath, 2), max_retries=0)
    )
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(1234, "WorkerDied")]
    assert result.metrics["baseline"]["replicate"] == [None if i == 1234 else i for i in range(4000)]
    assert RefusingAfterDeath.refused >= 1
    # The refused batch is blameless: it goes out again as one batch, not as
    # one submission per replicate.
    assert CountingPool.submitted < 150, CountingPool.submitted


def test_fail_fast_stops_at_a_dead_worker_too():
    experiment = seeded(KillWorkerOn({2: "exit"}))
    strategy = ExecutorStrategy(partial(ProcessPoolExecutor, 2), max_retries=0)
    with pytest.raises(ReplicateFailed, match="WorkerDied") as caught:
        experiment.run(replicates=10, strategy=strategy, fail_fast=True)
    assert caught.value.partial_result is not None and not caught.value.partial_result.complete


def test_an_executor_cannot_promise_a_timeout():
    with pytest.raises(StrategyCapabilityError, match="Passed over: 'ExecutorStrategy'"):
        seeded().run(replicates=2, timeout=1, strategy=ExecutorStrategy(ThreadPoolExecutor(2)))


def test_a_backend_that_cannot_stop_work_is_refused_a_timeout_by_the_engine():
    class Run:
        replicates, timeout, fail_fast, progress, plugins = 2, 1.0, False, None, ()

    class CannotStop(Backend):
        def start(self, run, replicate_fn):
            return 1

        def submit(self, span):
            raise AssertionError("nothing is submitted")

    with pytest.raises(StrategyCapabilityError, match="cannot enforce a timeout"):
        drive(Run(), lambda i: i, CannotStop())


def test_a_backend_that_does_not_subclass_the_contract_is_told_what_it_lacks():
    class Run:
        replicates, timeout, fail_fast, progress, plugins = 2, None, False, None, ()

    class HalfABackend:
        capabilities = Capabilities()

        def start(self, run, replicate_fn):
            return 1

        def submit(self, span):
            raise AssertionError("nothing is submitted")

    with pytest.raises(
        TypeError, match=r"HalfABackend .* lacks .*request_stop.*Subclass crystallize_core\.engine\.Backend"
    ):
        drive(Run(), lambda i: i, HalfABackend())


class CountsResubmits(ExecutorBackend):
    resubmitted = 0

    def resubmit_with_payload(self, span):
        CountsResubmits.resubmitted += 1
        return super().resubmit_with_payload(span)


@pytest.mark.parametrize("ballast, asked", [(0, False), (2 * INLINE_PAYLOAD_BYTES, True)])
def test_a_small_experiment_goes_with_every_task_and_a_large_one_only_where_asked(ballast, asked):
    class Run:
        replicates, timeout, fail_fast, progress, plugins = 8, None, False, None, ()

    from crystallize_core.experiment import Condition
    from crystallize_core.replicate import ReplicateRunner

    replicate_fn = ReplicateRunner(Ballast(ballast), [record], [Condition("baseline", None, None)])
    CountsResubmits.resubmitted = 0
    results = drive(Run(), replicate_fn, CountsResubmits(partial(ProcessPoolExecutor, 2)), batch_size=1)
    assert [r.replicate for r in results] == list(range(8)) and all(not r.errors for r in results)
    assert (CountsResubmits.resubmitted > 0) is asked


@pytest.mark.parametrize("bad", [42, "pool", None])
def test_an_executor_backend_needs_an_executor(bad):
    with pytest.raises(ConfigurationError, match=r"needs a concurrent\.futures\.Executor"):
        ExecutorBackend(bad)


@pytest.mark.parametrize("option, value", [("max_retries", -1), ("batch_size", 0), ("batch_size", "big")])
def test_drive_checks_its_options(option, value):
    class Run:
        replicates, timeout, fail_fast, progress, plugins = 2, None, False, None, ()

    with pytest.raises(ConfigurationError, match=option):
        drive(Run(), lambda i: i, ExecutorBackend(ThreadPoolExecutor(1)), **{option: value})


@pytest.mark.parametrize("total, first", [(10, 1), (2_000, 15), (1_000_000, FIRST_BATCH_MAX)])
def test_first_batches_are_a_small_share_of_each_worker(total, first):
    sizer = BatchSizer(total=total, workers=2, target_seconds=0.05)
    assert [len(sizer.next_span()) for _ in range(4)] == [min(first, total - k * first) for k in range(4)][:4]


def test_the_first_measurement_sets_the_batch_size_and_later_growth_is_bounded():
    sizer = BatchSizer(total=1_000_000, workers=2, target_seconds=0.05)
    first = sizer.next_span()
    sizer.record(len(first), len(first) * 1e-3)  # 1 ms per replicate: ideal 50
    assert len(sizer.next_span()) == 50
    measured = len(first)
    for _ in range(40):  # faster than measured: growth within GROWTH x the evidence
        before = sizer.size
        span = sizer.next_span()
        sizer.record(len(span), len(span) * 1e-6)
        measured += len(span)
        assert sizer.size <= max(before, GROWTH * measured), (sizer.size, before, measured)
    assert sizer.size == 4096  # capped by max_batch
    sizer.record(sizer.size, sizer.size * 1e-2)  # one slow batch moves the average, not all the way
    assert 5 < sizer.size < 4096


def test_a_run_too_short_to_balance_goes_out_as_one_batch_per_worker():
    # 1,970 replicates left at 10 us: 9.85 ms a worker, less than one batch's 50 ms.
    sizer = BatchSizer(total=2_000, workers=2, target_seconds=0.05)
    first = sizer.next_span()
    sizer.next_span()
    sizer.record(len(first), len(first) * 1e-5)
    assert [len(sizer.next_span()) for _ in range(2)] == [985, 985]
    assert sizer.next_span() is None


def test_a_run_long_enough_to_balance_is_held_to_its_share_of_batches():
    # 1,970 replicates left at 100 us: 98.5 ms a worker, two batches' worth.
    sizer = BatchSizer(total=2_000, workers=2, target_seconds=0.05)
    first = sizer.next_span()
    sizer.next_span()
    sizer.record(len(first), len(first) * 1e-4)
    assert len(sizer.next_span()) == 2_000 // (2 * 4)


def test_one_fast_replicate_is_not_evidence_enough_to_give_up_balancing():
    sizer = BatchSizer(total=200, workers=2, target_seconds=0.05)
    span = sizer.next_span()
    sizer.record(len(span), 1e-6)
    assert len(span) == 1 and len(sizer.next_span()) == 200 // (2 * 4)


class NotesWhatFinishedBeforeEachSubmit(ThreadPoolExecutor):
    """A real thread pool noting, at each submission, how many earlier batches had finished."""

    def __init__(self, workers):
        super().__init__(workers)
        self.futures, self.finished_before = [], []

    def submit(self, fn, /, *args, **kwargs):
        self.finished_before.append(sum(f.done() for f in self.futures))
        future = super().submit(fn, *args, **kwargs)
        self.futures.append(future)
        return future


@pytest.mark.parametrize(
    "replicates, batch_size, out_before_any_finished",
    [
        pytest.param(24, "auto", 2, id="measuring: one per worker"),
        pytest.param(24, 1, 4, id="fixed size: two per worker"),
        pytest.param(16, 2, 8, id="batches as large as the share: the whole run"),
    ],
)
def test_how_many_batches_are_out_before_any_finishes(replicates, batch_size, out_before_any_finished):
    class Run:
        timeout, fail_fast, progress, plugins = None, False, None, ()

    Run.replicates = replicates

    def slow(position):
        time.sleep(0.1)
        return ReplicateResult(position, 0, {"baseline": {"position": position}}, (), 0.1)

    pool = NotesWhatFinishedBeforeEachSubmit(2)
    with pool:
        results = drive(Run(), slow, ExecutorBackend(pool, ships_work=False), batch_size=batch_size)
    assert [r.metrics["baseline"]["position"] for r in results] == list(range(replicates))
    assert pool.finished_before[:out_before_any_finished] == [0] * out_before_any_finished
    if out_before_any_finished < len(pool.finished_before):
        assert pool.finished_before[out_before_any_finished] >= 1


def test_a_short_run_goes_out_in_one_batch_per_worker_once_measured():
    class Run:
        replicates, timeout, fail_fast, progress, plugins = 2_000, None, False, None, ()

    def tiny(position):
        return ReplicateResult(position, 0, {"baseline": {"position": position}}, (), 0.0)

    pool = NotesWhatFinishedBeforeEachSubmit(2)
    backend = ExecutorBackend(pool, ships_work=False)
    backend.target_batch_seconds = 10.0  # however slow this machine, 985 replicates take less
    with pool:
        results = drive(Run(), tiny, backend)
    assert [r.metrics["baseline"]["position"] for r in results] == list(range(2_000))
    assert len(pool.futures) == 4  # two measuring batches of 15, then 985 and 985


def _exit_outside(driver):
    if os.getpid() != driver:
        raise SystemExit("this module needs the driver's GPU")
    return numbers


class ExitsWhenUnpickledElsewhere:
    """A datasource whose module calls sys.exit() when imported where it cannot run."""

    def __init__(self, driver):
        self.driver = driver

    def __reduce__(self):
        return _exit_outside, (self.driver,)

    def __call__(self, ctx):
        return numbers(ctx)


def test_a_worker_whose_unpickling_calls_sys_exit_stops_the_run_with_worker_setup_error():
    # Without the catch, the executor's worker sends SystemExit back and the driver would exit with it.
    experiment = Experiment(ExitsWhenUnpickledElsewhere(os.getpid()), [record])
    with pytest.raises(WorkerSetupError, match="needs the driver's GPU"):
        experiment.run(replicates=4, strategy=ExecutorStrategy(partial(ProcessPoolExecutor, 2)))


def test_captured_errors_are_logged_up_to_a_limit_then_counted(caplog):
    experiment = Experiment(numbers, [FailOn(frozenset(range(50)), condition="baseline"), record])
    with caplog.at_level(logging.WARNING, logger="crystallize"):
        result = experiment.run(replicates=50, strategy="parallel:executor_type=process,max_workers=2")
    assert len(result.errors) == 50
    lines = [r.getMessage() for r in caplog.records if r.name == "crystallize"]
    assert len(lines) == MAX_REPORTED_ERRORS + 1
    assert lines[-1].startswith(f"{50 - MAX_REPORTED_ERRORS} more captured error(s) not shown")


def test_progress_off_a_terminal_is_plain_lines(capfd):
    Experiment(numbers, [record]).run(replicates=25, progress=True, strategy="parallel:executor_type=process")
    err = capfd.readouterr().err
    assert "replicates: 25/25 (100%)" in err and "\r" not in err


def test_progress_off_by_default_off_a_terminal(capfd):
    Experiment(numbers, [record]).run(replicates=25, strategy="parallel:executor_type=thread")
    assert capfd.readouterr().err == ""


def test_progress_on_a_terminal_is_a_bar_with_log_lines_above_it():
    """A real pseudo-terminal: the bar redraws with carriage returns, errors are printed on lines of their own."""
    import fcntl
    import pty
    import struct
    import subprocess
    import sys
    import termios
    import textwrap

    script = textwrap.dedent(
        """
        from crystallize_core import Experiment
        from crystallize_core.testing import FailOn, SleepEach, numbers, record
        Experiment(numbers, [SleepEach(0.01), FailOn(frozenset({3}), condition="baseline"), record]).run(replicates=20)
        """
    )
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a width
    done = subprocess.run([sys.executable, "-c", script], stdin=terminal, stdout=terminal, stderr=terminal, timeout=120)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    text = shown.decode(errors="replace")
    assert done.returncode == 0, text
    assert "20/20" in text and "\r" in text
    assert text.count("replicate 3, condition 'baseline': ValueError") == 1
    assert "\nreplicate 3, condition 'baseline': ValueError" in text.replace("\r\n", "\n").replace("\r", "\n")


def test_threads_ctrl_c_says_what_it_waits_for(caplog):
    from crystallize_core.testing import InterruptAfter, SleepEach, SleepOn

    marker = str(os.path.join(os.getcwd(), ".interrupt-marker-engine"))
    # Replicate 0 is still running when the second one to finish sends Ctrl-C:
    # threads that all started together could otherwise all have finished.
    slow_first = SleepOn(frozenset({0}), 2.0)
    try:
        experiment = Experiment(
            numbers, [slow_first, SleepEach(0.2), record, InterruptAfter(2, os.getpid(), marker, "baseline")]
        )
        with caplog.at_level(logging.WARNING, logger="crystallize"), pytest.raises(ExperimentInterrupted) as caught:
            experiment.run(replicates=40, strategy="parallel:executor_type=thread,max_workers=4")
    finally:
        for leftover in (marker, marker + ".count"):
            if os.path.exists(leftover):
                os.remove(leftover)
    assert "Ctrl-C: waiting for up to" in caplog.text
    assert 0 < caught.value.partial_result.replicates < 40


def test_no_process_is_left_after_a_run_on_a_factory_pool():
    before = live_child_processes()
    seeded().run(replicates=10, strategy=ExecutorStrategy(partial(ProcessPoolExecutor, 2)))
    assert wait_until(lambda: not processes_started_since(before))


class BreaksOnce(ExecutorBackend):
    """A thread pool that reports itself broken on one submission, as a process
    pool does when a worker died between two batches."""

    def __init__(self):
        super().__init__(partial(ThreadPoolExecutor, 2), workers=2, ships_work=False)
        self.capabilities = Capabilities(retries_dead_workers=True)
        self.submissions = 0
        self.restarts = 0

    def submit(self, span):
        self.submissions += 1
        if self.submissions == 1:
            from concurrent.futures import BrokenExecutor

            raise BrokenExecutor("a worker died between batches")
        return super().submit(span)

    def restart(self):
        self.restarts += 1
        super().restart()


def test_a_pool_found_broken_at_submission_is_replaced_and_nothing_is_lost():
    class Run:
        replicates, timeout, fail_fast, progress, plugins = 40, None, False, None, ()

    from crystallize_core.experiment import Condition
    from crystallize_core.replicate import ReplicateRunner

    replicate_fn = ReplicateRunner(numbers, [record], [Condition("baseline", None, None)])
    backend = BreaksOnce()
    results = drive(Run(), replicate_fn, backend)
    assert [r.replicate for r in results] == list(range(40)) and all(not r.errors for r in results)
    assert backend.restarts >= 1


RUN_AND_LIST_MODULES = """
import sys
from functools import partial
from crystallize_core import Experiment, ExecutorStrategy
from crystallize_core.testing import numbers, record

if sys.argv[1] == "threads":
    from concurrent.futures import ThreadPoolExecutor as pool
else:
    from concurrent.futures import ProcessPoolExecutor as pool
Experiment(numbers, [record]).run(replicates=20, strategy=ExecutorStrategy(partial(pool, 2)), progress=False)
print(" ".join(sorted(sys.modules)))
"""


@pytest.mark.parametrize(
    "pool, never",
    [
        ("threads", {"hashlib", "_hashlib", "sqlite3", "multiprocessing", "multiprocessing.connection", "uuid"}),
        ("processes", {"hashlib", "_hashlib", "sqlite3", "uuid", "dataclasses", "cloudpickle"}),
    ],
)
def test_a_run_without_a_checkpoint_imports_only_what_it_uses(pool, never):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES, pool], capture_output=True, text=True, env=env, check=True
    )
    assert not never & set(done.stdout.split()), never & set(done.stdout.split())


DEFINED_IN_MAIN = """
import sys
from crystallize_core import Experiment, SeedPlugin, Treatment

class Scale:  # a class of __main__'s, its instance a step
    def __init__(self, by):
        self.by = by
    def __call__(self, data, ctx):
        return [x * self.by for x in data]

def source(ctx):
    return [ctx.rng.random() for _ in range(3)]

def measure(data, ctx):
    ctx.metrics.add("total", sum(data) * ctx.get("factor", 1))
    return data

if __name__ == "__main__":
    experiment = Experiment(source, [Scale(2), measure], plugins=[SeedPlugin(seed=3)],
                            treatments=[Treatment("t", {"factor": 3})])
    here = experiment.run(replicates=6, progress=False)
    spec = "parallel:executor_type=process,max_workers=2,start_method=" + sys.argv[1]
    there = experiment.run(replicates=6, strategy=spec, progress=False)
    assert there.errors == [], there.errors
    print(there.strategy, there.metrics == here.metrics, "cloudpickle" in sys.modules)
"""


@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_code_defined_in_main_reaches_workers_that_cannot_import_it(start_method):
    # `python -c` has no file a spawned worker could import __main__ from, as in a notebook.
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}
    done = subprocess.run(
        [sys.executable, "-c", DEFINED_IN_MAIN, start_method], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["parallel", "True", "True"]


def test_a_lambda_of_an_importable_module_still_refuses_to_pickle():
    from crystallize_core.errors import NotPicklableError
    from crystallize_core.replicate import dumps_replicate_fn

    with pytest.raises(NotPicklableError, match="lambda"):
        dumps_replicate_fn(lambda i: i)
