"""The conformance kit: hold a strategy to the ``run_experiment_loop`` contract.

Subclass [`StrategyConformance`][] in a test module, say how to build your
strategy, and pytest runs every check against real experiments:

    from crystallize_core.testing import StrategyConformance, assert_discoverable

    class TestMyStrategy(StrategyConformance):
        strategy_name = "mine"          # its entry point name

        def make_strategy(self):
            return MyStrategy(workers=2)

    def test_discovery():
        assert_discoverable("mine", MyStrategy, distribution="crystallize-mine")

Nothing is mocked: each check runs a real [`Experiment`][]
through your strategy, with probe components (datasources, steps, plugins)
defined at the top level of an importable module so that they can be pickled
into other processes; they are importable from here too, for tests of your
own. Override
[`make_declining_strategy`][crystallize_core.testing.StrategyConformance.make_declining_strategy]
if your strategy can decline. Add checks of your own beside the inherited ones.

The kit (its checks) lives in ``_kit``, the probe components in
``_probes``; this module only re-exports them.
"""

from __future__ import annotations

from crystallize_core.testing._kit import WATCHDOG_SECONDS, StrategyConformance, assert_discoverable
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
    peak_memory_mb,
    processes_started_since,
    record,
    wait_until,
)

__all__ = [
    "WATCHDOG_SECONDS",
    "CountUnpickles",
    "Decliner",
    "DelayEarlyReplicates",
    "DrawGlobalRandom",
    "FailOn",
    "HoldsBuffer",
    "InterruptAfter",
    "KillWorkerOn",
    "LoopStrategy",
    "MarkSeeding",
    "RecordRuns",
    "SleepEach",
    "SleepOn",
    "StrategyConformance",
    "UnpicklableError",
    "UnpicklesOnlyIn",
    "assert_discoverable",
    "describe_process",
    "live_child_processes",
    "live_threads",
    "numbers",
    "peak_memory_mb",
    "processes_started_since",
    "record",
    "wait_until",
]

#: Former names, still importable with a DeprecationWarning: name -> (what it is now, why it changed).
_RENAMED = {
    "Recorder": ("LoopStrategy", "it clashed with crystallize_core.checkpoint.Recorder"),
}


def __getattr__(name: str) -> object:
    renamed = _RENAMED.get(name)
    if renamed is None:
        raise AttributeError(f"module 'crystallize_core.testing' has no attribute {name!r}")
    import warnings

    new_name, why = renamed
    warnings.warn(
        f"crystallize_core.testing.{name} is deprecated, use {new_name} ({why})", DeprecationWarning, stacklevel=2
    )
    return globals()[new_name]
