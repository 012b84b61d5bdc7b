"""Peak memory of a million no-op replicates that record one float metric, per strategy.

    python benchmarks/scale.py                  # 1,000,000 replicates
    python benchmarks/scale.py --replicates 10000

Each strategy runs in a subprocess of its own, so its peak resident memory
(and, for process workers, the largest worker's) is its own. Reported, never
asserted; the test suite asserts only completion under a generous ceiling.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    from crystallize_core import Experiment

    def nothing(ctx):
        return None

    def noop(data, ctx):
        ctx.metrics.add("x", 0.5)
        return data

    if __name__ == "__main__":
        began = time.perf_counter()
        result = Experiment(nothing, [noop]).run(replicates=int(sys.argv[2]), strategy=sys.argv[1])
        report = {
            "seconds": time.perf_counter() - began,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        }
        assert result.replicates == int(sys.argv[2]) and not result.errors
        assert result.summary()["baseline"]["x"].n == result.replicates  # checked after the peak is read
        print(json.dumps(report))
    """
)

STRATEGIES = {
    "serial": "serial",
    "threads": "parallel:executor_type='thread',max_workers=2",
    "processes": "parallel:executor_type='process',max_workers=2",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicates", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    print("| strategy | replicates | seconds | peak memory | largest worker |\n|---|---:|---:|---:|---:|")
    for name, spec in STRATEGIES.items():
        done = subprocess.run(
            [sys.executable, "-c", SCRIPT, spec, str(args.replicates)], capture_output=True, text=True, check=True
        )
        report = json.loads(done.stdout)
        worker = f"{report['worker_peak_mb']:.0f} MB" if name == "processes" else ""
        print(
            f"| {name} | {args.replicates:,} | {report['seconds']:.1f} | {report['peak_mb']:.0f} MB | {worker} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
