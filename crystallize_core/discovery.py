"""Finding, listing, blocking and loading strategies.

Strategies are entry points in the group ``crystallize.strategies`` mapping a
name to a class (``serial = "crystallize_serial:SerialExecution"``). Listing
reads package metadata only; a strategy's module is imported when it is
selected, or when [`available_strategies`][] is asked to ``load``.

Two environment variables steer discovery, in the manner of pytest's
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` and ``-p no:NAME``:

``CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD``
    When set to a non-empty value other than ``0``, every entry point except
    the ``serial`` fallback is ignored. Plugin objects given to an experiment
    still work.
``CRYSTALLIZE_BLOCK_STRATEGIES``
    Comma-separated names that are listed as blocked and cannot be selected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from crystallize_core.errors import (
    CrystallizeError,
    StrategyBlockedError,
    StrategyConflictError,
    StrategyLoadError,
    StrategyNotFoundError,
    StrategyOptionError,
    StrategySpecError,
)
from crystallize_core.options import unknown_options_message

if TYPE_CHECKING:
    from importlib import metadata

ENTRY_POINT_GROUP = "crystallize.strategies"
FALLBACK_STRATEGY = "serial"
ENV_DISABLE_AUTOLOAD = "CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD"
ENV_BLOCK = "CRYSTALLIZE_BLOCK_STRATEGIES"


@dataclass(frozen=True)
class StrategyInfo:
    """One strategy entry point, as read from package metadata."""

    name: str
    distribution: str | None
    version: str | None
    target: str
    #: Why the strategy cannot be selected here (blocked, autoload disabled), or None.
    blocked: str | None = None
    #: Why the strategy cannot be used (import failure, name conflict), or None.
    #: Import failures are only known after ``available_strategies(load=True)``.
    error: str | None = None
    #: Whether the module was imported to check it.
    loaded: bool = False

    @property
    def status(self) -> str:
        """``blocked``, ``broken: <reason>``, ``ok`` (loaded fine) or ``not loaded``."""
        if self.blocked:
            return "blocked"
        if self.error:
            return f"broken: {self.error}"
        return "ok" if self.loaded else "not loaded"

    @property
    def is_fallback(self) -> bool:
        return self.name == FALLBACK_STRATEGY


@dataclass(frozen=True)
class _Candidate:
    info: StrategyInfo
    entry_point: metadata.EntryPoint


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


def blocked_names() -> frozenset[str]:
    """The strategy names blocked by ``CRYSTALLIZE_BLOCK_STRATEGIES``."""
    raw = os.environ.get(ENV_BLOCK, "")
    return frozenset(part.strip() for part in raw.split(",") if part.strip())


@lru_cache(maxsize=1)
def _scan() -> tuple[_Candidate, ...]:
    candidates = []
    # Imported here: reading metadata is the cost of discovery, and a run
    # with a strategy object that answers never pays it.
    from importlib import metadata

    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        info = StrategyInfo(
            name=ep.name,
            distribution=dist.metadata["Name"] if dist is not None else None,
            version=dist.version if dist is not None else None,
            target=ep.value,
        )
        candidates.append(_Candidate(info, ep))
    candidates.sort(key=lambda c: (c.info.name, c.info.distribution or ""))
    return tuple(_mark_conflicts(candidates))


def _mark_conflicts(candidates: list[_Candidate]) -> Iterable[_Candidate]:
    by_name: dict[str, list[_Candidate]] = {}
    for candidate in candidates:
        by_name.setdefault(candidate.info.name, []).append(candidate)
    for name, same in by_name.items():
        if len(same) == 1:
            yield same[0]
            continue
        for candidate in same:
            others = ", ".join(c.info.distribution or "?" for c in same if c is not candidate)
            message = f"name {name!r} is also registered by {others}"
            yield replace(candidate, info=replace(candidate.info, error=message))


def _with_steering(candidate: _Candidate) -> _Candidate:
    info = candidate.info
    if info.name in blocked_names():
        return replace(candidate, info=replace(info, blocked=f"blocked by {ENV_BLOCK}"))
    if info.name != FALLBACK_STRATEGY and _env_flag(ENV_DISABLE_AUTOLOAD):
        return replace(candidate, info=replace(info, blocked=f"autoload disabled by {ENV_DISABLE_AUTOLOAD}"))
    return candidate


def _candidates(refresh: bool = False) -> list[_Candidate]:
    if refresh:
        _scan.cache_clear()
    return [_with_steering(c) for c in _scan()]


def available_strategies(load: bool = False) -> list[StrategyInfo]:
    """One record per strategy entry point, sorted by name.

    Reads metadata only and imports nothing, unless ``load`` is true: then
    each strategy that is not blocked is imported on its own, and a failure
    is reported in that record's ``error`` without affecting the others.
    Always reads the installed metadata afresh.
    """
    infos = []
    for candidate in _candidates(refresh=True):
        info = candidate.info
        if load and not info.blocked and not info.error:
            try:
                _load_class(candidate)
            except StrategyLoadError as exc:
                cause = exc.__cause__ or exc
                info = replace(info, error=f"{type(cause).__name__}: {cause}", loaded=True)
            else:
                info = replace(info, loaded=True)
        infos.append(info)
    return infos


#: Strategy classes loaded from entry points: their name, distribution and version.
_loaded: dict[type, tuple[str, str | None, str | None]] = {}


def _load_class(candidate: _Candidate) -> type:
    info = candidate.info
    try:
        cls = candidate.entry_point.load()
    except (Exception, SystemExit) as exc:
        raise StrategyLoadError(
            f"strategy {info.name!r} from {info.distribution or 'an unknown distribution'} "
            f"could not be imported from {info.target!r}: {type(exc).__name__}: {exc}"
        ) from exc
    if isinstance(cls, type):
        _loaded.setdefault(cls, (info.name, info.distribution, info.version))
    return cls


def _find(name: str) -> _Candidate:
    candidates = _candidates()
    matches = [c for c in candidates if c.info.name == name]
    if not matches:  # perhaps installed since the last scan
        candidates = _candidates(refresh=True)
        matches = [c for c in candidates if c.info.name == name]
    if not matches:
        usable = sorted({c.info.name for c in candidates if not c.info.blocked})
        raise StrategyNotFoundError(_not_found_message(name, usable))
    if len(matches) > 1:
        dists = " and ".join(f"{c.info.distribution} {c.info.version}" for c in matches)
        raise StrategyConflictError(f"strategy name {name!r} is registered by both {dists}; uninstall one of them")
    match = matches[0]
    if match.info.blocked:
        raise StrategyBlockedError(f"strategy {name!r} is {match.info.blocked}")
    return match


def _not_found_message(name: str, usable: list[str]) -> str:
    # Suggestions come from installed names only: a package name derived from
    # a typo would invite installing whatever happens to be published under it.
    import difflib

    installed = ", ".join(usable) or "none"
    close = difflib.get_close_matches(name, usable, n=3, cutoff=0.6)
    if not close:
        close = [u for u in usable if u.lower() == name.lower()]
    if close:
        guess = " or ".join(map(repr, close))
        return f"no strategy named {name!r} is installed; did you mean {guess}? (installed: {installed})"
    return (
        f"no strategy named {name!r} is installed (installed: {installed}); "
        "run `crystallize strategies` to see the status of each"
    )


@contextmanager
def naming_origin(origin: str | None) -> Iterator[None]:
    """Prefix the message of any [`CrystallizeError`][] raised inside with ``origin``.

    ``origin`` says where a strategy name came from (``"--strategy"``,
    ``"CRYSTALLIZE_STRATEGY"``, ``"run(strategy=...)"``), so that an error
    about the name tells the user where to correct it.
    """
    try:
        yield
    except CrystallizeError as exc:
        if origin and len(exc.args) == 1 and isinstance(exc.args[0], str) and not exc.args[0].startswith(origin):
            exc.args = (f"{origin}: {exc.args[0]}",)
        raise


def load_strategy(name: str, **options: Any) -> object:
    """Import the strategy registered as ``name`` and return an instance built with ``options``.

    Raises [`StrategyNotFoundError`][] (listing the installed names),
    [`StrategyBlockedError`][], [`StrategyConflictError`][] (naming both
    distributions), [`StrategyLoadError`][] (naming the distribution and
    the cause) or [`StrategyOptionError`][] (naming the valid options).
    """
    candidate = _find(name)
    cls = _load_class(candidate)
    check_options(name, cls, options)
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, StrategyOptionError):
            raise
        raise StrategyOptionError(f"strategy {name!r} rejected its options: {exc}") from exc


def check_options(name: str, cls: type, options: dict[str, Any]) -> None:
    """Raise [`StrategyOptionError`][] if ``cls`` does not take every key of
    ``options``, naming the option each unknown key most likely meant."""
    if not options:
        return
    import inspect

    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):  # no introspectable signature: let the constructor decide
        return
    if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        return
    valid = [p.name for p in parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in options if key not in valid]
    if unknown:
        raise StrategyOptionError(unknown_options_message(f"strategy {name!r}", unknown, valid))


def parse_strategy_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``"name:key=value,key=value"`` into a name and options.

    Values are read as Python literals where they parse as one (``4``,
    ``True`` or ``true``, ``'x'``, ``[1, 2]``) and kept as strings otherwise. Commas inside
    brackets or quotes do not separate options.
    """
    name, _, rest = spec.strip().partition(":")
    name = name.strip()
    if not name or not name.replace("-", "_").replace(".", "_").isidentifier():
        raise StrategySpecError(
            f"malformed strategy specification {spec!r}: expected NAME or NAME:KEY=VALUE,KEY=VALUE, "
            "e.g. 'parallel:executor_type=process,max_workers=4'"
        )
    options: dict[str, Any] = {}
    for item in (part for part in split_top_level(rest) if part.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise StrategySpecError(
                f"malformed option {item.strip()!r} in strategy specification {spec!r}: expected KEY=VALUE"
            )
        options[key] = parse_value(value.strip())
    return name, options


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_value(text: str) -> Any:
    """``text`` as a Python literal where it is one (``true``, ``false`` and
    ``none`` in any case too, as shells and config files write them), else
    the text itself."""
    if text.lower() in _WORDS:
        return _WORDS[text.lower()]
    import ast  # only where a strategy is named with options: it is slow to import

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and quotes; empty items are kept."""
    items, depth, quote, start = [], 0, "", 0
    for position, char in enumerate(text):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:position])
            start = position + 1
    items.append(text[start:])
    return items


def identify(plugin: object) -> tuple[str, str | None, str | None]:
    """``(name, distribution, version)`` of a plugin object, for registration and messages.

    A strategy whose class an entry point names is known by the entry
    point's name; any other plugin by its class name and the distribution
    that provides its module, where one does.
    """
    return identify_class(type(plugin))


def identify_class(cls: type) -> tuple[str, str | None, str | None]:
    """``identify`` for the plugins of class ``cls``."""
    known = _loaded.get(cls)
    if known is not None:
        return known
    target = f"{cls.__module__}:{cls.__qualname__}"
    for candidate in _scan():
        if candidate.info.target.replace(" ", "") == target:
            info = candidate.info
            return info.name, info.distribution, info.version
    distribution = version = None
    top = cls.__module__.partition(".")[0]
    if top in sys.modules and top != "__main__":
        names = _packages_distributions().get(top)
        if names:
            from importlib import metadata

            distribution = names[0]
            try:
                version = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                version = None
    return cls.__qualname__, distribution, version


def loaded_name(plugin: object) -> str | None:
    """The entry point's name of ``plugin``'s class if it was loaded by name, else None."""
    known = _loaded.get(type(plugin))
    return known[0] if known is not None else None


@lru_cache(maxsize=1)
def _packages_distributions() -> Mapping[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()


def describe(plugin: object) -> str:
    """``"'name' (distribution version)"`` for error messages."""
    name, distribution, version = identify(plugin)
    where = f" from {distribution} {version or ''}".rstrip() if distribution else f" ({type(plugin).__module__})"
    return f"{name!r}{where}"
