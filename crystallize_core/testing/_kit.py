"""The conformance kit's checks: [`StrategyConformance`][].

The experiments the checks run are made of the probe components in
``_probes``; this module holds only what is checked and how a failure is
worded.
"""

from __future__ import annotations

import os
import shutil
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
    WorkerSetupError,
)
from crystallize_core.experiment import Experiment, Treatment
from crystallize_core.hookspecs import Capabilities, capabilities_of, hookimpl
from crystallize_core.result import Result
from crystallize_core.seed import SeedPlugin
from crystallize_core.testing._probes import (
    CountUnpickles,
    Decliner,
    DelayEarlyReplicates,
    FailOn,
    HoldsBuffer,
    InterruptAfter,
    KillWorkerOn,
    LoopStrategy,
    RecordRuns,
    SleepEach,
    SleepOn,
    UnpicklableError,
    UnpicklesOnlyIn,
    live_child_processes,
    live_threads,
    numbers,
    processes_started_since,
    record,
    wait_until,
)


class _KeepAnswer:
    """Wraps a strategy to keep a reference to what it returned."""

    def __init__(self, strategy: object):
        from crystallize_core._manager import new_plugin_manager

        self.manager = new_plugin_manager()
        self.manager.register(strategy)
        self.answer: object = None

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        self.answer = self.manager.hook.run_experiment_loop(experiment=experiment, replicate_fn=replicate_fn)
        return self.answer


# --- the kit -------------------------------------------------------------------

#: Seconds a check that can hang or kill may run before the watchdog ends the
#: test session with every thread's traceback (faulthandler), instead of a
#: silent hang in CI.
WATCHDOG_SECONDS = 300


class StrategyConformance:
    """Checks every strategy must pass. Subclass it as ``Test<Something>``.

    Implement [`make_strategy`][], and set [`strategy_name`][] to the
    entry point's name your strategy is published under. Checks that do not apply to what the strategy
    declares in its [`Capabilities`][] are skipped,
    with the reason; every failure names the strategy and says what it did.
    """

    #: The name the strategy is registered under, checked against
    #: ``Result.strategy``; by default the name the core finds for it (its
    #: entry point's name if installed, else its class name).
    strategy_name: str | None = None
    #: Replicates used by the checks that need "many".
    many_replicates: int = 60
    #: Name prefixes of threads that a library the strategy uses starts once
    #: per process and keeps for the process's life (dask's "Dask-Offload"):
    #: not counted as left behind by a run.
    lasting_threads: tuple[str, ...] = ()

    def make_strategy(self) -> object:
        """Return a new, configured instance of the strategy under test."""
        raise NotImplementedError("implement make_strategy() in your StrategyConformance subclass")

    def make_declining_strategy(self) -> object | None:
        """Return an instance configured to decline, if the strategy can decline."""
        return None

    # helpers ----------------------------------------------------------------

    def scratch(self) -> Path:
        """A fresh folder, removed when the test is done."""
        folder = Path(tempfile.mkdtemp(prefix="crystallize-kit-"))
        self.__dict__.setdefault("_scratch", []).append(folder)
        return folder

    def setup_method(self, method: Callable | None = None) -> None:
        import faulthandler

        faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)

    def teardown_method(self, method: Callable | None = None) -> None:
        import faulthandler

        faulthandler.cancel_dump_traceback_later()
        for folder in self.__dict__.pop("_scratch", []):
            shutil.rmtree(folder, ignore_errors=True)

    @property
    def label(self) -> str:
        """The name the strategy under test runs under: [`strategy_name`][],
        or else the name the core registers it by."""
        from crystallize_core.discovery import identify

        return self.strategy_name or identify(self.make_strategy())[0]

    def fail(self, what: str) -> None:
        """Fail the check, naming the strategy under test."""
        raise AssertionError(f"strategy {self.label!r}: {what}")

    def expect(self, condition: bool, what: str) -> None:
        if not condition:
            self.fail(what)

    def capabilities(self) -> Capabilities:
        return capabilities_of(self.make_strategy())

    def requires(self, capability: str) -> None:
        """Skip the check unless the strategy declares ``capability``."""
        import pytest

        if not getattr(self.capabilities(), capability):
            pytest.skip(f"the strategy does not declare Capabilities({capability}=True)")

    def experiment(self, steps=(record,), datasource=numbers, plugins=(), **kwargs) -> Experiment:
        """An experiment with a baseline and one treatment named ``treated``."""
        return Experiment(
            datasource=datasource,
            pipeline=list(steps),
            plugins=list(plugins),
            treatments=[Treatment("treated", {"factor": 2})],
            **kwargs,
        )

    def run_with_strategy(self, experiment: Experiment, replicates: int, strategy: object | None = None, **options):
        """Run ``experiment`` with the strategy under test as its only strategy plugin."""
        experiment.plugins.append(strategy if strategy is not None else self.make_strategy())
        return experiment.run(replicates=replicates, **options)

    def assert_strategy_ran(self, result) -> None:
        if result.strategy != self.label:
            self.fail(f"declined or was passed over: {result.strategy!r} ran the experiment instead")

    def assert_strategy_runs(self) -> None:
        """Before a check that kills or hangs: prove the strategy under test is the one running."""
        self.assert_strategy_ran(self.run_with_strategy(self.experiment(), 2))

    def assert_nothing_left(self, processes: dict[int, int], threads: set[int]) -> None:
        """Every process and thread started since the snapshot has ended."""
        import threading

        def threads_left() -> list[str]:
            started = live_threads() - threads
            return [
                t.name
                for t in threading.enumerate()
                if t.ident in started and not t.name.startswith(self.lasting_threads)
            ]

        gone = wait_until(lambda: not processes_started_since(processes) and not threads_left(), seconds=10)
        if not gone:
            names = threads_left()
            self.fail(
                f"left processes {processes_started_since(processes)} and threads {names} running after the run ended"
            )

    # checks -----------------------------------------------------------------

    def test_results_complete_and_in_replicate_order(self):
        n = 12
        result = self.run_with_strategy(self.experiment(steps=[DelayEarlyReplicates(), record]), n)
        self.assert_strategy_ran(result)
        order = [r.replicate for r in result.replicate_results]
        self.expect(order == list(range(n)), f"returned replicates in the order {order}")
        for condition in ("baseline", "treated"):
            got = result.metrics[condition]["replicate"]
            self.expect(got == list(range(n)), f"{condition} metrics are not in replicate order: {got}")
        self.expect(result.errors == [], f"errors where none were expected: {result.errors}")

    def test_each_replicate_runs_exactly_once(self):
        log = self.scratch() / "runs.txt"
        n = self.many_replicates
        result = self.run_with_strategy(self.experiment(steps=[RecordRuns(str(log)), record]), n)
        runs = Counter(log.read_text().splitlines())
        expected = Counter({f"{i} {c}": 1 for i in range(n) for c in ("baseline", "treated")})
        self.expect(runs == expected, f"ran these not exactly once: {dict((runs - expected) + (expected - runs))}")
        self.expect(result.replicates == n, f"returned {result.replicates} of {n} replicates")

    def test_a_single_replicate(self):
        result = self.run_with_strategy(self.experiment(), 1)
        self.assert_strategy_ran(result)
        self.expect(result.metrics["baseline"]["replicate"] == [0], f"one replicate gave {result.metrics}")
        self.expect(len(result.seeds) == 1, f"one replicate gave seeds {result.seeds}")

    def test_many_replicates(self):
        n = self.many_replicates * 5
        result = self.run_with_strategy(self.experiment(), n)
        got = result.metrics["treated"]["replicate"]
        self.expect(got == list(range(n)), f"{n} replicates came back as {got[:10]}...")

    def test_wins_after_a_declining_plugin_and_stops_the_search(self):
        before, after = Decliner(), LoopStrategy()
        result = self.experiment(plugins=[before, self.make_strategy(), after]).run(replicates=3)
        self.assert_strategy_ran(result)
        self.expect(before.asked == 1, "a plugin listed before the strategy was not asked first")
        self.expect(after.asked == 0, "a plugin listed after the winning strategy was asked")

    def test_chosen_for_the_run_comes_before_the_experiments_plugins(self):
        own = LoopStrategy()
        result = self.experiment(plugins=[own]).run(replicates=3, strategy=self.make_strategy())
        self.assert_strategy_ran(result)
        self.expect(own.asked == 0, "the experiment's own strategy was asked before the one chosen for the run")

    def test_declining_passes_on(self):
        import pytest

        declining = self.make_declining_strategy()
        if declining is None:
            pytest.skip("make_declining_strategy() returns None: the strategy never declines")
        after = LoopStrategy()
        result = self.experiment(plugins=[declining, after]).run(replicates=3)
        self.expect(result.strategy == "LoopStrategy", f"did not pass on when declining: {result.strategy!r} ran")
        self.expect(after.asked == 1, "the next implementer was not asked")

    def test_errors_inside_replicates_are_captured(self):
        steps = [record, FailOn(frozenset({1, 3})), FailOn(frozenset({4}), unpicklable=True)]
        result = self.run_with_strategy(self.experiment(steps=steps), 6)
        got = sorted((e.replicate, e.condition, e.exc_type) for e in result.errors)
        self.expect(
            got
            == [
                (1, "treated", "ValueError"),
                (3, "treated", "ValueError"),
                (4, "treated", f"{UnpicklableError.__module__}.{UnpicklableError.__qualname__}"),
            ],
            f"captured errors {got}",
        )
        unpicklable = next(e for e in result.errors if e.replicate == 4)
        self.expect(unpicklable.message == "cannot travel 4", f"error message {unpicklable.message!r}")
        self.expect("UnpicklableError" in unpicklable.traceback, "the traceback of an error was lost")
        self.expect(
            result.metrics["baseline"]["replicate"] == list(range(6)), "a failure lost other conditions' results"
        )
        treated = result.metrics["treated"]["replicate"]
        self.expect(treated[0] == 0 and treated[1] is None, f"treated metrics {treated}")

    def test_result_list_is_not_touched_after_return(self):
        keeper = _KeepAnswer(self.make_strategy())
        result = self.experiment(steps=[DelayEarlyReplicates(), record], plugins=[keeper]).run(replicates=10)
        self.expect(result.metrics["baseline"]["replicate"] == list(range(10)), "lost results")
        if not isinstance(keeper.answer, list):
            return  # an iterator, or a view of the core's own results: no list of the strategy's to touch
        snapshot = list(keeper.answer)
        time.sleep(0.3)  # room for anything still running in the background to touch it
        self.expect(
            keeper.answer == snapshot and all(a is b for a, b in zip(keeper.answer or [], snapshot)),
            "changed its answer after returning it",
        )

    def test_the_experiment_is_not_changed_and_two_runs_at_once_agree(self):
        import threading

        experiment = self.experiment(plugins=[SeedPlugin(seed=3, auto_seed=False), self.make_strategy()])
        before = (experiment.replicates, list(experiment.plugins), list(experiment.treatments))
        results: dict[int, Any] = {}

        def run(replicates: int) -> None:
            results[replicates] = experiment.run(replicates=replicates)

        threads = [threading.Thread(target=run, args=(n,)) for n in (5, 9)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.expect(sorted(results) == [5, 9], f"concurrent runs returned {sorted(results)}")
        for n, result in results.items():
            self.expect(result.metrics["baseline"]["replicate"] == list(range(n)), f"a {n}-replicate run interfered")
        self.expect(results[5].seeds == results[9].seeds[:5], "two runs with one seed gave different seeds")
        after = (experiment.replicates, list(experiment.plugins), list(experiment.treatments))
        self.expect(after == before, "running changed the experiment")

    def test_experiment_is_unpickled_at_most_once_per_worker(self):
        self.requires("ships_work")
        log = self.scratch() / "unpickles.txt"
        log.touch()
        n = 40
        result = self.run_with_strategy(self.experiment(datasource=CountUnpickles(str(log))), n)
        self.expect(result.errors == [], f"errors {result.errors}")
        per_process = Counter(log.read_text().split())
        self.expect(all(c == 1 for c in per_process.values()), f"unpickled more than once in a process: {per_process}")
        self.expect(sum(per_process.values()) < n, f"unpickled the experiment {sum(per_process.values())} times")

    def test_same_seed_same_metrics_as_serial(self):
        def experiment():
            return self.experiment(plugins=[SeedPlugin(seed=1234, auto_seed=False)])

        expected = experiment().run(replicates=8, strategy="serial")
        result = self.run_with_strategy(experiment(), 8)
        self.assert_strategy_ran(result)
        self.expect(result.seeds == expected.seeds, f"seeds {result.seeds}, serial gave {expected.seeds}")
        self.expect(result.metrics == expected.metrics, "metrics differ from serial's for the same seed")

    def test_an_experiment_holding_a_large_buffer_runs(self):
        # NumPy arrays pickle their data as a PickleBuffer; a size check or a
        # sink that asks a written chunk for its len() fails on it.
        self.requires("ships_work")
        result = self.run_with_strategy(self.experiment(datasource=HoldsBuffer(200_000)), 6)
        self.expect(result.errors == [], f"errors {result.errors}")
        self.expect(result.metrics["baseline"]["held"] == [200_000] * 6, "the buffer did not arrive whole")

    def test_a_worker_that_cannot_unpickle_the_experiment_stops_the_run_saying_why(self):
        self.requires("ships_work")
        experiment = self.experiment(datasource=UnpicklesOnlyIn(os.getpid()))
        try:
            result = self.run_with_strategy(experiment, 6)
        except WorkerSetupError as exc:
            self.expect("only_on_the_driver" in str(exc), f"the worker's error is not in the message: {exc}")
            self.expect("importable on the workers" in str(exc), f"the message gives no way out: {exc}")
        else:  # workers that inherit the experiment (a fork) never unpickle it
            self.assert_strategy_ran(result)
            self.expect(result.errors == [], f"errors {result.errors}")
            self.expect(result.metrics["baseline"]["replicate"] == list(range(6)), "replicates missing")

    def test_unpicklable_component_is_named_before_any_work(self):
        self.requires("ships_work")
        log = self.scratch() / "runs.txt"
        experiment = self.experiment(steps=[RecordRuns(str(log)), lambda data, ctx: data])
        try:
            self.run_with_strategy(experiment, 4)
        except NotPicklableError as exc:
            self.expect("<lambda>" in str(exc), f"the pickling error does not name the step: {exc}")
        else:
            self.fail("shipped a lambda step without raising NotPicklableError")
        self.expect(not log.exists(), "started replicates before reporting the pickling error")

    def test_ctrl_c_stops_promptly_with_the_finished_replicates(self):
        n = 40
        processes, threads = live_child_processes(), live_threads()
        marker = str(self.scratch() / "interrupted")
        experiment = self.experiment(steps=[SleepEach(0.1), record, InterruptAfter(3, os.getpid(), marker)])
        try:
            self.run_with_strategy(experiment, n)
        except ExperimentInterrupted as interrupted:
            partial = interrupted.partial_result
        else:
            self.fail("kept running after Ctrl-C")
        self.expect(isinstance(partial, Result) and not partial.complete, f"partial result {partial!r}")
        self.expect(partial.strategy == self.label, f"the partial result names {partial.strategy!r} as its strategy")
        self.expect(
            0 < partial.replicates < n, f"{partial.replicates} of {n} replicates finished: not stopped promptly"
        )
        order = [r.replicate for r in partial.replicate_results]
        self.expect(order == sorted(order), f"partial result out of order: {order}")
        self.expect(all(v is not None for v in partial.metrics["baseline"]["replicate"]), "partial result has holes")
        self.assert_nothing_left(processes, threads)

    def test_ctrl_c_stops_running_replicates_at_once(self):
        self.requires("cancellation")
        self.assert_strategy_runs()
        processes, threads = live_child_processes(), live_threads()
        marker = str(self.scratch() / "interrupted")
        steps = [SleepOn(frozenset({0}), 30.0), record, InterruptAfter(2, os.getpid(), marker)]
        began = time.monotonic()
        try:
            self.run_with_strategy(self.experiment(steps=steps), 8)
        except ExperimentInterrupted as interrupted:
            partial = interrupted.partial_result
        else:
            self.fail("kept running after Ctrl-C")
        self.expect(time.monotonic() - began < 20, "waited for a replicate sleeping 30 s despite cancellation")
        self.expect(0 not in {r.replicate for r in partial.replicate_results}, "replicate 0 cannot have finished")
        self.assert_nothing_left(processes, threads)

    def test_fail_fast_stops_at_the_first_error(self):
        n = 30
        log = self.scratch() / "runs.txt"
        steps = [SleepEach(0.05), RecordRuns(str(log)), FailOn(frozenset(range(n)))]
        try:
            self.run_with_strategy(self.experiment(steps=steps, fail_fast=True), n)
        except ReplicateFailed as failed:
            error = failed.error
        else:
            self.fail("fail_fast did not raise ReplicateFailed")
        self.expect((error.condition, error.exc_type) == ("treated", "ValueError"), f"raised for {error}")
        self.expect("failing on purpose" in error.traceback, "the traceback of the error was lost")
        started = {line.split()[0] for line in log.read_text().splitlines()}
        self.expect(len(started) < n, "fail_fast did not cancel the pending replicates")

    def test_a_timeout_is_enforced(self):
        self.requires("timeout")
        self.assert_strategy_runs()
        processes, threads = live_child_processes(), live_threads()
        steps = [SleepOn(frozenset({1}), 10.0), record]
        result = self.experiment(steps=steps, plugins=[self.make_strategy()]).run(replicates=4, timeout=2.0)
        got = [(e.replicate, e.exc_type) for e in result.errors]
        self.expect(got == [(1, "ReplicateTimeout")], f"a replicate past its timeout gave errors {got}")
        self.expect(
            result.metrics["baseline"]["replicate"] == [0, None, 2, 3], "a timeout lost other replicates' results"
        )
        self.assert_nothing_left(processes, threads)

    def test_a_timeout_it_cannot_enforce_is_refused(self):
        import pytest

        if self.capabilities().timeout:
            pytest.skip("the strategy declares Capabilities(timeout=True)")
        log = self.scratch() / "runs.txt"
        experiment = self.experiment(steps=[RecordRuns(str(log)), record], plugins=[self.make_strategy()])
        try:
            experiment.run(replicates=3, timeout=1.0)
        except StrategyCapabilityError as refused:
            self.expect("timeout" in str(refused), f"the refusal does not say why: {refused}")
        else:
            self.fail("accepted a timeout it does not declare it can enforce")
        self.expect(not log.exists(), "started replicates before refusing the timeout")

    def test_a_dying_worker_costs_only_its_replicate(self):
        self.requires("retries_dead_workers")
        self.assert_strategy_runs()
        processes, threads = live_child_processes(), live_threads()
        killer = KillWorkerOn({3: "exit", 7: "kill", 9: "once"}, str(self.scratch()))
        result = self.run_with_strategy(self.experiment(steps=[killer, record]), 12)
        died = {e.replicate: e for e in result.errors}
        self.expect(sorted(died) == [3, 7], f"errors after workers died: {result.errors}")
        self.expect(died[3].exc_type == died[7].exc_type == "WorkerDied", f"recorded {list(died.values())}")
        self.expect(all("died" in e.message for e in died.values()), f"messages {[e.message for e in died.values()]}")
        expected = [None if i in (3, 7) else i for i in range(12)]
        got = result.metrics["baseline"]["replicate"]
        self.expect(got == expected, f"a death lost other replicates' results: {got}")
        self.assert_nothing_left(processes, threads)

    def test_leaves_no_process_or_thread_behind(self):
        processes, threads = live_child_processes(), live_threads()
        result = self.run_with_strategy(self.experiment(), 20)
        self.assert_strategy_ran(result)
        self.assert_nothing_left(processes, threads)

    def test_resuming_from_a_checkpoint_runs_only_what_is_missing(self):
        log = self.scratch() / "runs.txt"
        path = self.scratch() / "checkpoint.sqlite"

        def experiment(*plugins):
            steps = [RecordRuns(str(log)), record]
            return self.experiment(steps=steps, plugins=[SeedPlugin(seed=5, auto_seed=False), *plugins])

        experiment().run(replicates=4, checkpoint=path, strategy="serial")
        resumed = experiment(self.make_strategy()).run(replicates=10, checkpoint=path)
        self.assert_strategy_ran(resumed)
        runs = Counter(line.split()[0] for line in log.read_text().splitlines())
        self.expect(runs == Counter({str(i): 2 for i in range(10)}), f"replicates run other than once: {runs}")
        uninterrupted = experiment().run(replicates=10, strategy="serial")
        self.expect(
            resumed.metrics == uninterrupted.metrics, "a resumed run's metrics differ from an uninterrupted one"
        )
        self.expect(resumed.seeds == uninterrupted.seeds, "a resumed run's seeds differ from an uninterrupted one")
