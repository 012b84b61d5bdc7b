"""Output a spreadsheet can open and a reader can trust: no formulas in CSV
cells, ints of any length written exactly, no secrets in what is recorded."""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from crystallize_core import ReplicateResult, Result

FORMULAS = ["=1+1", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "=cmd|' /C calc'!A0"]


def crystallize(folder, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}
    return subprocess.run(
        [sys.executable, "-m", "crystallize_core", "run", *args, "--no-progress"],
        capture_output=True,
        text=True,
        cwd=folder,
        env=env,
        timeout=120,
    )


def test_csv_cells_that_would_start_a_formula_are_neutralised_and_numbers_stay_numbers(tmp_path):
    metrics = {name: name for name in FORMULAS}
    metrics.update(negative=-1.5, negative_int=-3, quoted="'=x", plain="text")
    result = Result([ReplicateResult(0, 7, {"=EVIL()": metrics, "baseline": {"-1": 1}})], ["baseline", "=EVIL()"])
    path = tmp_path / "out.csv"
    result.save(path)
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    by_metric = {row["metric"]: row for row in rows if row["condition"] != "baseline"}
    assert all(row["condition"] == "'=EVIL()" for row in by_metric.values())
    for formula in FORMULAS:
        row = by_metric["'" + formula]
        assert row["value"] == "'" + formula
    assert by_metric["negative"]["value"] == "-1.5" and by_metric["negative_int"]["value"] == "-3"
    assert by_metric["plain"]["value"] == "text"
    # A quote of the user's own is doubled, so that dropping the first quote of a text cell restores it.
    assert by_metric["quoted"]["value"] == "''=x"
    assert [row["metric"] for row in rows if row["condition"] == "baseline"] == ["'-1"]


def test_a_formula_like_treatment_name_is_neutralised_in_csv_from_the_command_line(tmp_path):
    (tmp_path / "study.py").write_text(
        textwrap.dedent(
            """
            from crystallize_core import Experiment, Treatment

            def measure(data, ctx):
                ctx.metrics.add("score", -0.25)
                ctx.metrics.add("label", "@" + str(ctx.get("k", 0)))
                return data

            experiment = Experiment(
                lambda ctx: 1, [measure], treatments=[Treatment("=HYPERLINK(1)", {"k": 1})], replicates=2
            )
            """
        )
    )
    done = crystallize(tmp_path, "study.py:experiment", "--treatment", "+SUM(1):k=2", "--output", "out.csv")
    assert done.returncode == 0, done.stderr
    with open(tmp_path / "out.csv", newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    cells = [cell for row in rows[1:] for cell in row]
    assert not [cell for cell in cells if cell[:1] in ("=", "+", "@", "\t", "\r")], cells
    assert ["'=HYPERLINK(1)", "label", "'@1"] in [row[2:] for row in rows]
    assert ["'+SUM(1)", "label", "'@2"] in [row[2:] for row in rows]
    assert ["baseline", "score", "-0.25"] in [row[2:] for row in rows]


HUGE = 7**5917  # 5,001 digits: past Python's default limit of 4,300 for int-to-text conversion


@pytest.fixture
def huge_study(tmp_path):
    (tmp_path / "huge.py").write_text(
        textwrap.dedent(
            """
            from crystallize_core import Experiment

            def measure(data, ctx):
                ctx.metrics.add("huge", 7**5917 * (-1 if ctx.replicate else 1))
                ctx.metrics.add("small", 1)
                return data

            experiment = Experiment(lambda ctx: 1, [measure], replicates=2)
            """
        )
    )
    return tmp_path


@pytest.fixture
def unlimited_digits():
    before = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    yield
    sys.set_int_max_str_digits(before)


def test_the_huge_int_is_past_the_limit():
    with pytest.raises(ValueError, match="integer string conversion"):
        str(HUGE)


@pytest.mark.parametrize("name", ["out.json", "out.jsonl", "out.csv", "-"])
def test_a_huge_int_metric_is_written_exactly_by_every_output(huge_study, unlimited_digits, name):
    done = crystallize(huge_study, "huge.py:experiment", "--output", name)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    text = done.stdout if name == "-" else (huge_study / name).read_text()
    if name in ("out.json", "-"):
        document = json.loads(text)
        assert document["metrics"]["baseline"]["huge"] == [HUGE, -HUGE]
    elif name == "out.jsonl":
        values = [json.loads(line)["value"] for line in text.splitlines()]
        assert values == [HUGE, 1, -HUGE, 1]
    else:
        rows = list(csv.DictReader(text.splitlines()))
        assert [int(row["value"]) for row in rows] == [HUGE, 1, -HUGE, 1]


def test_saving_a_huge_int_leaves_the_limit_as_it_was(tmp_path):
    before = sys.get_int_max_str_digits()
    result = Result([ReplicateResult(0, 1, {"baseline": {"huge": HUGE}})], ["baseline"])
    for name in ("a.json", "a.jsonl", "a.csv"):
        result.save(tmp_path / name)
    assert len(result.to_json()) > 5000
    assert sys.get_int_max_str_digits() == before


# --- no secrets in what a run records --------------------------------------------------------

PASSWORD, TOKEN = "pw-9f3e", "abc-51d7"

STRATEGY = f'''
from crystallize_core import Experiment, hookimpl


class Connection:
    def __init__(self, url):
        self.url = url

    def __repr__(self):
        return f"Connection({{self.url!r}})"


class QueueExecution:
    """A third party's strategy: runs replicates in a loop, configured with a queue's credentials."""

    def __init__(self, url, token, connection=None, workers=2):
        self.url = url
        self.token = token
        self.connection = connection
        self.workers = workers

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        return [replicate_fn(i) for i in range(experiment.replicates)]


def measure(data, ctx):
    ctx.metrics.add("value", data)
    return data


def build():
    strategy = QueueExecution(
        url="redis://:{PASSWORD}@host:6379/0",
        token="{TOKEN}",
        connection=Connection("tcp://user:{PASSWORD}@host:1"),
    )
    return Experiment(lambda ctx: 1, [measure], plugins=[strategy], replicates=2)
'''


def test_a_strategys_credentials_are_masked_in_the_result_summary_and_log(tmp_path, monkeypatch, caplog):
    (tmp_path / "queue_study.py").write_text(STRATEGY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import queue_study

    with caplog.at_level("DEBUG", logger="crystallize"):
        result = queue_study.build().run()
    assert result.strategy_options["url"] == "redis://:***@host:6379/0"
    assert result.strategy_options["token"] == "***" and result.strategy_options["workers"] == 2
    path = tmp_path / "result.json"
    result.save(path)
    document = json.loads(path.read_text())
    assert document["strategy_options"]["url"] == "redis://:***@host:6379/0"
    assert document["strategy_options"]["connection"] == "Connection('tcp://user:***@host:1')"
    recorded = [path.read_text(), result.format_summary(), repr(result), caplog.text]
    for text in recorded:
        assert PASSWORD not in text and TOKEN not in text, text


def test_the_command_line_records_no_credentials(tmp_path):
    (tmp_path / "queue_study.py").write_text(STRATEGY)
    for output in ("out.json", "-"):
        done = crystallize(tmp_path, "queue_study.py:build", "--output", output)
        assert done.returncode == 0, done.stderr
        document = json.loads(done.stdout if output == "-" else (tmp_path / output).read_text())
        assert document["strategy_options"]["token"] == "***"
        for text in (done.stdout, done.stderr, json.dumps(document)):
            assert PASSWORD not in text and TOKEN not in text, text


@pytest.mark.parametrize(
    "options, recorded",
    [
        ({"url": "redis://:pw@host:6379/0"}, {"url": "redis://:***@host:6379/0"}),
        ({"broker": "tcp://user:pass@host:1"}, {"broker": "tcp://user:***@host:1"}),
        ({"repo": "https://ghp_TOKEN@github.com/x"}, {"repo": "https://***@github.com/x"}),
        ({"endpoint": "https://h/api?region=eu&api_key=K1"}, {"endpoint": "https://h/api?region=eu&api_key=***"}),
        (
            {"password": "p", "token": "t", "api_key": "k", "apiKey": "k", "secret": 1, "auth": ("u", "p")},
            {"password": "***", "token": "***", "api_key": "***", "apiKey": "***", "secret": "***", "auth": "***"},
        ),
        ({"credentials": {"user": "u"}, "db_pass": "p", "X-Auth-Token": "t"}, None),
        ({"token": None, "password": ""}, {"token": None, "password": ""}),
        ({"servers": [{"url": "redis://:pw@a"}]}, {"servers": [{"url": "redis://:***@a"}]}),
        (
            {"max_workers": 4, "sort_key": "name", "author": "me", "url": "http://host/path", "progress": None},
            {"max_workers": 4, "sort_key": "name", "author": "me", "url": "http://host/path", "progress": None},
        ),
        (
            {"max_tokens": 100, "auth_timeout": 5.0, "use_auth": True, "password": 1234, "token": 99},
            {"max_tokens": 100, "auth_timeout": 5.0, "use_auth": True, "password": "***", "token": "***"},
        ),
    ],
)
def test_what_counts_as_a_secret(options, recorded):
    from crystallize_core._secrets import masked

    made = masked(options)
    if recorded is None:
        assert set(made.values()) == {"***"}
    else:
        assert made == recorded


UNWRITABLE = """
from crystallize_core import Experiment


class NoRepr:
    def __repr__(self):
        raise RuntimeError("no repr")


def measure(data, ctx):
    loop = []
    loop.append(loop)
    ctx.metrics.add("bad", NoRepr() if ctx.replicate == 0 else 1)
    ctx.metrics.add("loop", loop if ctx.replicate == 1 else 2)
    ctx.metrics.add("ok", 3)
    return data


experiment = Experiment(lambda ctx: 1, [measure], replicates=2)
"""


@pytest.mark.parametrize("name", ["out.json", "out.jsonl", "out.csv"])
def test_a_value_that_cannot_be_written_costs_only_itself_and_is_named(tmp_path, name):
    (tmp_path / "unwritable.py").write_text(UNWRITABLE)
    done = crystallize(tmp_path, "unwritable.py:experiment", "--output", name)
    assert done.returncode == 0, done.stderr
    assert "metric 'bad' of replicate 0, condition 'baseline' (RuntimeError: no repr)" in done.stderr
    assert "metric 'loop' of replicate 1, condition 'baseline' (RecursionError" in done.stderr
    text = (tmp_path / name).read_text()
    if name == "out.json":
        metrics = json.loads(text)["metrics"]["baseline"]
        assert metrics == {"bad": [None, 1], "loop": [2, None], "ok": [3, 3]}
    elif name == "out.jsonl":
        values = [(row["metric"], row["value"]) for row in map(json.loads, text.splitlines())]
        assert values == [("bad", None), ("loop", 2), ("ok", 3), ("bad", 1), ("loop", None), ("ok", 3)]
    else:
        values = [(row["metric"], row["value"]) for row in csv.DictReader(text.splitlines())]
        assert values == [("bad", ""), ("loop", "2"), ("ok", "3"), ("bad", "1"), ("loop", ""), ("ok", "3")]


def record_file_name(data, ctx):
    ctx.metrics.add("name", b"caf\xe9.csv".decode("utf-8", "surrogateescape"))  # as os.listdir gives it
    ctx.metrics.add("n", 1)
    return data


def test_a_string_python_could_not_decode_never_costs_the_csv(tmp_path):
    from crystallize_core import Experiment
    from crystallize_core.testing import numbers

    path = tmp_path / "out.csv"
    path.write_text("what was there before\n")
    Experiment(numbers, [record_file_name]).run(replicates=2).save(path)
    written = path.read_bytes()
    assert b"caf\xe9.csv" in written, "the file name goes back to its own bytes"
    assert written.count(b"\n") >= 5 and b"what was there before" not in written
