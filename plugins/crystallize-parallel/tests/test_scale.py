"""A million tiny replicates finish on threads and on processes without memory growing with in-flight work.

Runs in a subprocess so that its peak memory is its own. Completion and a generous ceiling are asserted;
speed is measured in benchmarks/, never here."""

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.scale

MILLION = 1_000_000
CEILING_MB = 300  # the results themselves take ~50 MB (in columns); in-flight work must add little to that

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from crystallize_core import Experiment
    from crystallize_core.testing import peak_memory_mb
    from crystallize_parallel import ParallelExecution


    def nothing(ctx):
        return None

    def one_float(data, ctx):
        ctx.metrics.add("x", 0.5)
        return data

    if __name__ == "__main__":
        strategy = ParallelExecution(executor_type=sys.argv[1], max_workers=2)
        result = Experiment(nothing, [one_float], plugins=[strategy]).run(replicates=int(sys.argv[2]))
        peak = peak_memory_mb()  # before reading the result back builds anything
        print(json.dumps({
            "replicates": result.replicates,
            "errors": len(result.errors),
            "ordered": result.replicate_indices == list(range(int(sys.argv[2]))),
            "n": result.summary()["baseline"]["x"].n,
            "peak_mb": peak,
        }))
    """
)


@pytest.mark.parametrize("executor_type", ["thread", "process"])
def test_a_million_noop_replicates(tmp_path, executor_type):
    script = tmp_path / "million.py"
    script.write_text(SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), executor_type, str(MILLION)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["replicates"] == MILLION and report["errors"] == 0 and report["ordered"] and report["n"] == MILLION
    assert report["peak_mb"] < CEILING_MB, report
