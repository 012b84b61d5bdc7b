"""The conformance kit: hold a strategy to the ``run_experiment_loop`` contract.

Subclass :class:`StrategyConformance` in a test module, say how to build your
strategy, and pytest runs every check against real experiments::

    from crystallize_core.testing import StrategyConformance

    class TestMyStrategy(StrategyConformance):
        strategy_name = "mine"          # its entry point name

        def make_strategy(self):
            return MyStrategy(workers=2)

Nothing is mocked: each check runs a real :class:`~crystallize_core.Experiment`
through your strategy, with components defined in this module so that they
can be pickled into other processes. Override :meth:`make_declining_strategy`
if your strategy can decline. Add checks of your own beside the inherited ones.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from crystallize_core.errors import (
    ExperimentInterrupted,
    NotPicklableError,
    ReplicateFailed,
    StrategyCapabilityError,
)
from crystallize_core.experiment import Experiment, Treatment
from crystallize_core.hookspecs import hookimpl
from crystallize_core.result import Result
from crystallize_core.seed import SeedPlugin

# --- components: top-level and picklable, so they travel to any worker -----------


def numbers(ctx) -> list[float]:
    """A datasource: three numbers drawn from the context's private generator."""
    return [ctx.rng.random() for _ in range(3)]


def record(data, ctx):
    """A step recording the replicate index, one draw from ``ctx.rng`` and the data's sum."""
    ctx.metrics.add("replicate", ctx.replicate)
    ctx.metrics.add("draw", ctx.rng.random())
    ctx.metrics.add("total", sum(data) * ctx.get("factor", 1))
    return data


class DelayEarlyReplicates:
    """A step that makes early replicates slow, so a concurrent strategy sees
    them finish last and has to restore replicate order."""

    def __init__(self, slow: int = 4, seconds: float = 0.05):
        self.slow = slow
        self.seconds = seconds

    def __call__(self, data, ctx):
        if ctx.replicate < self.slow:
            time.sleep(self.seconds * (self.slow - ctx.replicate))
        return data


class RecordRuns:
    """A step that appends ``"<replicate> <condition>"`` to a file each time it runs
    (appends of one short line are atomic, whichever process makes them)."""

    def __init__(self, path: str):
        self.path = path

    def __call__(self, data, ctx):
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{ctx.replicate} {ctx.condition}\n".encode())
        finally:
            os.close(fd)
        return data


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str, *, detail: Any = None):
        super().__init__(message)
        import threading

        self.lock = threading.Lock()
        self.detail = detail


class FailOn:
    """A step that raises for the given replicates of one condition; every
    other call passes. ``unpicklable`` raises :class:`UnpicklableError`."""

    def __init__(self, replicates: frozenset[int], condition: str = "treated", unpicklable: bool = False):
        self.replicates = frozenset(replicates)
        self.condition = condition
        self.unpicklable = unpicklable

    def __call__(self, data, ctx):
        if ctx.replicate in self.replicates and ctx.condition == self.condition:
            if self.unpicklable:
                raise UnpicklableError(f"cannot travel {ctx.replicate}", detail=ctx.replicate)
            raise ValueError(f"failing on purpose in replicate {ctx.replicate}")
        return data


class CountUnpickles:
    """A datasource that appends this process's id to a file whenever it is
    unpickled, to count how often the experiment is shipped."""

    def __init__(self, path: str):
        self.path = path

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        with open(self.path, "a") as log:
            log.write(f"{os.getpid()}\n")

    def __call__(self, ctx):
        return numbers(ctx)


class SleepEach:
    """A step that sleeps ``seconds`` in every replicate, so that runs take a while."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def __call__(self, data, ctx):
        time.sleep(self.seconds)
        return data


class SleepOn:
    """A step that sleeps ``seconds`` in the given replicates only."""

    def __init__(self, replicates: frozenset[int], seconds: float):
        self.replicates = frozenset(replicates)
        self.seconds = seconds

    def __call__(self, data, ctx):
        if ctx.replicate in self.replicates:
            time.sleep(self.seconds)
        return data


class InterruptAfter:
    """A last step that sends SIGINT to process ``pid`` (the run's caller) once
    ``finished`` replicates have reached it in condition ``last_condition``: a
    real Ctrl-C, from wherever the replicates run. Replicates are counted in a
    file beside ``marker``."""

    def __init__(self, finished: int, pid: int, marker: str, last_condition: str = "treated"):
        self.finished = finished
        self.pid = pid
        self.marker = marker
        self.last_condition = last_condition

    def __call__(self, data, ctx):
        if ctx.condition != self.last_condition:
            return data
        fd = os.open(self.marker + ".count", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)
        if os.path.getsize(self.marker + ".count") >= self.finished:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return data  # already sent
            os.kill(self.pid, signal.SIGINT)
        return data


class KillWorkerOn:
    """A step that kills the process running it, in the given replicates:
    ``"exit"`` calls ``os._exit(1)``, ``"kill"`` sends itself SIGKILL, and
    ``"once"`` exits only the first time (it leaves a marker file), to test a
    retry that succeeds."""

    def __init__(self, how: dict[int, str], marker_dir: str = ""):
        self.how = dict(how)
        self.marker_dir = marker_dir

    def __call__(self, data, ctx):
        how = self.how.get(ctx.replicate)
        if how == "exit":
            os._exit(1)
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if how == "once":
            marker = Path(self.marker_dir) / f"died-{ctx.replicate}"
            if not marker.exists():
                marker.touch()
                os._exit(3)
        return data


def live_child_processes() -> list[int]:
    """Process ids of this process's living (not zombie) children, from /proc."""
    me, children = os.getpid(), []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == me and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; return whether it held."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class Decliner:
    """A strategy that always declines and remembers being asked."""

    def __init__(self):
        self.asked = 0

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.asked += 1
        return None


class Recorder:
    """A strategy that runs replicates in a plain loop and remembers being asked."""

    name = "recorder"

    def __init__(self):
        self.asked = 0

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.asked += 1
        results = []
        try:
            for replicate in range(experiment.replicates):
                results.append(replicate_fn(replicate))
        except KeyboardInterrupt as interrupt:
            interrupt.completed = results
            raise
        return results


class _KeepAnswer:
    """Wraps a strategy to keep a reference to the list it returned."""

    def __init__(self, strategy: object):
        from crystallize_core._manager import new_plugin_manager

        self.manager = new_plugin_manager()
        self.manager.register(strategy)
        self.answer: list | None = None

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.answer = self.manager.hook.run_experiment_loop(experiment=experiment, replicate_fn=replicate_fn)
        return self.answer


# --- the kit -------------------------------------------------------------------


class StrategyConformance:
    """Checks every strategy must pass. Subclass it as ``Test<Something>``.

    Set :attr:`strategy_name` to the name the strategy is registered under
    (checked against ``Result.strategy``), and implement :meth:`make_strategy`.
    """

    #: The entry point name the strategy is registered under, or None to skip that check.
    strategy_name: str | None = None
    #: Replicates used by the checks that need "many".
    many_replicates: int = 60

    def make_strategy(self) -> object:
        """Return a new, configured instance of the strategy under test."""
        raise NotImplementedError("implement make_strategy() in your StrategyConformance subclass")

    def make_declining_strategy(self) -> object | None:
        """Return an instance configured to decline, if the strategy can decline."""
        return None

    # helpers ----------------------------------------------------------------

    def scratch(self) -> Path:
        """A fresh folder, removed when the test class is done."""
        folder = Path(tempfile.mkdtemp(prefix="crystallize-kit-"))
        self.__dict__.setdefault("_scratch", []).append(folder)
        return folder

    def teardown_method(self, method: Callable | None = None) -> None:
        for folder in self.__dict__.pop("_scratch", []):
            shutil.rmtree(folder, ignore_errors=True)

    def experiment(self, steps=(record,), datasource=numbers, plugins=(), **kwargs) -> Experiment:
        """An experiment with a baseline and one treatment named ``treated``."""
        return Experiment(
            datasource=datasource,
            pipeline=list(steps),
            plugins=list(plugins),
            treatments=[Treatment("treated", {"factor": 2})],
            **kwargs,
        )

    def run_with_strategy(self, experiment: Experiment, replicates: int, strategy: object | None = None):
        experiment.plugins.append(strategy if strategy is not None else self.make_strategy())
        return experiment.run(replicates=replicates)

    def assert_strategy_ran(self, result) -> None:
        if self.strategy_name is not None:
            assert result.strategy == self.strategy_name, (
                f"expected strategy {self.strategy_name!r} to run the experiment, but {result.strategy!r} did"
            )

    # checks -----------------------------------------------------------------

    def test_results_complete_and_in_replicate_order(self):
        n = 12
        result = self.run_with_strategy(self.experiment(steps=[DelayEarlyReplicates(), record]), n)
        self.assert_strategy_ran(result)
        assert [r.replicate for r in result.replicate_results] == list(range(n)), "results out of replicate order"
        for condition in ("baseline", "treated"):
            assert result.metrics[condition]["replicate"] == list(range(n)), (
                f"{condition}: metrics are not in replicate order: {result.metrics[condition]['replicate']}"
            )
        assert result.errors == []

    def test_each_replicate_runs_exactly_once(self):
        log = self.scratch() / "runs.txt"
        n = self.many_replicates
        result = self.run_with_strategy(self.experiment(steps=[RecordRuns(str(log)), record]), n)
        runs = Counter(log.read_text().splitlines())
        expected = {f"{i} {c}": 1 for i in range(n) for c in ("baseline", "treated")}
        assert dict(runs) == expected, f"runs that were not exactly once: {dict(runs - Counter(expected))}"
        assert result.replicates == n

    def test_a_single_replicate(self):
        result = self.run_with_strategy(self.experiment(), 1)
        self.assert_strategy_ran(result)
        assert result.metrics["baseline"]["replicate"] == [0]
        assert len(result.seeds) == 1

    def test_many_replicates(self):
        n = self.many_replicates * 5
        result = self.run_with_strategy(self.experiment(), n)
        assert result.metrics["treated"]["replicate"] == list(range(n))

    def test_wins_after_a_declining_plugin_and_stops_the_search(self):
        before, after = Decliner(), Recorder()
        experiment = self.experiment(plugins=[before, self.make_strategy(), after])
        result = experiment.run(replicates=3)
        self.assert_strategy_ran(result)
        assert before.asked == 1, "a plugin listed before the strategy was not asked first"
        assert after.asked == 0, "a plugin listed after the winning strategy was asked"

    def test_declining_passes_on(self):
        declining = self.make_declining_strategy()
        if declining is None:
            return  # this strategy never declines
        after = Recorder()
        result = self.experiment(plugins=[declining, after]).run(replicates=3)
        assert result.strategy == "recorder", f"the next implementer did not run the experiment: {result.strategy!r}"
        assert after.asked == 1

    def test_errors_inside_replicates_are_captured(self):
        failing = frozenset({1, 3})
        steps = [record, FailOn(failing), FailOn(frozenset({4}), unpicklable=True)]
        result = self.run_with_strategy(self.experiment(steps=steps), 6)
        got = sorted((e.replicate, e.condition, e.exc_type) for e in result.errors)
        assert got == [
            (1, "treated", "ValueError"),
            (3, "treated", "ValueError"),
            (4, "treated", "crystallize_core.testing.UnpicklableError"),
        ], got
        unpicklable = next(e for e in result.errors if e.replicate == 4)
        assert unpicklable.message == "cannot travel 4"
        assert "UnpicklableError" in unpicklable.traceback
        assert result.metrics["baseline"]["replicate"] == list(range(6)), "a failure lost other conditions' results"
        assert result.metrics["treated"]["replicate"][0] == 0 and result.metrics["treated"]["replicate"][1] is None

    def test_result_list_is_not_touched_after_return(self):
        keeper = _KeepAnswer(self.make_strategy())
        experiment = self.experiment(steps=[DelayEarlyReplicates(), record], plugins=[keeper])
        experiment.run(replicates=10)
        snapshot = list(keeper.answer)
        time.sleep(0.3)  # room for anything still running in the background to touch it
        assert keeper.answer == snapshot and all(a is b for a, b in zip(keeper.answer, snapshot)), (
            "the strategy changed its answer after returning it"
        )

    def test_experiment_is_unpickled_at_most_once_per_worker(self):
        log = self.scratch() / "unpickles.txt"
        log.touch()
        n = 40
        result = self.run_with_strategy(self.experiment(datasource=CountUnpickles(str(log))), n)
        assert result.errors == []
        per_process = Counter(log.read_text().split())
        assert all(count == 1 for count in per_process.values()), (
            f"unpickled more than once in a process: {per_process}"
        )
        assert sum(per_process.values()) < n, f"the experiment was unpickled {sum(per_process.values())} times"

    def test_same_seed_same_metrics_as_serial(self):
        def experiment():
            return self.experiment(plugins=[SeedPlugin(seed=1234, auto_seed=False)])

        expected = experiment().run(replicates=8, strategy="serial")
        result = self.run_with_strategy(experiment(), 8)
        self.assert_strategy_ran(result)
        assert result.seeds == expected.seeds
        assert result.metrics == expected.metrics

    def test_unpicklable_component_is_named_before_any_work(self):
        strategy = self.make_strategy()
        if not getattr(strategy, "ships_work", False):
            return  # runs in this process: nothing needs pickling
        log = self.scratch() / "runs.txt"
        experiment = self.experiment(steps=[RecordRuns(str(log)), lambda data, ctx: data])
        try:
            self.run_with_strategy(experiment, 4, strategy)
        except NotPicklableError as exc:
            assert "<lambda>" in str(exc), f"the error does not name the step: {exc}"
        else:
            raise AssertionError("a lambda step was shipped to another process without a NotPicklableError")
        assert not log.exists(), "replicates started before the pickling error was raised"

    def test_ctrl_c_stops_promptly_with_the_finished_replicates(self):
        n = 40
        existing = set(live_child_processes())
        marker = str(self.scratch() / "interrupted")
        experiment = self.experiment(steps=[SleepEach(0.1), record, InterruptAfter(3, os.getpid(), marker)])
        try:
            self.run_with_strategy(experiment, n)
        except ExperimentInterrupted as interrupted:
            partial = interrupted.partial_result
        else:
            raise AssertionError("Ctrl-C did not stop the run")
        assert isinstance(partial, Result) and not partial.complete
        assert 0 < partial.replicates < n, f"{partial.replicates} of {n} replicates finished: not stopped promptly"
        assert [r.replicate for r in partial.replicate_results] == sorted(
            r.replicate for r in partial.replicate_results
        )
        assert all(v is not None for v in partial.metrics["baseline"]["replicate"])
        assert wait_until(lambda: not set(live_child_processes()) - existing), (
            f"processes left behind: {set(live_child_processes()) - existing}"
        )

    def test_fail_fast_stops_at_the_first_error(self):
        n = 30
        log = self.scratch() / "runs.txt"
        steps = [SleepEach(0.05), RecordRuns(str(log)), FailOn(frozenset(range(n)))]
        experiment = self.experiment(steps=steps, fail_fast=True)
        try:
            self.run_with_strategy(experiment, n)
        except ReplicateFailed as failed:
            error = failed.error
        else:
            raise AssertionError("fail_fast did not raise ReplicateFailed")
        assert (error.condition, error.exc_type) == ("treated", "ValueError")
        assert "failing on purpose" in error.traceback
        started = {line.split()[0] for line in log.read_text().splitlines()}
        assert len(started) < n, "fail_fast did not cancel the pending replicates"

    def test_a_timeout_is_enforced_or_refused(self):
        strategy = self.make_strategy()
        steps = [SleepOn(frozenset({1}), 60.0), record]
        if not getattr(strategy, "supports_timeout", False):
            try:
                self.experiment(steps=steps, plugins=[strategy]).run(replicates=3, timeout=1.0)
            except StrategyCapabilityError:
                return
            raise AssertionError("a strategy without supports_timeout accepted a timeout")
        existing = set(live_child_processes())
        result = self.experiment(steps=steps, plugins=[strategy]).run(replicates=4, timeout=1.0)
        (error,) = result.errors
        assert (error.replicate, error.exc_type) == (1, "ReplicateTimeout"), error
        assert result.metrics["baseline"]["replicate"] == [0, None, 2, 3]
        assert wait_until(lambda: not set(live_child_processes()) - existing)

    def test_a_dying_worker_costs_only_its_replicate(self):
        strategy = self.make_strategy()
        if not getattr(strategy, "retries_dead_workers", False):
            return  # replicates run in this process: nothing can die alone
        existing = set(live_child_processes())
        marker_dir = str(self.scratch())
        killer = KillWorkerOn({3: "exit", 7: "kill", 9: "once"}, marker_dir)
        result = self.run_with_strategy(self.experiment(steps=[killer, record]), 12, strategy)
        died = {e.replicate: e for e in result.errors}
        assert sorted(died) == [3, 7], result.errors
        assert died[3].exc_type == died[7].exc_type == "WorkerDied"
        assert all("died" in error.message for error in died.values()), died
        expected = [None if i in (3, 7) else i for i in range(12)]
        assert result.metrics["baseline"]["replicate"] == expected, "a death lost other replicates' results"
        assert wait_until(lambda: not set(live_child_processes()) - existing)

    def test_resuming_from_a_checkpoint_runs_only_what_is_missing(self):
        log = self.scratch() / "runs.txt"
        path = self.scratch() / "checkpoint.sqlite"

        def experiment():
            return self.experiment(steps=[RecordRuns(str(log)), record], plugins=[SeedPlugin(seed=5, auto_seed=False)])

        experiment().run(replicates=4, checkpoint=path, strategy="serial")
        resumed = self.experiment(
            steps=[RecordRuns(str(log)), record], plugins=[SeedPlugin(seed=5, auto_seed=False), self.make_strategy()]
        ).run(replicates=10, checkpoint=path)
        self.assert_strategy_ran(resumed)
        runs = Counter(line.split()[0] for line in log.read_text().splitlines())
        assert runs == Counter({str(i): 2 for i in range(10)}), f"replicates run more than once: {runs}"
        uninterrupted = experiment().run(replicates=10, strategy="serial")
        assert resumed.metrics == uninterrupted.metrics and resumed.seeds == uninterrupted.seeds
