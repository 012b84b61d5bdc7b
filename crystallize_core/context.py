"""The context a datasource and every step receive for one replicate and condition."""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from typing import Any

from crystallize_core.errors import NotPicklableError

_MISSING = object()


class ContextKeyError(KeyError):
    """A key is missing from the context, or a step tried to overwrite one."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


#: Metric types that always pickle: checked without pickling them.
_PLAIN = frozenset({int, float, str, bool, type(None), bytes, complex})


def unpicklable_message(name: str, exc: BaseException) -> str:
    """Why metric ``name`` was refused: one message for every strategy."""
    return (
        f"metric {name!r} cannot be pickled ({type(exc).__name__}: {exc}), so it cannot travel between "
        "processes; record a value such as a number, a string, a list or an array"
    )


def _plain_array(value: Any) -> bool:
    """A NumPy array or scalar of numbers or strings: it pickles, and copying it to check would be waste."""
    dtype = getattr(value, "dtype", None)
    # hasobject, not kind == "O": a structured dtype with an object field has kind "V".
    return dtype is not None and type(value).__module__ == "numpy" and not getattr(dtype, "hasobject", True)


def _check_picklable(name: str, value: Any) -> None:
    import pickle

    try:
        pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise NotPicklableError(unpicklable_message(name, exc)) from None


class Metrics:
    """The metrics one replicate records for one condition.

    Each name takes one value per replicate and condition; recording a name a
    second time is an error, so that two steps cannot silently overwrite each
    other's measurement. A value must pickle, since results travel between
    processes under some strategies: one that cannot (a lock, an open file)
    is refused here, under every strategy alike, with
    [`NotPicklableError`][].
    """

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def add(self, name: str, value: Any) -> None:
        """Record ``value`` under ``name``, a non-empty string.

        Any value that pickles may be recorded; the summary counts what is not
        a finite number instead of averaging it (see
        [`MetricSummary`][]).
        """
        if type(name) is not str:  # exact type: the common case costs one comparison
            if not isinstance(name, str):
                raise TypeError(
                    f"metric names must be strings, got {type(name).__name__} {name!r}; "
                    f"record it as ctx.metrics.add({str(name)!r}, value)"
                )
            name = str(name)  # a str subclass would not survive JSON or a checkpoint as itself
        if not name:
            raise ValueError("metric names must be non-empty strings")
        if name in self._values:
            raise ValueError(f"metric {name!r} was already recorded for this replicate and condition")
        if type(value) not in _PLAIN and not _plain_array(value):
            _check_picklable(name, value)
        self._values[name] = value

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def as_dict(self) -> dict[str, Any]:
        """The recorded metrics as a new dict."""
        return dict(self._values)

    def __repr__(self) -> str:
        return f"Metrics({self._values!r})"


class Context:
    """Read-mostly state for one replicate and condition.

    Holds the treatment's values, ``replicate``, ``condition``, ``seed``,
    ``rng`` (a [`random.Random`][] seeded from ``seed``, private to this
    replicate and condition), ``numpy_rng`` (the same for NumPy) and
    ``metrics``. Steps may add keys with [`add`][] but never overwrite one.
    """

    __slots__ = ("_data", "_numpy_rng", "_rng", "condition", "metrics", "replicate", "seed")

    def __init__(self, data: Mapping[str, Any] | None, replicate: int, condition: str, seed: int):
        self._data: dict[str, Any] = dict(data) if data else {}
        self.replicate = replicate
        self.condition = condition
        self.seed = seed
        self._rng: random.Random | None = None
        self._numpy_rng: Any = None
        self.metrics = Metrics()

    @property
    def rng(self) -> random.Random:
        """A [`random.Random`][] seeded from ``seed``, created on first use."""
        rng = self._rng
        if rng is None:
            rng = self._rng = random.Random(self.seed)
        return rng

    @property
    def numpy_rng(self) -> Any:
        """A ``numpy.random.Generator`` seeded from ``seed``, created on first use.

        ``numpy.random.default_rng(seed)``: private to this replicate and
        condition, so it gives the same numbers under every strategy, threads
        included. NumPy is imported only when this is first read; without
        NumPy installed it raises [`ModuleNotFoundError`][] saying so.
        """
        rng = self._numpy_rng
        if rng is None:
            try:
                import numpy
            except ModuleNotFoundError:
                raise ModuleNotFoundError(
                    "ctx.numpy_rng needs NumPy, which is not installed here: `pip install numpy`, "
                    "or draw from ctx.rng (a random.Random)",
                    name="numpy",
                ) from None
            # abs(), as random.Random does with a negative seed; NumPy refuses one.
            rng = self._numpy_rng = numpy.random.default_rng(abs(self.seed))
        return rng

    def __getitem__(self, key: str) -> Any:
        try:
            return self._data[key]
        except KeyError:
            known = ", ".join(map(repr, self._data)) or "none"
            raise ContextKeyError(
                f"context of condition {self.condition!r} has no key {key!r} (keys: {known})"
            ) from None

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` when it is absent."""
        return self._data.get(key, default)

    def add(self, key: str, value: Any) -> None:
        """Add ``key``; an existing key cannot be overwritten."""
        if key in self._data:
            raise ContextKeyError(f"context key {key!r} already exists and cannot be overwritten")
        self._data[key] = value

    __setitem__ = add

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def keys(self):
        return self._data.keys()

    def as_dict(self) -> dict[str, Any]:
        """The context's keys and values as a new dict."""
        return dict(self._data)

    def __repr__(self) -> str:
        return (
            f"Context(replicate={self.replicate}, condition={self.condition!r}, seed={self.seed}, data={self._data!r})"
        )
