"""The conformance kit catches strategies that break the contract (run through pytester, as an author would)."""

import textwrap

KIT_CHECKS = 16

BROKEN_STRATEGIES = textwrap.dedent(
    """
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor

    from crystallize_core import hookimpl
    from crystallize_core.testing import StrategyConformance


    def in_order(replicate_fn, replicates, run_twice=False):
        # A correct loop (Ctrl-C reports what finished), but for run_twice.
        results = []
        try:
            for i in replicates:
                if run_twice:
                    replicate_fn(i)
                results.append(replicate_fn(i))
        except KeyboardInterrupt as interrupt:
            interrupt.completed = results
            raise
        return results


    class RunsTwice:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            return in_order(replicate_fn, range(experiment.replicates), run_twice=True)


    class ShipsPerReplicate:
        # Pickles the replicate function with every task, and never checks it first.
        ships_work = True

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            with ProcessPoolExecutor(max_workers=2) as pool:
                futures = [pool.submit(replicate_fn, i) for i in range(experiment.replicates)]
                try:
                    return [future.result() for future in futures]
                except BaseException as stopped:
                    for future in futures:
                        future.cancel()
                    if isinstance(stopped, KeyboardInterrupt):
                        done = [f for f in futures if f.done() and not f.cancelled() and f.exception() is None]
                        stopped.completed = [f.result() for f in done]
                    raise


    class TouchesLater:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            results = in_order(replicate_fn, range(experiment.replicates))

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
    failed = sorted(line.split("::", 1)[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED "))
    assert failed == [
        "TestRunsTwice::test_each_replicate_runs_exactly_once",
        "TestRunsTwice::test_resuming_from_a_checkpoint_runs_only_what_is_missing",
        "TestShipsPerReplicate::test_experiment_is_unpickled_at_most_once_per_worker",
        "TestShipsPerReplicate::test_unpicklable_component_is_named_before_any_work",
        "TestTouchesLater::test_result_list_is_not_touched_after_return",
    ], result.outlines[-40:]
    assert result.parseoutcomes()["passed"] == 3 * KIT_CHECKS - len(failed)


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
    result.assert_outcomes(passed=KIT_CHECKS)
