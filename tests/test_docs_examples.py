"""Every code block in README.md and docs/*.md runs, as a reader would run it, without warnings.

Python blocks: the runnable ones of a page run in order as one script, in a
fresh interpreter with warnings turned into errors, so a later block may use
what an earlier one defined. Each block keeps its line number in the script,
so a traceback's line is the line of the page.

Bash blocks: each runs in a sandbox folder that looks like a checkout of
this repository (its top-level entries linked in), where ``.venv/bin/python``
and ``.venv/bin/crystallize`` are the interpreter running these tests; a
block that creates its own ``.venv`` runs in a fresh copy of the repository
instead, exactly as written.

Other languages (``text``, ``toml``) are not run. An HTML comment on the
line just before a block's fence steers it:

``<!-- docs-test: skip REASON -->``
    The block cannot run here (a cluster address, an engine the core tests do
    not install); it is still checked for syntax. Use it sparingly.
``<!-- docs-test: pytest -->``
    The page's Python defines tests (a conformance-kit subclass): its script
    runs under pytest, which must pass.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 300  # a hang fails the test instead of blocking the suite

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\s]*)")
_MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(?P<directive>\w+)\s*(?P<reason>.*?)\s*-->\s*$")
_DIRECTIVES = {"skip", "pytest"}
_RUN = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
_NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".tox", ".tox-runner", "__pycache__", "*.egg-info", "site", "build", "dist", ".pytest_cache"
)

# Pages being rewritten elsewhere: their examples are collected and run, and
# expected to fail until the rewrite lands (strict: a pass is reported too).
PENDING: dict[str, str] = {}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # line of the page holding the block's first line of code
    language: str  # "python" or "bash"
    code: str
    directive: str | None = None
    reason: str = ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def code_blocks(page: Path) -> list[Block]:
    """The Python and bash blocks of ``page``, with the directive of the comment before each.

    Raises ValueError for an unknown directive, a skip without a reason, or an
    unclosed fence, so that a mistyped marker cannot silently change what runs.
    """
    lines = page.read_text().splitlines()
    blocks, position = [], 0
    while position < len(lines):
        opening = _FENCE.match(lines[position])
        if not opening:
            position += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].lower()
        end = next(
            (n for n in range(position + 1, len(lines)) if lines[n].strip().startswith(fence)),
            None,
        )
        if end is None:
            raise ValueError(f"{page}:{position + 1}: unclosed code fence")
        directive, reason = _directive_before(page, lines, position)
        language = _RUN.get(info)
        if language is not None:
            body = [
                line[len(indent) :] if line.startswith(indent) else line.lstrip() for line in lines[position + 1 : end]
            ]
            blocks.append(Block(page, position + 2, language, "\n".join(body) + "\n", directive, reason))
        position = end + 1
    return blocks


def _directive_before(page: Path, lines: list[str], fence_at: int) -> tuple[str | None, str]:
    before = fence_at - 1
    if before < 0:
        return None, ""
    if "docs-test" not in lines[before]:
        return None, ""
    marker = _MARKER.match(lines[before])
    if not marker or marker["directive"] not in _DIRECTIVES:
        raise ValueError(f"{page}:{before + 1}: unknown docs-test marker; use one of {sorted(_DIRECTIVES)}")
    if marker["directive"] == "skip" and not marker["reason"]:
        raise ValueError(f"{page}:{before + 1}: say why the block cannot run: <!-- docs-test: skip REASON -->")
    return marker["directive"], marker["reason"]


ALL_BLOCKS = [block for page in PAGES for block in code_blocks(page)]


def _pending(page: Path) -> list:
    reason = PENDING.get(str(page.relative_to(ROOT)))
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


def _clean_environment(**extra: str) -> dict[str, str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLIZE_") and k not in ("PYTHONPATH",)}
    environment.update(extra)
    return environment


def _check(done: subprocess.CompletedProcess, what: str) -> None:
    output = f"--- stdout\n{done.stdout[-6000:]}\n--- stderr\n{done.stderr[-6000:]}"
    assert done.returncode == 0, f"{what} failed (exit {done.returncode})\n{output}"
    assert "Warning" not in done.stderr, f"{what} printed a warning\n{output}"


# --- Python: one script per page --------------------------------------------------------------

PYTHON_PAGES = [
    page
    for page in PAGES
    if any(b.language == "python" and b.directive != "skip" for b in ALL_BLOCKS if b.page == page)
]


def page_script(page: Path) -> tuple[str, bool]:
    """The page's runnable Python blocks, each at its own line number, and whether it runs under pytest."""
    lines = [""] * len(page.read_text().splitlines())
    under_pytest = False
    for block in code_blocks(page):
        if block.language != "python" or block.directive == "skip":
            continue
        under_pytest = under_pytest or block.directive == "pytest"
        for offset, line in enumerate(block.code.splitlines()):
            lines[block.line - 1 + offset] = line
    return "\n".join(lines) + "\n", under_pytest


@pytest.mark.parametrize(
    "page",
    [pytest.param(page, id=str(page.relative_to(ROOT)), marks=_pending(page)) for page in PYTHON_PAGES],
)
def test_python_examples_run_without_warnings(page, tmp_path):
    done = run_page_python(page, tmp_path)
    _check(done, f"the Python examples of {page.relative_to(ROOT)} (script lines are the page's lines)")


def run_page_python(page: Path, folder: Path) -> subprocess.CompletedProcess:
    """Run the page's script in ``folder``: with Python, or under pytest when a block is so marked."""
    script, under_pytest = page_script(page)
    name = page.name.replace(".", "_").replace("-", "_")
    path = folder / (f"test_{name}.py" if under_pytest else f"{name}.py")
    path.write_text(script)
    command = [sys.executable, "-W", "error"]
    command += ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)] if under_pytest else [str(path)]
    return subprocess.run(
        command, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT, env=_clean_environment()
    )


# --- bash: each block in a sandbox that looks like a checkout -----------------------------------

# A command shown on several pages (the install line) runs once.
_BY_CODE: dict[str, Block] = {}
for _block in ALL_BLOCKS:
    if _block.language == "bash" and _block.directive != "skip":
        _BY_CODE.setdefault(_block.code, _block)
BASH_BLOCKS = list(_BY_CODE.values())


def _sandbox(tmp_path: Path, fresh_copy: bool) -> Path:
    sandbox = tmp_path / "checkout"
    if fresh_copy:
        shutil.copytree(ROOT, sandbox, ignore=_NOT_COPIED, symlinks=True)
        return sandbox
    sandbox.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".git", ".venv", ".tox", ".tox-runner"):
            (sandbox / entry.name).symlink_to(entry)
    bin_folder = sandbox / ".venv" / "bin"
    bin_folder.mkdir(parents=True)
    for name, command in (
        ("python", f'"{sys.executable}"'),
        ("crystallize", f'"{sys.executable}" -m crystallize_core'),
    ):
        wrapper = bin_folder / name
        wrapper.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        wrapper.chmod(0o755)
    return sandbox


def _creates_venv(code: str) -> bool:
    return re.search(r"-m venv \.venv\b", code) is not None


def _bash_marks(block: Block) -> list:
    # Setting up a fresh virtual environment installs packages, as the packaging
    # tests do: run once, not on every interpreter (see the packaging marker).
    return _pending(block.page) + ([pytest.mark.packaging] if _creates_venv(block.code) else [])


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where, marks=_bash_marks(b)) for b in BASH_BLOCKS])
def test_bash_examples_run_without_warnings(block, tmp_path):
    creates_venv = _creates_venv(block.code)
    sandbox = _sandbox(tmp_path, fresh_copy=creates_venv)
    path_entries = [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    if not creates_venv:
        path_entries.insert(0, str(sandbox / ".venv" / "bin"))
    # Warnings are errors for the examples' own Python, but not for pip and venv.
    warnings = {} if creates_venv else {"PYTHONWARNINGS": "error"}
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block.code],
        cwd=sandbox,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=_clean_environment(PATH=os.pathsep.join(path_entries), **warnings),
    )
    shown_at = ", ".join(b.where for b in ALL_BLOCKS if b.code == block.code)
    _check(done, f"the bash example at {shown_at}")


# --- what cannot run is still checked -----------------------------------------------------------

SKIPPED = [b for b in ALL_BLOCKS if b.directive == "skip"]


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in SKIPPED])
def test_blocks_that_cannot_run_here_are_still_well_formed(block):
    if block.language == "python":
        compile(block.code, block.where, "exec")
    else:
        done = subprocess.run(["bash", "-n", "-c", block.code], capture_output=True, text=True)
        assert done.returncode == 0, f"{block.where}: {done.stderr}"


def test_the_collector_finds_blocks_lines_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent(
            """\
            # A page

            ```python
            x = 1
            ```

            <!-- docs-test: skip needs a cluster -->
            ```bash
            ray start --head
            ```

            1. In a list:

               ```py
               y = x + 1
               ```

            ```text
            $ not run
            ```
            """
        )
    )
    blocks = code_blocks(page)
    assert [(b.language, b.line, b.code, b.directive, b.reason) for b in blocks] == [
        ("python", 4, "x = 1\n", None, ""),
        ("bash", 9, "ray start --head\n", "skip", "needs a cluster"),
        ("python", 15, "y = x + 1\n", None, ""),
    ]
    script, under_pytest = page_script(page)
    assert script.splitlines()[3] == "x = 1" and script.splitlines()[14] == "y = x + 1" and not under_pytest


@pytest.mark.parametrize(
    "marker, message",
    [("<!-- docs-test: skip -->", "say why"), ("<!-- docs-test: skp it -->", "unknown docs-test marker")],
)
def test_the_collector_refuses_a_marker_it_does_not_understand(tmp_path, marker, message):
    page = tmp_path / "page.md"
    page.write_text(f"{marker}\n```python\nx = 1\n```\n")
    with pytest.raises(ValueError, match=message):
        code_blocks(page)


def test_every_page_with_examples_is_collected():
    pages = {str(b.page.relative_to(ROOT)) for b in ALL_BLOCKS}
    assert {"README.md", "docs/index.md", "docs/faults.md", "docs/cli.md", "docs/strategies.md"} <= pages


@pytest.mark.parametrize("verdict, status", [("assert True", 0), ("assert False", 1)])
def test_a_page_marked_pytest_runs_its_tests(tmp_path, verdict, status):
    page = tmp_path / "kit.md"
    page.write_text(
        f"```python\nx = 1\n```\n\n<!-- docs-test: pytest -->\n```python\ndef test_x():\n    {verdict}\n```\n"
    )
    done = run_page_python(page, tmp_path)
    assert done.returncode == status, done.stdout
    assert "1 passed" in done.stdout if status == 0 else "1 failed" in done.stdout
