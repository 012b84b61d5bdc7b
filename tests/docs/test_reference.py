"""The API reference links and covers what authors use; a broken reference fails the docs build.

Run by the docs environment (``tox run -e docs``), which has MkDocs and
mkdocstrings; elsewhere these tests are skipped. They read the site that
environment built (``CRYSTALLIZE_SITE_DIR``), or build one themselves.
"""

from __future__ import annotations

import builtins
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs")
griffe = pytest.importorskip("griffe")
mkdocstrings = pytest.importorskip("mkdocstrings")

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PYTHON_INVENTORY = DOCS / "inventories" / "python-3.11.inv"
# The packages whose docstrings the site renders: name -> the folder that holds it.
PACKAGES = {
    "crystallize_core": ROOT,
    **{
        folder.name.replace("-", "_"): folder
        for folder in sorted((ROOT / "plugins").glob("crystallize-*"))
        if (folder / folder.name.replace("-", "_")).is_dir()
    },
}
# The guides whose names of public objects must all be in the reference.
GUIDES = [DOCS / "writing-a-strategy.md"]

SPHINX_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|mod|attr|data|exc|obj|const|ref):`")
# A Markdown cross-reference: [`text`][identifier] or [`text`][] (identifier = text).
CROSS_REFERENCE = re.compile(r"\[`(?P<text>[^`\]]+)`\]\[(?P<identifier>[^\]\s]*)\]")
CODE_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_site = _load(DOCS / "check_site.py", "check_site")


def _sources() -> list[Path]:
    return [path for name, folder in PACKAGES.items() for path in sorted((folder / name).rglob("*.py"))]


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(command, cwd=config.parent, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site as the docs environment built it, else built here."""
    built = os.environ.get("CRYSTALLIZE_SITE_DIR")
    if built and (Path(built) / "api" / "index.html").is_file():
        return Path(built)
    site = tmp_path_factory.mktemp("site")
    finished = _build(ROOT / "mkdocs.yml", site)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    return site


@pytest.fixture(scope="module")
def rendered(site) -> set[str]:
    """Every object the reference renders, by path (mkdocstrings lists them in the site's objects.inv)."""
    with open(site / "objects.inv", "rb") as file:
        return set(mkdocstrings.Inventory.parse_sphinx(file))


@pytest.fixture(scope="module")
def python_inventory() -> set[str]:
    with open(PYTHON_INVENTORY, "rb") as file:
        return set(mkdocstrings.Inventory.parse_sphinx(file, domain_filter=("py",)))


# --- cross-references that render -------------------------------------------------


def test_no_sphinx_role_in_the_packages_docstrings():
    """mkdocstrings shows a Sphinx role as raw text: cross-references are written in its own syntax."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _sources()
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SPHINX_ROLE.search(line)
    ]
    assert not found, "Sphinx roles; write [`Name`][] or [`Name`][full.path] instead:\n" + "\n".join(found)


def test_no_raw_restructuredtext_in_the_built_site(site):
    assert check_site.problems(site) == []


def test_the_python_inventory_holds_every_standard_library_name_the_docs_link_to(python_inventory):
    """A link to the standard library resolves offline, through the vendored inventory."""
    assert {"asyncio.to_thread", "concurrent.futures.Executor", "KeyboardInterrupt"} <= python_inventory
    standard = set(sys.stdlib_module_names) | set(dir(builtins))
    texts = [(path, path.read_text()) for path in [*_sources(), *sorted(DOCS.glob("*.md"))]]
    missing = [
        f"{path.relative_to(ROOT)}: {identifier}"
        for path, text in texts
        for match in CROSS_REFERENCE.finditer(text)
        for identifier in [match["identifier"] or match["text"]]
        if identifier.split(".")[0] in standard and identifier not in python_inventory
    ]
    assert not missing, f"not in {PYTHON_INVENTORY.name} (see docs/inventories/README.md):\n" + "\n".join(missing)


def _links(page: Path) -> dict[str, set[str]]:
    """The cross-reference links of a built page: href -> the texts linked."""
    links: dict[str, set[str]] = {}
    for match in re.finditer(r'<a class="autorefs [^"]*"[^>]*?href="([^"]+)"[^>]*>(.*?)</a>', page.read_text(), re.S):
        links.setdefault(match[1], set()).add(re.sub(r"<[^>]+>", "", match[2]))
    return links


def test_the_api_page_links_the_names_authors_read(site):
    links = _links(site / "api" / "index.html")
    for target in [
        "#crystallize_core.result.Result",
        "#crystallize_core.experiment.Experiment.arun",
        "https://docs.python.org/3/library/asyncio-task.html#asyncio.to_thread",
        "https://docs.python.org/3/library/concurrent.futures.html#concurrent.futures.Executor",
        "#crystallize_core.engine.drive",
        "#crystallize_core.hookspecs.Backend",
        "#crystallize_core.hookspecs.Backend.resubmit_with_payload",
        "#crystallize_core.hookspecs.Backend.stop_all",
        "#crystallize_core.engine.ExecutorBackend",
        "#crystallize_core.engine.run_span",
        "#crystallize_core.engine.run_shipped_span",
        "#crystallize_core.engine.NEED_PAYLOAD",
    ]:
        assert target in links, f"the API page has no cross-reference to {target}"


# --- the reference covers what the strategy guide names ----------------------------


@pytest.fixture(scope="module")
def packages():
    loader = griffe.GriffeLoader(search_paths=[str(folder) for folder in PACKAGES.values()])
    for name in PACKAGES:
        loader.load(name)
    loader.resolve_aliases(implicit=True, external=False)
    return loader.modules_collection


def _find(packages, path: str):
    try:
        found = packages[path]
        return found.final_target if found.is_alias else found
    except Exception:  # not there, or an alias to something outside the packages
        return None


def _public_objects_named(guide: Path, packages) -> dict[str, list]:
    """Each code span of ``guide`` that names a public object of the packages: span -> the objects.

    A span names an object by its full path (``crystallize_core.engine.drive``)
    or by a name a package exports (``Capabilities``). Once the guide has named
    something so, a bare name may also be a member of its module (``drive``, of
    ``crystallize_core.engine``) or of its class (``stop_all()``, of ``Backend``).
    A call is read as its callee (``drive()`` as ``drive``); a parameter of a
    named function (``max_retries``) is documented with it. Private names and
    spans that name nothing here (``replicate_fn(i)``, ``WorkerDied``) are left out.
    """
    spans = []
    for span in CODE_SPAN.findall(guide.read_text()):
        name = re.split(r"[(\s\[]", span.strip(), maxsplit=1)[0]
        if re.fullmatch(r"[A-Za-z_][\w.]*", name) and not any(part.startswith("_") for part in name.split(".")):
            spans.append(name)
    tops = [packages[name] for name in PACKAGES]
    scopes, parameters = list(tops), set()
    hooks = packages["crystallize_core"]["hookspecs"]
    for member in hooks.members.values():  # a hook's arguments (``experiment``) are documented with the hook
        if not member.is_alias and member.is_function:
            parameters.update(parameter.name for parameter in member.parameters)
    for name in spans:  # the modules and classes of what is named in full or exported
        for found in [_find(packages, name), *(_find(packages, f"{top.path}.{name}") for top in tops)]:
            if found is None:
                continue
            if found.is_function:  # its parameters are documented with it: ``max_retries`` of ``drive``
                parameters.update(parameter.name for parameter in found.parameters)
            for scope in (found.module, found) if found.is_class else (found.module,):
                if scope not in scopes:
                    scopes.append(scope)
    named: dict[str, list] = {}
    for name in spans:
        if name in parameters:
            continue
        candidates = [name] if name.partition(".")[0] in PACKAGES else []
        candidates += [f"{scope.path}.{name}" for scope in scopes]
        objects = []
        for candidate in candidates:
            found = _find(packages, candidate)
            if found is not None and found.is_public and found not in objects:
                objects.append(found)
        if objects:
            named[name] = objects
    return named


@pytest.mark.parametrize("guide", GUIDES, ids=lambda guide: guide.name)
def test_every_public_name_a_guide_mentions_is_in_the_reference(guide, packages, rendered):
    named = _public_objects_named(guide, packages)
    # The names the guide is known to lean on: a guard against this test finding nothing.
    assert {
        "crystallize_core.engine.drive",
        "ExecutorBackend",
        "crystallize_core.engine.run_shipped_span",
        "stop_all",
    } <= set(named)
    missing = [
        f"`{span}` ({', '.join(found.path for found in objects)})"
        for span, objects in named.items()
        if not any(found.path in rendered for found in objects)
    ]
    assert not missing, f"{guide.name} names public objects that docs/api.md does not render:\n" + "\n".join(missing)


def test_internal_helpers_are_not_in_the_reference(rendered):
    internal = ("crystallize_core.batching", "crystallize_core.errors.logger")
    assert not {path for path in rendered if path.startswith(internal)}


# --- a broken reference fails the build --------------------------------------------


@pytest.fixture
def copy(tmp_path) -> Path:
    """What the docs build reads, copied, to break."""
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    shutil.copytree(DOCS, tmp_path / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for name, folder in PACKAGES.items():
        into = tmp_path / folder.relative_to(ROOT) / name
        shutil.copytree(folder / name, into, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} is no longer in {path}: update this test"
    path.write_text(text.replace(old, new, 1))


def test_the_copy_builds(copy):
    finished = _build(copy / "mkdocs.yml", copy / "site")
    assert finished.returncode == 0, finished.stdout + finished.stderr


@pytest.mark.parametrize(
    "where, old, new, named",
    [
        (
            "crystallize_core/dispatch.py",
            "Run every replicate of ``run`` on ``backend``",
            "Run every replicate of ``run`` on [`no_such_backend`][]",
            "no_such_backend",
        ),
        (
            "docs/writing-a-strategy.md",
            "(`crystallize_core.engine.drive`)",
            "([`drive`][crystallize_core.engine.no_such_function])",
            "crystallize_core.engine.no_such_function",
        ),
    ],
    ids=["in a docstring", "in a guide"],
)
def test_a_broken_cross_reference_fails_the_build(copy, where, old, new, named):
    _replace(copy / where, old, new)
    finished = _build(copy / "mkdocs.yml", copy / "site")
    assert finished.returncode != 0
    assert named in finished.stdout + finished.stderr


def test_a_sphinx_role_in_a_docstring_fails_the_site_check(copy):
    _replace(copy / "crystallize_core" / "engine.py", "and calls [`drive`][]", "and calls :func:`drive`")
    assert _build(copy / "mkdocs.yml", copy / "site").returncode == 0  # MkDocs itself does not notice
    checked = subprocess.run(
        [sys.executable, str(copy / "docs" / "check_site.py"), str(copy / "site")], capture_output=True, text=True
    )
    assert checked.returncode == 1
    assert "api/index.html" in checked.stderr
    assert ":func:" in checked.stderr
