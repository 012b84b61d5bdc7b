"""Checkpoints against real files and real processes: batched driver-side writes, safe
opening (no unpickling, corrupt, foreign and read-only files), and fingerprints that let the
same experiment resume in a new process and refuse a changed one, saying what changed."""

import json
import logging
import math
import multiprocessing
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from crystallize_core import (
    CheckpointError,
    CheckpointMismatchError,
    Experiment,
    ReplicateFailed,
    ReplicateResult,
    SeedPlugin,
    Treatment,
)
from crystallize_core._codec import decode_result, encode_result
from crystallize_core.checkpoint import Checkpoint, Recorder
from crystallize_core.monitor import Monitor
from crystallize_core.replicate import Condition, ReplicateRunner
from crystallize_core.testing import FailOn, RecordRuns, numbers, record

# --- writes: batched, in the driver ------------------------------------------------------------


def rows(path):
    with sqlite3.connect(path) as db:
        return {r: json.loads(text) for r, text in db.execute("SELECT replicate, result FROM replicates")}


def result(i):
    return ReplicateResult(i, 10 + i, {"baseline": {"x": float(i)}}, (), 0.001)


def opened(path):
    return Checkpoint.open(path, {}, base_seed=1)


def test_record_commits_a_batch_in_one_transaction(tmp_path):
    path = tmp_path / "c.sqlite"
    checkpoint = opened(path).checkpoint
    statements = []
    checkpoint._connection.set_trace_callback(statements.append)
    checkpoint.record([result(i) for i in range(5)])
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert sorted(rows(path)) == [0, 1, 2, 3, 4]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    checkpoint.close()


def test_the_recorder_commits_every_n_results_and_at_close(tmp_path):
    path = tmp_path / "c.sqlite"
    recorder = Recorder(opened(path).checkpoint, every=3, seconds=3600)
    recorder.add(result(0))
    recorder.add(result(1))
    assert rows(path) == {}, "committed before the batch was full"
    recorder.add(result(2))
    assert sorted(rows(path)) == [0, 1, 2]
    recorder.add(result(3))
    assert sorted(rows(path)) == [0, 1, 2]
    recorder.close()
    assert sorted(rows(path)) == [0, 1, 2, 3]
    recorder.add(result(4))  # after the run: nothing is written, nothing raises
    assert sorted(rows(path)) == [0, 1, 2, 3]


def test_the_recorder_commits_when_its_time_is_up(tmp_path):
    path = tmp_path / "c.sqlite"
    recorder = Recorder(opened(path).checkpoint, every=1000, seconds=0.0)
    recorder.add(result(0))
    assert sorted(rows(path)) == [0]
    recorder.add_many([result(1), result(2)])
    assert sorted(rows(path)) == [0, 1, 2]
    recorder.close()


def runner_with_recorder(path):
    """A replicate function as a run sets it up: its driver-side monitor holds the recorder."""
    runner = ReplicateRunner(numbers, [record], [Condition("baseline", None, None)])
    runner.sink = Monitor(10, False, Recorder(opened(path).checkpoint, every=1, seconds=0.0))
    return runner


def run_copy(shipped, replicate):
    pickle.loads(shipped)(replicate)


def test_a_pickled_replicate_function_never_writes(tmp_path):
    path = tmp_path / "c.sqlite"
    runner = runner_with_recorder(path)
    shipped = pickle.dumps(runner)
    assert pickle.loads(shipped).sink is None
    process = multiprocessing.get_context("spawn").Process(target=run_copy, args=(shipped, 4))
    process.start()
    process.join(60)
    assert process.exitcode == 0
    runner(1)
    assert sorted(rows(path)) == [1], "a copy in another process wrote to the checkpoint"
    runner.sink.checkpoint.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX only")
def test_a_forked_copy_never_writes(tmp_path):
    path = tmp_path / "c.sqlite"
    runner = runner_with_recorder(path)
    pid = os.fork()
    if pid == 0:  # the child inherits the runner, recorder and all
        try:
            runner(5)
            runner.sink.checkpoint.close()
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    runner(6)
    runner.sink.checkpoint.close()
    assert sorted(rows(path)) == [6]


def runs_in(log):
    """How often each replicate ran, from a RecordRuns log."""
    return Counter(line.split()[0] for line in log.read_text().splitlines())


class DieIf:
    """A step whose worker process exits in replicate 2 while ``path`` exists."""

    def __init__(self, path):
        self.path = path

    def __call__(self, data, ctx):
        if ctx.replicate == 2 and os.path.exists(self.path):
            os._exit(1)
        return data


def test_results_from_other_processes_are_recorded_and_a_dead_worker_is_not(tmp_path):
    path, log, die = tmp_path / "c.sqlite", tmp_path / "runs.txt", tmp_path / "die"
    die.touch()
    strategy = "parallel:executor_type=process,max_workers=2,max_retries=0"

    def experiment():
        return Experiment(numbers, [RecordRuns(str(log)), DieIf(str(die)), record], plugins=[SeedPlugin(seed=3)])

    first = experiment().run(replicates=6, strategy=strategy, checkpoint=path)
    assert [e.exc_type for e in first.errors] == ["WorkerDied"]
    assert sorted(rows(path)) == [0, 1, 3, 4, 5], "a WorkerDied replicate was checkpointed"
    die.unlink()
    ran_before = runs_in(log)
    resumed = experiment().run(replicates=6, strategy=strategy, checkpoint=path)
    assert runs_in(log) - ran_before == Counter({"2": 1}), "the rerun redid finished work"
    whole = experiment().run(replicates=6)
    assert not resumed.errors and resumed.metrics == whole.metrics and resumed.seeds == whole.seeds


def test_fail_fast_commits_what_finished_before_the_failure(tmp_path):
    path = tmp_path / "c.sqlite"
    experiment = Experiment(numbers, [record, FailOn(frozenset({3}), condition="baseline")])
    with pytest.raises(ReplicateFailed):
        experiment.run(replicates=6, fail_fast=True, checkpoint=path)
    assert sorted(rows(path)) == [0, 1, 2]


# --- values: JSON, never pickle -------------------------------------------------------------------------

ODD = {
    "tuple": (1, "a", (2.5,)),
    "nan": float("nan"),
    "inf": -math.inf,
    "int_keys": {1: "one", "$x": 2},
    "set": {1, 2},
    "frozen": frozenset({"a"}),
    "bytes": b"\x00\xff",
    "complex": complex(1, -2),
    "huge": 10**400,
    "np_int": np.int64(7),
    "np_float": np.float32(0.5),
    "np_bool": np.bool_(True),
    "array": np.arange(6, dtype=np.int16).reshape(2, 3),
    "float_array": np.array([1.5, np.nan, np.inf]),
    "np_complex": np.complex128(1 - 2j),
    "np_str": np.str_("naïve"),
    "complex_array": np.array([[1 + 1j], [np.nan - 1j]], dtype=np.complex64),
    "empty_array": np.zeros((0, 3)),
    "nested": [{"a": [None, True, "s"]}],
}


def record_odd(data, ctx):
    for name, value in ODD.items():
        ctx.metrics.add(name, value)
    return data


def same(a, b):
    if isinstance(a, np.ndarray):
        equal_nan = a.dtype.kind in "fc"  # NumPy cannot ask whether a string is NaN
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=equal_nan)
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_values_survive_a_checkpoint_with_their_types(tmp_path):
    path = tmp_path / "c.sqlite"
    first = Experiment(numbers, [record_odd]).run(replicates=2, checkpoint=path)
    again = Experiment(numbers, [record_odd]).run(replicates=2, checkpoint=path)
    assert again.strategy is None, "replicates ran again"
    for name, value in ODD.items():
        assert same(again.metrics["baseline"][name][1], value), name
        assert same(first.metrics["baseline"][name][1], value), name
    assert again.durations == pytest.approx(first.durations, abs=1e-9)


def test_a_value_that_needs_pickle_is_refused_unless_the_run_opts_in(tmp_path):
    def fraction(data, ctx):
        ctx.metrics.add("ratio", Fraction(ctx.replicate, 3))
        return data

    with pytest.raises(CheckpointError, match=r"metric 'ratio' of condition 'baseline' \(replicate 0\) is a fractions"):
        Experiment(numbers, [fraction]).run(replicates=2, checkpoint=tmp_path / "refused.sqlite")
    trusted = tmp_path / "trusted.sqlite"
    first = Experiment(numbers, [fraction]).run(replicates=2, checkpoint=trusted, checkpoint_pickle=True)
    with pytest.raises(CheckpointError, match="holds values stored with pickle in 2 row"):
        Experiment(numbers, [fraction]).run(replicates=2, checkpoint=trusted)
    again = Experiment(numbers, [fraction]).run(replicates=2, checkpoint=trusted, checkpoint_pickle=True)
    assert again.strategy is None and again.metrics == first.metrics == {"baseline": {"ratio": [0, Fraction(1, 3)]}}


def test_a_numpy_longdouble_is_refused_by_name_or_pickled_on_request(tmp_path):
    # Its .item() is a longdouble again: taken for a float, it recursed forever.
    if np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("NumPy's longdouble is a plain double on this platform")

    def extended(data, ctx):
        ctx.metrics.add("x", np.longdouble(ctx.replicate) / 3)
        return data

    with pytest.raises(CheckpointError, match=r"metric 'x' .* is a numpy\.\w+ of dtype float\d+"):
        Experiment(numbers, [extended]).run(replicates=2, checkpoint=tmp_path / "refused.sqlite")
    trusted = tmp_path / "trusted.sqlite"
    first = Experiment(numbers, [extended]).run(replicates=2, checkpoint=trusted, checkpoint_pickle=True)
    again = Experiment(numbers, [extended]).run(replicates=2, checkpoint=trusted, checkpoint_pickle=True)
    assert again.strategy is None and again.metrics == first.metrics
    assert type(again.metrics["baseline"]["x"][1]) is np.longdouble


class Exploit:
    """Unpickling this creates a file: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_opening_a_crafted_checkpoint_never_unpickles(tmp_path):
    path, marker = tmp_path / "c.sqlite", tmp_path / "pwned"
    Experiment(numbers, [record]).run(replicates=2, checkpoint=path)
    import base64

    payload = base64.b64encode(pickle.dumps(Exploit(str(marker)))).decode()
    row = json.dumps([1, 1000, {"baseline": {"value": {"$pickle": payload}}}, []])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE replicates SET result = ? WHERE replicate = 1", (row,))
    with pytest.raises(CheckpointError, match="holds values stored with pickle"):
        Experiment(numbers, [record]).run(replicates=2, checkpoint=path)
    assert not marker.exists(), "opening the checkpoint ran code from it"


def test_a_checkpoint_of_the_old_pickled_format_is_refused_unread(tmp_path):
    path, marker = tmp_path / "old.sqlite", tmp_path / "pwned"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("CREATE TABLE replicates (replicate INTEGER PRIMARY KEY, result BLOB NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('format', 'crystallize-checkpoint-1')")
        db.execute("INSERT INTO replicates VALUES (0, ?)", (pickle.dumps(Exploit(str(marker))),))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="older than format 2, whose pickled rows are not read"):
        Experiment(numbers, [record]).run(replicates=1, checkpoint=path)
    assert not marker.exists() and path.read_bytes() == before


def test_rows_encode_and_decode_back_to_equal_results():
    original = ReplicateResult(3, 2**70, {"a": {"t": (1, 2)}, "b": {}}, (), 1.25)  # durations: whole ns
    from crystallize_core.records import ReplicateError

    failed = original._replace(errors=(ReplicateError(3, "b", "ValueError", "no", "Traceback ..."),))
    for item in (original, failed):
        assert decode_result(3, encode_result(item)) == item


# --- files that are not what they should be ---------------------------------------------------------------


def refused_untouched(path, match):
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=match) as caught:
        Experiment(numbers, [record]).run(replicates=2, checkpoint=path)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert path.read_bytes() == before, "the file was changed"
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    return caught.value


def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "notes.sqlite"
    path.write_text("my notes, not a checkpoint\n" * 10)
    refused_untouched(path, "not an SQLite database")


def test_a_truncated_checkpoint_is_refused_and_left_untouched(tmp_path):
    path = tmp_path / "c.sqlite"
    Experiment(numbers, [record]).run(replicates=200, checkpoint=path)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    for name, cut in (("head", data[:60]), ("half", data[: len(data) // 2])):
        truncated = tmp_path / f"{name}.sqlite"
        truncated.write_bytes(cut)
        refused_untouched(truncated, "not an SQLite database|corrupt or truncated")


def test_another_applications_database_is_refused_and_not_switched_to_wal(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (name TEXT)")
        db.execute("INSERT INTO users VALUES ('ada')")
    db.close()
    refused_untouched(path, "an SQLite database of another application")
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_one_bad_row_costs_only_its_replicate(tmp_path, caplog):
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"

    def experiment():
        return Experiment(numbers, [RecordRuns(str(log)), record], plugins=[SeedPlugin(seed=9)])

    first = experiment().run(replicates=5, checkpoint=path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE replicates SET result = 'garbage{' WHERE replicate = 3")
        db.execute("UPDATE replicates SET result = '[1, 100, {\"baseline\": 5}, []]' WHERE replicate = 1")
    db.close()
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = experiment().run(replicates=5, checkpoint=path)
    assert runs_in(log) == Counter({"0": 1, "1": 2, "2": 1, "3": 2, "4": 1})
    assert again.metrics == first.metrics and again.seeds == first.seeds
    warnings = [r.getMessage() for r in caplog.records]
    assert any("row of replicate 3 cannot be read" in w and "runs again" in w for w in warnings), warnings


def test_a_numpy_string_array_is_refused_by_name(tmp_path):
    # Every element of one takes the width of the longest: a crafted file could make reading it allocate
    # without bound (one long string, many empty ones), so arrays of strings are not stored as JSON.
    def labels(data, ctx):
        ctx.metrics.add("labels", np.array(["a", "bc"]))
        return data

    with pytest.raises(CheckpointError, match=r"metric 'labels' .* numpy\.ndarray of dtype <U2"):
        Experiment(numbers, [labels]).run(replicates=1, checkpoint=tmp_path / "c.sqlite")


@pytest.mark.parametrize(
    "stored",
    [
        {"$ndarray": ["x" * 3000] + [""] * 3000, "dtype": "<U3000", "shape": [3001]},  # 12 KB -> 36 MB
        {"$numpy": "<U5", "value": 12345},  # never written for a string
        {"$numpy": "<c16", "value": [1, 2]},  # never written for a complex number
        {"$numpy": "<f8", "value": "1.5"},
    ],
    ids=["string array", "string scalar of an int", "complex scalar of a list", "float scalar of a str"],
)
def test_a_stored_numpy_value_the_encoder_never_writes_makes_its_row_unreadable(tmp_path, caplog, stored):
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"
    Experiment(numbers, [RecordRuns(str(log)), record]).run(replicates=2, checkpoint=path)
    row = json.dumps([1, 1000, {"baseline": {"value": stored}}, []])
    with sqlite3.connect(path) as db:
        db.execute("UPDATE replicates SET result = ? WHERE replicate = 1", (row,))
    db.close()
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = Experiment(numbers, [RecordRuns(str(log)), record]).run(replicates=2, checkpoint=path)
    assert runs_in(log) == Counter({"0": 1, "1": 2})
    assert again.metrics["baseline"]["replicate"] == [0, 1]
    assert any("row of replicate 1 cannot be read" in r.getMessage() for r in caplog.records)


def without_root_privileges():
    """Drop the capabilities that let root ignore file permissions, for the process about
    to be executed (Linux; a process that is not root has none to drop)."""
    if os.geteuid() != 0:
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


READ_ONLY_RUN = textwrap.dedent(
    """
    import sys
    from crystallize_core import CheckpointPermissionError, Experiment
    from crystallize_core.testing import numbers, record
    try:
        Experiment(numbers, [record]).run(replicates=3, checkpoint=sys.argv[1])
    except CheckpointPermissionError as exc:
        assert isinstance(exc, PermissionError)
        print("refused:", exc)
    else:
        print("ran")
    """
)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_a_read_only_checkpoint_gets_a_permission_error(tmp_path, what):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "c.sqlite"
    Experiment(numbers, [record]).run(replicates=2, checkpoint=path)
    before = path.read_bytes()
    (path if what == "file" else folder).chmod(0o555 if what == "folder" else 0o444)
    try:
        done = subprocess.run(
            [sys.executable, "-c", READ_ONLY_RUN, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            preexec_fn=without_root_privileges,
        )
    finally:
        folder.chmod(0o755)
        path.chmod(0o644)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("refused:") and "permission denied" in done.stdout, done.stdout
    assert str(path) in done.stdout and path.read_bytes() == before


# --- fingerprints: the same experiment resumes in a new process; a changed one is refused --------------------

STUDY = textwrap.dedent(
    """
    import functools, os
    from crystallize_core import Experiment, SeedPlugin, Treatment

    def scale(data, ctx, factor):
        return [x * factor for x in data]

    class Source:
        def __init__(self, offset):
            self.offset = offset

        def load(self, ctx):
            with open(os.environ["STUDY_LOG"], "a") as log:
                log.write(f"{ctx.replicate} {ctx.condition}\\n")
            return [ctx.rng.random() + self.offset for _ in range(3)]

    class Identity:  # its repr holds a memory address
        def __call__(self, data, ctx):
            return data

    def measure(data, ctx):
        ctx.metrics.add("total", sum(data) + ctx.get("k", 0))
        return data

    def shifted(k):
        def apply(ctx):
            ctx.add("k", k)
        return apply

    def seeder(seed):
        pass

    def build():
        treatments = [Treatment("shift", shifted(float(os.environ.get("K", "2"))))]
        if os.environ.get("EXTRA"):
            treatments.append(Treatment(os.environ["EXTRA"]))
        return Experiment(
            Source(float(os.environ.get("OFFSET", "0"))).load,
            [functools.partial(scale, factor=float(os.environ.get("SCALE", "1"))), Identity(), lambda d, c: d, measure],
            plugins=[SeedPlugin(), SeedPlugin(seed_fn=seeder)],
            treatments=treatments,
            replicates=4,
        )
    """
)


@pytest.fixture
def fingerprint_study(tmp_path):
    path = tmp_path / "fpstudy.py"
    path.write_text(STUDY)
    return path


def run_study(study, *args, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}
    environment.update(STUDY_LOG=str(study.with_name("log.txt")), **env)
    return subprocess.run(
        [sys.executable, "-m", "crystallize_core", "run", f"{study}:build", "--no-progress", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=120,
    )


def test_the_same_experiment_resumes_in_a_new_process(fingerprint_study, tmp_path):
    checkpoint = str(tmp_path / "c.sqlite")
    first = run_study(fingerprint_study, "--checkpoint", checkpoint, "--output", str(tmp_path / "first.json"))
    assert first.returncode == 0, first.stderr
    log = fingerprint_study.with_name("log.txt")
    ran = log.read_text()
    again = run_study(fingerprint_study, "--checkpoint", checkpoint, "--output", str(tmp_path / "again.json"))
    assert again.returncode == 0, again.stderr
    assert log.read_text() == ran, "an unchanged experiment ran its replicates again in a new process"
    first_document = json.loads((tmp_path / "first.json").read_text())
    again_document = json.loads((tmp_path / "again.json").read_text())
    assert again_document["metrics"] == first_document["metrics"] and again_document["seeds"] == first_document["seeds"]
    # The drawn seed of SeedPlugin() was kept in the checkpoint and reused.
    assert again_document["base_seed"] == first_document["base_seed"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"OFFSET": "1"}, "datasource (Source.load) changed"),
        ({"K": "3"}, "treatment 'shift' changed"),
        ({"EXTRA": "placebo"}, "treatment 'placebo' was added"),
        ({"SCALE": "2"}, "step 0 (partial(scale)) changed"),
        ("code", "step 3 (measure) changed"),
    ],
)
def test_a_changed_experiment_is_refused_saying_what_changed(fingerprint_study, tmp_path, change, message):
    checkpoint = tmp_path / "c.sqlite"
    assert run_study(fingerprint_study, "--checkpoint", str(checkpoint)).returncode == 0
    if change == "code":
        fingerprint_study.write_text(STUDY.replace('sum(data) + ctx.get("k", 0)', 'sum(data) * 2 + ctx.get("k", 0)'))
        change = {}
    before = checkpoint.read_bytes()
    refused = run_study(fingerprint_study, "--checkpoint", str(checkpoint), **change)
    assert refused.returncode == 2, refused.stderr
    assert "was written by a different experiment" in refused.stderr and message in refused.stderr, refused.stderr
    assert str(checkpoint) in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    assert checkpoint.read_bytes() == before


def test_a_changed_seed_is_named_with_both_seeds(tmp_path):
    path = tmp_path / "c.sqlite"
    Experiment(numbers, [record], plugins=[SeedPlugin(seed=1)]).run(replicates=2, checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="plugin SeedPlugin changed: seed 1, now 2"):
        Experiment(numbers, [record], plugins=[SeedPlugin(seed=2)]).run(replicates=2, checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="plugin SeedPlugin changed: seed 1, now drawn at random"):
        Experiment(numbers, [record], plugins=[SeedPlugin()]).run(replicates=2, checkpoint=path)
    with pytest.raises(CheckpointMismatchError, match="treatment 't' was added"):
        Experiment(numbers, [record], plugins=[SeedPlugin(seed=1)], treatments=[Treatment("t")]).run(
            replicates=2, checkpoint=path
        )
