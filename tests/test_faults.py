"""Real faults against real processes: Ctrl-C, a killed run resumed from its checkpoint, fail-fast and
timeouts through the command line, and replicate errors reported as they happen."""

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import psutil
import pytest

from crystallize_core import (
    CheckpointMismatchError,
    ConfigurationError,
    Experiment,
    SeedPlugin,
    StrategyCapabilityError,
)
from crystallize_core.testing import FailOn, numbers, record, wait_until

STUDY = textwrap.dedent(
    """
    import os, time
    from crystallize_core import Experiment, SeedPlugin, Treatment

    PROGRESS = os.environ["STUDY_PROGRESS"]

    def source(ctx):
        return [ctx.rng.random() for _ in range(3)]

    def slow(data, ctx):
        time.sleep(float(os.environ.get("STUDY_SLEEP", "0.2")))
        return data

    def measure(data, ctx):
        ctx.metrics.add("total", sum(data) * ctx.get("factor", 1))
        if ctx.condition == "double":
            with open(PROGRESS, "a") as log:
                log.write(f"{ctx.replicate}\\n")
        return data

    def build():
        return Experiment(source, [slow, measure], plugins=[SeedPlugin(seed=3, auto_seed=False)],
                          treatments=[Treatment("double", {"factor": 2})], replicates=40)
    """
)

STRATEGIES = {
    "serial": ["--strategy", "serial"],
    "threads": ["--strategy", "parallel", "-o", "executor_type=thread", "-o", "max_workers=2"],
    "processes": ["--strategy", "parallel", "-o", "executor_type=process", "-o", "max_workers=2"],
}


@pytest.fixture
def study(tmp_path, monkeypatch):
    path = tmp_path / "study.py"
    path.write_text(STUDY)
    progress = tmp_path / "progress.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}
    env["STUDY_PROGRESS"] = str(progress)
    return path, progress, env


def start(study, *args, **extra_env):
    path, _, env = study
    return subprocess.Popen(
        [sys.executable, "-m", "crystallize_core", "run", f"{path}:build", "--no-progress", *args],
        env={**env, **extra_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished_lines(progress):
    return progress.read_text().split() if progress.exists() else []


def alive(pids):
    def running(pid):
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    return [pid for pid in pids if running(pid)]


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_ctrl_c_returns_the_partial_result_promptly_and_leaves_no_process(study, tmp_path, strategy):
    output = tmp_path / "partial.json"
    process = start(study, *STRATEGIES[strategy], "--output", str(output))
    assert wait_until(lambda: len(finished_lines(study[1])) >= 2), "no replicate finished"
    children = [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert "interrupted:" in err and "Traceback" not in err
    document = json.loads(output.read_text())
    assert document["complete"] is False
    assert 2 <= document["replicates"] < 40, document["replicates"]
    assert wait_until(lambda: not alive(children)), f"left behind: {alive(children)}"


def committed_replicates(checkpoint):
    if not checkpoint.exists():
        return set()
    with sqlite3.connect(checkpoint) as db:
        try:
            return {row[0] for row in db.execute("SELECT replicate FROM replicates")}
        except sqlite3.OperationalError:
            return set()


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_ctrl_c_commits_the_replicates_that_finished(study, tmp_path, strategy):
    checkpoint, output = tmp_path / "run.sqlite", tmp_path / "partial.json"
    process = start(study, *STRATEGIES[strategy], "--checkpoint", str(checkpoint), "--output", str(output))
    assert wait_until(lambda: len(finished_lines(study[1])) >= 2), "no replicate finished"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    document = json.loads(output.read_text())
    assert document["replicate_indices"] and len(document["replicate_indices"]) == document["replicates"]
    assert committed_replicates(checkpoint) == set(document["replicate_indices"])


@pytest.mark.parametrize("strategy", ["serial", "processes"])
def test_a_killed_run_resumes_from_its_checkpoint_with_the_same_result(study, tmp_path, strategy):
    checkpoint = tmp_path / "run.sqlite"
    args = [*STRATEGIES[strategy], "--checkpoint", str(checkpoint)]
    first = start(study, *args, "--output", str(tmp_path / "never.json"), STUDY_SLEEP="0.1")

    def committed():
        return len(committed_replicates(checkpoint))

    assert wait_until(lambda: committed() >= 6), "nothing was checkpointed"
    children = [c.pid for c in psutil.Process(first.pid).children(recursive=True)]
    first.kill()
    first.communicate(timeout=30)
    assert not (tmp_path / "never.json").exists()
    assert wait_until(lambda: not alive(children)), f"workers outlived their killed parent: {alive(children)}"
    done_before = committed()
    assert 6 <= done_before < 40

    lines_before = len(finished_lines(study[1]))
    resumed = start(study, *args, "--output", str(tmp_path / "resumed.json"), STUDY_SLEEP="0.1")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert len(finished_lines(study[1])) - lines_before == 40 - done_before, "the resumed run redid finished work"
    uninterrupted = start(study, *STRATEGIES["processes"], "--output", str(tmp_path / "whole.json"), STUDY_SLEEP="0")
    assert uninterrupted.wait(timeout=300) == 0, uninterrupted.stderr.read()
    resumed_result = json.loads((tmp_path / "resumed.json").read_text())
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert resumed_result["metrics"] == whole["metrics"] and resumed_result["seeds"] == whole["seeds"]
    assert resumed_result["replicates"] == 40 and resumed_result["complete"] is True


def test_a_checkpoint_of_another_experiment_or_seed_is_refused(tmp_path):
    path = tmp_path / "checkpoint.sqlite"
    Experiment(numbers, [record], plugins=[SeedPlugin(seed=1)]).run(replicates=3, checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="different experiment: plugin SeedPlugin changed: seed 1, now 2"):
        Experiment(numbers, [record], plugins=[SeedPlugin(seed=2)]).run(replicates=3, checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match=r"step 1 \(record\) was added; plugin SeedPlugin was removed"):
        Experiment(numbers, [record, record]).run(replicates=3, checkpoint=path)
    (tmp_path / "junk.sqlite").write_text("not a database")
    with pytest.raises(ConfigurationError, match="not a Crystallize checkpoint"):
        Experiment(numbers, [record]).run(replicates=1, checkpoint=tmp_path / "junk.sqlite")


def test_a_finished_checkpoint_runs_nothing_and_keeps_seeds_without_a_seed_plugin(tmp_path):
    path = tmp_path / "checkpoint.sqlite"
    first = Experiment(numbers, [record]).run(replicates=5, checkpoint=path)
    again = Experiment(numbers, [record]).run(replicates=5, checkpoint=path)
    assert again.seeds == first.seeds and again.metrics == first.metrics
    assert again.strategy is None, "nothing was left to run"


def test_fail_fast_on_the_command_line(study):
    path, _, env = study
    broken = path.with_name("broken_study.py")
    broken.write_text(
        STUDY.replace(
            'if ctx.condition == "double":', "if ctx.replicate == 1:\n        raise ValueError('one')\n    if 0:"
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "crystallize_core", "run", f"{broken}:build", "--fail-fast", "--no-progress"],
        env={**env, "STUDY_SLEEP": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "stopped by --fail-fast: replicate 1, condition 'baseline': ValueError: one" in done.stderr


def test_a_timeout_the_strategy_cannot_enforce_is_refused_on_the_command_line(study):
    process = start(study, "--strategy", "serial", "--timeout", "5")
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and "cannot enforce a per-replicate timeout" in err


def test_a_timeout_is_refused_before_work_by_strategies_that_cannot_enforce_it():
    with pytest.raises(StrategyCapabilityError, match=r"'serial' .*cannot enforce a per-replicate timeout"):
        Experiment(numbers, [record]).run(replicates=2, timeout=1)


def test_errors_are_logged_as_they_happen(caplog):
    caplog.set_level(logging.WARNING, logger="crystallize")
    Experiment(numbers, [record, FailOn(frozenset({1}), condition="baseline")]).run(replicates=3)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("replicate 1, condition 'baseline': ValueError: failing on purpose")
