"""The serial path of two checkouts of this repository, taking turns.

    git worktree add /tmp/before fe5b31a       # the core before the dispatch engine
    python benchmarks/serial_ab.py /tmp/before  # against this checkout

Each round runs each checkout's core in a fresh process: the best of 7 runs
of 2,000 no-op replicates (the overhead workload) under the serial strategy,
and a direct loop of the same two functions in the same process (with
``--seed``, the runs use ``SeedPlugin(seed=1)``). Prints the
medians over the rounds of serial / direct and of the cost per replicate
above the loop. The checkouts are put first on the import path, so an
installed crystallize-core does not matter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPLICATES = 2000

ROUND = r"""
import sys, time
sys.path[:0] = [ROOT, ROOT + "/plugins/crystallize-serial", BENCHMARKS]
from workloads import overhead_source, overhead_step
from crystallize_core import Experiment, SeedPlugin
from crystallize_serial import SerialExecution


class Metrics:
    __slots__ = ("value",)

    def add(self, name, value):
        self.value = value


class Ctx:
    __slots__ = ("replicate", "metrics")


def direct(n):
    out = []
    for i in range(n):
        ctx = Ctx()
        ctx.replicate, ctx.metrics = i, Metrics()
        overhead_step(overhead_source(ctx), ctx)
        out.append(ctx.metrics.value)
    return out


def ours(n):
    plugins = [SeedPlugin(seed=1)] if SEED else []
    result = Experiment(overhead_source, [overhead_step], plugins=plugins).run(replicates=n, strategy=SerialExecution())
    return result.metrics["baseline"]["value"]


def best(run, n, times=7):
    expected = run(n)
    seconds = []
    for _ in range(times):
        began = time.perf_counter()
        assert run(n) == expected
        seconds.append(time.perf_counter() - began)
    return min(seconds)


assert direct(N) == ours(N)
print(best(direct, N), best(ours, N))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", help="a checkout of this repository to compare with")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seed", action="store_true", help="runs with SeedPlugin(seed=1), as in the seeded row")
    args = parser.parse_args()
    checkouts = {f"before ({args.before})": str(Path(args.before).resolve()), "this checkout": str(HERE.parent)}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONDONTWRITEBYTECODE")}
    measured: dict[str, list[tuple[float, float]]] = {name: [] for name in checkouts}
    for _ in range(args.rounds):
        for name, root in checkouts.items():
            code = f"ROOT, BENCHMARKS, N, SEED = {root!r}, {str(HERE)!r}, {REPLICATES}, {args.seed}\n" + ROUND
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
            if done.returncode:
                sys.exit(f"{name}: {done.stderr[-2000:]}")
            direct, ours = map(float, done.stdout.split())
            measured[name].append((direct, ours))
    for name, rows in measured.items():
        ratio = statistics.median(ours / direct for direct, ours in rows)
        extra = statistics.median((ours - direct) / REPLICATES * 1e6 for direct, ours in rows)
        print(f"{name}: serial {ratio:.2f}x the direct loop, {extra:.2f} us per replicate above it", end="")
        print(f" ({len(rows)} rounds)")


if __name__ == "__main__":
    main()
