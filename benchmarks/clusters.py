"""Crystallize's cluster strategies beside Ray and Dask used directly, on one machine.

    python benchmarks/clusters.py              # both engines, both workloads (about a minute)
    python benchmarks/clusters.py --quick      # tiny sizes, one round: checks values, not speed
    python benchmarks/clusters.py --only ray   # one engine

One local Ray instance (``num_cpus=2``) and one Dask ``LocalCluster`` (2
single-threaded worker processes) are started before anything is timed and
serve both contenders of each engine, so no start-up is counted; each
contender runs once untimed first, so that worker processes exist and have
imported what they need. Both contenders of an engine share its connection:
the Ray strategy uses this process's Ray connection, the Dask strategy (given
the scheduler's address) this process's default ``Client``. The rest of what
a crystallize run does is counted. Every returned value is checked; a wrong
one fails the run (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import workloads as w

from crystallize_core import Experiment

HERE = Path(__file__).resolve().parent
WORKERS = 2


@dataclass
class Sizes:
    overhead: int = 2000
    cpu: int = 8
    cpu_seconds: float = 0.25
    repeat: int = 5


QUICK = Sizes(overhead=200, cpu=4, cpu_seconds=0.01, repeat=1)


@dataclass
class Row:
    workload: str
    contender: str
    seconds: float
    replicates: int
    baseline: str = ""


@dataclass
class Report:
    rows: list[Row]
    wrong: list[str]

    def ratio(self, row: Row) -> float:
        """``row``'s time over its baseline's, measured in the same run."""
        return row.seconds / next(
            r.seconds for r in self.rows if (r.workload, r.contender) == (row.workload, row.baseline)
        )

    def table(self) -> str:
        """The rows in the shape of benchmarks/README.md, then each crystallize row against the 2x target."""
        lines = ["| workload | contender | median | per replicate | vs | ratio |", "|---|---|---:|---:|---|---:|"]
        for r in self.rows:
            ratio = f"{self.ratio(r):.2f}x" if r.baseline else ""
            per = f"{r.seconds / r.replicates * 1e6:,.1f} us"
            lines.append(
                f"| {r.workload} | {r.contender} | {r.seconds * 1e3:,.1f} ms | {per} | {r.baseline} | {ratio} |"
            )
        lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
        for r in (r for r in self.rows if r.baseline):
            met = "yes" if self.ratio(r) <= 2 else "NO"
            lines.append(f"| {r.workload}, {r.contender}: <= 2x {r.baseline} | {self.ratio(r):.2f}x | {met} |")
        return "\n".join(lines)


def measure(
    report: Report, workload: str, contenders: dict[str, tuple[Callable[[], list], str]], expected: list, repeat: int
) -> None:
    """Run each contender once untimed (worker processes start and import what
    they need), then ``repeat`` timed rounds taking turns; record the medians."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(repeat + 1):
        for name, (run, _) in contenders.items():
            began = time.perf_counter()
            values = run()
            took = time.perf_counter() - began
            if list(values) != expected:
                report.wrong.append(f"{workload}/{name}")
                print(f"  WRONG VALUES from {workload}/{name}", file=sys.stderr)
            if round_:
                times[name].append(took)
    for name, (_, baseline) in contenders.items():
        row = Row(workload, name, statistics.median(times[name]), len(expected), baseline)
        report.rows.append(row)
        print(f"  {workload:9} {name:28} {row.seconds * 1e3:10.2f} ms", flush=True)


def run_chunk(fn: Callable[[int], int], start: int, stop: int) -> list[int]:
    """What a direct user submits as one task: ``fn`` over a range of indices."""
    return [fn(i) for i in range(start, stop)]


def run_chunk_as_dict(fn: Callable[[int], int], start: int, stop: int) -> dict[str, list[int]]:
    """:func:`run_chunk`'s values under one key: dask sends a returned list item by
    item (2,000 ints took 100-170 ms here), a dict in one message."""
    return {"values": run_chunk(fn, start, stop)}


def spans(n: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, n)) for start in range(0, n, chunk)]


def ours(source, step, n: int, strategy) -> Callable[[], list]:
    def run():
        result = Experiment(source, [step]).run(replicates=n, strategy=strategy, progress=False)
        if result.errors:
            raise RuntimeError(f"replicate errors: {result.errors[:3]}")
        return result.metrics["baseline"]["value"]

    return run


def ray_direct(fn, n: int, chunk: int) -> Callable[[], list]:
    """``@ray.remote`` tasks over chunks, then one ``ray.get``."""
    import ray

    task = ray.remote(num_cpus=1)(run_chunk)

    def run():
        parts = ray.get([task.remote(fn, start, stop) for start, stop in spans(n, chunk)])
        return [value for part in parts for value in part]

    return run


def dask_direct(client, fn, n: int, chunk: int) -> Callable[[], list]:
    """``client.submit`` over chunks, then one ``client.gather``."""

    def run():
        futures = [client.submit(run_chunk_as_dict, fn, start, stop, pure=False) for start, stop in spans(n, chunk)]
        return [value for part in client.gather(futures) for value in part["values"]]

    return run


@dataclass
class Workload:
    name: str
    n: int
    chunk: int  # the direct contenders' replicates per task
    raw: Callable[[int], int]
    source: Callable
    step: Callable
    expected: list


def workloads(sizes: Sizes) -> list[Workload]:
    n, k, loops = sizes.overhead, sizes.cpu, w.calibrate_cpu(sizes.cpu_seconds)
    expected = [w.overhead_expected(i) for i in range(n)]
    overhead = Workload("overhead", n, n // (WORKERS * 4), w.overhead_raw, w.overhead_source, w.overhead_step, expected)
    cpu = Workload("cpu", k, 1, w.CpuRaw(loops), w.CpuSource(loops), w.cpu_step, [w.spin(i, loops) for i in range(k)])
    return [overhead, cpu]


def bench_ray(report: Report, sizes: Sizes, loads: list[Workload]) -> None:
    import ray

    from crystallize_ray import RayExecution

    # The workers need this folder on their path to import the workloads.
    ray.init(
        num_cpus=WORKERS,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE)}},
    )
    try:
        for load in loads:
            direct = f"ray direct, {len(spans(load.n, load.chunk))} tasks"
            contenders = {
                direct: (ray_direct(load.raw, load.n, load.chunk), ""),
                "crystallize ray": (ours(load.source, load.step, load.n, RayExecution()), direct),
            }
            measure(report, load.name, contenders, load.expected, sizes.repeat)
    finally:
        ray.shutdown()


def bench_dask(report: Report, sizes: Sizes, loads: list[Workload]) -> None:
    from distributed import Client, LocalCluster

    from crystallize_dask import DaskExecution

    cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
    with cluster, Client(cluster) as client:
        for load in loads:
            direct = f"dask direct, {len(spans(load.n, load.chunk))} tasks"
            strategy = DaskExecution(address=cluster.scheduler_address, n_workers=WORKERS)
            contenders = {
                direct: (dask_direct(client, load.raw, load.n, load.chunk), ""),
                "crystallize dask": (ours(load.source, load.step, load.n, strategy), direct),
            }
            measure(report, load.name, contenders, load.expected, sizes.repeat)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: checks, not measurements")
    parser.add_argument("--repeat", type=int, help="rounds per measurement (median taken)")
    parser.add_argument("--only", choices=["ray", "dask"], help="one engine")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    if args.repeat:
        sizes.repeat = args.repeat
    loads = workloads(sizes)
    report = Report([], [])
    load_before = load_average()
    for engine, bench in (("ray", bench_ray), ("dask", bench_dask)):
        if args.only in (None, engine):
            print(f"{engine}:", flush=True)
            bench(report, sizes, loads)
    machine = f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs"
    print(f"\n{machine}; medians of {sizes.repeat} round(s); {WORKERS} workers")
    print(f"load average (1, 5, 15 min) before: {load_before}; after: {load_average()}\n")
    print(report.table())
    if report.wrong:
        print(f"\nwrong values from: {', '.join(report.wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
