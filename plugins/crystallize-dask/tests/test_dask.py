import json
import logging
import operator
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import wait
from pathlib import Path
from types import SimpleNamespace

import dask
import psutil
import pytest
from conftest import start_cluster, stop_cluster, wait_for_workers
from distributed import Client, LocalCluster

from crystallize_core import (
    ConfigurationError,
    Experiment,
    SeedPlugin,
    StrategyUnavailableError,
    WorkerLostError,
)
from crystallize_core.engine import INLINE_PAYLOAD_BYTES
from crystallize_core.testing import (
    CountUnpickles,
    KillWorkerOn,
    LoopStrategy,
    RecordRuns,
    SleepEach,
    StrategyConformance,
    assert_discoverable,
    numbers,
    record,
    wait_until,
)
from crystallize_dask import DaskExecution
from crystallize_dask._core import NANNY_PATIENCE_SECONDS, DaskBackend, TaskExecutor

ROOT = Path(__file__).resolve().parents[3]
QUICKSTART = ROOT / "examples" / "quickstart.py"
DOCS_PAGE = ROOT / "docs" / "dask.md"


def closed_address() -> str:
    """A loopback address where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def record_pid(data, ctx):
    ctx.metrics.add("pid", os.getpid())
    return data


class TestDaskConformance(StrategyConformance):
    """The kit against a real `dask scheduler` with two `dask worker`s; the checks
    of what a run leaves behind use a LocalCluster the strategy starts and
    closes itself, since a scheduler's own nannies restart the workers that die."""

    strategy_name = "dask"
    own_cluster = False
    lasting_threads = ("Dask-Offload",)

    @pytest.fixture(autouse=True)
    def _scheduler(self, dask_scheduler):
        self.address = dask_scheduler

    def make_strategy(self):
        if self.own_cluster:
            return DaskExecution(n_workers=2)
        return DaskExecution(address=self.address)

    def test_a_dying_worker_costs_only_its_replicate(self):
        self.own_cluster = True
        super().test_a_dying_worker_costs_only_its_replicate()

    def test_leaves_no_process_or_thread_behind(self):
        self.own_cluster = True
        super().test_leaves_no_process_or_thread_behind()

    def test_ctrl_c_stops_promptly_with_the_finished_replicates(self):
        self.own_cluster = True
        super().test_ctrl_c_stops_promptly_with_the_finished_replicates()


def test_discovery():
    strategy = assert_discoverable(
        "dask", DaskExecution, distribution="crystallize-dask", n_workers=3, batch_size=4, max_workers=2, progress=True
    )
    assert (strategy.n_workers, strategy.batch_size, strategy.address) == (3, 4, None)
    assert (strategy.max_workers, strategy.progress) == (2, True)
    with pytest.raises(TypeError, match="did you mean 'max_workers'"):
        DaskExecution(max_worker=2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"address": ""}, "address must be a Dask scheduler address"),
        ({"address": 8786}, "address must be a Dask scheduler address"),
        ({"n_workers": 0}, "n_workers must be a positive integer"),
        ({"n_workers": 1.5}, "n_workers must be a positive integer"),
        ({"n_workers": True}, "n_workers must be a positive integer"),
        ({"max_retries": -1}, "max_retries must be a non-negative integer"),
        ({"batch_size": 0}, "batch_size must be 'auto' or a positive integer"),
        ({"batch_size": "big"}, "batch_size must be 'auto' or a positive integer"),
        ({"connect_timeout": 0}, "connect_timeout must be a positive number"),
        ({"connect_timeout": float("nan")}, "connect_timeout must be a positive number"),
        ({"connect_timeout": "10"}, "connect_timeout must be a positive number"),
        ({"max_workers": 0}, "max_workers must be a positive integer"),
        ({"progress": "yes"}, "progress must be True, False or None"),
    ],
)
def test_bad_options_are_refused_when_built(options, message):
    with pytest.raises(ConfigurationError, match=message):
        DaskExecution(**options)


@pytest.mark.parametrize("address", ["nonsense://host:1", "127.0.0.1", "tcp://127.0.0.1:port"])
def test_a_malformed_address_is_refused_naming_it(address, monkeypatch, tmp_path):
    log = tmp_path / "ran"
    with pytest.raises(ConfigurationError, match=re.escape(repr(address))):
        Experiment(numbers, [record], plugins=[DaskExecution(address=address)]).run(replicates=2)
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with pytest.raises(ConfigurationError, match="DASK_SCHEDULER_ADDRESS"):
        Experiment(numbers, [record], plugins=[DaskExecution()]).run(replicates=2)
    assert not log.exists()


def test_an_unreachable_scheduler_stops_the_run_naming_the_address_within_its_timeout():
    address = closed_address()
    after = LoopStrategy()
    began = time.monotonic()
    with pytest.raises(StrategyUnavailableError, match=re.escape(address)) as refused:
        Experiment(numbers, [record], plugins=[DaskExecution(address=address, connect_timeout=3), after]).run(
            replicates=3
        )
    assert time.monotonic() - began < 3
    assert "'dask' strategy cannot reach" in str(refused.value) and after.asked == 0


def test_an_unreachable_scheduler_chosen_by_name_never_falls_back_to_serial(monkeypatch):
    address = closed_address()
    with pytest.raises(StrategyUnavailableError, match=re.escape(address)):
        Experiment(numbers, [record]).run(replicates=2, strategy=f"dask:address={address!r},connect_timeout=3")
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", address)
    with pytest.raises(StrategyUnavailableError, match="DASK_SCHEDULER_ADDRESS"):
        Experiment(numbers, [record]).run(replicates=2, strategy="dask")


def test_an_address_where_nothing_answers_is_given_up_within_the_connect_timeout():
    # A listening socket that never speaks dask: the connection opens, the handshake never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        began = time.monotonic()
        with pytest.raises(StrategyUnavailableError, match=re.escape(address)):
            Experiment(numbers, [record]).run(replicates=2, strategy=DaskExecution(address=address, connect_timeout=2))
        assert time.monotonic() - began < 30


def test_a_server_of_another_kind_at_the_address_stops_the_run_naming_it():
    # What answers first with a banner, as an SSH daemon does: dask would read it as a frame's size.
    with socket.socket() as banner:
        banner.bind(("127.0.0.1", 0))
        banner.listen()
        run_ended = threading.Event()

        def greet():
            connection, _ = banner.accept()
            with connection:
                connection.sendall(b"SSH-2.0-OpenSSH_9.2\r\n" * 4)
                run_ended.wait(60)  # the connection stays open until the run has given up

        threading.Thread(target=greet, daemon=True).start()
        address = f"tcp://127.0.0.1:{banner.getsockname()[1]}"
        # dask either waits for a frame that never comes or fails to allocate one: both name the address.
        try:
            with pytest.raises(
                StrategyUnavailableError, match=rf"cannot connect to the Dask scheduler at {re.escape(address)}"
            ):
                strategy = DaskExecution(address=address, connect_timeout=2)
                Experiment(numbers, [record]).run(replicates=2, strategy=strategy)
        finally:
            run_ended.set()


def test_a_scheduler_without_workers_stops_the_run():
    empty = LocalCluster(n_workers=0, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=None)
    with empty:
        strategy = DaskExecution(address=empty.scheduler_address, connect_timeout=1)
        with pytest.raises(StrategyUnavailableError, match="has no workers"):
            Experiment(numbers, [record]).run(replicates=2, strategy=strategy)


def test_fewer_workers_than_asked_for_run_the_experiment_with_a_warning(dask_scheduler, caplog):
    strategy = DaskExecution(address=dask_scheduler, n_workers=3, connect_timeout=1)
    with caplog.at_level(logging.WARNING, logger="crystallize"):
        result = Experiment(numbers, [record]).run(replicates=4, strategy=strategy)
    assert result.strategy == "dask" and result.metrics["baseline"]["replicate"] == [0, 1, 2, 3]
    assert any("2 of the 3 workers asked for joined" in r.getMessage() for r in caplog.records)


def test_a_local_cluster_is_started_for_the_run_and_closed_after_it():
    experiment = Experiment(numbers, [record_pid], plugins=[SeedPlugin(seed=2, auto_seed=False)])
    result = experiment.run(replicates=12, strategy=DaskExecution(n_workers=2))
    assert result.strategy == "dask" and result.errors == []
    pids = set(result.metrics["baseline"]["pid"])
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert not [pid for pid in pids if alive(pid)]


def test_the_task_executor_settles_every_future(dask_scheduler):
    # concurrent.futures.wait() counts a cancelled future as done only once its
    # executor notices the cancellation; a run stopping on Ctrl-C waited for ever.
    with Client(dask_scheduler, set_as_default=False) as client:
        executor = TaskExecutor(client)
        added = executor.submit(operator.add, 1, 2)
        divided = executor.submit(operator.truediv, 1, 0)
        slept = executor.submit(time.sleep, 2)
        assert slept.cancel()
        assert not wait([added, divided, slept], timeout=60).not_done
        assert added.result() == 3 and isinstance(divided.exception(), ZeroDivisionError) and slept.cancelled()
        executor.shutdown(wait=False)
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit(operator.add, 1, 2)
        with TaskExecutor(client) as executor:  # shutdown(wait=True) waits on its own client's tasks
            slept = executor.submit(time.sleep, 0.5)
        assert slept.done() and slept.result() is None


def test_runs_that_overlap_keep_their_clusters_nannies_until_the_last_ends():
    key = "distributed.deploy.lost-worker-timeout"
    before = dask.config.get(key)
    first, second = DaskBackend(n_workers=1), DaskBackend(n_workers=1)
    run = SimpleNamespace(replicates=2)  # all of a run that start() reads
    try:
        first.start(run, operator.neg)
        second.start(run, operator.neg)
        first.shutdown()
        assert dask.config.get(key) == NANNY_PATIENCE_SECONDS, "the first run to end undid the second's setting"
    finally:
        second.shutdown()
        first.shutdown()
    assert dask.config.get(key) == before


RESTARTING_WORKERS = """
import sys

import dask
from crystallize_core import Experiment
from crystallize_core.testing import KillWorkerOn, numbers, record
from crystallize_dask import DaskExecution

if __name__ == "__main__":
    # A worker restarts in seconds: far longer than this, as on a busy machine
    # where a worker that died is still restarting when it dies again.
    dask.config.set({"distributed.deploy.lost-worker-timeout": "0.1s"})
    killer = KillWorkerOn({0: "once", 1: "once"}, sys.argv[1])
    result = Experiment(numbers, [killer, record]).run(replicates=3, strategy=DaskExecution(n_workers=1))
    print(result.metrics["baseline"]["replicate"], result.errors)
"""


def test_a_local_cluster_keeps_a_worker_that_is_slow_to_restart(tmp_path):
    # A LocalCluster closes a worker's nanny for good when no worker of its
    # name is back within `lost-worker-timeout` of a loss; the run then waited
    # for ever on a cluster of no workers.
    script = tmp_path / "study.py"
    script.write_text(RESTARTING_WORKERS)
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "[0, 1, 2] []", done.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("died-*")) == ["died-0", "died-1"]


WORKERS_THAT_CANNOT_RESTART = """
import os
import sys

MARKER = os.environ.setdefault("MARKER", sys.argv[-1])
if __name__ != "__main__" and os.path.exists(MARKER):
    os._exit(1)  # a worker process importing this script again cannot start

import crystallize_dask._core
from crystallize_core import Experiment, WorkerLostError
from crystallize_core.testing import numbers, record
from crystallize_dask import DaskExecution


def die(data, ctx):
    open(MARKER, "w").close()
    os._exit(1)


if __name__ == "__main__":
    crystallize_dask._core.NO_WORKERS_SECONDS = 3
    try:
        Experiment(numbers, [die, record]).run(replicates=2, strategy=DaskExecution(n_workers=1))
    except WorkerLostError as exc:
        print("WorkerLostError:", exc)
"""


def test_a_local_cluster_whose_workers_cannot_restart_ends_the_run(tmp_path):
    script = tmp_path / "study.py"
    script.write_text(WORKERS_THAT_CANNOT_RESTART)
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "died")], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "WorkerLostError: the Dask cluster had no worker for 3 s" in done.stdout, done.stderr[-3000:]


def test_a_dying_worker_of_a_running_cluster_costs_only_its_replicate(dask_scheduler):
    killer = KillWorkerOn({2: "exit"})
    strategy = DaskExecution(address=dask_scheduler, max_retries=0)
    try:
        result = Experiment(numbers, [killer, record]).run(replicates=6, strategy=strategy)
    finally:
        wait_for_workers(dask_scheduler)  # the nanny restarts it: let later tests find it running
    assert [(e.replicate, e.exc_type) for e in result.errors] == [(2, "WorkerDied")]
    assert "died" in result.errors[0].message
    assert result.metrics["baseline"]["replicate"] == [0, 1, None, 3, 4, 5]


def test_the_default_client_of_the_scheduler_is_used_and_left_open(dask_scheduler):
    strategy = DaskExecution(address=dask_scheduler)
    with Client(dask_scheduler, set_as_default=False) as observer:

        def clients_connected() -> int:
            return sum(1 for _, event in observer.get_events("all") if event.get("action") == "add-client")

        before = clients_connected()
        Experiment(numbers, [record]).run(replicates=4, strategy=strategy)
        assert clients_connected() == before + 1  # no default client here: it connects one of its own
        with Client(dask_scheduler) as client:  # this process's default client from here on
            before = clients_connected()
            result = Experiment(numbers, [record]).run(replicates=4, strategy=strategy)
            assert result.strategy == "dask" and result.metrics["baseline"]["replicate"] == [0, 1, 2, 3]
            assert clients_connected() == before
            assert client.status == "running" and client.submit(abs, -3, pure=False).result() == 3


class Ballast:
    """A step holding ``size`` bytes, which the pickled experiment carries."""

    def __init__(self, size: int):
        self.ballast = b"x" * size

    def __call__(self, data, ctx):
        return data


@pytest.mark.parametrize("ballast, asked", [(0, False), (2 * INLINE_PAYLOAD_BYTES, True)])
def test_a_small_experiment_goes_with_every_task_a_large_one_only_to_workers_that_ask(
    dask_scheduler, monkeypatch, tmp_path, ballast, asked
):
    resent = []
    real_resubmit = DaskBackend.resubmit_with_payload

    def counting_resubmit(self, span):
        resent.append(span)
        return real_resubmit(self, span)

    monkeypatch.setattr(DaskBackend, "resubmit_with_payload", counting_resubmit)
    log = tmp_path / "unpickles.txt"
    experiment = Experiment(CountUnpickles(str(log)), [Ballast(ballast), record])
    result = experiment.run(replicates=30, strategy=DaskExecution(address=dask_scheduler, batch_size=2))
    assert result.errors == [] and result.metrics["baseline"]["replicate"] == list(range(30))
    assert bool(resent) == asked, resent
    unpickled = Counter(log.read_text().split())
    assert unpickled and all(count == 1 for count in unpickled.values()), unpickled


def quickstart_through_the_cli(tmp_path: Path, strategy: str, env: dict[str, str] | None = None) -> dict:
    output = tmp_path / f"{strategy}.json"
    command = [sys.executable, "-m", "crystallize_core", "run", f"{QUICKSTART}:build_experiment"]
    command += ["--strategy", strategy, "--no-progress", "--output", str(output)]
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CRYSTALLIZE_", "DASK_"))}
    done = subprocess.run(
        command, capture_output=True, text=True, env={**environment, **(env or {})}, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(output.read_text())


@pytest.fixture(scope="module")
def serial_quickstart(tmp_path_factory):
    return quickstart_through_the_cli(tmp_path_factory.mktemp("serial"), "serial")


def test_the_quickstart_on_a_running_cluster_through_the_cli_matches_serial(
    dask_scheduler, serial_quickstart, tmp_path
):
    result = quickstart_through_the_cli(tmp_path, "dask", {"DASK_SCHEDULER_ADDRESS": dask_scheduler})
    assert result["strategy"] == "dask" and result["errors"] == []
    assert result["seeds"] == serial_quickstart["seeds"] and result["metrics"] == serial_quickstart["metrics"]


def test_the_quickstart_on_a_local_cluster_through_the_cli_matches_serial(serial_quickstart, tmp_path):
    result = quickstart_through_the_cli(tmp_path, "dask:n_workers=2")
    assert result["strategy"] == "dask" and result["errors"] == []
    assert result["seeds"] == serial_quickstart["seeds"] and result["metrics"] == serial_quickstart["metrics"]


def test_the_quickstart_on_a_running_cluster_through_the_api_matches_serial(dask_scheduler, monkeypatch):
    # Imported from its folder as the CLI does; the workers, started elsewhere,
    # find it only through the folders the strategy ships with each task.
    monkeypatch.syspath_prepend(str(QUICKSTART.parent))
    monkeypatch.delitem(sys.modules, "quickstart", raising=False)
    import quickstart

    on_dask = quickstart.build_experiment().run(strategy=DaskExecution(address=dask_scheduler))
    serial = quickstart.build_experiment().run(strategy="serial")
    assert on_dask.strategy == "dask" and on_dask.errors == []
    assert on_dask.seeds == serial.seeds and on_dask.metrics == serial.metrics


def test_a_missing_distributed_is_reported_at_import_with_the_fix():
    code = "import sys; sys.modules['distributed'] = None; import crystallize_dask"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "ImportError: crystallize-dask needs dask.distributed" in done.stderr
    assert "pip install 'distributed'" in done.stderr


def test_the_docs_local_cluster_example_runs(tmp_path):
    # The page's examples are skipped by the core's docs tests, which do not
    # install dask: the local one runs here, as a reader would run it.
    page = DOCS_PAGE.read_text()
    marker = "plugins/crystallize-dask/tests runs it -->\n```python\n"
    assert page.count(marker) == 1
    example = page.split(marker, 1)[1].split("```", 1)[0]
    assert "DaskExecution(" in example and "__main__" in example
    script = tmp_path / "study.py"
    script.write_text(example)
    done = subprocess.run(
        [sys.executable, "-W", "error", str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "strategy: dask" in done.stdout


SLOW_STUDY = """
from crystallize_core import Experiment
from crystallize_core.testing import RecordRuns, SleepEach, numbers, record

def build():
    return Experiment(numbers, [RecordRuns("runs.txt"), SleepEach(0.2), record], replicates=200)
"""


def test_ctrl_c_in_a_terminal_stops_the_run_and_its_local_cluster_quietly(tmp_path):
    # A terminal's Ctrl-C reaches the whole foreground process group: the
    # driver and the cluster's workers alike. The workers ignore it, the
    # driver stops the run and closes the cluster.
    (tmp_path / "study.py").write_text(SLOW_STUDY)
    command = [sys.executable, "-m", "crystallize_core", "run", "study.py:build", "--strategy", "dask:n_workers=2"]
    command.append("--no-progress")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CRYSTALLIZE_", "DASK_"))}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        run = subprocess.Popen(
            command, cwd=tmp_path, env=environment, stdout=stdout, stderr=stderr, start_new_session=True
        )
    try:
        runs = tmp_path / "runs.txt"
        assert wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 4, seconds=120)
        started = {p.pid for p in psutil.Process(run.pid).children(recursive=True)}
        os.killpg(run.pid, signal.SIGINT)
        try:
            run.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after Ctrl-C:\n{err.read_text()[-3000:]}")
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait()
    printed = err.read_text()
    assert run.returncode == 130, printed[-3000:]
    assert "interrupted:" in printed and "Dask Worker process" not in printed, printed[-3000:]
    assert "replicates:" in out.read_text()
    assert wait_until(lambda: not [pid for pid in started if alive(pid)], seconds=10), [
        psutil.Process(pid).cmdline() for pid in started if alive(pid)
    ]


def test_a_scheduler_that_goes_away_ends_the_run_with_a_clear_error(tmp_path):
    address, processes = start_cluster(tmp_path, workers=1)
    try:
        runs = tmp_path / "runs.txt"
        steps = [RecordRuns(str(runs)), SleepEach(0.1), record]

        def kill_the_scheduler_once_replicates_run():
            if wait_until(lambda: runs.exists() and len(runs.read_text().splitlines()) >= 4, seconds=120):
                os.killpg(processes[0].pid, signal.SIGKILL)

        threading.Thread(target=kill_the_scheduler_once_replicates_run, daemon=True).start()
        with pytest.raises(WorkerLostError, match=re.escape(f"the Dask scheduler at {address} dropped a task")) as lost:
            Experiment(numbers, steps).run(replicates=200, strategy=DaskExecution(address=address))
    finally:
        stop_cluster(processes)
    finished = lost.value.completed
    order = [r.replicate for r in finished]
    assert 0 < len(finished) < 200 and order == sorted(set(order))


def timed(data, ctx):
    ctx.metrics.add("began", time.time())
    time.sleep(0.2)
    ctx.metrics.add("ended", time.time())
    return data


def most_at_once(result) -> int:
    spans = sorted(zip(result.metrics["baseline"]["began"], result.metrics["baseline"]["ended"]))
    return max(sum(1 for b, e in spans if b <= began < e) for began, _ in spans)


def test_max_workers_caps_the_replicates_running_at_once_below_the_clusters_workers(dask_scheduler):
    strategy = DaskExecution(address=dask_scheduler, max_workers=1, batch_size=1)
    capped = Experiment(numbers, [timed]).run(replicates=6, strategy=strategy)
    assert capped.strategy == "dask" and most_at_once(capped) == 1
    strategy = DaskExecution(address=dask_scheduler, batch_size=1)
    free = Experiment(numbers, [timed]).run(replicates=6, strategy=strategy)
    assert most_at_once(free) == 2, "without the cap both workers run at once"
