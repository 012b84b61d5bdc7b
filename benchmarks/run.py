"""Crystallize side by side with the alternatives, measured in one run on this machine.

    python benchmarks/run.py                 # the full suite (a few minutes)
    python benchmarks/run.py --quick         # tiny sizes: checks every contender still works
    python benchmarks/run.py --json out.json # also write every measurement as JSON
    python benchmarks/run.py --workers 16    # size every pool for 16 workers (default 2, the CI machine's)

Every contender's returned values are checked against the expected ones; a
wrong value fails the run (exit status 1). Times are medians of ``--repeat``
runs; ratios compare each contender with the baseline named beside it,
measured in the same run. Targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import workloads as w  # noqa: E402

from crystallize_async import AsyncExecution  # noqa: E402
from crystallize_core import Experiment, SeedPlugin  # noqa: E402
from crystallize_parallel import ParallelExecution  # noqa: E402
from crystallize_serial import SerialExecution  # noqa: E402

#: Workers in every pool, ours and the alternatives' (``--workers``).
WORKERS = 2
ML_VERSION = "0.27.0"
ML_SCRATCH = tempfile.mkdtemp(prefix="crystallize-ml-bench-")


@dataclass
class Sizes:
    overhead: int = 2000
    cpu: int = 16
    cpu_seconds: float = 0.25
    payload_bytes: int = w.PAYLOAD_BYTES
    payload: int = 200
    io: int = 64
    io_threads: int = 16
    numeric: int = 40
    aio: int = 1000
    aio_concurrency: int = 100
    repeat: int = 5
    import_repeat: int = 20
    unrelated_distributions: int = 200


QUICK = Sizes(
    overhead=200,
    cpu=4,
    cpu_seconds=0.01,
    payload_bytes=1024 * 1024,
    payload=20,
    io=16,
    io_threads=8,
    numeric=4,
    aio=200,
    aio_concurrency=100,
    repeat=1,
    import_repeat=2,
    unrelated_distributions=20,
)


@dataclass
class Row:
    workload: str
    contender: str
    seconds: float
    replicates: int
    baseline: str = ""
    ratio: float | None = None
    note: str = ""

    @property
    def per_replicate_us(self) -> float:
        return self.seconds / self.replicates * 1e6 if self.replicates else 0.0


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        print(f"  {row.workload:9} {row.contender:34} {row.seconds * 1e3:10.2f} ms", flush=True)
        return row

    def find(self, workload: str, contender: str) -> Row | None:
        return next((r for r in self.rows if r.workload == workload and r.contender == contender), None)


@dataclass
class Contender:
    run: Callable[[], object]  # returns the values, or Measured when it times itself
    baseline: str = ""
    max_runs: int | None = None  # for contenders too slow to repeat as often as the rest


@dataclass
class Measured:
    """Values and the seconds a contender measured itself (in another process)."""

    values: list
    seconds: float


def measure(report: Report, workload: str, contenders: dict[str, Contender], expected: list, n: int, repeat: int):
    """Time every contender ``repeat`` times, taking turns, so that drift in the
    machine's speed affects all of them alike; record the medians."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for round_ in range(repeat):
        for name, contender in contenders.items():
            if contender.max_runs is not None and round_ >= contender.max_runs:
                continue
            began = time.perf_counter()
            values = contender.run()
            took = time.perf_counter() - began
            if isinstance(values, Measured):
                values, took = values.values, values.seconds
            if list(values) != expected:
                report.wrong.append(f"{workload}/{name}")
                print(f"  WRONG VALUES from {workload}/{name}", file=sys.stderr)
            times[name].append(took)
    for name, contender in contenders.items():
        report.add(Row(workload, name, statistics.median(times[name]), n, contender.baseline))


# --- contenders -------------------------------------------------------------------


def ours(source, step, n: int, strategy, checkpoints: str | None = None, plugins=()) -> Callable[[], list]:
    """Our run; with ``checkpoints`` (a folder), each run writes a fresh checkpoint there."""
    runs = iter(range(1_000_000))

    def run():
        checkpoint = None if checkpoints is None else os.path.join(checkpoints, f"run-{next(runs)}.sqlite")
        experiment = Experiment(source, [step], plugins=plugins)
        result = experiment.run(replicates=n, strategy=strategy, checkpoint=checkpoint)
        if result.errors:
            raise RuntimeError(f"replicate errors: {result.errors[:3]}")
        return result.metrics["baseline"]["value"]

    return run


def our_strategies(workers: int) -> dict[str, Callable[[], object]]:
    return {
        "crystallize serial": lambda: SerialExecution(),
        "crystallize threads": lambda: ParallelExecution(executor_type="thread", max_workers=workers),
        "crystallize processes": lambda: ParallelExecution(executor_type="process", max_workers=workers),
    }


def direct_loop(source, step, n: int) -> Callable[[], list]:
    """The same two functions called in a plain loop with the least context they need."""

    class Metrics(dict):
        add = dict.__setitem__

    class Ctx:
        __slots__ = ("metrics", "replicate")

    def run():
        values = []
        for i in range(n):
            ctx = Ctx()
            ctx.replicate, ctx.metrics = i, Metrics()
            step(source(ctx), ctx)
            values.append(ctx.metrics["value"])
        return values

    return run


def seeded_direct_loop(source, step, n: int) -> Callable[[], list]:
    """:func:`direct_loop`, seeding the global ``random`` before each replicate as
    ``SeedPlugin`` does (with a 32-bit seed): what that seeding costs a loop
    written by hand (and one more call, about 0.1 us)."""
    import random

    def seeded_source(ctx):
        random.seed(ctx.replicate)
        return source(ctx)

    return direct_loop(seeded_source, step, n)


def thread_map(fn, n: int, workers: int) -> Callable[[], list]:
    def run():
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(fn, range(n)))

    return run


def process_map(fn, n: int, workers: int, chunksize: int, initializer=None, initargs=()) -> Callable[[], list]:
    def run():
        with ProcessPoolExecutor(max_workers=workers, initializer=initializer, initargs=initargs) as pool:
            return list(pool.map(fn, range(n), chunksize=chunksize))

    return run


def gather_under_semaphore(coroutine_fn, n: int, concurrency: int) -> Callable[[], list]:
    """What an asyncio user writes by hand: every call a task, at most ``concurrency`` running."""
    import asyncio

    async def main():
        semaphore = asyncio.Semaphore(concurrency)

        async def one(i):
            async with semaphore:
                return await coroutine_fn(i)

        return await asyncio.gather(*(one(i) for i in range(n)))

    return lambda: asyncio.run(main())


def joblib_run(workload: str, n: int, workers: int, backend: str, arg: int = 0) -> Callable[[], Measured]:
    """joblib's ``Parallel`` in a fresh process each run (``joblib_runner.py``),
    timed there: each run pays for its workers, as every other contender's
    does, and NumPy, which joblib imports, stays out of this process."""

    def run() -> Measured:
        done = subprocess.run(
            [sys.executable, str(HERE / "joblib_runner.py"), workload, backend, str(n), str(workers), str(arg)],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"joblib {workload}/{backend} failed: {done.stderr[-1500:]}")
        document = json.loads(done.stdout.strip().splitlines()[-1])
        return Measured(document["values"], document["seconds"])

    return run


# --- crystallize-ml 0.27 in its own environment ------------------------------------


def ml_environment(cache: Path) -> Path | None:
    home = cache / f"crystallize-ml-{ML_VERSION}"
    python = home / "bin" / "python"
    if not python.exists():
        print(f"setting up crystallize-ml {ML_VERSION} in {home} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(home)
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"crystallize-ml=={ML_VERSION}"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            print(f"  could not install crystallize-ml: {done.stderr[-500:]}", file=sys.stderr)
            return None
    return python


def ml_contender(python: Path, workload: str, mode: str, n: int, workers: int, arg: int = 0) -> Callable[[], Measured]:
    def run() -> Measured:
        done = subprocess.run(
            [str(python), str(HERE / "ml_runner.py"), workload, mode, str(n), str(workers), "1", str(arg)],
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=ML_SCRATCH,  # crystallize-ml writes its artifacts to ./data
        )
        if done.returncode != 0:
            raise RuntimeError(f"crystallize-ml {workload}/{mode} failed: {done.stderr[-1500:]}")
        document = json.loads(done.stdout.strip().splitlines()[-1])
        return Measured(document["values"], document["times"][0])

    return run


def ml_name(mode: str) -> str:
    return f"crystallize-ml {ML_VERSION} {'threads' if mode == 'thread' else mode}"


# --- workloads ----------------------------------------------------------------------


def bench_overhead(report: Report, sizes: Sizes, ml: Path | None) -> None:
    n, expected = sizes.overhead, [w.overhead_expected(i) for i in range(sizes.overhead)]
    chunk = max(1, n // (WORKERS * 4))
    process_map_name = f"ProcessPoolExecutor.map chunksize={chunk}"
    strategies = our_strategies(WORKERS)
    contenders = {
        "direct loop": Contender(direct_loop(w.overhead_source, w.overhead_step, n)),
        "ThreadPoolExecutor.map": Contender(thread_map(w.overhead_raw, n, WORKERS)),
        process_map_name: Contender(process_map(w.overhead_raw, n, WORKERS, chunk)),
        "joblib loky auto-batch": Contender(joblib_run("overhead", n, WORKERS, "loky"), process_map_name),
    }
    baselines = {"serial": "direct loop", "thread": "ThreadPoolExecutor.map", "process": process_map_name}
    for mode, name in [
        ("serial", "crystallize serial"),
        ("thread", "crystallize threads"),
        ("process", "crystallize processes"),
    ]:
        run = ours(w.overhead_source, w.overhead_step, n, strategies[name]())
        contenders[name] = Contender(run, baselines[mode])
    # Seeding global random state before each condition, as pairing needs.
    run = ours(w.overhead_source, w.overhead_step, n, strategies["crystallize serial"](), plugins=[SeedPlugin(seed=1)])
    contenders["crystallize serial + SeedPlugin"] = Contender(run, "direct loop")
    contenders["direct loop + random.seed"] = Contender(
        seeded_direct_loop(w.overhead_source, w.overhead_step, n), "direct loop"
    )
    # A checkpoint's own cost: the same serial run, writing every replicate to a new file.
    checkpoints = tempfile.mkdtemp(prefix="crystallize-bench-checkpoints-")
    run = ours(w.overhead_source, w.overhead_step, n, strategies["crystallize serial"](), checkpoints)
    contenders["crystallize serial + checkpoint"] = Contender(run, "crystallize serial")
    if ml is not None:
        for mode, baseline in baselines.items():
            contenders[ml_name(mode)] = Contender(ml_contender(ml, "overhead", mode, n, WORKERS), baseline)
    measure(report, "overhead", contenders, expected, n, sizes.repeat)


def bench_cpu(report: Report, sizes: Sizes, ml: Path | None) -> None:
    n, loops = sizes.cpu, w.calibrate_cpu(sizes.cpu_seconds)
    expected = [w.spin(i, loops) for i in range(n)]
    source, raw = w.CpuSource(loops), w.CpuRaw(loops)
    serial = "crystallize serial"
    contenders = {
        "plain loop": Contender(lambda: [raw(i) for i in range(n)], serial),
        "ProcessPoolExecutor.map chunksize=1": Contender(process_map(raw, n, WORKERS, 1), serial),
        "joblib loky auto-batch": Contender(joblib_run("cpu", n, WORKERS, "loky", loops), serial),
    }
    for name, make in our_strategies(WORKERS).items():
        contenders[name] = Contender(ours(source, w.cpu_step, n, make()), "" if name == serial else serial)
    if ml is not None:
        for mode in ("serial", "process"):
            contenders[ml_name(mode)] = Contender(ml_contender(ml, "cpu", mode, n, WORKERS, loops), serial)
    measure(report, "cpu", contenders, expected, n, sizes.repeat)


def bench_payload(report: Report, sizes: Sizes, ml: Path | None) -> None:
    n, size = sizes.payload, sizes.payload_bytes
    payload = w.make_payload(size)
    expected = [w.payload_expected(i, len(payload)) for i in range(n)]
    chunk = max(1, n // (WORKERS * 4))
    baseline = "ProcessPoolExecutor + initializer"

    processes = our_strategies(WORKERS)["crystallize processes"]()
    contenders = {
        baseline: Contender(process_map(w.payload_raw, n, WORKERS, chunk, w.payload_init, (payload,))),
        "crystallize processes": Contender(ours(w.PayloadSource(payload), w.payload_step, n, processes), baseline),
        # Both ship the object with every task: seconds per replicate, so fewer runs.
        "joblib loky auto-batch": Contender(joblib_run("payload", n, WORKERS, "loky", size), baseline, max_runs=2),
    }
    if ml is not None:
        run = ml_contender(ml, "payload", "process", n, WORKERS, size)
        contenders[ml_name("process")] = Contender(run, baseline, max_runs=2)
    measure(report, "payload", contenders, expected, n, sizes.repeat)


def bench_io(report: Report, sizes: Sizes, ml: Path | None) -> None:
    n, threads = sizes.io, sizes.io_threads
    expected = [w.overhead_expected(i) for i in range(n)]
    report.add(Row("io", "ideal", n / threads * w.IO_SECONDS, n, note=f"{n} x {w.IO_SECONDS}s / {threads} threads"))
    our_threads = ParallelExecution(executor_type="thread", max_workers=threads)
    contenders = {
        "ThreadPoolExecutor.map": Contender(thread_map(w.io_raw, n, threads), "ideal"),
        "joblib threading": Contender(joblib_run("io", n, threads, "threading"), "ideal"),
        "crystallize threads": Contender(ours(w.io_source, w.overhead_step, n, our_threads), "ideal"),
    }
    if ml is not None:
        contenders[ml_name("thread")] = Contender(ml_contender(ml, "io", "thread", n, threads), "ideal")
    measure(report, "io", contenders, expected, n, sizes.repeat)


def bench_numeric(report: Report, sizes: Sizes, ml: Path | None) -> None:
    """scikit-learn fits: processes against serial and against joblib's loky, which
    caps the BLAS threads of its workers; and ours with the cap turned off."""
    n = sizes.numeric
    expected = [w.numeric_fit(i) for i in range(n)]
    serial = "crystallize serial"
    loky = "joblib loky auto-batch"
    contenders = {
        serial: Contender(ours(w.numeric_source, w.numeric_step, n, SerialExecution())),
        loky: Contender(joblib_run("numeric", n, WORKERS, "loky"), serial),
        "crystallize processes": Contender(
            ours(w.numeric_source, w.numeric_step, n, ParallelExecution(executor_type="process", max_workers=WORKERS)),
            loky,
        ),
        "crystallize processes, inner_threads=None": Contender(
            ours(
                w.numeric_source,
                w.numeric_step,
                n,
                ParallelExecution(executor_type="process", max_workers=WORKERS, inner_threads=None),
            ),
            serial,
        ),
    }
    measure(report, "numeric", contenders, expected, n, sizes.repeat)


def bench_asyncio(report: Report, sizes: Sizes, ml: Path | None) -> None:
    n, k = sizes.aio, sizes.aio_concurrency
    expected = [w.overhead_expected(i) for i in range(n)]
    ideal = n / k * w.IO_SECONDS
    report.add(Row("asyncio", "ideal", ideal, n, note=f"{n} x {w.IO_SECONDS}s awaited, {k} at once"))
    our_threads = ParallelExecution(executor_type="thread", max_workers=k)
    contenders = {
        f"asyncio.gather + Semaphore({k})": Contender(gather_under_semaphore(w.async_io_raw, n, k), "ideal"),
        f"ThreadPoolExecutor.map {k} threads": Contender(thread_map(w.io_raw, n, k), "ideal"),
        f"crystallize threads, {k} workers": Contender(ours(w.io_source, w.overhead_step, n, our_threads), "ideal"),
        "crystallize async": Contender(
            ours(w.async_io_source, w.overhead_step, n, AsyncExecution(max_workers=k)), "ideal"
        ),
    }
    measure(report, "asyncio", contenders, expected, n, sizes.repeat)


def with_bytecode(env: dict | None = None) -> dict:
    """The environment of a fresh process that reads and writes cached bytecode,
    as every installed package has it (``pip`` compiles it), whatever this
    process was told."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k != "PYTHONDONTWRITEBYTECODE"}


def startup(python: str, code: str, repeat: int, env=None) -> float:
    env = with_bytecode(env)
    subprocess.run([python, "-c", code], check=True, env=env)  # writes the bytecode caches
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        subprocess.run([python, "-c", code], check=True, env=env)
        times.append(time.perf_counter() - began)
    return statistics.median(times)


FIRST_RUN = """
import sys, time
from crystallize_core import Experiment
from crystallize_serial import SerialExecution

def source(ctx):
    return ctx.replicate

def step(data, ctx):
    ctx.metrics.add("value", data)
    return data

chosen = sys.argv[1] == "object"
experiment = Experiment(source, [step], plugins=[] if chosen else [SerialExecution()])
times = []
for _ in range(2):
    began = time.perf_counter()
    result = experiment.run(replicates=1, strategy=SerialExecution() if chosen else None)
    times.append(time.perf_counter() - began)
assert result.metrics["baseline"]["value"] == [0]
print(times[0] - times[1])
"""


def first_run_cost(how: str, repeat: int) -> float:
    """In a fresh process, the first run of a one-replicate experiment minus its second."""
    env = with_bytecode({**os.environ, "CRYSTALLIZE_STRATEGY": ""})
    run = [sys.executable, "-c", FIRST_RUN, how]
    subprocess.run(run, check=True, env=env, capture_output=True)  # writes the bytecode caches
    return statistics.median(
        float(subprocess.run(run, check=True, env=env, capture_output=True, text=True).stdout) for _ in range(repeat)
    )


def bench_import(report: Report, sizes: Sizes, ml: Path | None) -> None:
    repeat = sizes.import_repeat
    report.add(Row("import", "python -c pass", startup(sys.executable, "pass", repeat), 1))
    report.add(
        Row(
            "import",
            "import crystallize_core",
            startup(sys.executable, "import crystallize_core", repeat),
            1,
            "python -c pass",
        )
    )
    if ml is not None:
        report.add(Row("import", "python -c pass (ml env)", startup(str(ml), "pass", repeat), 1))
        seconds = startup(str(ml), "import crystallize", repeat)
        report.add(
            Row("import", f"import crystallize (crystallize-ml {ML_VERSION})", seconds, 1, "python -c pass (ml env)")
        )

    for how, label in [("object", "run(strategy=SerialExecution())"), ("plugins", "Experiment(plugins=[...])")]:
        seconds = first_run_cost(how, repeat)
        report.add(Row("import", f"first run minus second, strategy by {label}", seconds, 1))

    with tempfile.TemporaryDirectory() as site:
        for k in range(sizes.unrelated_distributions):
            info = Path(site) / f"unrelated_{k}-1.0.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: unrelated-{k}\nVersion: 1.0\n")
            (info / "entry_points.txt").write_text(f"[console_scripts]\nunrelated-{k} = unrelated_{k}:main\n")
        code = (
            "import sys, time\n"
            "began = time.perf_counter()\n"
            "from crystallize_core import available_strategies\n"
            "names = [s.name for s in available_strategies()]\n"
            "took = time.perf_counter() - began\n"
            "heavy = ('crystallize_serial', 'crystallize_parallel', 'crystallize_async', 'tqdm', 'asyncio')\n"
            "imported = [m for m in sys.modules if m.startswith(heavy)]\n"
            "assert 'serial' in names and 'parallel' in names and not imported, (names, imported)\n"
            "print(took)\n"
        )
        env = with_bytecode({**os.environ, "PYTHONPATH": site})
        subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
        times = [
            float(
                subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True).stdout
            )
            for _ in range(repeat)
        ]
    report.add(
        Row(
            "import",
            f"list strategies, {sizes.unrelated_distributions} unrelated dists",
            statistics.median(times),
            1,
            note="imports no strategy (checked)",
        )
    )


# --- reporting --------------------------------------------------------------------


def fill_ratios(report: Report) -> None:
    for row in report.rows:
        if row.baseline:
            base = report.find(row.workload, row.baseline)
            if base is not None and base.seconds > 0:
                row.ratio = row.seconds / base.seconds


def targets(report: Report) -> list[tuple[str, str, bool | None]]:
    def seconds(workload, contender):
        row = report.find(workload, contender)
        return None if row is None else row.seconds

    def ratio(workload, contender):
        row = report.find(workload, contender)
        return None if row is None else row.ratio

    out = []
    serial, direct = seconds("overhead", "crystallize serial"), seconds("overhead", "direct loop")
    n = next(r.replicates for r in report.rows if r.workload == "overhead")
    extra = (serial - direct) / n * 1e6
    out.append(("overhead, serial: core cost <= 10 us/replicate above the direct loop", f"{extra:.1f} us", extra <= 10))
    seeded = (seconds("overhead", "crystallize serial + SeedPlugin") - direct) / n * 1e6
    seeding = (seconds("overhead", "direct loop + random.seed") - direct) / n * 1e6
    out.append(
        (
            "overhead, serial + SeedPlugin: <= 10 us per replicate and condition above the direct loop",
            f"{seeded:.1f} us ({seeding:.1f} us of it is random.seed, in a loop by hand)",
            seeded <= 10,
        )
    )
    checkpointed = seconds("overhead", "crystallize serial + checkpoint")
    added = (checkpointed - serial) / n * 1e6
    out.append(("overhead, serial: a checkpoint adds <= 20 us/replicate", f"{added:.1f} us", added <= 20))
    r = ratio("overhead", "crystallize threads")
    out.append(("overhead, threads: <= 1.5x ThreadPoolExecutor.map", f"{r:.2f}x", r <= 1.5))
    r = ratio("overhead", "crystallize processes")
    out.append(("overhead, processes: <= 2x ProcessPoolExecutor.map with a good chunksize", f"{r:.2f}x", r <= 2))
    speedup = seconds("cpu", "crystallize serial") / seconds("cpu", "crystallize processes")
    # What the machine allows: the raw pool's speed-up over the same serial run.
    limit = seconds("cpu", "crystallize serial") / seconds("cpu", "ProcessPoolExecutor.map chunksize=1")
    out.append(
        ("cpu, processes: >= 1.9x speed-up over serial", f"{speedup:.2f}x (raw pool: {limit:.2f}x)", speedup >= 1.9)
    )
    share = speedup / limit
    out.append(("cpu, processes: >= 0.97 of the raw pool's speed-up", f"{share:.2f}", share >= 0.97))
    r = ratio("payload", "crystallize processes")
    out.append(("payload, processes: <= 1.5x a raw pool with an initializer", f"{r:.2f}x", r <= 1.5))
    r = ratio("io", "crystallize threads")
    out.append(("io, threads: <= 1.1x the ideal time", f"{r:.2f}x", r <= 1.1))
    numeric = seconds("numeric", "crystallize serial") / seconds("numeric", "crystallize processes")
    r = ratio("numeric", "crystallize processes")
    out.append(("numeric, processes: >= 1.6x speed-up over serial", f"{numeric:.2f}x", numeric >= 1.6))
    out.append(("numeric, processes: no slower than joblib's loky", f"{r:.2f}x", r <= 1.0))
    r = ratio("asyncio", "crystallize async")
    out.append(("asyncio, async: <= 1.1x the ideal time", f"{r:.2f}x", r <= 1.1))
    added = (seconds("import", "import crystallize_core") - seconds("import", "python -c pass")) * 1e3
    out.append(("import: import crystallize_core adds <= 15 ms", f"{added:.1f} ms", added <= 15))
    for row in report.rows:
        if row.contender.startswith("first run minus second"):
            extra = row.seconds * 1e3
            out.append((f"import: {row.contender} <= 5 ms", f"{extra:.1f} ms", extra <= 5))
    return out


def table(report: Report) -> str:
    lines = [
        "| workload | contender | median | per replicate | vs | ratio |",
        "|---|---|---:|---:|---|---:|",
    ]
    for r in report.rows:
        per = f"{r.per_replicate_us:,.1f} us" if r.replicates > 1 else ""
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        lines.append(f"| {r.workload} | {r.contender} | {r.seconds * 1e3:,.1f} ms | {per} | {r.baseline} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    global WORKERS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one run each: checks, not measurements")
    parser.add_argument("--repeat", type=int, help="runs per measurement (median taken)")
    parser.add_argument("--json", metavar="PATH", help="write all measurements and targets as JSON")
    parser.add_argument("--no-ml", action="store_true", help=f"skip crystallize-ml {ML_VERSION}")
    parser.add_argument("--cache", default=str(HERE / ".cache"), help="where crystallize-ml's environment is kept")
    parser.add_argument("--only", nargs="*", help="run only these workloads")
    parser.add_argument("--workers", type=int, default=2, help="workers in every pool (default %(default)s)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    WORKERS = args.workers
    sizes = QUICK if args.quick else Sizes()
    if args.repeat:
        sizes.repeat = args.repeat

    ml = None if args.no_ml else ml_environment(Path(args.cache))
    report = Report()
    benches = {
        "overhead": bench_overhead,
        "cpu": bench_cpu,
        "payload": bench_payload,
        "io": bench_io,
        "numeric": bench_numeric,
        "asyncio": bench_asyncio,
        "import": bench_import,
    }
    for name, bench in benches.items():
        if args.only and name not in args.only:
            continue
        print(f"{name}:", flush=True)
        bench(report, sizes, ml)
    fill_ratios(report)

    machine = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}"
    )
    print(f"\n{machine}; medians of {sizes.repeat} run(s); {WORKERS} workers unless noted\n")
    print(table(report))
    checks = [] if args.only else targets(report)
    if checks:
        print("\n| target | measured | met |\n|---|---:|:---:|")
        for name, measured, met in checks:
            print(f"| {name} | {measured} | {'yes' if met else 'NO'} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "machine": machine,
                    "quick": args.quick,
                    "repeat": sizes.repeat,
                    "rows": [{**r.__dict__, "per_replicate_us": r.per_replicate_us} for r in report.rows],
                    "targets": [{"target": t, "measured": m, "met": ok} for t, m, ok in checks],
                    "wrong_values": report.wrong,
                },
                indent=2,
            )
        )
    if report.wrong:
        print(f"\nwrong values from: {', '.join(report.wrong)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
