"""CI runs exactly the README's test command: a contributor who runs that command runs CI."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    shown = re.search(r"\*\*Set up and run every test\*\*.*?```bash\n(.*?)\n```", readme, re.S)
    assert shown, "the README no longer shows the command that runs every test"
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == shown[1], "`.ci/run` and the README's test command differ"
