"""Real installed distributions for discovery tests: a dist-info folder with
METADATA and entry_points.txt beside a module, on a sys.path entry."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def source_version(distribution: str) -> str:
    """The ``__version__`` a plugin's source declares (hatch builds its wheel's version from it)."""
    package = distribution.replace("-", "_")
    text = (ROOT / "plugins" / distribution / package / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.MULTILINE).group(1)


def install_distribution(site: Path, name: str, version: str, strategies: dict[str, str], modules: dict[str, str]):
    """Write distribution ``name`` into ``site`` with the given strategy entry points and module sources."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "".join(f"{key} = {value}\n" for key, value in strategies.items())
    (info / "entry_points.txt").write_text(f"[crystallize.strategies]\n{lines}")
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    (info / "RECORD").write_text("")


GOOD_STRATEGY = """
    import sys
    from crystallize_core import hookimpl

    class Reverse:
        '''Runs replicates last to first and returns them in order.'''

        def __init__(self, decline=False, tag="reverse"):
            self.decline = decline
            self.tag = tag

        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            if self.decline:
                return None
            n = experiment.replicates
            return [replicate_fn(i) for i in reversed(range(n))][::-1]
"""
