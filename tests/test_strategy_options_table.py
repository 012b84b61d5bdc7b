"""The options table in docs/strategies.md against the shipped strategies' signatures.

Signatures are read from the plugins' sources, so that the cluster strategies
are checked here too, where Ray and Dask are not installed.
"""

import ast
import re
from pathlib import Path

import pytest
from installed import source_version

ROOT = Path(__file__).resolve().parents[1]
TABLE = re.compile(r"<!-- strategy-options: begin -->\n(.*?)<!-- strategy-options: end -->", re.DOTALL)
STRATEGIES = {
    "serial": ("crystallize-serial", "SerialExecution"),
    "parallel": ("crystallize-parallel", "ParallelExecution"),
    "ray": ("crystallize-ray", "RayExecution"),
    "dask": ("crystallize-dask", "DaskExecution"),
    "async": ("crystallize-async", "AsyncExecution"),
}
#: The options every strategy takes, with one meaning each.
SHARED = {"progress": "None"}
#: Shared options of the strategies that run replicates anywhere but one thread.
SHARED_BY_CONCURRENT = {"max_workers": "None"}
#: Shared options of the strategies that rerun a replicate whose worker died.
SHARED_BY_RETRYING = {"max_retries": "1"}


def documented() -> dict[str, list[tuple[str, str]]]:
    (table,) = TABLE.findall((ROOT / "docs" / "strategies.md").read_text())
    rows: dict[str, list[tuple[str, str]]] = {}
    for line in table.strip().splitlines()[2:]:
        strategy, option, default, _meaning = (cell.strip().strip("`") for cell in line.strip("|").split("|", 3))
        rows.setdefault(strategy, []).append((option, default))
    return rows


def signature(strategy: str) -> list[tuple[str, str]]:
    """The ``__init__`` parameters of a strategy's class, with their defaults, in order."""
    distribution, class_name = STRATEGIES[strategy]
    source = ROOT / "plugins" / distribution / distribution.replace("-", "_") / "__init__.py"
    (cls,) = [
        n for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.ClassDef) and n.name == class_name
    ]
    (init,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"]
    arguments = init.args.args[1:] + init.args.kwonlyargs
    defaults = [*init.args.defaults, *(d for d in init.args.kw_defaults if d is not None)]
    assert len(defaults) == len(arguments), f"{class_name}: every option has a default"
    return [(a.arg, ast.unparse(d)) for a, d in zip(arguments, defaults)]


def test_the_table_lists_every_shipped_strategy():
    assert sorted(documented()) == sorted(STRATEGIES)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_the_table_lists_each_option_with_its_default_in_signature_order(strategy):
    rows = documented()[strategy]
    actual = signature(strategy)
    assert [name for name, _ in rows] == [name for name, _ in actual], strategy
    for (name, written), (_, default) in zip(rows, actual):
        assert ast.literal_eval(written) == ast.literal_eval(default), f"{strategy}: {name} defaults to {default}"


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_shared_options_have_one_name_and_one_default_everywhere(strategy):
    options = dict(signature(strategy))
    expected = dict(SHARED)
    expected.update(SHARED_BY_CONCURRENT)
    if strategy in ("parallel", "ray", "dask"):
        expected.update(SHARED_BY_RETRYING)
    for name, default in expected.items():
        assert options.get(name) == default, f"{strategy}: {name} should default to {default}"
    assert "n_workers" not in options or strategy == "dask", "n_workers is dask's own name"


def test_the_versions_the_command_line_guide_shows_are_the_packages_own():
    listing = (ROOT / "docs" / "cli.md").read_text()
    shown = re.findall(r"^(\w+)(?: \(fallback\))?\s+(crystallize-\w+)\s+(\d+\.\d+\.\d+)\s", listing, re.MULTILINE)
    assert shown, "docs/cli.md shows no strategy listing"
    for _name, distribution, version in shown:
        declared = source_version(distribution)
        assert version == declared, f"docs/cli.md shows {distribution} {version}, the package is {declared}"
