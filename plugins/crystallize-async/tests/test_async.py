import asyncio
import itertools
import os
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

from crystallize_async import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_WORKERS, AsyncExecution
from crystallize_core import (
    ConfigurationError,
    Experiment,
    ExperimentInterrupted,
    ReplicateFailed,
    ReplicateResult,
    ReproducibilityWarning,
    SeedPlugin,
    StrategyCapabilityError,
    Treatment,
    load_strategy,
)
from crystallize_core.testing import (
    DelayEarlyReplicates,
    InterruptAfter,
    RecordRuns,
    SleepEach,
    SleepOn,
    StrategyConformance,
    assert_discoverable,
    live_child_processes,
    live_threads,
    numbers,
    record,
    wait_until,
)

# --- the kit again, with every component a coroutine ------------------------------


class AsyncSleepEach:
    def __init__(self, seconds: float):
        self.seconds = seconds

    async def __call__(self, data, ctx):
        await asyncio.sleep(self.seconds)
        return data


class AsyncSleepOn:
    def __init__(self, replicates, seconds: float):
        self.replicates = frozenset(replicates)
        self.seconds = seconds

    async def __call__(self, data, ctx):
        if ctx.replicate in self.replicates:
            await asyncio.sleep(self.seconds)
        return data


class AsyncDelayEarlyReplicates(DelayEarlyReplicates):
    async def __call__(self, data, ctx):
        if ctx.replicate < self.slow:
            await asyncio.sleep(self.seconds * (self.slow - ctx.replicate))
        return data


class Awaited:
    """A plain component behind an ``async def __call__``."""

    def __init__(self, component):
        self.component = component

    async def __call__(self, *args):
        await asyncio.sleep(0)
        return self.component(*args)


def as_coroutine(step):
    if isinstance(step, SleepEach):
        return AsyncSleepEach(step.seconds)
    if isinstance(step, SleepOn):
        return AsyncSleepOn(step.replicates, step.seconds)
    if isinstance(step, DelayEarlyReplicates):
        return AsyncDelayEarlyReplicates(step.slow, step.seconds)
    return Awaited(step)


class TestAsyncConformance(StrategyConformance):
    """The kit, with its datasource and steps made coroutines: the waits it uses to
    test timeouts and Ctrl-C are plain ``time.sleep`` calls, which no event loop
    can cancel, so here they are ``asyncio.sleep``. Plain pipelines under this
    strategy are tested below."""

    strategy_name = "async"

    def make_strategy(self):
        return AsyncExecution(max_workers=4)

    def experiment(self, steps=(record,), datasource=numbers, plugins=(), **kwargs):
        return super().experiment(
            steps=[as_coroutine(step) for step in steps], datasource=Awaited(datasource), plugins=plugins, **kwargs
        )


# --- components of the tests below --------------------------------------------------


async def waiting_source(ctx):
    await asyncio.sleep(0.01)
    return [ctx.rng.random() for _ in range(3)]


class InFlight:
    """Counts the replicates waiting at once (one event loop: no lock needed)."""

    def __init__(self):
        self.now = 0
        self.most = 0

    async def __call__(self, data, ctx):
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(0.01)
        finally:
            self.now -= 1
        ctx.metrics.add("total", sum(data))
        return data


class StartTimes:
    def __init__(self):
        self.times = []

    async def __call__(self, ctx):
        self.times.append(asyncio.get_running_loop().time())
        return [ctx.rng.random()]


class Raise:
    def __init__(self, replicate, kind):
        self.replicate = replicate
        self.kind = kind

    async def __call__(self, data, ctx):
        await asyncio.sleep(0)
        if ctx.replicate == self.replicate:
            raise self.kind("on purpose")
        return data


def experiment(source=numbers, steps=(record,), plugins=(), **kwargs):
    treatments = [Treatment("treated", {"factor": 2})]
    return Experiment(source, list(steps), plugins=list(plugins), treatments=treatments, **kwargs)


# --- the tests -------------------------------------------------------------------------


def test_discovery():
    strategy = assert_discoverable(
        "async", AsyncExecution, distribution="crystallize-async", max_workers=7, rate_limit=2.5, progress=True
    )
    assert (strategy.max_workers, strategy.rate_limit, strategy.progress) == (7, 2.5, True)
    assert AsyncExecution().max_workers == DEFAULT_MAX_WORKERS == DEFAULT_MAX_CONCURRENCY == 100


def test_max_concurrency_is_a_deprecated_name_of_max_workers():
    deprecated = r"max_concurrency=\.\.\.\) is deprecated: it is now max_workers"
    with pytest.warns(DeprecationWarning, match=deprecated) as caught:
        strategy = AsyncExecution(max_concurrency=7)
    assert strategy.max_workers == 7
    assert caught[0].filename == __file__, "the warning points at the user's line"
    with pytest.warns(DeprecationWarning):
        assert load_strategy("async", max_concurrency=3).max_workers == 3
    with pytest.raises(ConfigurationError, match="give max_workers only"):
        AsyncExecution(max_workers=2, max_concurrency=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AsyncExecution(7).max_workers == 7, "the first positional option means what it meant"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_workers": 0}, "max_workers must be a positive integer"),
        ({"max_workers": 2.5}, "max_workers must be a positive integer"),
        ({"max_workers": True}, "max_workers must be a positive integer"),
        ({"max_concurrency": 0}, r"max_concurrency \(now max_workers\) must be a positive integer"),
        ({"rate_limit": 0}, "rate_limit must be a positive number"),
        ({"rate_limit": "fast"}, "rate_limit must be a positive number"),
        ({"progress": 1}, "progress must be True, False or None"),
    ],
)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_options_are_refused_by_name(options, message):
    with pytest.raises(ConfigurationError, match=message):
        AsyncExecution(**options)


def test_a_misspelt_option_says_did_you_mean():
    with pytest.raises(TypeError, match="did you mean 'max_workers'"):
        AsyncExecution(max_worker=3)


def test_never_more_than_max_workers_replicates_in_flight():
    counter = InFlight()
    result = experiment(waiting_source, [counter]).run(replicates=40, strategy=AsyncExecution(max_workers=5))
    assert result.errors == [] and result.metrics["treated"]["total"][39] is not None
    assert counter.most == 5


def test_rate_limit_spaces_the_starts():
    starts = StartTimes()
    result = experiment(starts, [record]).run(replicates=8, strategy=AsyncExecution(rate_limit=40))
    assert result.errors == []
    replicate_starts = sorted(starts.times)[::2]  # the baseline of each replicate starts it
    gaps = [later - earlier for earlier, later in itertools.pairwise(replicate_starts)]
    assert min(gaps) >= 1 / 40 - 1e-3, gaps


def test_same_seed_same_metrics_as_serial_with_and_without_coroutines():
    def run(source, strategy):
        plugins = [SeedPlugin(seed=3, auto_seed=False)]
        return experiment(source, [record], plugins=plugins).run(replicates=30, strategy=strategy)

    serial = run(numbers, "serial")
    for source in (numbers, Awaited(numbers), waiting_source):
        expected = run(source, "serial")
        got = run(source, AsyncExecution(max_workers=7))
        assert got.seeds == serial.seeds and got.metrics == expected.metrics
    assert run(Awaited(numbers), AsyncExecution()).metrics == serial.metrics


def test_global_seeding_warns_with_the_fix():
    with pytest.warns(ReproducibilityWarning, match="ctx.rng"):
        experiment(plugins=[SeedPlugin(seed=1)]).run(replicates=2, strategy=AsyncExecution())


def test_no_warning_without_global_seeding():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        experiment(plugins=[SeedPlugin(seed=1, auto_seed=False)]).run(replicates=2, strategy=AsyncExecution())


def test_a_timeout_cancels_a_waiting_replicate():
    steps = [AsyncSleepOn({2}, 60.0), record]
    result = experiment(Awaited(numbers), steps).run(replicates=5, strategy=AsyncExecution(), timeout=0.5)
    (error,) = result.errors
    assert (error.replicate, error.exc_type) == (2, "ReplicateTimeout")
    assert "timeout of 0.5 s" in error.message
    assert result.metrics["baseline"]["replicate"] == [0, 1, None, 3, 4]


def test_under_fail_fast_a_timeout_stops_the_run():
    steps = [AsyncSleepOn({2}, 60.0), record]
    with pytest.raises(ReplicateFailed) as failed:
        experiment(Awaited(numbers), steps, fail_fast=True).run(replicates=5, strategy=AsyncExecution(), timeout=0.5)
    assert (failed.value.error.replicate, failed.value.error.exc_type) == (2, "ReplicateTimeout")
    # As under the dispatch engine: the partial result records the timeout on its replicate, no metrics.
    partial = failed.value.partial_result
    assert not partial.complete and [(e.replicate, e.exc_type) for e in partial.errors] == [(2, "ReplicateTimeout")]
    assert partial.metrics["baseline"]["replicate"][partial.replicate_indices.index(2)] is None


@pytest.mark.parametrize("kind", [SystemExit, asyncio.CancelledError])
def test_system_exit_and_cancelled_error_from_a_step_stay_in_their_replicate(kind):
    result = experiment(waiting_source, [Raise(1, kind), record]).run(replicates=4, strategy=AsyncExecution())
    if kind is asyncio.CancelledError and sys.version_info < (3, 11):
        # Python 3.10 cannot tell it from a cancelled task: the whole replicate is the error.
        assert [(e.replicate, e.condition, e.exc_type) for e in result.errors] == [(1, None, "asyncio.CancelledError")]
    else:
        assert sorted((e.replicate, e.condition) for e in result.errors) == [(1, "baseline"), (1, "treated")]
    assert result.metrics["baseline"]["replicate"] == [0, None, 2, 3]


def test_a_replicate_function_without_acall_runs_in_threads():
    class View:
        replicates = 6
        plugins = ()
        timeout = None
        fail_fast = False

    ran_on = []

    def replicate_fn(i):
        import threading

        ran_on.append(threading.current_thread().name)
        return ReplicateResult(i, i, {"baseline": {"i": i}})

    results = AsyncExecution(max_workers=3).run_experiment_loop(View(), replicate_fn)
    assert [r.replicate for r in results] == list(range(6))
    assert ran_on and all(name == "crystallize-async-replicate" for name in ran_on)


def test_a_step_that_starts_tasks_leaves_nothing_pending(caplog):
    log = []

    async def linger(replicate):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            log.append(f"cancelled {replicate}")
            raise

    async def forget(data, ctx):
        log.append(f"started {ctx.replicate}")
        asyncio.get_running_loop().create_task(linger(ctx.replicate))
        return data

    with pytest.warns(RuntimeWarning, match=r"step 'test_a_step.*forget'.*started a task running .*linger.*cancelled"):
        result = experiment(waiting_source, [forget, record]).run(replicates=3, strategy=AsyncExecution(max_workers=1))
    assert result.errors == []
    # Cancelled when its replicate ends (before the next one starts), not when the run ends.
    # (The task of its treatment is cancelled before it ever ran, so logs nothing.)
    assert "cancelled 0" in log[: log.index("started 1")], log
    assert "cancelled 1" in log[: log.index("started 2")] and "cancelled 2" in log, log
    import gc

    gc.collect()
    assert "Task was destroyed" not in caplog.text


# --- timeouts measured per replicate --------------------------------------------------


class BlockOn:
    """Holds the loop for ``seconds`` (a plain ``time.sleep``) in the given replicates;
    the others wait 0.01 s on the loop."""

    def __init__(self, replicates, seconds: float):
        self.replicates = frozenset(replicates)
        self.seconds = seconds

    async def __call__(self, data, ctx):
        if ctx.replicate in self.replicates:
            time.sleep(self.seconds)
        await asyncio.sleep(0.01)
        return data


def block_plainly(data, ctx):
    time.sleep(1.5)
    return data


def test_the_replicate_that_blocks_the_loop_is_the_one_timed_out():
    steps = [BlockOn({0}, 1.5), record]
    result = experiment(waiting_source, steps).run(replicates=4, strategy=AsyncExecution(), timeout=0.5)
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(0, "ReplicateTimeout")]
    assert "step 'BlockOn' blocked the event loop" in result.errors[0].message
    assert "asyncio.to_thread" in result.errors[0].message
    assert result.metrics["baseline"]["replicate"] == [None, 1, 2, 3]


class BlockInATaskOn(BlockOn):
    """Holds the loop as ``BlockOn`` does, but from a task the step starts (``how``)."""

    def __init__(self, replicates, seconds: float, how: str):
        super().__init__(replicates, seconds)
        self.how = how

    async def __call__(self, data, ctx):
        blocking = super().__call__(data, ctx)
        if self.how == "gather":
            (data,) = await asyncio.gather(blocking)
        else:
            data = await asyncio.get_running_loop().create_task(blocking)
        return data


@pytest.mark.parametrize("how", ["gather", "create_task"])
def test_the_replicate_whose_task_blocks_the_loop_is_the_one_timed_out(how):
    steps = [BlockInATaskOn({0}, 1.5, how), record]
    result = experiment(waiting_source, steps).run(replicates=4, strategy=AsyncExecution(), timeout=0.5)
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(0, "ReplicateTimeout")]
    assert result.metrics["baseline"]["replicate"] == [None, 1, 2, 3]


def test_a_lone_replicate_blocking_the_loop_in_a_plain_step_is_timed_out():
    result = experiment(waiting_source, [block_plainly, record]).run(
        replicates=1, strategy=AsyncExecution(), timeout=0.5
    )
    ((replicate, exc_type, message),) = [(e.replicate, e.exc_type, e.message) for e in result.errors]
    assert (replicate, exc_type) == (0, "ReplicateTimeout")
    assert "step 'block_plainly' blocked the event loop" in message
    assert result.metrics["baseline"] == {}  # its metrics were dropped with it


def test_under_fail_fast_a_step_blocking_the_loop_stops_the_run():
    with pytest.raises(ReplicateFailed, match=r"replicate 2 .*'BlockOn' blocked the event loop"):
        experiment(waiting_source, [BlockOn({2}, 1.0), record], fail_fast=True).run(
            replicates=4, strategy=AsyncExecution(), timeout=0.3
        )


class SwallowCancel:
    """Catches the cancellation of its first wait and waits again, in the given replicate."""

    def __init__(self, replicate: int):
        self.replicate = replicate

    async def __call__(self, data, ctx):
        if ctx.replicate == self.replicate:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                pass
            await asyncio.sleep(60)
        return data


def test_a_step_that_catches_the_cancellation_is_still_timed_out():
    result = experiment(waiting_source, [SwallowCancel(1), record]).run(
        replicates=3, strategy=AsyncExecution(), timeout=0.5
    )
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(1, "ReplicateTimeout")]
    assert "timeout of 0.5 s; its task was cancelled" in result.errors[0].message
    assert result.metrics["baseline"]["replicate"] == [0, None, 2]


def test_a_resumed_run_names_the_real_replicate_that_timed_out(tmp_path):
    checkpoint = tmp_path / "run.db"
    steps = [AsyncSleepOn({3}, 60.0), record]
    experiment(waiting_source, steps).run(replicates=2, strategy=AsyncExecution(), checkpoint=checkpoint)
    # Replicates 0 and 1 come from the checkpoint: replicate 3 runs at position 1.
    resumed = experiment(waiting_source, steps).run(
        replicates=4, strategy=AsyncExecution(), timeout=0.5, checkpoint=checkpoint
    )
    ((error,),) = [resumed.errors]
    assert (error.replicate, error.exc_type) == (3, "ReplicateTimeout")
    assert error.message.startswith("replicate 3 ran longer"), error.message


@pytest.mark.parametrize("rate", [10**400, 10**5000, 1e-320], ids=["10**400", "10**5000", "1e-320"])
def test_a_rate_limit_no_float_can_space_is_refused(rate):
    with pytest.raises(ConfigurationError, match=r"^rate_limit=.* beyond what a float can space") as refused:
        AsyncExecution(rate_limit=rate)
    assert "\n" not in str(refused.value)


# --- a plain function that returns a coroutine ----------------------------------------


async def recorded_later(data, ctx):
    await asyncio.sleep(0)
    ctx.metrics.add("later", data)
    return data


def returns_a_coroutine(data, ctx):
    return recorded_later(data, ctx)


def source_returning_a_coroutine(ctx):
    return recorded_later(ctx.replicate, ctx)


@pytest.mark.parametrize("source", [numbers, waiting_source])
def test_a_plain_step_returning_a_coroutine_is_awaited(source):
    # numbers: a plain pipeline (replicates in threads); waiting_source: on the loop.
    result = experiment(source, [returns_a_coroutine]).run(replicates=3, strategy=AsyncExecution())
    assert result.errors == []
    assert len(result.metrics["baseline"]["later"]) == 3 and None not in result.metrics["treated"]["later"]
    sourced = experiment(source_returning_a_coroutine, []).run(replicates=3, strategy=AsyncExecution())
    assert sourced.errors == [] and sourced.metrics["baseline"]["later"] == [0, 1, 2]


def test_arun_from_a_running_loop_with_the_async_strategy():
    async def main():
        return await experiment(waiting_source, plugins=[SeedPlugin(seed=4, auto_seed=False)]).arun(
            replicates=6, strategy="async:max_workers=3"
        )

    result = asyncio.run(main())
    expected = experiment(waiting_source, plugins=[SeedPlugin(seed=4, auto_seed=False)]).run(replicates=6)
    assert result.strategy == "async" and result.metrics == expected.metrics


CTRL_C_SCRIPT = """
import asyncio, os, signal, sys
from crystallize_core import Experiment, ExperimentInterrupted
from crystallize_async import AsyncExecution

finished = 0

async def source(ctx):
    await asyncio.sleep(0.05 if ctx.replicate < 10 else 60)
    return ctx.replicate

async def interrupt_after_five(data, ctx):
    global finished
    finished += 1
    if finished == 5:
        os.kill(os.getpid(), signal.SIGINT)
    await asyncio.sleep(0)
    ctx.metrics.add("value", data)
    return data

try:
    Experiment(source, [interrupt_after_five]).run(replicates=200, strategy=AsyncExecution(max_workers={k}))
except ExperimentInterrupted as interrupted:
    print("partial", interrupted.partial_result.replicates)
"""


@pytest.mark.parametrize("concurrency", [1, 50])
def test_ctrl_c_cancels_every_task_at_once_and_keeps_the_finished(concurrency):
    # Replicates 10 and later wait 60 s: only cancelling them ends the run in time.
    code = textwrap.dedent(CTRL_C_SCRIPT).replace("{k}", str(concurrency))
    env = {**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning", "PYTHONDEVMODE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50, env=env)
    assert done.returncode == 0, done.stderr
    finished = int(done.stdout.split()[-1])
    assert 4 <= finished <= 10, done.stdout  # the fifth is cancelled at its next await
    for trouble in ("Task was destroyed", "never awaited", "never retrieved", "Traceback"):
        assert trouble not in done.stderr, done.stderr


def test_a_timeout_is_refused_for_a_pipeline_with_nothing_to_await(tmp_path):
    log = tmp_path / "runs.txt"
    with pytest.raises(StrategyCapabilityError, match=r"all plain functions.*async def"):
        experiment(steps=[RecordRuns(str(log)), record]).run(replicates=3, strategy=AsyncExecution(), timeout=1.0)
    assert not log.exists(), "replicates started before the refusal"


def test_a_plain_pipeline_runs_in_threads_and_ctrl_c_keeps_what_finished(tmp_path):
    processes, threads = live_child_processes(), live_threads()
    plain = experiment(plugins=[SeedPlugin(seed=8, auto_seed=False)]).run(replicates=20, strategy="serial")
    result = experiment(plugins=[SeedPlugin(seed=8, auto_seed=False)]).run(replicates=20, strategy=AsyncExecution())
    assert result.metrics == plain.metrics and result.strategy == "async"
    marker = str(tmp_path / "interrupted")
    steps = [SleepEach(0.1), record, InterruptAfter(3, os.getpid(), marker)]
    with pytest.raises(ExperimentInterrupted) as interrupted:
        experiment(steps=steps).run(replicates=40, strategy=AsyncExecution(max_workers=4))
    finished = interrupted.value.partial_result.metrics["baseline"]["replicate"]
    assert 3 <= len(finished) < 40 and None not in finished, finished
    assert wait_until(lambda: not (live_child_processes().keys() - processes.keys()) and not (live_threads() - threads))
