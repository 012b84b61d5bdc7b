import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import ray

import crystallize_ray._core as core
from crystallize_core import ConfigurationError, Experiment, SeedPlugin, Treatment, WorkerSetupError
from crystallize_core.testing import (
    FailOn,
    RecordRuns,
    SleepEach,
    StrategyConformance,
    UnpicklesOnlyIn,
    assert_discoverable,
    numbers,
    record,
)
from crystallize_ray import RayExecution

QUICKSTART = Path(__file__).resolve().parents[3] / "examples" / "quickstart.py"


class TestRayConformance(StrategyConformance):
    strategy_name = "ray"

    def make_strategy(self):
        return RayExecution()


def test_discovery():
    strategy = assert_discoverable(
        "ray",
        RayExecution,
        distribution="crystallize-ray",
        num_cpus=0.5,
        batch_size=4,
        max_workers=2,
        progress=True,
        task_retries=2,
    )
    assert (strategy.batch_size, strategy.max_workers, strategy.progress, strategy.task_retries) == (4, 2, True, 2)
    assert (strategy.max_retries, strategy.connect_timeout) == (1, 10.0)
    with pytest.raises(TypeError, match="did you mean 'max_workers'"):
        RayExecution(max_worker=2)


def test_a_small_experiment_goes_with_each_task_and_a_large_one_to_the_object_store_once(monkeypatch):
    puts = []
    real_put = ray.put

    def counting_put(value, *args, **kwargs):
        puts.append(type(value).__name__)
        return real_put(value, *args, **kwargs)

    monkeypatch.setattr(core.ray, "put", counting_put)
    small = Experiment(numbers, [FailOn(set()), record], plugins=[RayExecution(batch_size=3)]).run(replicates=30)
    assert small.metrics["baseline"]["replicate"] == list(range(30)) and puts == []
    # A step holding 30,000 replicate numbers pickles to about 90 KB.
    never = FailOn(set(range(-30_000, 0)))
    large = Experiment(numbers, [never, record], plugins=[RayExecution(batch_size=3)])
    assert large.run(replicates=30).metrics["baseline"]["replicate"] == list(range(30))
    # The object itself, not its pickled bytes: Ray then maps its NumPy
    # buffers from the node's shared store into every worker, without a copy each.
    assert puts == ["ReplicateRunner"]
    # NumPy arrays pickle as buffers, which the size check must measure too.
    weights = Treatment("weights", {"weights": np.ones(20_000)})
    with_array = Experiment(numbers, [record], treatments=[weights], plugins=[RayExecution(batch_size=3)])
    assert with_array.run(replicates=9).metrics["weights"]["replicate"] == list(range(9))
    assert puts == ["ReplicateRunner", "ReplicateRunner"]


def test_a_large_experiment_a_worker_cannot_unpickle_stops_the_run_saying_why():
    # Over 64 KB, so it goes through the object store (the conformance kit's check ships a small one inline).
    experiment = Experiment(UnpicklesOnlyIn(os.getpid()), [FailOn(set(range(-30_000, 0))), record])
    with pytest.raises(WorkerSetupError, match="only_on_the_driver"):
        experiment.run(replicates=4, strategy=RayExecution())


def test_same_seed_same_metrics_as_serial_with_fixed_batches():
    def run(strategy):
        experiment = Experiment(numbers, [record], plugins=[SeedPlugin(seed=11, auto_seed=False)])
        return experiment.run(replicates=25, strategy=strategy).metrics

    assert run(RayExecution(batch_size=4)) == run("serial")


def test_an_existing_connection_is_used_and_left_running():
    Experiment(numbers, [record], plugins=[RayExecution()]).run(replicates=2)
    assert ray.is_initialized() and not core._started_here


def test_progress_counts_replicates(capsys):
    Experiment(numbers, [record], plugins=[RayExecution()]).run(replicates=6, progress=True)
    assert "6/6" in capsys.readouterr().err


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_cpus": -1}, "num_cpus must be a non-negative number"),
        ({"num_gpus": -0.5}, "num_gpus must be a non-negative number"),
        ({"resources": {"TPU": -1}}, "resource 'TPU' must be a non-negative number"),
        ({"num_cpus": 0}, "must request some resource"),
        ({"max_retries": -1}, "max_retries must be a non-negative integer"),
        ({"batch_size": 0}, "batch_size must be 'auto' or a positive integer"),
        ({"address": ""}, "address must be a Ray address"),
        ({"runtime_env": "pip"}, "runtime_env must be a mapping"),
        ({"max_workers": 0}, "max_workers must be a positive integer"),
        ({"task_retries": -1}, "task_retries must be a non-negative integer"),
        ({"connect_timeout": 0}, "connect_timeout must be a positive number"),
        ({"progress": "yes"}, "progress must be True, False or None"),
    ],
)
def test_bad_options_are_refused_when_built(options, message):
    with pytest.raises(ConfigurationError, match=message):
        RayExecution(**options)


def test_a_timeout_is_refused():
    from crystallize_core import StrategyCapabilityError

    with pytest.raises(StrategyCapabilityError, match="'ray'"):
        Experiment(numbers, [record], plugins=[RayExecution()]).run(replicates=2, timeout=5)


def ray_subprocess(*args, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("CRYSTALLIZE_", "RAY_ADDRESS"))}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env={**environment, **env}, timeout=300
    )


def test_an_unreachable_address_is_named_within_its_connect_timeout():
    # Port 1 on the loopback interface: nothing listens there, the refusal is immediate.
    code = (
        "from crystallize_core import Experiment, StrategyUnavailableError\n"
        "from crystallize_core.testing import numbers, record\n"
        "from crystallize_ray import RayExecution\n"
        "try:\n"
        "    spec = 'ray:address=\"127.0.0.1:1\",connect_timeout=3'\n"
        "    Experiment(numbers, [record]).run(replicates=2, strategy=spec)\n"
        "except StrategyUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    done = ray_subprocess("-c", code)
    assert done.returncode == 0, done.stderr
    assert "the 'ray' strategy cannot reach the Ray cluster at '127.0.0.1:1' within 3 s" in done.stdout


@pytest.mark.parametrize("tls", ["0", "1"])
def test_an_address_that_accepts_connections_but_never_answers_is_given_up_within_the_connect_timeout(tls):
    # Ray's own connection retries for minutes there; the strategy gives up after connect_timeout.
    code = (
        "import socket\n"
        "from crystallize_core import Experiment, StrategyUnavailableError\n"
        "from crystallize_core.testing import numbers, record\n"
        "from crystallize_ray import RayExecution\n"
        "silent = socket.socket()\n"
        "silent.bind(('127.0.0.1', 0))\n"
        "silent.listen()\n"
        "address = f'127.0.0.1:{silent.getsockname()[1]}'\n"
        "try:\n"
        "    strategy = RayExecution(address=address, connect_timeout=1)\n"
        "    Experiment(numbers, [record]).run(replicates=2, strategy=strategy)\n"
        "except StrategyUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    done = ray_subprocess("-c", code, RAY_USE_TLS=tls)
    assert done.returncode == 0, done.stderr
    assert "cannot reach the Ray cluster at '127.0.0.1:" in done.stdout and "within 1 s:" in done.stdout


def test_the_command_line_runs_the_example_on_the_cluster_in_ray_address(local_ray, tmp_path):
    output = tmp_path / "ray.json"
    done = ray_subprocess(
        "-m",
        "crystallize_core",
        "run",
        f"{QUICKSTART}:build_experiment",
        "--strategy",
        "ray",
        "-n",
        "6",
        "--output",
        str(output),
        RAY_ADDRESS=local_ray,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "strategy: ray" in done.stdout
    serial = ray_subprocess(
        "-m",
        "crystallize_core",
        "run",
        f"{QUICKSTART}:build_experiment",
        "--strategy",
        "serial",
        "-n",
        "6",
        "--output",
        str(tmp_path / "serial.json"),
    )
    assert serial.returncode == 0, serial.stderr[-3000:]
    import json

    assert json.loads(output.read_text())["metrics"] == json.loads((tmp_path / "serial.json").read_text())["metrics"]


def test_the_example_runs_through_the_api_with_the_same_metrics_as_serial():
    import importlib.util

    spec = importlib.util.spec_from_file_location("quickstart", QUICKSTART)
    quickstart = importlib.util.module_from_spec(spec)
    sys.modules["quickstart"] = quickstart
    spec.loader.exec_module(quickstart)
    # Ray was connected before this module was importable: tell the workers where it is.
    shipped = RayExecution(runtime_env={"env_vars": {"PYTHONPATH": str(QUICKSTART.parent)}})
    on_ray = quickstart.build_experiment().run(replicates=6, strategy=shipped)
    serial = quickstart.build_experiment().run(replicates=6, strategy="serial")
    assert on_ray.strategy == "ray" and on_ray.errors == []
    assert on_ray.metrics == serial.metrics


def test_a_local_instance_it_starts_is_shut_down_at_exit(tmp_path):
    code = (
        "import json, psutil\n"
        "from crystallize_core import Experiment\n"
        "from crystallize_core.testing import numbers, record\n"
        "from crystallize_ray import RayExecution\n"
        "import crystallize_ray._core as core\n"
        "result = Experiment(numbers, [record], plugins=[RayExecution()]).run(replicates=4)\n"
        "started = [p.pid for p in psutil.Process().children(recursive=True)]\n"
        "print(json.dumps({'started_here': core._started_here, 'pids': started, 'n': result.replicates}))\n"
    )
    done = ray_subprocess("-c", code)
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    from crystallize_core.testing import wait_until

    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["started_here"] and report["n"] == 4 and report["pids"]

    def gone():
        import psutil

        return not [p for p in report["pids"] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]

    assert wait_until(gone, seconds=60), "the local Ray instance outlived the process that started it"


@pytest.mark.parametrize(
    "options, lacking",
    [({"num_gpus": 1}, "GPU 1 (cluster total: 0)"), ({"resources": {"TPU": 2}}, "TPU 2 (cluster total: 0)")],
)
def test_a_resource_request_the_cluster_cannot_meet_is_refused_instead_of_waiting_forever(options, lacking):
    with pytest.raises(ConfigurationError, match=re.escape(lacking)):
        Experiment(numbers, [record], plugins=[RayExecution(**options)]).run(replicates=2)


def test_resource_requests_reach_every_task():
    # The session's instance has 2 CPUs: asking 2 per task leaves room for one task at a time.
    result = Experiment(numbers, [record], plugins=[RayExecution(num_cpus=2, batch_size=1)]).run(replicates=4)
    assert result.metrics["baseline"]["replicate"] == [0, 1, 2, 3]
    with pytest.raises(ConfigurationError, match=re.escape("CPU 3 (cluster total: 2)")):
        Experiment(numbers, [record], plugins=[RayExecution(num_cpus=3)]).run(replicates=2)


def test_max_workers_caps_the_replicates_running_at_once(tmp_path):
    # Each replicate writes its line as it begins and as it ends: one at a time, the two lines are neighbours.
    log = tmp_path / "runs"
    steps = [RecordRuns(str(log)), SleepEach(0.2), RecordRuns(str(log))]
    result = Experiment(numbers, steps).run(replicates=6, strategy=RayExecution(max_workers=1, batch_size=1))
    lines = log.read_text().splitlines()
    assert result.strategy == "ray" and len(lines) == 12
    assert all(lines[i] == lines[i + 1] for i in range(0, 12, 2)), f"two replicates ran at once: {lines}"
