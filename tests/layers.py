"""Reads a package's imports from its source and holds them to a table of layers.

Every import of the package's own modules counts: at module level, inside a
function, and under ``if TYPE_CHECKING:``; a function-local import points
downward like any other, and says why it is not at the top (a comment on its
line or the line above). Used by ``tests/test_layers.py`` on
``crystallize_core`` against the table in ``docs/architecture.md``.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, relative to the package ("engine", "testing._probes")
    target: str  # the imported module, relative to the package ("" for the package itself)
    line: int
    local: bool  # inside a function
    typing_only: bool  # under `if TYPE_CHECKING:`

    def where(self, package: str) -> str:
        kind = "function-local " if self.local else "TYPE_CHECKING " if self.typing_only else ""
        source, target = self.source or "__init__", self.target or "__init__"
        return f"{package}.{source} line {self.line}: {kind}import of {package}.{target}"


def modules(root: Path) -> dict[str, Path]:
    """The package's modules by name relative to it (``""`` for ``__init__``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(root: Path) -> list[Import]:
    """Every import of one of the package's own modules, by each of its modules."""
    package = root.name
    known = modules(root)
    found: list[Import] = []
    for name, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        _walk(tree, name, is_package, package, known, found, local=False, typing_only=False)
    return found


def _walk(node, name, is_package, package, known, found, local, typing_only):
    for child in ast.iter_child_nodes(node):
        child_local, child_typing = local, typing_only
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            child_local = True
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            # the body only: an `else:` runs
            for statement in child.body:
                _walk(ast.Module([statement], []), name, is_package, package, known, found, local, True)
            for statement in child.orelse:
                _walk(ast.Module([statement], []), name, is_package, package, known, found, local, typing_only)
            continue
        for target in _targets(child, name, is_package, package, known):
            found.append(Import(name, target, child.lineno, child_local, child_typing))
        _walk(child, name, is_package, package, known, found, child_local, child_typing)


def _targets(node, name, is_package, package, known) -> list[str]:
    """The package's modules ``node`` imports (empty for anything else)."""
    if isinstance(node, ast.Import):
        return [_module_of(a.name, package, known) for a in node.names if _inside(a.name, package)]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
        absolute = ".".join([package, *[p for p in base if p], *([node.module] if node.module else [])])
    else:
        absolute = node.module or ""
    if not _inside(absolute, package):
        return []
    module = _module_of(absolute, package, known)
    targets = []
    for alias in node.names:  # `from pkg import submodule` imports the submodule
        submodule = f"{module}.{alias.name}" if module else alias.name
        targets.append(submodule if submodule in known else module)
    return sorted(set(targets))


def _inside(dotted: str, package: str) -> bool:
    return dotted == package or dotted.startswith(package + ".")


def _module_of(dotted: str, package: str, known) -> str:
    relative = dotted[len(package) + 1 :] if dotted != package else ""
    while relative and relative not in known:  # `import pkg.module.attribute` is no import form, but be safe
        relative = relative.rpartition(".")[0]
    return relative


def cycles(found: list[Import]) -> list[list[str]]:
    """The import cycles among modules, each as a path that returns to its start."""
    graph: dict[str, set[str]] = {}
    for edge in found:
        if edge.target != edge.source:
            graph.setdefault(edge.source, set()).add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_path_through(component, graph) for component in components]


def _path_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """One cycle inside a strongly connected ``component``, for the message."""
    members = set(component)
    start = component[0]
    path, seen = [start], {start}
    while True:
        following = sorted(graph[path[-1]] & members)
        if start in following and len(path) > 1:
            return [*path, start]
        unseen = [m for m in following if m not in seen]
        if not unseen:
            return [*path, start]
        path.append(unseen[0])
        seen.add(unseen[0])


def layer_table(markdown: str) -> dict[str, int]:
    """Module name -> layer number, from the table between the layer markers:
    rows like ``| 2. the contract | `hookspecs`, `options` | ... |``."""
    block = re.search(r"<!-- layers: begin -->(.*?)<!-- layers: end -->", markdown, re.DOTALL)
    if block is None:
        raise AssertionError("the layer table's markers <!-- layers: begin/end --> are missing")
    table: dict[str, int] = {}
    for row in block.group(1).splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        number = re.match(r"(\d+)\.", cells[0]) if cells and cells[0] else None
        if number is None or len(cells) < 2:
            continue
        for module in re.findall(r"`([\w.]+)`", cells[1]):
            table[module] = int(number.group(1))
    return table


def layer_of(module: str, table: dict[str, int]) -> int | None:
    """A module's layer: its own row, else its package's (``testing._probes`` -> ``testing``)."""
    while True:
        if module in table:
            return table[module]
        if "." not in module:
            return None
        module = module.rpartition(".")[0]


def problems(root: Path, table: dict[str, int]) -> list[str]:
    """Everything the package's imports do that the layer table forbids, in words."""
    package = root.name
    found = imports(root)
    said = []
    for module in modules(root):
        if layer_of(module or "__init__", table) is None:
            said.append(f"{package}.{module or '__init__'} is in no layer: add it to the table")
    for name in table:
        if name != "__init__" and name not in modules(root):
            said.append(f"the layer table names {package}.{name}, which does not exist")
    lines_of = {name: path.read_text().splitlines() for name, path in modules(root).items()}
    for edge in found:
        source = layer_of(edge.source or "__init__", table)
        target = layer_of(edge.target or "__init__", table)
        if source is not None and target is not None and target > source:
            said.append(f"{edge.where(package)} reaches up from layer {source} to layer {target}")
        if edge.local and not _explained(lines_of[edge.source], edge.line):
            said.append(f"{edge.where(package)} says not why it is not at the top (a comment on it or above)")
    for cycle in cycles(found):
        said.append("import cycle: " + " -> ".join(f"{package}.{m or '__init__'}" for m in cycle))
    return said


def _explained(lines: list[str], line: int) -> bool:
    """A comment on the import's line, or above the group of imports it is in."""
    if "#" in lines[line - 1]:
        return True
    above = line - 2
    while above >= 0 and lines[above].strip().startswith(("from ", "import ")):
        if "#" in lines[above]:
            return True
        above -= 1
    return above >= 0 and lines[above].strip().startswith("#")
