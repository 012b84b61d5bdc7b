"""Checkpoints at the edges, against real files and real processes: integers of any size,
a disk that fills up (a real file size limit), rows crafted into the file with sqlite3,
and a path that is a dangling symbolic link."""

import json
import logging
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from crystallize_core import CheckpointError, Experiment, SeedPlugin, Treatment
from crystallize_core._codec import MAX_DEPTH, MAX_ROW_CHARS
from crystallize_core.checkpoint import Checkpoint
from crystallize_core.hookspecs import hookimpl
from crystallize_core.replicate import derive_seed
from crystallize_core.testing import RecordRuns, numbers, record


def rows(path):
    with sqlite3.connect(path) as db:
        found = dict(db.execute("SELECT replicate, result FROM replicates"))
    db.close()
    return found


def write_row(path, replicate, text):
    with sqlite3.connect(path) as db:
        db.execute("INSERT OR REPLACE INTO replicates VALUES (?, ?)", (replicate, text))
    db.close()


def runs_in(log):
    """How often each replicate ran, from a RecordRuns log."""
    return Counter(line.split()[0] for line in log.read_text().splitlines())


def clean_environment(**extra):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}
    environment.update(PYTHONDONTWRITEBYTECODE="1", **extra)
    return environment


# --- integers of any size ----------------------------------------------------------------------------------

HUGE = 10**5000 + 7  # past the 4,300 digits Python converts to and from decimal text


def record_huge(data, ctx):
    ctx.metrics.add("huge", HUGE + ctx.replicate)
    ctx.metrics.add("negative", -(HUGE + ctx.replicate))
    ctx.metrics.add("nested", ((HUGE,), [2**2000, -(2**2000) + 1, 2**1999]))
    return data


def test_an_int_past_the_digit_limit_is_stored_and_read_back_exactly(tmp_path, caplog):
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"
    caplog.set_level(logging.WARNING, logger="crystallize")
    first = Experiment(numbers, [RecordRuns(str(log)), record_huge]).run(replicates=3, checkpoint=path)
    assert first.unsaved_replicates == [] and not caplog.records, [r.getMessage() for r in caplog.records]
    assert sorted(rows(path)) == [0, 1, 2]
    again = Experiment(numbers, [RecordRuns(str(log)), record_huge]).run(replicates=3, checkpoint=path)
    assert runs_in(log) == Counter({"0": 1, "1": 1, "2": 1}), "a stored huge int was not read back"
    for name in ("huge", "negative", "nested"):
        assert again.metrics["baseline"][name] == first.metrics["baseline"][name], name
    huge = again.metrics["baseline"]["huge"]
    assert [type(v) for v in huge] == [int] * 3 and huge[2] == HUGE + 2
    nested = again.metrics["baseline"]["nested"][0]
    assert nested == ((HUGE,), [2**2000, -(2**2000) + 1, 2**1999]) and type(nested[0]) is tuple


def test_rows_of_the_earlier_writer_stay_readable(tmp_path):
    # What the writer before $int stored: plain JSON ints (up to the digit limit), no tags.
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"

    def experiment():
        return Experiment(numbers, [RecordRuns(str(log)), record], plugins=[SeedPlugin(seed=5)])

    experiment().run(replicates=2, checkpoint=path)
    big = 10**4000
    write_row(path, 1, json.dumps([derive_seed(5, 1), 1000, {"baseline": {"big": big, "t": {"$tuple": [1]}}}, []]))
    again = experiment().run(replicates=2, checkpoint=path)
    assert runs_in(log) == Counter({"0": 1, "1": 1}), "a row the earlier writer wrote was refused"
    assert again.metrics["baseline"]["big"] == [None, big] and again.metrics["baseline"]["t"] == [None, (1,)]


def record_dollar_names(data, ctx):
    ctx.metrics.add("$tuple", [1, 2])  # a name the reader once took for a tag
    ctx.metrics.add("x", 1)
    return data


def test_a_metric_named_like_a_tag_survives_a_checkpoint(tmp_path):
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"
    first = Experiment(numbers, [RecordRuns(str(log)), record_dollar_names]).run(replicates=2, checkpoint=path)
    again = Experiment(numbers, [RecordRuns(str(log)), record_dollar_names]).run(replicates=2, checkpoint=path)
    assert runs_in(log) == Counter({"0": 1, "1": 1}), "its row could not be read back"
    assert again.metrics == first.metrics == {"baseline": {"$tuple": [[1, 2], [1, 2]], "x": [1, 1]}}


HUGE_TARGET = textwrap.dedent(
    """
    from crystallize_core import Experiment

    def source(ctx):
        return ctx.replicate

    def huge(data, ctx):
        ctx.metrics.add("huge", 10**5000 + data)
        return data

    experiment = Experiment(source, [huge], replicates=3)
    """
)


def test_the_command_line_checkpoints_a_huge_int(tmp_path):
    target, checkpoint = tmp_path / "hugeint.py", tmp_path / "c.sqlite"
    target.write_text(HUGE_TARGET)
    command = [sys.executable, "-m", "crystallize_core", "run", f"{target}:experiment", "--no-progress"]
    command += ["--checkpoint", str(checkpoint)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=clean_environment())
    assert done.returncode == 0, done.stderr
    stored = json.loads(rows(checkpoint)[2])[2]["baseline"]["huge"]
    assert int(stored["$int"], 16) == 10**5000 + 2


# --- values no row can hold: the replicate is kept in memory, named, never the run -------------------------


def record_deep(data, ctx):
    value = "leaf"
    for _ in range(MAX_DEPTH + 5 if ctx.replicate == 1 else 3):
        value = [value]
    ctx.metrics.add("deep", value)
    ctx.metrics.add("replicate", ctx.replicate)
    return data


def record_looped(data, ctx):
    looped = []
    looped.append(looped)  # walking it never ends
    ctx.metrics.add("looped", looped if ctx.replicate == 0 else [])
    return data


@pytest.mark.parametrize(
    ("step", "metric", "unsaved"), [(record_deep, "deep", [1]), (record_looped, "looped", [0])], ids=["deep", "loop"]
)
def test_a_value_no_row_can_hold_costs_only_its_row(tmp_path, caplog, step, metric, unsaved):
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"
    caplog.set_level(logging.WARNING, logger="crystallize")
    result = Experiment(numbers, [RecordRuns(str(log)), step]).run(replicates=3, checkpoint=path)
    assert result.complete and not result.errors
    assert result.unsaved_replicates == unsaved
    if step is record_deep:  # (the loop's JSON record is the output's concern, not the checkpoint's)
        assert result.to_dict()["unsaved_replicates"] == unsaved
    assert result.metrics["baseline"][metric][unsaved[0]] is not None, "the value computed was lost"
    assert sorted(rows(path)) == sorted({0, 1, 2} - set(unsaved))
    warned = [r.getMessage() for r in caplog.records if "cannot be stored" in r.getMessage()]
    assert len(warned) == 1 and f"metric {metric!r} of condition 'baseline' (replicate {unsaved[0]})" in warned[0]
    again = Experiment(numbers, [RecordRuns(str(log)), step]).run(replicates=3, checkpoint=path)
    assert runs_in(log) == Counter({str(i): 2 if i in unsaved else 1 for i in range(3)})
    assert again.unsaved_replicates == unsaved


# --- a full disk: a real file size limit ------------------------------------------------------------------------

STUDY = textwrap.dedent(
    """
    import os
    from crystallize_core import Experiment, SeedPlugin
    from crystallize_core.testing import RecordRuns

    def source(ctx):
        return ctx.rng.random()

    def measure(data, ctx):
        ctx.metrics.add("draw", data)
        # From replicate 3 on, each row is larger than the file size limit the tests set.
        ctx.metrics.add("blob", "x" * (10 if ctx.replicate < 3 else 400_000))
        return data

    def build():
        return Experiment(source, [RecordRuns(os.environ["STUDY_LOG"]), measure], plugins=[SeedPlugin(seed=11)])
    """
)

API_RUN = textwrap.dedent(
    """
    import json, logging, sys
    sys.path.insert(0, sys.argv[1])
    from study import build
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
    result = build().run(replicates=int(sys.argv[3]), checkpoint=sys.argv[2], progress=False)
    document = json.loads(result.to_json())
    print(json.dumps({
        "unsaved": result.unsaved_replicates,
        "saved_record": document["unsaved_replicates"],
        "complete": result.complete,
        "errors": len(result.errors),
        "draws": result.metrics["baseline"]["draw"],
        "blob_lengths": [len(b) for b in result.metrics["baseline"]["blob"]],
    }))
    """
)

FILE_SIZE_LIMIT = 256 * 1024


def limited_file_size():
    """In the child: files may not grow past FILE_SIZE_LIMIT, and a write past it
    fails with EFBIG rather than killing the process with SIGXFSZ."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.fixture
def study(tmp_path):
    (tmp_path / "study.py").write_text(STUDY)
    return tmp_path


def run_api(study, checkpoint, replicates, limited):
    done = subprocess.run(
        [sys.executable, "-c", API_RUN, str(study), str(checkpoint), str(replicates)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environment(STUDY_LOG=str(study / "runs.txt")),
        preexec_fn=limited_file_size if limited else None,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_a_full_disk_loses_nothing_computed_and_a_rerun_resumes(study):
    checkpoint, log = study / "c.sqlite", study / "runs.txt"
    first, _ = run_api(study, checkpoint, 3, limited=False)
    assert first["unsaved"] == [] and sorted(rows(checkpoint)) == [0, 1, 2]

    full, stderr = run_api(study, checkpoint, 8, limited=True)
    assert full["complete"] and full["errors"] == 0
    assert full["blob_lengths"] == [10] * 3 + [400_000] * 5, "a replicate computed in memory was lost"
    assert full["unsaved"] == full["saved_record"] == [3, 4, 5, 6, 7]
    warnings = [line for line in stderr.splitlines() if line.startswith("WARNING crystallize")]
    assert len(warnings) == 1, stderr
    assert str(checkpoint) in warnings[0] and "cannot write (" in warnings[0], warnings[0]
    assert sorted(rows(checkpoint)) == [0, 1, 2], "what was committed before is not readable"
    assert runs_in(log) == Counter({str(i): 1 for i in range(8)})

    again, _ = run_api(study, checkpoint, 8, limited=False)
    assert runs_in(log) == Counter({str(i): 1 if i < 3 else 2 for i in range(8)}), "the rerun did not resume"
    assert again["unsaved"] == [] and again["draws"] == full["draws"]
    assert sorted(rows(checkpoint)) == list(range(8))


RESUME_UNDER_A_TINY_LIMIT = textwrap.dedent(
    """
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    from study import build
    from crystallize_core import CheckpointError
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # too small for the -shm file SQLite needs
    try:
        build().run(replicates=4, checkpoint=sys.argv[2], progress=False)
    except CheckpointError as exc:
        print(exc)
    """
)


def test_a_disk_too_full_to_open_the_checkpoint_never_calls_it_corrupt(study):
    checkpoint, log = study / "c.sqlite", study / "runs.txt"
    run_api(study, checkpoint, 3, limited=False)
    before = checkpoint.read_bytes()
    done = subprocess.run(
        [sys.executable, "-c", RESUME_UNDER_A_TINY_LIMIT, str(study), str(checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environment(STUDY_LOG=str(log)),
        preexec_fn=lambda: signal.signal(signal.SIGXFSZ, signal.SIG_IGN),
    )
    assert done.returncode == 0, done.stderr
    assert str(checkpoint) in done.stdout and "disk is full or failing" in done.stdout, done.stdout
    assert "corrupt" not in done.stdout and "delete" not in done.stdout
    assert checkpoint.read_bytes() == before
    run_api(study, checkpoint, 4, limited=False)
    assert runs_in(log) == Counter({"0": 1, "1": 1, "2": 1, "3": 1}), "the checkpoint was not resumed"


def run_cli(study, replicates, limited):
    command = [sys.executable, "-m", "crystallize_core", "run", f"{study / 'study.py'}:build", "--no-progress"]
    command += ["--replicates", str(replicates), "--checkpoint", str(study / "c.sqlite"), "--output", "-"]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_environment(STUDY_LOG=str(study / "runs.txt")),
        preexec_fn=limited_file_size if limited else None,
    )


def test_the_command_line_writes_its_output_then_fails_on_a_full_disk(study):
    checkpoint = study / "c.sqlite"
    assert run_cli(study, 3, limited=False).returncode == 0
    done = run_cli(study, 5, limited=True)
    assert done.returncode == 1, done.stderr
    document = json.loads(done.stdout)  # standard output is a pipe, which the file size limit does not reach
    assert document["replicates"] == 5 and document["unsaved_replicates"] == [3, 4]
    assert [len(b) for b in document["metrics"]["baseline"]["blob"]] == [10, 10, 10, 400_000, 400_000]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("crystallize: error: checkpoint") and "could not save 2 replicate(s) (3, 4" in last, last
    assert sorted(rows(checkpoint)) == [0, 1, 2]


# --- crafted rows: each costs only its replicate, which runs again ------------------------------------------


def crafted_study(tmp_path, plugins=None):
    path, log = tmp_path / "c.sqlite", tmp_path / "runs.txt"

    def experiment():
        return Experiment(
            numbers,
            [RecordRuns(str(log)), record],
            plugins=[SeedPlugin(seed=9)] if plugins is None else plugins,
            treatments=[Treatment("treated", {"factor": 2})],
        )

    first = experiment().run(replicates=4, checkpoint=path)
    return path, log, experiment, first


def rerun_refusing(tmp_path, caplog, text, replicate=1, plugins=None):
    """Write ``text`` as the row of ``replicate`` and rerun: only that replicate runs again."""
    path, log, experiment, first = crafted_study(tmp_path, plugins)
    write_row(path, replicate, text)
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = experiment().run(replicates=4, checkpoint=path)
    assert runs_in(log) == Counter({str(i): 4 if i == replicate else 2 for i in range(4)})  # 2 conditions a run
    assert again.metrics == first.metrics and again.seeds == first.seeds and not again.errors
    warned = [r.getMessage() for r in caplog.records if f"row of replicate {replicate} " in r.getMessage()]
    assert len(warned) == 1 and "runs again" in warned[0], [r.getMessage() for r in caplog.records]
    return path, again, warned[0]


def seed(replicate):
    return derive_seed(9, replicate)


def test_a_deeply_nested_row_is_refused_before_parsing(tmp_path, caplog):
    deep = "[" * 100_000 + "]" * 100_000  # json.loads would raise RecursionError
    text = f'[{seed(1)},1,{{"baseline":{{"x":{deep}}},"treated":{{}}}},[]]'
    _, _, warned = rerun_refusing(tmp_path, caplog, text)
    assert f"nested over the {MAX_DEPTH} levels" in warned


def test_a_row_too_long_is_refused_before_parsing(tmp_path, caplog):
    text = f'[{seed(1)},1,{{"baseline":{{"x":"{"a" * MAX_ROW_CHARS}"}},"treated":{{}}}},[]]'
    _, _, warned = rerun_refusing(tmp_path, caplog, text)
    assert f"over the {MAX_ROW_CHARS:,} a checkpoint writes" in warned


def test_a_tagged_value_where_a_conditions_metrics_belong_is_refused(tmp_path, caplog):
    text = json.dumps([seed(1), 1, {"baseline": {"$tuple": [1, 2]}, "treated": {}}, []])
    _, _, warned = rerun_refusing(tmp_path, caplog, text)
    assert "metrics of condition 'baseline' are not a mapping" in warned


@pytest.mark.parametrize("where", ["metrics", "errors"])
def test_a_condition_the_run_did_not_ask_for_never_reaches_its_result(tmp_path, caplog, where):
    stray = {"replicate": 1, "draw": 0.5, "total": 1.0}
    metrics = {"baseline": stray, "treated": stray, **({"=EVIL()": stray} if where == "metrics" else {})}
    errors = [["=EVIL()", "ValueError", "x", "Traceback"]] if where == "errors" else []
    _, again, warned = rerun_refusing(tmp_path, caplog, json.dumps([seed(1), 1, metrics, errors]))
    assert "'=EVIL()', which this run does not have" in warned
    assert "=EVIL()" not in again.metrics and "=EVIL()" not in again.to_json()
    again.save(tmp_path / "out.csv")
    assert "EVIL" not in (tmp_path / "out.csv").read_text()


def test_a_row_missing_a_condition_of_the_run_is_refused(tmp_path, caplog):
    text = json.dumps([seed(1), 1, {"baseline": {"replicate": 1}}, []])
    _, _, warned = rerun_refusing(tmp_path, caplog, text)
    assert "neither metrics nor an error for condition(s) 'treated'" in warned


def test_a_row_copied_to_another_index_is_refused(tmp_path, caplog):
    path, log, experiment, first = crafted_study(tmp_path)
    write_row(path, 3, rows(path)[0])
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = experiment().run(replicates=4, checkpoint=path)
    assert runs_in(log)["3"] == 4 and again.seeds == first.seeds and again.metrics == first.metrics
    assert again.metrics["baseline"]["replicate"][3] == 3
    assert any(f"holds seed {seed(0)}, but replicate 3 has seed {seed(3)}" in r.getMessage() for r in caplog.records)


class StrideSeeds:
    """A seed plugin of the user's own: seeds that derive_seed does not give."""

    @hookimpl
    def replicate_seed(self, replicate):
        return 1000 + 7 * replicate


@pytest.mark.parametrize("plugins", [[StrideSeeds()], []], ids=["custom seed plugin", "run's own base seed"])
def test_a_copied_row_is_refused_whatever_gives_the_seeds(tmp_path, caplog, plugins):
    path, log, experiment, first = crafted_study(tmp_path, plugins)
    if plugins:
        assert first.seeds == [1000, 1007, 1014, 1021]
    write_row(path, 2, rows(path)[1])
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = experiment().run(replicates=4, checkpoint=path)
    assert runs_in(log) == Counter({"0": 2, "1": 2, "2": 4, "3": 2})
    assert again.seeds == first.seeds and again.metrics == first.metrics


@pytest.mark.parametrize(
    "text",
    [
        '[SEED, 1, {"baseline": {"x": NaN}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$float": "bogus"}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$complex": ["a", "b"]}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$int": "12"}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$tuple": [1], "extra": 2}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$numpy": "<f8", "value": [1, 2]}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$bytes": 5}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {"x": {"$set": [[1]]}}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {}, "treated": {}}, {"not": "a list"}]',
        '[SEED, 1, {"baseline": {}, "treated": {}}, [["baseline", "E"]]]',
        '[SEED, -5, {"baseline": {}, "treated": {}}, []]',
        '[SEED, 1, {"baseline": {}, "treated": {}}, [], "more"]',
        '{"seed": SEED}',
    ],
    ids=[
        "bare NaN",
        "bad $float",
        "$complex of strings",
        "$int not hexadecimal",
        "tag with extra keys",
        "NumPy scalar of a list",
        "$bytes of a number",
        "set of a list",
        "errors not a list",
        "short error record",
        "negative duration",
        "five fields",
        "not a list",
    ],
)
def test_values_of_kinds_the_format_never_writes_are_refused(tmp_path, caplog, text):
    rerun_refusing(tmp_path, caplog, text.replace("SEED", str(seed(1))))


def test_a_row_under_a_negative_index_is_refused(tmp_path, caplog):
    path, log, experiment, first = crafted_study(tmp_path)
    write_row(path, -1, rows(path)[3])
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = experiment().run(replicates=4, checkpoint=path)
    assert runs_in(log) == Counter({str(i): 2 for i in range(4)})
    assert again.metrics == first.metrics and again.replicate_indices == [0, 1, 2, 3]
    assert any("row of replicate -1 cannot be read" in r.getMessage() for r in caplog.records)


def test_reading_crafted_rows_never_rewrites_the_file(tmp_path):
    path, _, _, _ = crafted_study(tmp_path)
    write_row(path, 1, "[" * 100_000)
    write_row(path, 2, json.dumps([seed(0), 1, {"=EVIL()": {}}, []]))
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        components = json.loads(dict(db.execute("SELECT key, value FROM meta"))["components"])
    db.close()
    before = path.read_bytes()
    opened = Checkpoint.open(path, components, base_seed=9)
    kept = opened.matching(4, ["baseline", "treated"], seed)
    opened.checkpoint.close()
    assert sorted(opened.finished) == [0, 2, 3] and sorted(kept) == [0, 3]
    assert path.read_bytes() == before, "reading the checkpoint changed it"


# --- the path ----------------------------------------------------------------------------------------------------


def test_a_dangling_symlink_is_named_in_one_line(tmp_path):
    link, target = tmp_path / "c.sqlite", tmp_path / "gone" / "c.sqlite"
    link.symlink_to(target)
    with pytest.raises(CheckpointError) as caught:
        Experiment(numbers, [record]).run(replicates=2, checkpoint=link)
    message = str(caught.value)
    assert str(link) in message and str(target) in message and "does not exist" in message and "\n" not in message
    assert link.is_symlink() and not target.parent.exists()
    assert not list(tmp_path.glob(".c.sqlite.*")), "a temporary file was left behind"


def test_the_depth_check_of_a_crafted_row_takes_one_pass():
    from crystallize_core._codec import _depth

    crafted = "[" * 101 + '"' + '\\"' * 1_000_000  # an unterminated string of escaped quotes: quadratic for a regex
    assert _depth(crafted) == 101
    assert _depth('[[1, {"a": "[[[[\\"]]"}]]') == 3


def test_a_corrupt_pickle_costs_only_its_replicate_where_pickles_are_allowed(tmp_path, caplog):
    import base64

    path, log, experiment, first = crafted_study(tmp_path)
    garbage = base64.b64encode(b"\x80\x04not a pickle").decode("ascii")
    write_row(path, 1, f'[{seed(1)}, 1, {{"baseline": {{"x": {{"$pickle": "{garbage}"}}}}, "treated": {{}}}}, []]')
    caplog.set_level(logging.WARNING, logger="crystallize")
    again = experiment().run(replicates=4, checkpoint=path, checkpoint_pickle=True)
    assert again.metrics == first.metrics and not again.errors
    assert runs_in(log)["1"] == 4, "only the replicate of the corrupt row ran again"
