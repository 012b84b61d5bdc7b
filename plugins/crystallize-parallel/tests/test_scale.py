"""A million tiny replicates finish on threads and on processes without memory growing with in-flight work.

Runs in a subprocess so that its peak memory is its own. Completion and a generous ceiling are asserted;
speed is measured in benchmarks/, never here."""

import json
import subprocess
import sys
import textwrap

import pytest

MILLION = 1_000_000
CEILING_MB = 1536  # the results themselves take ~470 MB; in-flight work must add little to that

SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from crystallize_core import Experiment
    from crystallize_parallel import ParallelExecution

    def nothing(ctx):
        return None

    def noop(data, ctx):
        return data

    if __name__ == "__main__":
        strategy = ParallelExecution(executor_type=sys.argv[1], max_workers=2)
        result = Experiment(nothing, [noop], plugins=[strategy]).run(replicates=int(sys.argv[2]))
        print(json.dumps({
            "replicates": result.replicates,
            "errors": len(result.errors),
            "ordered": all(r.replicate == i for i, r in enumerate(result.replicate_results)),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
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
    assert report["replicates"] == MILLION and report["errors"] == 0 and report["ordered"]
    assert report["peak_mb"] < CEILING_MB, report
