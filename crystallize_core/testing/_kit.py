"""The conformance kit's checks: [`StrategyConformance`][] and [`assert_discoverable`][].

The experiments the checks run are made of the probe components in
``_probes``; this module holds only what is checked and how a failure is
worded. Every failure names the strategy under test and says, in words,
what it did.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from crystallize_core.errors import (
    ExperimentInterrupted,
    NotPicklableError,
    ReplicateFailed,
    ReproducibilityWarning,
    StrategyCapabilityError,
    StrategyContractError,
    WorkerSetupError,
)
from crystallize_core.experiment import Experiment, Treatment
from crystallize_core.hookspecs import PROJECT_NAME, Capabilities, capabilities_of
from crystallize_core.records import ReplicateResult
from crystallize_core.result import Result
from crystallize_core.seed import SeedPlugin
from crystallize_core.testing._probes import (
    CountUnpickles,
    Decliner,
    DelayEarlyReplicates,
    DrawGlobalRandom,
    FailOn,
    HoldsBuffer,
    InterruptAfter,
    KillWorkerOn,
    LoopStrategy,
    MarkSeeding,
    RecordRuns,
    SleepEach,
    SleepOn,
    UnpicklableError,
    UnpicklesOnlyIn,
    describe_process,
    live_child_processes,
    live_threads,
    numbers,
    processes_started_since,
    record,
    wait_until,
)

#: Seconds a check that can hang or kill may run before the watchdog ends the
#: test session with every thread's traceback (faulthandler), instead of a
#: silent hang in CI.
WATCHDOG_SECONDS = 300

#: The conditions of the kit's experiments: the baseline and one treatment.
CONDITIONS = ("baseline", "treated")

#: The script of the ``__main__`` check: an experiment whose datasource and
#: step are defined in ``__main__``, run as ``python experiment_script.py``
#: with the guard a user's script has. It reads the strategy under test from
#: the pickle file named first, and writes what happened to the JSON file
#: named second.
MAIN_SCRIPT = '''\
"""An experiment defined in __main__, run the way a user runs a script."""

import json
import pickle
import sys

from crystallize_core import Experiment, SeedPlugin, Treatment


def draws(ctx):
    return [ctx.rng.random() for _ in range(3)]


class Scale:
    """A step defined in __main__, as a user's script defines its steps."""

    def __call__(self, data, ctx):
        ctx.metrics.add("replicate", ctx.replicate)
        ctx.metrics.add("total", sum(data) * ctx.get("factor", 1))
        return data


def experiment():
    return Experiment(
        draws,
        [Scale()],
        treatments=[Treatment("treated", {"factor": 2})],
        plugins=[SeedPlugin(seed=11, auto_seed=False)],
    )


def main(strategy_file, answer_file, replicates):
    with open(strategy_file, "rb") as given:
        strategy = pickle.load(given)
    expected = experiment().run(replicates=replicates, strategy="serial")
    result = experiment().run(replicates=replicates, strategy=strategy)
    answer = {
        "strategy": result.strategy,
        "errors": [str(error) for error in result.errors],
        "same_metrics": result.metrics == expected.metrics,
    }
    with open(answer_file, "w") as written:
        json.dump(answer, written)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
'''


class StrategyConformance:
    """Checks every strategy must pass. Subclass it as ``Test<Something>``.

    Implement [`make_strategy`][], and set [`strategy_name`][] to the
    entry point's name your strategy is published under. Checks that do not
    apply to what the strategy declares in its [`Capabilities`][] are
    skipped, with the reason; every failure names the strategy and says what
    it did.

    For strategies that declare ``ships_work``, one check runs an experiment
    defined in ``__main__`` as a real ``python script.py``: the object
    ``make_strategy()`` returns is pickled into that script, so it must
    pickle by reference (its class importable by module path, not defined
    in ``__main__`` or inside a function), holding its options rather than
    live resources (a pool, a client).
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
    #: Seconds the threads and processes a run started get to end once it
    #: has returned, before they count as left behind.
    settle_seconds: float = 10.0
    #: Seconds the ``__main__`` script may take, start-up of the strategy's
    #: workers (or cluster) included.
    script_seconds: float = 180.0

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
        from crystallize_core.discovery import identify  # package metadata: when a name is asked

        return self.strategy_name or identify(self.make_strategy())[0]

    def fail(self, what: str) -> NoReturn:
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
        """Run ``experiment`` with the strategy under test as its only strategy plugin.

        An answer the core refuses ([`StrategyContractError`][]) fails the
        check with the core's account of it.
        """
        experiment.plugins.append(strategy if strategy is not None else self.make_strategy())
        return self.run_checked(experiment, replicates=replicates, **options)

    def run_checked(self, experiment: Experiment, **options) -> Result:
        """``experiment.run(**options)``, failing the check on a broken contract."""
        try:
            return experiment.run(**options)
        except StrategyContractError as broken:
            self.fail(f"broke the run_experiment_loop contract: {broken}")

    def keep_answers(self, strategy: object) -> list[tuple[object, list[object] | None]] | None:
        """Make ``strategy`` keep what its ``run_experiment_loop`` returns,
        without changing who it is (the core still names and asks the
        strategy itself): each answer goes into the list returned, with a copy
        of its items made the moment it returned when it is a list. None
        where the hook cannot be followed (no instance ``__dict__``, say)."""
        import inspect

        hook = getattr(strategy, "run_experiment_loop", None)
        options = getattr(hook, f"{PROJECT_NAME}_impl", None)
        own = getattr(strategy, "__dict__", None)
        if hook is None or options is None or not isinstance(own, dict) or isinstance(strategy, type):
            return None
        takes = [name for name in inspect.signature(hook).parameters if name in ("experiment", "replicate_fn")]
        answers: list[tuple[object, list[object] | None]] = []

        def run_experiment_loop(experiment, replicate_fn):
            given = {"experiment": experiment, "replicate_fn": replicate_fn}
            answer = hook(**{name: given[name] for name in takes})
            answers.append((answer, list(answer) if isinstance(answer, list) else None))
            return answer

        setattr(run_experiment_loop, f"{PROJECT_NAME}_impl", dict(options))
        own["run_experiment_loop"] = run_experiment_loop
        return answers

    def assert_strategy_ran(self, result) -> None:
        if result.strategy != self.label:
            self.fail(f"declined or was passed over: {result.strategy!r} ran the experiment instead")

    def assert_strategy_runs(self) -> None:
        """Before a check that kills or hangs: prove the strategy under test is the one running."""
        self.assert_strategy_ran(self.run_with_strategy(self.experiment(), 2))

    def left_running(self, processes: dict[int, int], threads: set[Any]) -> tuple[list[int], list[str]]:
        """Wait up to [`settle_seconds`][] for every process and thread
        started since the snapshot (``live_child_processes``,
        ``live_threads``) to end; return those still running (process ids,
        thread names), leaving out [`lasting_threads`][]."""

        def threads_left() -> list[str]:
            started = live_threads() - threads
            return sorted(t.name for t in started if not t.name.startswith(self.lasting_threads))

        wait_until(lambda: not processes_started_since(processes) and not threads_left(), seconds=self.settle_seconds)
        return processes_started_since(processes), threads_left()

    def assert_nothing_left(self, processes: dict[int, int], threads: set[Any]) -> None:
        """Every process and thread started since the snapshot has ended."""
        left_processes, left_threads = self.left_running(processes, threads)
        problems = []
        if left_processes:
            described = ", ".join(describe_process(pid) for pid in left_processes)
            problems.append(f"left {_count(left_processes, 'process', 'processes')} running: {described}")
        if left_threads:
            problems.append(f"left {_count(left_threads, 'thread')} running: {', '.join(map(repr, left_threads))}")
        if problems:
            self.fail(f"{' and '.join(problems)}, {self.settle_seconds:g} s after the run ended")

    # checks -----------------------------------------------------------------

    def test_results_complete_and_in_replicate_order(self):
        n = 12
        log = self.scratch() / "runs.txt"
        strategy = self.make_strategy()
        answers = self.keep_answers(strategy)
        experiment = self.experiment(steps=[RecordRuns(str(log)), DelayEarlyReplicates(), record])
        experiment.plugins.append(strategy)
        try:
            result = experiment.run(replicates=n)
        except StrategyContractError as broken:
            self.fail(_what_the_answer_lacks(n, answers, _ran(log), broken))
        self.assert_strategy_ran(result)
        order = [r.replicate for r in result.replicate_results]
        self.expect(order == list(range(n)), f"returned replicates in the order {order}")
        for condition in CONDITIONS:
            got = result.metrics[condition]["replicate"]
            self.expect(got == list(range(n)), f"{condition} metrics are not in replicate order: {got}")
        self.expect(result.errors == [], f"errors where none were expected: {result.errors}")

    def test_each_replicate_runs_exactly_once(self):
        log = self.scratch() / "runs.txt"
        n = self.many_replicates
        result = self.run_with_strategy(self.experiment(steps=[RecordRuns(str(log)), record]), n)
        wrong = _runs_other_than(Counter(log.read_text().splitlines()), range(n), times=1)
        self.expect(not wrong, f"ran replicates other than exactly once: {wrong}")
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
        result = self.run_checked(self.experiment(plugins=[before, self.make_strategy(), after]), replicates=3)
        self.assert_strategy_ran(result)
        self.expect(before.asked == 1, "a plugin listed before the strategy was not asked first")
        self.expect(after.asked == 0, "a plugin listed after the winning strategy was asked")

    def test_chosen_for_the_run_comes_before_the_experiments_plugins(self):
        own = LoopStrategy()
        result = self.run_checked(self.experiment(plugins=[own]), replicates=3, strategy=self.make_strategy())
        self.assert_strategy_ran(result)
        self.expect(own.asked == 0, "the experiment's own strategy was asked before the one chosen for the run")

    def test_declining_passes_on(self):
        import pytest

        declining = self.make_declining_strategy()
        if declining is None:
            pytest.skip("make_declining_strategy() returns None: the strategy never declines")
        after = LoopStrategy()
        result = self.run_checked(self.experiment(plugins=[declining, after]), replicates=3)
        self.expect(result.strategy == "LoopStrategy", f"did not pass on when declining: {result.strategy!r} ran")
        self.expect(after.asked == 1, "the next implementer was not asked")

    def test_errors_inside_replicates_are_captured(self):
        steps = [record, FailOn(frozenset({1, 3})), FailOn(frozenset({4}), unpicklable=True)]
        result = self.run_with_strategy(self.experiment(steps=steps), 6)
        unpicklable = f"{UnpicklableError.__module__}.{UnpicklableError.__qualname__}"
        expected = {(1, "treated", "ValueError"), (3, "treated", "ValueError"), (4, "treated", unpicklable)}
        got = [(e.replicate, e.condition, e.exc_type) for e in result.errors]
        swallowed = sorted(expected - set(got))
        self.expect(
            not swallowed,
            f"swallowed {_count(swallowed, 'error')} that a step raised: "
            + ", ".join(f"replicate {i} ({c}): {kind}" for i, c, kind in swallowed)
            + f"; the result's errors are {got}",
        )
        made_up = sorted(set(got) - expected)
        self.expect(not made_up, f"reported errors that no step raised: {made_up}")
        self.expect(len(got) == len(expected), f"reported an error more than once: {got}")
        unpicklable_error = next(e for e in result.errors if e.replicate == 4)
        self.expect(unpicklable_error.message == "cannot travel 4", f"error message {unpicklable_error.message!r}")
        self.expect("UnpicklableError" in unpicklable_error.traceback, "the traceback of an error was lost")
        self.expect(
            result.metrics["baseline"]["replicate"] == list(range(6)), "a failure lost other conditions' results"
        )
        treated = result.metrics["treated"]["replicate"]
        self.expect(treated[0] == 0 and treated[1] is None, f"treated metrics {treated}")

    def test_nothing_changes_after_the_run_returns(self):
        # Whatever the strategy left running (threads, processes) is waited
        # for until it ends, then the answer, the result and the record of
        # replicates run are compared with what they were at the return.
        processes, threads = live_child_processes(), live_threads()
        log = self.scratch() / "runs.txt"
        strategy = self.make_strategy()
        answers = self.keep_answers(strategy)
        n = 10
        result = self.run_with_strategy(
            self.experiment(steps=[RecordRuns(str(log)), DelayEarlyReplicates(), record]), n, strategy
        )
        self.expect(result.metrics["baseline"]["replicate"] == list(range(n)), "lost results")
        answer, kept = answers[0] if answers else (None, None)
        metrics, ran = copy.deepcopy(result.metrics), log.read_text()
        self.left_running(processes, threads)
        if kept is not None and isinstance(answer, list):
            self.expect(
                answer == kept and all(a is b for a, b in zip(answer, kept)),
                "changed the list it returned after returning it",
            )
        self.expect(log.read_text() == ran, "ran replicates after run_experiment_loop returned")
        self.expect(result.metrics == metrics, "the result changed after the run returned")

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

    def test_global_random_and_numpy_draws_match_serial(self):
        # Under SeedPlugin(auto_seed=True) a step's draws from the global
        # random module and NumPy's global generator depend on the replicate's
        # seed alone: a strategy that reseeds them (or draws from them) between
        # that seeding and the steps changes them. Draws that followed another
        # replicate's seeding or draw in the same process (threads, coroutines)
        # are left out: sharing global state that way is the user's documented
        # risk, and no strategy's fault.
        import pytest

        n = 8
        seed = 2024

        def experiment():
            plugins = [MarkSeeding(), SeedPlugin(seed=seed, auto_seed=True)]
            return self.experiment(steps=[DrawGlobalRandom(), record], plugins=plugins)

        with _global_random_state_kept(), warnings.catch_warnings():
            warnings.simplefilter("ignore", ReproducibilityWarning)  # threads share global state: said above
            expected = experiment().run(replicates=n, strategy="serial")
            result = self.run_with_strategy(experiment(), n)
        self.assert_strategy_ran(result)
        compared = 0
        for condition in CONDITIONS:
            ours, serial = result.metrics[condition], expected.metrics[condition]
            for i in range(n):
                if not ours["global_clean"][i]:
                    continue
                compared += 1
                for name, drawn_by in (("global_random", "random.random()"), ("global_numpy", "numpy.random.random()")):
                    self.expect(
                        ours[name][i] == serial[name][i],
                        f"reseeded (or drew from) the global random state: in replicate {i} ({condition}) a step's "
                        f"{drawn_by} gave {ours[name][i]!r} where a serial run under SeedPlugin(seed={seed}, "
                        f"auto_seed=True) gives {serial[name][i]!r}; leave random and NumPy's global generator to "
                        "SeedPlugin",
                    )
        if not compared:
            pytest.skip(
                "every draw followed another replicate's seeding or draw in the same process: replicates "
                "running at once share the global random state, so there was nothing to compare"
            )

    def test_progress_advances_to_the_total(self):
        # The run's progress (plain lines where standard error is not a
        # terminal) ends with how many replicates reached the core.
        n = 12
        shown = io.StringIO()
        with contextlib.redirect_stderr(shown):
            result = self.run_with_strategy(self.experiment(), n, progress=True)
        self.assert_strategy_ran(result)
        counts = re.findall(r"replicates: (\d+)/(\d+)", shown.getvalue())
        done = int(counts[-1][0]) if counts else 0
        self.expect(
            done == n,
            f"never advanced progress: it showed {done} of {n} replicates done at the end of the run; report each "
            "finished replicate (call replicate_fn in this process, or drive the replicates with "
            "crystallize_core.engine.drive)"
            if done == 0
            else f"progress showed {done} of {n} replicates done at the end of the run",
        )

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

    def test_an_experiment_defined_in_main_runs_as_a_script(self):
        # What users do: define the datasource and steps in the script they
        # run, under `if __name__ == "__main__":`. Workers elsewhere must get
        # what __main__ defines (by value, as cloudpickle sends it); a fork
        # inherits it, a spawned worker imports the script again.
        self.requires("ships_work")
        folder = self.scratch()
        try:
            (folder / "strategy.pickle").write_bytes(pickle.dumps(self.make_strategy()))
        except Exception as exc:
            self.fail(
                f"cannot be pickled into the script of the __main__ check ({type(exc).__name__}: {exc}): "
                "make_strategy() must return an object whose class is importable by module path and that "
                "holds its options, not live resources"
            )
        script = folder / "experiment_script.py"
        script.write_text(MAIN_SCRIPT)
        answer = folder / "answer.json"
        how = f"an experiment defined in __main__ and run as `python {script.name}` (with the __main__ guard)"
        status, output = _run_script(
            [sys.executable, script.name, "strategy.pickle", answer.name, "6"], folder, self.script_seconds
        )
        if status is None:
            self.fail(f"{how} did not finish within {self.script_seconds:g} s; its last lines:\n{output}")
        if status != 0 or not answer.exists():
            last = output.strip().splitlines()[-1:] or ["no output"]
            self.fail(
                f"{how} failed (exit status {status}) with {last[0]!r}: its workers must receive what __main__ "
                f"defines (by value, as cloudpickle sends it). The script's last lines:\n{output}"
            )
        ran = json.loads(answer.read_text())
        self.expect(ran["strategy"] == self.label, f"{how}: declined or was passed over, {ran['strategy']!r} ran it")
        self.expect(
            not ran["errors"],
            f"{how}: its replicates failed where a serial run's did not, so its workers could not use what "
            f"__main__ defines: {ran['errors'][:3]}",
        )
        self.expect(ran["same_metrics"], f"{how}: gave other metrics than a serial run")

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
        result = self.run_checked(
            self.experiment(steps=steps, plugins=[self.make_strategy()]), replicates=4, timeout=2.0
        )
        got = [(e.replicate, e.exc_type) for e in result.errors]
        self.expect(
            (1, "ReplicateTimeout") in got,
            "declares Capabilities(timeout=True) but does not enforce a timeout: replicate 1 sleeps 10 s, past the "
            f"run's timeout of 2 s, and was not stopped and recorded as ReplicateTimeout (errors: {got})",
        )
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
            self.run_checked(experiment, replicates=3, timeout=1.0)
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
        resumed = self.run_checked(experiment(self.make_strategy()), replicates=10, checkpoint=path)
        self.assert_strategy_ran(resumed)
        wrong = _runs_other_than(Counter(log.read_text().splitlines()), range(10), times=1)
        self.expect(not wrong, f"a run resumed from a checkpoint ran replicates other than exactly once: {wrong}")
        uninterrupted = experiment().run(replicates=10, strategy="serial")
        self.expect(
            resumed.metrics == uninterrupted.metrics, "a resumed run's metrics differ from an uninterrupted one"
        )
        self.expect(resumed.seeds == uninterrupted.seeds, "a resumed run's seeds differ from an uninterrupted one")


# --- wording --------------------------------------------------------------------------


def _count(items: Sequence[object], one: str, many: str | None = None) -> str:
    return f"{len(items)} {one if len(items) == 1 else (many or one + 's')}"


def _ran(log: Path) -> Counter[int]:
    """How many conditions of each replicate ran, from a [`RecordRuns`][] log."""
    if not log.exists():
        return Counter()
    return Counter(int(line.split()[0]) for line in log.read_text().splitlines())


def _runs_other_than(runs: Counter[str], replicates: Iterable[int], times: int, shown: int = 6) -> str:
    """In words, each ``"<replicate> <condition>"`` of ``runs`` (a
    [`RecordRuns`][] log) that ran other than ``times`` times; "" if none did."""
    wanted = {f"{i} {c}" for i in replicates for c in CONDITIONS}
    wrong = []
    for key in sorted(wanted | set(runs), key=lambda k: (int(k.split()[0]), k)):
        count = runs.get(key, 0)
        if key in wanted and count == times:
            continue
        replicate, condition = key.split(" ", 1)
        where = f"replicate {replicate} ({condition})"
        if key not in wanted:
            wrong.append(f"{where} ran {count} times though it was not asked for")
        elif count == 0:
            wrong.append(f"{where} never ran")
        else:
            wrong.append(f"{where} ran {count} time{'s' if count != 1 else ''}")
    more = f" and {len(wrong) - shown} more" if len(wrong) > shown else ""
    return ", ".join(wrong[:shown]) + more


def _what_the_answer_lacks(
    n: int, answers: list[tuple[object, list[object] | None]] | None, ran: Counter[int], broken: Exception
) -> str:
    """In words, what was wrong with a strategy's answer to a run of ``n``
    replicates that the core refused with ``broken``."""
    never_ran = [i for i in range(n) if not ran.get(i)]
    if never_ran:
        return f"dropped {_count(never_ran, 'replicate')} {never_ran}: never ran them ({broken})"
    kept = answers[0][1] if answers else None
    if kept is not None and all(isinstance(item, ReplicateResult) for item in kept):
        returned = [item.replicate for item in kept if isinstance(item, ReplicateResult)]
        left_out = sorted(set(range(n)) - set(returned))
        twice = sorted(i for i, count in Counter(returned).items() if count > 1)
        if left_out:
            return (
                f"dropped {_count(left_out, 'replicate')} {left_out}: ran them, then left their results out of "
                f"its answer ({broken})"
            )
        if twice:
            return f"returned the results of replicates {twice} more than once ({broken})"
        if returned != list(range(n)):
            return f"reordered its results: returned replicates in the order {returned}, not 0 to {n - 1}"
    return f"broke the run_experiment_loop contract: {broken}"


@contextlib.contextmanager
def _global_random_state_kept():
    """Put the global random state back as it was: the check that seeds it
    in this process must not change what the rest of the test session draws."""
    state = random.getstate()
    numpy = sys.modules.get("numpy")
    numpy_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        random.setstate(state)
        if numpy is not None:
            numpy.random.set_state(numpy_state)


def _run_script(command: list[str], folder: Path, seconds: float) -> tuple[int | None, str]:
    """Run ``command`` in ``folder`` in a session of its own, able to import
    what this process can; return its exit status (None past ``seconds``,
    when its whole process group is killed) and its last lines of output."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    # This process's import path, less what any interpreter of this
    # installation finds by itself: test folders, PYTHONPATH, a rootdir.
    extra = [
        path
        for path in (os.path.abspath(entry or os.curdir) for entry in sys.path)
        if not any(path == prefix or path.startswith(prefix + os.sep) for prefix in prefixes)
    ]
    inherited = os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([*extra, *([inherited] if inherited else [])])}
    process = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=seconds)
        status: int | None = process.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(OSError):
            if hasattr(os, "killpg"):  # the script and the workers it started
                import signal

                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        output, _ = process.communicate()
        status = None
    return status, "\n".join(output.splitlines()[-25:])


# --- discovery ------------------------------------------------------------------------


def assert_discoverable(name: str, strategy_class: type, *, distribution: str | None = None, **options: Any) -> object:
    """Check that ``strategy_class`` is installed as the strategy ``name``, and
    return ``load_strategy(name, **options)`` for further checks.

    The shared test of a strategy package's entry point (Hydra's plugins each
    have one ``test_discovery()``): exactly one entry point of that name in
    the group ``crystallize.strategies``, naming ``strategy_class`` (from
    ``distribution`` when given); listed as selectable by
    [`available_strategies`][crystallize_core.available_strategies]; loaded
    by name as an instance of ``strategy_class`` built with ``options``; and
    named ``name`` in results. Each failure names the strategy and says what
    to fix.
    """
    from importlib import metadata

    # The kit is imported by test modules: entry points are read by this check only.
    from crystallize_core.discovery import ENTRY_POINT_GROUP, available_strategies, identify, load_strategy

    def fail(what: str) -> NoReturn:
        raise AssertionError(f"strategy {name!r}: {what}")

    target = f"{strategy_class.__module__}:{strategy_class.__qualname__}"
    found = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        fail(
            f"no entry point of that name in the group {ENTRY_POINT_GROUP!r}: declare "
            f'[project.entry-points."{ENTRY_POINT_GROUP}"] {name} = "{target}" and install the package'
        )
    if len(found) > 1:
        fail(f"{len(found)} entry points have that name: {[ep.value for ep in found]}")
    (entry_point,) = found
    if entry_point.load() is not strategy_class:
        fail(f"its entry point names {entry_point.value!r}, not {target!r}")
    dist = getattr(entry_point, "dist", None)
    published_by = dist.metadata["Name"] if dist is not None else None
    if distribution is not None and published_by != distribution:
        fail(f"published by the distribution {published_by!r}, not {distribution!r}")
    (info,) = [info for info in available_strategies() if info.name == name]
    if info.blocked or info.error:
        fail(f"listed but cannot be selected here: {info.status}")
    strategy = load_strategy(name, **options)
    if not isinstance(strategy, strategy_class):
        fail(f"load_strategy({name!r}) returned {type(strategy).__qualname__}, not {strategy_class.__qualname__}")
    if identify(strategy)[0] != name:
        fail(f"results would name it {identify(strategy)[0]!r}, not {name!r}")
    return strategy
