"""The command line at its edges: standard output a pipe can trust, a target
that ends the program, a reader that leaves early, treatments read as sweeps."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

NOISE = ("Traceback", "BrokenPipeError", "Exception ignored")


def environment():
    return {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_")}


def crystallize(folder, *args):
    return subprocess.run(
        [sys.executable, "-m", "crystallize_core", "run", *args],
        capture_output=True,
        text=True,
        cwd=folder,
        env=environment(),
        timeout=300,
    )


def write(folder, name, text):
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def assert_one_line(done, status=2):
    assert done.returncode == status, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# --- --output -: standard output holds the document and nothing else -------------------------

PRINTING = """
    import ctypes
    import os
    import sys

    from crystallize_core import Experiment

    print("print at import")
    os.write(1, b"os.write at import\\n")

    def printf(text, flush=True):
        if sys.platform != "win32":  # C code writing to descriptor 1 through its own buffer
            libc = ctypes.CDLL(None)
            libc.printf(text.encode() + b"\\n")
            if flush:  # else the C library writes it when the process ends
                libc.fflush(None)

    def source(ctx):
        print("print in the datasource", os.getpid())
        return 1

    def step(data, ctx):
        print("print in a step")
        sys.stdout.write("sys.stdout.write in a step\\n")
        os.write(1, b"os.write in a step\\n")
        printf("printf in a step")
        ctx.metrics.add("value", data)
        return data

    def build():
        print("print in build")
        os.write(1, b"os.write in build\\n")
        printf("printf in build")
        printf("printf left in the C buffer", flush=False)
        return Experiment(source, [step], replicates=3)
"""


@pytest.mark.parametrize("strategy", [[], ["--strategy", "parallel:executor_type=process,max_workers=2"]])
def test_output_dash_is_only_the_document_whatever_the_target_prints(tmp_path, strategy):
    write(tmp_path, "printing.py", PRINTING)
    done = crystallize(tmp_path, "printing.py:build", "--output", "-", "--no-progress", *strategy)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["metrics"]["baseline"]["value"] == [1, 1, 1]
    for printed in ("print at import", "os.write at import", "print in build", "os.write in build"):
        assert done.stderr.count(printed) == 1, done.stderr
    for printed in ("print in a step", "sys.stdout.write in a step", "os.write in a step"):
        assert done.stderr.count(printed) == 3, done.stderr
    if sys.platform != "win32":
        assert done.stderr.count("printf in build") == 1 and done.stderr.count("printf in a step") == 3
        assert done.stderr.count("printf left in the C buffer") == 1
    if strategy:
        assert document["strategy"] == "parallel"
        worker_pids = {line.split()[-1] for line in done.stderr.splitlines() if "print in the datasource" in line}
        assert str(os.getpid()) not in worker_pids and worker_pids, done.stderr
    assert "replicates: 3" in done.stderr  # the summary, after what the target printed


def test_output_dash_leaves_standard_output_empty_when_the_target_fails(tmp_path):
    write(tmp_path, "broken.py", 'print("before the failure")\nraise RuntimeError("no data")\n')
    done = crystallize(tmp_path, "broken.py:x", "--output", "-")
    assert done.returncode == 2 and done.stdout == "", done.stdout
    assert "before the failure" in done.stderr and "RuntimeError: no data" in done.stderr


# --- a reader that leaves early: 141, quietly ------------------------------------------------

BIG = """
    from crystallize_core import Experiment

    def step(data, ctx):
        ctx.metrics.add("text", "x" * 100_000)  # 30 of them: a document far beyond a pipe's buffer
        return data

    experiment = Experiment(lambda ctx: 1, [step], replicates=30)
"""


def test_a_reader_that_stops_after_the_first_line_gets_status_141_and_no_traceback(tmp_path):
    write(tmp_path, "big.py", BIG)
    # As `crystallize run big.py:experiment --output - | head -1`.
    process = subprocess.Popen(
        [sys.executable, "-m", "crystallize_core", "run", "big.py:experiment", "--output", "-", "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=environment(),
    )
    assert process.stdout.readline() == b"{\n"
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) == 141, stderr
    for noise in (*NOISE, "crystallize: error"):
        assert noise not in stderr, stderr
    assert "replicates: 30" in stderr


def test_output_dash_to_a_reader_already_gone_gets_status_141_and_no_error(tmp_path):
    write(tmp_path, "small.py", "from crystallize_core import Experiment\nexperiment = Experiment(lambda ctx: 1, [])\n")
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "crystallize_core", "run", "small.py:experiment", "--output", "-", "--no-progress"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=environment(),
            timeout=300,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    for noise in (*NOISE, "crystallize: error", "cannot write"):
        assert noise not in done.stderr, done.stderr


# --- a target that ends the program ---------------------------------------------------------


@pytest.mark.parametrize("code", ["0", "3", "None", "'bye'"])
def test_sys_exit_while_the_target_is_imported_is_a_usage_error_naming_it(tmp_path, code):
    write(tmp_path, "quits.py", f"import sys\n\nsys.exit({code})\n")
    done = crystallize(tmp_path, "quits.py:experiment")
    assert_one_line(done)
    assert f"importing quits.py failed: quits.py:3: the target called sys.exit({code}) while being loaded" in (
        done.stderr
    )


def test_sys_exit_while_building_the_experiment_is_a_usage_error_naming_it(tmp_path):
    write(
        tmp_path,
        "quits.py",
        """
        import sys

        def build():
            sys.exit(0)
        """,
    )
    done = crystallize(tmp_path, "quits.py:build", "--output", "-")
    assert_one_line(done)
    assert done.stdout == ""
    assert "building the experiment with quits.py:build failed: quits.py:4: the target called sys.exit(0)" in (
        done.stderr
    )


# --- --treatment reads its values as --sweep does -------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (["--treatment", "n:a=1,a=2"], "malformed --treatment 'n:a=1,a=2': 'a' is given twice"),
        (["--treatment", "n:a="], "malformed --treatment 'n:a=': 'a' has no value"),
        (["--sweep", "a="], "malformed --sweep 'a=': 'a' has no value"),
        (["--treatment", "n:a=1,,b=2"], "malformed --treatment 'n:a=1,,b=2': a KEY=VALUE is empty"),
        (["--treatment", "n:a=1,"], "malformed --treatment 'n:a=1,': a KEY=VALUE is empty"),
        (["--treatment", "n:=1"], "malformed --treatment 'n:=1': '=1' is not KEY=VALUE"),
    ],
)
def test_duplicate_and_empty_treatment_values_are_refused_as_sweeps_refuse_them(tmp_path, args, message):
    never = write(tmp_path, "never.py", "raise SystemExit('imported')\n")
    done = crystallize(tmp_path, f"{never}:x", *args)
    assert_one_line(done)
    assert message in done.stderr
