"""The conformance kit catches strategies that break the contract.

Each seeded bug lives in a small, deliberately broken strategy; the kit runs
against it in a pytest of its own, as an author would run it, and must fail
the check that owns the bug with a message naming that strategy (never a
wrapper of the kit's) and the bug in words.
"""

import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ElementTree

import pytest

KIT_CHECKS = 26
#: Checks that apply only to what a strategy declares it can do (or to a
#: strategy that can decline), skipped for LoopStrategy.
CAPABILITY_CHECKS = 9

BROKEN_STRATEGIES = textwrap.dedent(
    """
    import pickle
    import random
    import subprocess
    import sys
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor

    from crystallize_core import Capabilities, hookimpl
    from crystallize_core.testing import LoopStrategy, StrategyConformance


    def in_order(replicate_fn, replicates, run_twice=False):
        # A correct loop (what finished reported itself to the run), but for run_twice.
        results = []
        for i in replicates:
            if run_twice:
                replicate_fn(i)
            results.append(replicate_fn(i))
        return results


    class DropsOne:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            n = experiment.replicates
            return in_order(replicate_fn, [i for i in range(n) if n == 1 or i != n // 2])


    class Reorders:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            results = in_order(replicate_fn, range(experiment.replicates))
            results[:2] = results[1::-1]
            return results


    class ShipsPerReplicate:
        # Pickles the replicate function with every task, never checks it
        # first, and hands results back only in its answer: the core's progress
        # never hears of them.
        capabilities = Capabilities(ships_work=True)

        def passed_back(self, results):
            return results

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            with ProcessPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(replicate_fn, i) for i in range(experiment.replicates)]
                try:
                    return self.passed_back([future.result() for future in futures])
                except BaseException as stopped:
                    for future in futures:
                        future.cancel()
                    if isinstance(stopped, KeyboardInterrupt):
                        done = [f for f in futures if f.done() and not f.cancelled() and f.exception() is None]
                        replicate_fn.record([f.result() for f in done])  # the partial result is what was reported
                    raise


    class SwallowsErrors(ShipsPerReplicate):
        def passed_back(self, results):
            return [result._replace(errors=()) for result in results]


    class Reseeds(LoopStrategy):
        # Seeds the global generators with the replicate's index, after SeedPlugin seeded them.
        @hookimpl
        def before_condition(self, replicate):
            random.seed(replicate)
            try:
                import numpy
            except ImportError:
                return
            numpy.random.seed(replicate)


    class RunsTwice:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            return in_order(replicate_fn, range(experiment.replicates), run_twice=True)


    STARTED = []


    class LeaksAProcess(LoopStrategy):
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            # A helper it never stops; it ends with this process, when its stdin closes.
            command = [sys.executable, "-c", "import sys; sys.stdin.read()"]
            STARTED.append(subprocess.Popen(command, stdin=subprocess.PIPE))
            return super().run_experiment_loop(experiment, replicate_fn)


    class LeaksAThread(LoopStrategy):
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            threading.Thread(target=threading.Event().wait, name="left-waiting", daemon=True).start()
            return super().run_experiment_loop(experiment, replicate_fn)


    class ClaimsTimeout(LoopStrategy):
        # Declares it enforces timeouts, and does not.
        capabilities = Capabilities(timeout=True)


    WORKER = (
        "import pickle, sys; replicate_fn, positions = pickle.load(sys.stdin.buffer); "
        "pickle.dump([replicate_fn(i) for i in positions], sys.stdout.buffer)"
    )


    class FreshInterpreterWorker:
        # Ships the replicate function, pickled by reference, to a fresh
        # interpreter, as a cluster's workers are: what the user's __main__
        # defines cannot be found there.
        capabilities = Capabilities(ships_work=True)

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            payload = pickle.dumps((replicate_fn, list(range(experiment.replicates))))
            done = subprocess.run([sys.executable, "-c", WORKER], input=payload, capture_output=True)
            if done.returncode:
                raise RuntimeError("the worker failed: " + done.stderr.decode()[-2000:])
            return pickle.loads(done.stdout)


    class TouchesLater:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            results = in_order(replicate_fn, range(experiment.replicates))

            def meddle():
                time.sleep(0.05)
                results.reverse()

            threading.Thread(target=meddle).start()
            return results


    class FallsBackButClaimsRetries:
        # Always declines, so serial runs everything in the test process: the
        # worker-death check must fail, not kill the test session.
        capabilities = Capabilities(retries_dead_workers=True)

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            return None


    class TestDropsOne(StrategyConformance):
        def make_strategy(self):
            return DropsOne()


    class TestReorders(StrategyConformance):
        def make_strategy(self):
            return Reorders()


    class TestShipsPerReplicate(StrategyConformance):
        def make_strategy(self):
            return ShipsPerReplicate()


    class TestSwallowsErrors(StrategyConformance):
        def make_strategy(self):
            return SwallowsErrors()


    class TestReseeds(StrategyConformance):
        def make_strategy(self):
            return Reseeds()


    class TestRunsTwice(StrategyConformance):
        def make_strategy(self):
            return RunsTwice()


    class TestLeaksAProcess(StrategyConformance):
        settle_seconds = 1.0

        def make_strategy(self):
            return LeaksAProcess()


    class TestLeaksAThread(StrategyConformance):
        settle_seconds = 1.0

        def make_strategy(self):
            return LeaksAThread()


    class TestClaimsTimeout(StrategyConformance):
        def make_strategy(self):
            return ClaimsTimeout()


    class TestFreshInterpreterWorker(StrategyConformance):
        def make_strategy(self):
            return FreshInterpreterWorker()


    class TestTouchesLater(StrategyConformance):
        def make_strategy(self):
            return TouchesLater()


    class TestFallsBack(StrategyConformance):
        strategy_name = "FallsBackButClaimsRetries"

        def make_strategy(self):
            return FallsBackButClaimsRetries()
    """
)

#: Each seeded bug: the strategy that has it, the check that must catch it,
#: and words its failure message must hold besides the strategy's name.
SEEDED_BUGS = {
    "drops a replicate": ("DropsOne", "test_results_complete_and_in_replicate_order", ["dropped 1 replicate [6]"]),
    "reorders results": ("Reorders", "test_results_complete_and_in_replicate_order", ["reordered its results"]),
    "swallows a captured error": (
        "SwallowsErrors",
        "test_errors_inside_replicates_are_captured",
        ["swallowed 3 errors that a step raised", "replicate 1 (treated): ValueError"],
    ),
    "reseeds the global random state": (
        "Reseeds",
        "test_global_random_and_numpy_draws_match_serial",
        ["reseeded (or drew from) the global random state", "replicate 0 (baseline)"],
    ),
    "runs a replicate twice": (
        "RunsTwice",
        "test_each_replicate_runs_exactly_once",
        ["replicate 0 (baseline) ran 2 times", "replicate 0 (treated) ran 2 times"],
    ),
    "leaks a process": ("LeaksAProcess", "test_leaves_no_process_or_thread_behind", ["left 1 process running"]),
    "leaks a thread": ("LeaksAThread", "test_leaves_no_process_or_thread_behind", ["left 1 thread running"]),
    "never advances progress": (
        "ShipsPerReplicate",
        "test_progress_advances_to_the_total",
        ["never advanced progress", "0 of 12 replicates"],
    ),
    "declares a timeout it does not enforce": (
        "ClaimsTimeout",
        "test_a_timeout_is_enforced",
        ["declares Capabilities(timeout=True) but does not enforce a timeout"],
    ),
    "cannot run what __main__ defines": (
        "FreshInterpreterWorker",
        "test_an_experiment_defined_in_main_runs_as_a_script",
        ["an experiment defined in __main__", "failed", "Can't get attribute"],
    ),
    "changes its answer after returning it": (
        "TouchesLater",
        "test_nothing_changes_after_the_run_returns",
        ["changed the list it returned after returning it"],
    ),
}


def run_kit(folder, *arguments):
    """Run pytest on the broken strategies in ``folder``, in a process of its own;
    return each test's outcome and failure message, by ``Class::check``."""
    (folder / "test_broken.py").write_text(BROKEN_STRATEGIES)
    report = folder / "report.xml"
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", f"--junitxml={report}", *arguments]
    completed = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    outcomes = {}
    for case in ElementTree.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname').rsplit('.', 1)[-1]}::{case.get('name')}"
        failure = case.find("failure")
        if failure is not None:
            outcomes[name] = ("failed", assertion_message(failure.text or ""))
        elif case.find("skipped") is not None:
            outcomes[name] = ("skipped", case.find("skipped").get("message") or "")
        elif case.find("error") is not None:
            outcomes[name] = ("error", case.find("error").get("message") or "")
        else:
            outcomes[name] = ("passed", "")
    return outcomes, completed.stdout[-4000:]


def assertion_message(report):
    """The whole message of the last AssertionError in a failure's report
    (the report's message attribute is cut short after a few lines)."""
    lines = report.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("E ") and "AssertionError: " in line]
    if not starts:
        return report
    message = []
    for line in lines[starts[-1] :]:
        if not line.startswith("E"):
            break
        message.append(line[1:].strip())
    return "\n".join(message).split("AssertionError: ", 1)[1]


@pytest.fixture(scope="module")
def seeded_outcomes(tmp_path_factory):
    """The kit's verdict on each seeded bug, from one pytest run of the checks that own them."""
    nodes = sorted({f"test_broken.py::Test{strategy}::{check}" for strategy, check, _ in SEEDED_BUGS.values()})
    return run_kit(tmp_path_factory.mktemp("seeded"), *nodes)


@pytest.mark.parametrize("bug", list(SEEDED_BUGS))
def test_the_kit_fails_each_seeded_bug_naming_the_strategy_and_the_bug(seeded_outcomes, bug):
    outcomes, output = seeded_outcomes
    strategy, check, words = SEEDED_BUGS[bug]
    outcome, message = outcomes[f"Test{strategy}::{check}"]
    assert outcome == "failed", f"{strategy} {bug}, yet {check} {outcome}: {message}\n{output}"
    assert f"strategy {strategy!r}: " in message, message
    assert "_KeepAnswer" not in message and "keep_answers" not in message, message
    for word in words:
        assert word in message, f"{word!r} is not in the message: {message}"


def test_kit_fails_exactly_the_broken_promises(tmp_path):
    # No check fails for a reason other than the strategy's bug.
    outcomes, output = run_kit(
        tmp_path, "-k", "RunsTwice or ShipsPerReplicate or TouchesLater or ClaimsTimeout or LeaksAThread"
    )
    failed = sorted(name for name, (outcome, _) in outcomes.items() if outcome != "passed" and outcome != "skipped")
    assert failed == [
        "TestClaimsTimeout::test_a_timeout_is_enforced",
        "TestLeaksAThread::test_ctrl_c_stops_promptly_with_the_finished_replicates",
        "TestLeaksAThread::test_leaves_no_process_or_thread_behind",
        "TestRunsTwice::test_each_replicate_runs_exactly_once",
        "TestRunsTwice::test_progress_advances_to_the_total",
        "TestRunsTwice::test_resuming_from_a_checkpoint_runs_only_what_is_missing",
        "TestShipsPerReplicate::test_a_worker_that_cannot_unpickle_the_experiment_stops_the_run_saying_why",
        "TestShipsPerReplicate::test_experiment_is_unpickled_at_most_once_per_worker",
        "TestShipsPerReplicate::test_progress_advances_to_the_total",
        "TestShipsPerReplicate::test_unpicklable_component_is_named_before_any_work",
        "TestTouchesLater::test_nothing_changes_after_the_run_returns",
    ], output


def test_a_strategy_that_falls_back_fails_the_checks_that_would_kill_without_killing(tmp_path):
    outcomes, output = run_kit(tmp_path, "-k", "TestFallsBack and dying")
    assert list(outcomes) == ["TestFallsBack::test_a_dying_worker_costs_only_its_replicate"], output
    outcome, message = outcomes["TestFallsBack::test_a_dying_worker_costs_only_its_replicate"]
    assert outcome == "failed" and "declined or was passed over: 'serial' ran the experiment instead" in message


def test_kit_passes_a_correct_strategy_and_skips_what_does_not_apply(pytester):
    pytester.makepyfile(
        test_good=textwrap.dedent(
            """
            from crystallize_core.testing import LoopStrategy, StrategyConformance

            class TestLoopStrategy(StrategyConformance):
                strategy_name = "LoopStrategy"

                def make_strategy(self):
                    return LoopStrategy()
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-rs")
    result.assert_outcomes(passed=KIT_CHECKS - CAPABILITY_CHECKS, skipped=CAPABILITY_CHECKS)
    assert "does not declare Capabilities(retries_dead_workers=True)" in "\n".join(result.outlines)
    assert "does not declare Capabilities(ships_work=True)" in "\n".join(result.outlines)


def test_the_shared_discovery_check_passes_an_installed_strategy_and_returns_it_built():
    from crystallize_core.testing import assert_discoverable
    from crystallize_serial import SerialExecution

    strategy = assert_discoverable("serial", SerialExecution, distribution="crystallize-serial", progress=True)
    assert isinstance(strategy, SerialExecution) and strategy.progress is True


@pytest.mark.parametrize(
    "name, distribution, message",
    [
        ("serail", None, "strategy 'serail': no entry point of that name in the group 'crystallize.strategies'"),
        ("serial", "crystallize-serial", "strategy 'serial': its entry point names 'crystallize_serial:Serial"),
    ],
)
def test_the_shared_discovery_check_fails_naming_the_strategy_and_the_fix(name, distribution, message):
    from crystallize_core.testing import LoopStrategy, assert_discoverable

    with pytest.raises(AssertionError, match=re.escape(message)):
        assert_discoverable(name, LoopStrategy, distribution=distribution)


def test_the_shared_discovery_check_names_a_distribution_that_does_not_publish_it():
    from crystallize_core.testing import assert_discoverable
    from crystallize_serial import SerialExecution

    with pytest.raises(AssertionError, match="strategy 'serial': published by the distribution 'crystallize-serial'"):
        assert_discoverable("serial", SerialExecution, distribution="someone-else")
