"""Fingerprints: what an experiment *is*, equal in every process for an equal experiment.

A checkpoint stores one digest per component (datasource, step, treatment,
replicate-level plugin), so that the same experiment resumes in a new process
and a changed one is refused, saying which component changed. Digests are built
from code, closure values and object state, never from reprs, which may hold
memory addresses.
"""

from __future__ import annotations

import functools
import hashlib
import types
from collections.abc import Iterable, Mapping
from typing import Any

from crystallize_core.seed import SeedPlugin


def _hash(*parts: bytes | str) -> bytes:
    digest = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.digest()


class Fingerprint:
    """Digests of what objects *are*, equal in every process for equal objects.

    Functions by module, qualified name, code (bytecode, constants and names,
    not line numbers or docstrings), defaults, closure values and the
    functions of the same module they call; ``functools.partial`` by function
    and arguments; bound methods by function and instance; classes by name
    and the code of their methods; other objects by class and the state they
    pickle with (or their attributes), containers by content; a
    [`SeedPlugin`][] by its seed, unless the seed was drawn. Never by
    ``repr``, which may hold memory addresses. Module-level variables a
    function reads are not included.
    """

    def __init__(self) -> None:
        self._memo: dict[int, tuple[object, bytes]] = {}
        self._active: dict[int, int] = {}

    def hexdigest(self, obj: object) -> str:
        """The digest of ``obj`` as hex text."""
        try:
            return self.of(obj).hex()
        except RecursionError:  # too deep to describe: fall back to what kind of thing it is
            return _hash("deep", _name(type(obj))).hex()

    def of(self, obj: object) -> bytes:
        key = id(obj)
        known = self._memo.get(key)
        if known is not None and known[0] is obj:
            return known[1]
        depth = self._active.get(key)
        if depth is not None:
            return _hash("cycle", str(len(self._active) - depth))
        self._active[key] = len(self._active)
        try:
            digest = self._compute(obj)
        finally:
            del self._active[key]
        self._memo[key] = (obj, digest)
        return digest

    def _compute(self, obj: Any) -> bytes:
        kind = type(obj)
        if obj is None or kind in (bool, int, float, complex, str):
            return _hash(kind.__name__, repr(obj))
        if kind in (bytes, bytearray):
            return _hash(kind.__name__, bytes(obj))
        if kind in (list, tuple):
            return _hash(kind.__name__, *map(self.of, obj))
        if kind is dict:
            return _hash("dict", *sorted(_hash(self.of(k), self.of(v)) for k, v in obj.items()))
        if kind in (set, frozenset):
            return _hash(kind.__name__, *sorted(map(self.of, obj)))
        if kind is types.FunctionType:
            return self._function(obj)
        if kind is types.MethodType:
            return _hash("method", self.of(obj.__func__), self.of(obj.__self__))
        if kind in (types.BuiltinFunctionType, types.BuiltinMethodType):
            owner = getattr(obj, "__self__", None)
            bound = b"" if owner is None or isinstance(owner, types.ModuleType) else self.of(owner)
            return _hash("builtin", str(getattr(obj, "__module__", None)), obj.__qualname__, bound)
        if kind is functools.partial:
            return _hash("partial", self.of(obj.func), self.of(obj.args), self.of(obj.keywords))
        if kind is types.CodeType:
            return self._code(obj)
        if kind in (staticmethod, classmethod):
            return _hash(kind.__name__, self.of(obj.__func__))
        if isinstance(obj, type):
            return self._class(obj)
        if kind is types.ModuleType:
            return _hash("module", obj.__name__)
        if isinstance(obj, SeedPlugin):
            state = dict(vars(obj))
            if obj.seed_drawn:  # drawn anew in each process; the checkpoint keeps the first
                del state["seed"]
            return _hash("SeedPlugin", self.of(kind), self.of(state))
        return self._object(obj)

    def _function(self, function: types.FunctionType) -> bytes:
        code = function.__code__
        parts: list[bytes | str] = [
            str(function.__module__),
            function.__qualname__,
            self._code(code, docstring=function.__doc__),
            self.of(function.__defaults__),
            self.of(function.__kwdefaults__),
        ]
        for cell in function.__closure__ or ():
            try:
                parts.append(self.of(cell.cell_contents))
            except ValueError:  # a cell not filled yet
                parts.append(b"empty cell")
        namespace = function.__globals__
        for name in sorted(_global_names(code)):
            value = namespace.get(name)
            if type(value) is types.FunctionType and value.__module__ == function.__module__:
                parts.append(_hash(name, self.of(value)))
        return _hash("function", *parts)

    def _code(self, code: types.CodeType, docstring: str | None = None) -> bytes:
        constants = code.co_consts
        if docstring is not None and constants and constants[0] == docstring:
            constants = constants[1:]
        return _hash(
            "code",
            code.co_name,
            code.co_code,
            repr((code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)),
            repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)),
            *(self._code(c) if type(c) is types.CodeType else self.of(c) for c in constants),
        )

    def _class(self, cls: type) -> bytes:
        members = []
        for name, member in sorted(vars(cls).items()):
            if type(member) in (types.FunctionType, staticmethod, classmethod):
                members.append(_hash(name, self.of(member)))
        return _hash("class", _name(cls), *members)

    def _object(self, obj: object) -> bytes:
        parts = [self.of(type(obj))]
        try:
            reduced = obj.__reduce_ex__(4)
        except Exception:
            reduced = None
        if isinstance(reduced, str):
            parts.append(_hash("global", reduced))
        elif isinstance(reduced, tuple) and len(reduced) >= 2:
            rebuild, arguments, *rest = reduced
            rest += [None] * (3 - len(rest))
            state, list_items, dict_items = rest[:3]
            parts += [self.of(rebuild), self.of(arguments), self.of(state)]
            if list_items is not None:
                parts.append(self.of(list(list_items)))
            if dict_items is not None:
                parts.append(self.of(list(dict_items)))
        else:
            attributes = dict(getattr(obj, "__dict__", None) or {})
            for slot in _slots(type(obj)):
                if hasattr(obj, slot):
                    attributes[slot] = getattr(obj, slot)
            parts.append(self.of(attributes) if attributes else b"opaque")
        return _hash("object", *parts)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _slots(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return [n for n in names if n not in ("__dict__", "__weakref__")]


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for constant in code.co_consts:
        if type(constant) is types.CodeType:
            names |= _global_names(constant)
    return names


def experiment_components(runner: Any) -> dict[str, dict[str, Any]]:
    """What the replicate function runs, component by component, for a checkpoint.

    ``{label: {"name": ..., "digest": ...}}`` for the datasource, each step,
    each treatment (the baseline has none) and each replicate-level plugin;
    a [`SeedPlugin`][] also says its seed, or that it was drawn.
    """
    fingerprint = Fingerprint()
    components: dict[str, dict[str, Any]] = {
        "datasource": {"name": _label(runner.datasource), "digest": fingerprint.hexdigest(runner.datasource)}
    }
    for position, step in enumerate(runner.steps):
        components[f"step {position}"] = {"name": _label(step), "digest": fingerprint.hexdigest(step)}
    for condition in runner.conditions:
        if condition.values is None and condition.apply is None and condition.name == "baseline":
            continue
        components[f"treatment {condition.name!r}"] = {
            "name": condition.name,
            "digest": fingerprint.hexdigest((condition.values, condition.apply)),
        }
    for label, plugin in plugin_labels(runner.plugins):
        entry: dict[str, Any] = {"name": type(plugin).__qualname__, "digest": fingerprint.hexdigest(plugin)}
        if isinstance(plugin, SeedPlugin):
            entry["seed"] = None if plugin.seed_drawn else plugin.seed
        components[label] = entry
    return components


def plugin_labels(plugins: Iterable[object]) -> list[tuple[str, object]]:
    """Each plugin with a label that stays the same from run to run: its class, numbered if repeated."""
    seen: dict[str, int] = {}
    labelled = []
    for plugin in plugins:
        name = type(plugin).__qualname__
        seen[name] = seen.get(name, 0) + 1
        labelled.append((f"plugin {name}" + (f" #{seen[name]}" if seen[name] > 1 else ""), plugin))
    return labelled


def _label(component: object) -> str:
    if isinstance(component, functools.partial):
        return f"partial({_label(component.func)})"
    return getattr(component, "__qualname__", None) or type(component).__qualname__


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What changed between two ``experiment_components`` descriptions, in words."""
    changes = []
    for label, now in current.items():
        before = stored.get(label)
        shown = label if now["name"] in label else f"{label} ({now['name']})"
        if not isinstance(before, dict):
            changes.append(f"{shown} was added")
        elif before.get("digest") != now["digest"]:
            detail = ""
            if before.get("name") != now["name"]:
                detail = f": was {before.get('name')}, now {now['name']}"
            elif "seed" in now and before.get("seed") != now["seed"]:
                detail = f": seed {_seed_text(before.get('seed'))}, now {_seed_text(now['seed'])}"
            changes.append(f"{shown} changed{detail}")
    changes += [f"{label} was removed" for label in stored if label not in current]
    return changes


def _seed_text(seed: Any) -> str:
    return "drawn at random" if seed is None else str(seed)
