"""An I/O-bound experiment: every replicate waits on a remote service.

The datasource and the first step are coroutines, as code calling a web
service with an async client is; here `asyncio.sleep` stands in for the
network, so the example runs anywhere (docs/async.md shows the same with a
real HTTP client). With the `async` strategy, replicates wait together on one
event loop: 200 replicates of ~60 ms each take well under a second.

    crystallize run examples/async_quickstart.py:build_experiment --strategy async
    crystallize run examples/async_quickstart.py:build_experiment --strategy async -o rate_limit=100
    python examples/async_quickstart.py

Every other strategy runs it too, with the same numbers, waiting one replicate
(or one per thread) at a time.
"""

from __future__ import annotations

import asyncio
import statistics
import sys

from crystallize_core import Experiment, Pipeline, SeedPlugin, Treatment


async def fetch_readings(ctx):
    """The datasource: a batch of sensor readings from a (simulated) remote service."""
    await asyncio.sleep(ctx.rng.uniform(0.02, 0.04))  # the round trip
    return [1.0 + ctx.rng.gauss(0.0, 0.1) for _ in range(50)]


async def calibrate(readings, ctx):
    """A second remote call: the service applies the condition's gain."""
    await asyncio.sleep(0.02)
    return [x * ctx.get("gain", 1.0) for x in readings]


def summarise(readings, ctx):
    """A plain step: quick, so it can run on the event loop between awaits."""
    ctx.metrics.add("mean", statistics.fmean(readings))
    ctx.metrics.add("spread", statistics.stdev(readings))
    return readings


def build_experiment() -> Experiment:
    return Experiment(
        datasource=fetch_readings,
        pipeline=Pipeline([calibrate, summarise]),
        # auto_seed=False: the steps draw from ctx.rng, so nothing global needs seeding.
        plugins=[SeedPlugin(seed=7, auto_seed=False)],
        treatments=[Treatment("boosted", {"gain": 1.2})],
        replicates=200,
    )


if __name__ == "__main__":
    strategy = sys.argv[1] if len(sys.argv) > 1 else "async"
    result = build_experiment().run(strategy=strategy, progress=True)
    print(f"strategy: {result.strategy} {result.strategy_version}")
    print(result.format_summary())
