"""Coroutine datasources and steps, driven by the replicate function under every strategy."""

import asyncio
import functools
import subprocess
import sys
import textwrap

import pytest

from crystallize_core import ConfigurationError, Experiment, SeedPlugin, Treatment
from crystallize_parallel import ParallelExecution

# --- the same work, plain and as coroutines (module level: process workers import them) ---


def plain_source(ctx):
    return [ctx.rng.random() for _ in range(3)]


async def async_source(ctx):
    await asyncio.sleep(0)
    return [ctx.rng.random() for _ in range(3)]


def plain_scale(data, ctx):
    return [x * ctx.get("factor", 1) for x in data]


async def async_scale(data, ctx):
    await asyncio.sleep(0.001)
    return plain_scale(data, ctx)


def plain_record(data, ctx):
    ctx.metrics.add("total", sum(data))
    ctx.metrics.add("draw", ctx.rng.random())
    return data


class AsyncRecord:
    """A callable object whose ``__call__`` is a coroutine function."""

    async def __call__(self, data, ctx):
        await asyncio.sleep(0)
        return plain_record(data, ctx)


async def scaled_by(factor, data, ctx):
    await asyncio.sleep(0)
    ctx.metrics.add("scaled", sum(data) * factor)
    return data


class RaiseOn:
    """Raises ``kind`` in the given replicate (async unless ``plain``)."""

    def __init__(self, replicate: int, kind: type[BaseException]):
        self.replicate = replicate
        self.kind = kind

    async def __call__(self, data, ctx):
        await asyncio.sleep(0)
        if ctx.replicate == self.replicate:
            raise self.kind(f"raised in replicate {ctx.replicate}")
        return data


class PlainRaiseOn(RaiseOn):
    def __call__(self, data, ctx):
        if ctx.replicate == self.replicate:
            raise self.kind(f"raised in replicate {ctx.replicate}")
        return data


async def record_loop(data, ctx):
    ctx.metrics.add("loop", id(asyncio.get_running_loop()))
    return data


STRATEGIES = {
    "serial": lambda: "serial",
    "threads": lambda: ParallelExecution(executor_type="thread", max_workers=3),
    "processes": lambda: ParallelExecution(executor_type="process", max_workers=2),
}


def experiment(source, steps, **kwargs):
    return Experiment(
        source,
        steps,
        plugins=[SeedPlugin(seed=11, auto_seed=False)],
        treatments=[Treatment("double", {"factor": 2})],
        **kwargs,
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_coroutine_steps_give_the_results_of_the_plain_ones(strategy):
    plain = experiment(plain_source, [plain_scale, plain_record]).run(replicates=12, strategy="serial")
    mixes = [
        (async_source, [async_scale, AsyncRecord()]),
        (plain_source, [async_scale, plain_record]),
        (async_source, [plain_scale, AsyncRecord()]),
    ]
    for source, steps in mixes:
        result = experiment(source, steps).run(replicates=12, strategy=STRATEGIES[strategy]())
        assert result.errors == []
        assert result.seeds == plain.seeds
        assert result.metrics == plain.metrics, (source, steps)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("step", [RaiseOn, PlainRaiseOn])
@pytest.mark.parametrize("kind", [SystemExit, asyncio.CancelledError, ValueError])
def test_system_exit_and_cancelled_error_are_errors_of_their_replicate(strategy, step, kind):
    result = experiment(async_source, [step(2, kind), plain_record]).run(replicates=4, strategy=STRATEGIES[strategy]())
    names = {SystemExit: "SystemExit", asyncio.CancelledError: "asyncio.exceptions.CancelledError"}
    name = names.get(kind, "ValueError")
    assert sorted((e.replicate, e.condition, e.exc_type) for e in result.errors) == [
        (2, "baseline", name),
        (2, "double", name),
    ]
    assert "raised in replicate 2" in result.errors[0].traceback
    assert result.metrics["baseline"]["total"][2] is None
    assert all(v is not None for i, v in enumerate(result.metrics["double"]["total"]) if i != 2)


def test_partial_of_a_coroutine_function_is_awaited():
    result = experiment(plain_source, [functools.partial(scaled_by, 10)]).run(replicates=3)
    assert result.errors == [] and len(result.metrics["baseline"]["scaled"]) == 3


def test_a_thread_keeps_one_event_loop_for_all_its_replicates():
    serial = experiment(plain_source, [record_loop]).run(replicates=20, strategy="serial")
    assert len(set(serial.metrics["baseline"]["loop"] + serial.metrics["double"]["loop"])) == 1
    threads = experiment(plain_source, [record_loop]).run(
        replicates=40, strategy=ParallelExecution(executor_type="thread", max_workers=2)
    )
    assert len(set(threads.metrics["baseline"]["loop"] + threads.metrics["double"]["loop"])) <= 2


def test_processes_forked_from_a_thread_with_a_loop_get_their_own():
    # The serial run leaves this thread an event loop, which forked workers inherit.
    experiment(async_source, [AsyncRecord()]).run(replicates=2, strategy="serial")
    expected = experiment(plain_source, [plain_record]).run(replicates=10, strategy="serial")
    again = experiment(async_source, [AsyncRecord()]).run(replicates=10, strategy=STRATEGIES["processes"]())
    assert again.errors == [] and again.metrics == expected.metrics
    assert experiment(async_source, [AsyncRecord()]).run(replicates=3, strategy="serial").errors == []


def test_run_inside_a_running_event_loop_points_to_arun():
    async def inside():
        experiment(async_source, [AsyncRecord()]).run(replicates=2)

    with pytest.raises(ConfigurationError, match=r"await experiment\.arun\(\.\.\.\)"):
        asyncio.run(inside())


def test_arun_takes_the_arguments_of_run_and_returns_the_same_result():
    expected = experiment(async_source, [AsyncRecord()]).run(replicates=5, strategy="serial")

    async def inside():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        ticker = asyncio.create_task(tick())
        result = await experiment(async_source, [async_scale, AsyncRecord()], fail_fast=True).arun(
            [Treatment("double", {"factor": 2})], 5, strategy="serial"
        )
        ticker.cancel()
        return result, ticks

    result, ticks = asyncio.run(inside())
    assert result.seeds == expected.seeds and result.metrics["baseline"]["draw"] == expected.metrics["baseline"]["draw"]
    assert ticks > 0, "the calling loop was blocked while the replicates ran"


def test_an_async_treatment_callable_is_refused():
    async def apply(ctx):
        ctx.add("factor", 2)

    with pytest.raises(ConfigurationError, match=r"treatment 'later'.*not a coroutine function"):
        Treatment("later", apply)


def test_plain_pipelines_do_not_import_asyncio():
    code = textwrap.dedent(
        """
        import sys
        from crystallize_core import Experiment
        def source(ctx): return 1
        def step(data, ctx):
            ctx.metrics.add("x", data)
            return data
        result = Experiment(source, [step]).run(replicates=3)
        assert result.errors == []
        print("asyncio" in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# --- a plain function returning a coroutine; tasks a replicate leaves running ---------


def plain_scale_later(data, ctx):
    """A plain function whose value is a coroutine: awaited as an ``async def`` one is."""
    return async_scale(data, ctx)


def plain_source_later(ctx):
    return async_source(ctx)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_plain_function_returning_a_coroutine_is_awaited(strategy):
    plain = experiment(plain_source, [plain_scale, plain_record]).run(replicates=6, strategy="serial")
    for source, steps in [
        (plain_source, [plain_scale_later, plain_record]),
        (plain_source_later, [plain_scale, plain_record]),
    ]:
        result = experiment(source, steps).run(replicates=6, strategy=STRATEGIES[strategy]())
        assert result.errors == []
        assert result.metrics == plain.metrics, (source, steps)


LINGERED: list = []


async def linger(replicate):
    try:
        while True:
            await asyncio.sleep(0)
            LINGERED.append(f"ran on {replicate}")
    except asyncio.CancelledError:
        LINGERED.append(f"cancelled {replicate}")
        raise


async def start_linger(data, ctx):
    if ctx.condition == "baseline":
        asyncio.get_running_loop().create_task(linger(ctx.replicate))
        await asyncio.sleep(0)  # it starts, and runs
    return data


@pytest.mark.parametrize("strategy", ["serial", "threads"])
def test_tasks_a_replicate_leaves_running_are_cancelled_when_it_ends(strategy, caplog):
    LINGERED.clear()
    with pytest.warns(RuntimeWarning, match=r"step 'start_linger' .*started a task running 'linger'.*cancelled it"):
        result = experiment(plain_source, [start_linger, plain_record]).run(
            replicates=4, strategy=STRATEGIES[strategy]()
        )
    assert result.errors == []
    assert sorted(entry for entry in LINGERED if entry.startswith("cancelled")) == [f"cancelled {i}" for i in range(4)]
    # A later, unrelated run on the same threads' loops: nothing of the first runs on in it.
    ran = len(LINGERED)
    experiment(async_source, [AsyncRecord()]).run(replicates=4, strategy=STRATEGIES[strategy]())
    assert len(LINGERED) == ran, LINGERED[ran:]
    import gc

    gc.collect()
    assert "Task was destroyed" not in caplog.text
