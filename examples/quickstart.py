"""A small experiment: does doubling the signal double the measured total?

Run it directly, choosing a strategy by name (default: parallel processes):

    python examples/quickstart.py
    python examples/quickstart.py serial
    python examples/quickstart.py "parallel:executor_type=thread"

or through the command line, which finds `build_experiment` by itself:

    crystallize run examples/quickstart.py:build_experiment --strategy parallel -o executor_type=process
"""

from __future__ import annotations

import sys

from crystallize_core import Experiment, Pipeline, SeedPlugin, Treatment


def noisy_signal(ctx):
    """The datasource: 200 noisy samples of a constant signal."""
    return [1.0 + ctx.rng.gauss(0.0, 0.1) for _ in range(200)]


def scale(data, ctx):
    return [x * ctx.get("factor", 1.0) for x in data]


def heavy_computation(data, ctx):
    """Stands in for real work: enough arithmetic to notice parallelism."""
    acc = 0.0
    for _ in range(200):
        acc = sum(x * x for x in data) ** 0.5
    ctx.metrics.add("norm", acc)
    return data


def measure(data, ctx):
    ctx.metrics.add("total", sum(data))
    ctx.metrics.add("max", max(data))
    return data


def build_experiment() -> Experiment:
    return Experiment(
        datasource=noisy_signal,
        pipeline=Pipeline([scale, heavy_computation, measure]),
        # Randomness comes from ctx.rng only, so no global state needs seeding,
        # and threads give the same numbers as processes.
        plugins=[SeedPlugin(seed=7, auto_seed=False)],
        treatments=[Treatment("double", {"factor": 2.0}), Treatment("half", {"factor": 0.5})],
        replicates=40,
    )


if __name__ == "__main__":  # worker processes may import this module again
    strategy = sys.argv[1] if len(sys.argv) > 1 else "parallel:executor_type=process"
    result = build_experiment().run(strategy=strategy, progress=True)
    print(f"strategy: {result.strategy} {result.strategy_version}")
    print(result.format_summary())
