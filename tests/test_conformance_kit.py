"""The conformance kit catches strategies that break the contract (run through pytester, as an author would)."""

import textwrap

BROKEN_STRATEGIES = textwrap.dedent(
    """
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor

    from crystallize_core import hookimpl
    from crystallize_core.testing import StrategyConformance


    class RunsTwice:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            for i in range(experiment.replicates):
                replicate_fn(i)
            return [replicate_fn(i) for i in range(experiment.replicates)]


    class ShipsPerReplicate:
        ships_work = True

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            with ProcessPoolExecutor(max_workers=2) as pool:
                return list(pool.map(replicate_fn, range(experiment.replicates)))


    class TouchesLater:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            results = [replicate_fn(i) for i in range(experiment.replicates)]

            def meddle():
                time.sleep(0.05)
                results.reverse()

            threading.Thread(target=meddle).start()
            return results


    class TestRunsTwice(StrategyConformance):
        def make_strategy(self):
            return RunsTwice()


    class TestShipsPerReplicate(StrategyConformance):
        def make_strategy(self):
            return ShipsPerReplicate()


    class TestTouchesLater(StrategyConformance):
        def make_strategy(self):
            return TouchesLater()
    """
)


def test_kit_fails_exactly_the_broken_promises(pytester):
    pytester.makepyfile(test_broken=BROKEN_STRATEGIES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    failed = sorted(report.split("::", 1)[1].split(" ")[0] for report in result.outlines if report.startswith("FAILED"))
    assert failed == [
        "TestRunsTwice::test_each_replicate_runs_exactly_once",
        "TestShipsPerReplicate::test_experiment_is_unpickled_at_most_once_per_worker",
        "TestShipsPerReplicate::test_unpicklable_component_is_named_before_any_work",
        "TestTouchesLater::test_result_list_is_not_touched_after_return",
    ], result.outlines[-30:]
    outcomes = result.parseoutcomes()
    assert outcomes["passed"] > 20


def test_kit_passes_a_correct_strategy(pytester):
    pytester.makepyfile(
        test_good=textwrap.dedent(
            """
            from crystallize_core.testing import Recorder, StrategyConformance

            class TestRecorder(StrategyConformance):
                strategy_name = "recorder"

                def make_strategy(self):
                    return Recorder()
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=11)
