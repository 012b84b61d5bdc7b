"""The first run in a fresh process: what a script pays the first time it runs replicates on processes.

    python benchmarks/first_run.py              # 2,000 no-op replicates and the 50 MB payload study, 2 workers
    python benchmarks/first_run.py --rounds 11  # more fresh processes per contender
    python benchmarks/first_run.py --quick      # tiny sizes, one round: checks every contender still works

Each measurement is a fresh interpreter (cached bytecode, as installed
packages have it) that imports what its script needs to define the work,
then times everything the first run costs: importing the pool or the
strategy, starting the workers, shipping the work, collecting the values
and shutting the workers down. ``crystallize`` contenders run
``Experiment.run`` with ``ParallelExecution(executor_type="process")``
(given as an object, and by name, which also reads the installed entry
points); the baselines are the raw ``concurrent.futures`` pool started the
same way: ``ProcessPoolExecutor.map`` with a chunksize of
replicates / (4 x workers), and, for the payload, a pool that ships the
50 MB object through its initializer. Contenders take turns (round robin);
the table shows medians, and ratios against the baseline measured in the
same run. Every returned value is checked. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

PRELUDE = f"""
import sys, time
sys.path.insert(0, {str(HERE)!r})
import workloads as w
N, WORKERS, SIZE = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
"""

RAW_OVERHEAD = """
began = time.perf_counter()
from concurrent.futures import ProcessPoolExecutor
with ProcessPoolExecutor(WORKERS) as pool:
    values = list(pool.map(w.overhead_raw, range(N), chunksize=max(1, N // (4 * WORKERS))))
took = time.perf_counter() - began
assert values == [w.overhead_expected(i) for i in range(N)]
print(took)
"""

OURS_OVERHEAD = """
from crystallize_core import Experiment
experiment = Experiment(w.overhead_source, [w.overhead_step])
began = time.perf_counter()
{strategy}
result = experiment.run(replicates=N, strategy=strategy)
took = time.perf_counter() - began
assert result.metrics["baseline"]["value"] == [w.overhead_expected(i) for i in range(N)]
print(took)
"""

RAW_PAYLOAD = """
payload = w.make_payload(SIZE)
began = time.perf_counter()
from concurrent.futures import ProcessPoolExecutor
with ProcessPoolExecutor(WORKERS, initializer=w.payload_init, initargs=(payload,)) as pool:
    values = list(pool.map(w.payload_raw, range(N), chunksize=max(1, N // (4 * WORKERS))))
took = time.perf_counter() - began
assert values == [w.payload_expected(i, len(payload)) for i in range(N)]
print(took)
"""

OURS_PAYLOAD = """
from crystallize_core import Experiment
payload = w.make_payload(SIZE)
experiment = Experiment(w.PayloadSource(payload), [w.payload_step])
began = time.perf_counter()
{strategy}
result = experiment.run(replicates=N, strategy=strategy)
took = time.perf_counter() - began
assert result.metrics["baseline"]["value"] == [w.payload_expected(i, len(payload)) for i in range(N)]
print(took)
"""

AS_OBJECT = (
    "from crystallize_parallel import ParallelExecution\n"
    "strategy = ParallelExecution(executor_type='process', max_workers=WORKERS)"
)
BY_NAME = "strategy = f'parallel:executor_type=process,max_workers={WORKERS}'"


def contenders(workers: int) -> dict[str, list[tuple[str, str, str | None]]]:
    """workload -> [(contender, script, baseline)]; the baseline comes first."""
    chunk = f"chunksize=replicates/(4 x {workers})"
    return {
        "first run, 2,000 no-op replicates": [
            (f"ProcessPoolExecutor.map {chunk}", RAW_OVERHEAD, None),
            ("crystallize processes, strategy object", OURS_OVERHEAD.format(strategy=AS_OBJECT), "raw"),
            ("crystallize processes, strategy by name", OURS_OVERHEAD.format(strategy=BY_NAME), "raw"),
        ],
        "first run, 50 MB payload, 200 replicates": [
            (f"ProcessPoolExecutor + initializer, {chunk}", RAW_PAYLOAD, None),
            ("crystallize processes, strategy object", OURS_PAYLOAD.format(strategy=AS_OBJECT), "raw"),
        ],
    }


def fresh(script: str, n: int, workers: int, size: int) -> float:
    """Run ``script`` in a fresh interpreter and return the seconds it printed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE" and not k.startswith("CRYSTALLIZE_")}
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + script, str(n), str(workers), str(size)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise SystemExit(f"a contender failed:\n{done.stdout}{done.stderr}")
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="fresh processes per contender (default 9)")
    parser.add_argument("--workers", type=int, default=2, help="workers in every pool (default 2)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: values only")
    args = parser.parse_args(argv)
    rounds = 1 if args.quick else args.rounds
    sizes = {
        "first run, 2,000 no-op replicates": (20 if args.quick else 2000, 0),
        "first run, 50 MB payload, 200 replicates": (8, 1024 * 1024) if args.quick else (200, 50 * 1024 * 1024),
    }
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"CPython {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}, "
        f"{args.workers} workers, {rounds} fresh processes per contender, load average {load:.1f} before"
    )
    rows = []
    for workload, entries in contenders(args.workers).items():
        n, size = sizes[workload]
        for _, script, _ in entries:  # writes the bytecode caches, warms the page cache
            fresh(script, n, args.workers, size)
        times: dict[str, list[float]] = {name: [] for name, _, _ in entries}
        for _ in range(rounds):
            for name, script, _ in entries:
                times[name].append(fresh(script, n, args.workers, size))
        baseline = statistics.median(times[entries[0][0]])
        for name, _, against in entries:
            median = statistics.median(times[name])
            ratio = f"{median / baseline:.2f}x" if against else ""
            rows.append((workload, name, median, entries[0][0] if against else "", ratio))
    print()
    print("| workload | contender | median | vs | ratio |")
    print("|---|---|---:|---|---:|")
    for workload, name, median, against, ratio in rows:
        print(f"| {workload} | {name} | {median * 1000:,.1f} ms | {against} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
