"""The core reads bottom-up: the layers of docs/architecture.md hold, and no import cycle exists."""

import textwrap
from pathlib import Path

import pytest
from layers import cycles, imports, layer_table, problems

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "crystallize_core"


def _table() -> dict[str, int]:
    return layer_table((ROOT / "docs" / "architecture.md").read_text())


def test_every_core_import_points_down_the_layers_of_the_architecture_page():
    assert problems(CORE, _table()) == []


def test_the_core_has_no_import_cycle_not_even_through_function_local_or_type_checking_imports():
    assert cycles(imports(CORE)) == []


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "seeded"
    root.mkdir()
    for name, source in files.items():
        (root / name).write_text(textwrap.dedent(source))
    return root


SEEDED_TABLE = {"__init__": 3, "low": 1, "high": 2}


def test_a_seeded_cycle_through_a_function_local_import_is_found_and_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": """
                def helper():
                    from seeded.high import thing  # cheap start
                    return thing
            """,
            "high.py": "from seeded.low import helper\nthing = 1\n",
        },
    )
    assert cycles(imports(root)) == [["high", "low", "high"]]
    said = problems(root, SEEDED_TABLE)
    assert "import cycle: seeded.high -> seeded.low -> seeded.high" in said
    assert any("seeded.low line 3: function-local import of seeded.high reaches up from layer 1" in s for s in said)


def test_a_seeded_cycle_under_type_checking_is_found(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import high\n",
            "high.py": "from .low import TYPE_CHECKING\n",
        },
    )
    assert cycles(imports(root)) == [["high", "low", "high"]]


def test_an_unexplained_local_import_and_a_module_in_no_layer_are_named(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "",
            "high.py": "def f():\n    import seeded.low\n",
            "stray.py": "",
        },
    )
    said = problems(root, SEEDED_TABLE)
    assert "seeded.stray is in no layer: add it to the table" in said
    assert any("function-local import of seeded.low says not why" in s for s in said)


@pytest.mark.parametrize("row", ["| 1. values | `errors` | x |", "| 12. far | `a`, `b.c` | y |"])
def test_the_table_is_read_from_its_rows(row):
    table = layer_table(
        f"<!-- layers: begin -->\n| layer | modules | job |\n|---|---|---|\n{row}\n<!-- layers: end -->"
    )
    assert table and all(isinstance(n, int) for n in table.values())
