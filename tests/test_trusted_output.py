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
