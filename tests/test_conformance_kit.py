"""The conformance kit catches strategies that break the contract (run through pytester, as an author would)."""

import textwrap

KIT_CHECKS = 23
#: Checks that apply only to what a strategy declares it can do, skipped for LoopStrategy.
CAPABILITY_CHECKS = 8

BROKEN_STRATEGIES = textwrap.dedent(
    """
    import threading
    import time
    from concurrent.futures import ProcessPoolExecutor

    from crystallize_core import Capabilities, hookimpl
    from crystallize_core.testing import LoopStrategy, StrategyConformance


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
        capabilities = Capabilities(ships_work=True)

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


    class ClaimsTimeout(LoopStrategy):
        # Declares it enforces timeouts, and does not.
        capabilities = Capabilities(timeout=True)


    class LeaksAThread(LoopStrategy):
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
            return super().run_experiment_loop(experiment, replicate_fn)


    class FallsBackButClaimsRetries:
        # Always declines, so serial runs everything in the test process: the
        # worker-death check must fail, not kill the test session.
        capabilities = Capabilities(retries_dead_workers=True)

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            return None


    class TestClaimsTimeout(StrategyConformance):
        def make_strategy(self):
            return ClaimsTimeout()


    class TestLeaksAThread(StrategyConformance):
        def make_strategy(self):
            return LeaksAThread()


    class TestFallsBack(StrategyConformance):
        strategy_name = "FallsBackButClaimsRetries"

        def make_strategy(self):
            return FallsBackButClaimsRetries()


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


def failed_checks(result):
    return sorted(line.split("::", 1)[1].split(" ")[0] for line in result.outlines if line.startswith("FAILED "))


def test_kit_fails_exactly_the_broken_promises(pytester):
    pytester.makepyfile(test_broken=BROKEN_STRATEGIES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-k", "not TestFallsBack")
    assert failed_checks(result) == [
        "TestClaimsTimeout::test_a_timeout_is_enforced",
        "TestLeaksAThread::test_ctrl_c_stops_promptly_with_the_finished_replicates",
        "TestLeaksAThread::test_leaves_no_process_or_thread_behind",
        "TestRunsTwice::test_each_replicate_runs_exactly_once",
        "TestRunsTwice::test_resuming_from_a_checkpoint_runs_only_what_is_missing",
        "TestShipsPerReplicate::test_a_worker_that_cannot_unpickle_the_experiment_stops_the_run_saying_why",
        "TestShipsPerReplicate::test_experiment_is_unpickled_at_most_once_per_worker",
        "TestShipsPerReplicate::test_unpicklable_component_is_named_before_any_work",
        "TestTouchesLater::test_result_list_is_not_touched_after_return",
    ], result.outlines[-40:]
    text = "\n".join(result.outlines)
    assert "strategy 'ClaimsTimeout'" in text and "a replicate past its timeout gave errors" in text
    assert "left processes [] and threads" in text


def test_a_strategy_that_falls_back_fails_the_checks_that_would_kill_without_killing(pytester):
    pytester.makepyfile(test_broken=BROKEN_STRATEGIES)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", "-k", "TestFallsBack and dying")
    assert failed_checks(result) == ["TestFallsBack::test_a_dying_worker_costs_only_its_replicate"]
    assert "declined or was passed over: 'serial' ran the experiment instead" in "\n".join(result.outlines)
    assert result.parseoutcomes()["failed"] == 1 and "passed" not in result.parseoutcomes()


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
