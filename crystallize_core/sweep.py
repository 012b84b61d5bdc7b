"""Sweeps: treatments built from a grid of parameter values."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from crystallize_core.errors import ConfigurationError
from crystallize_core.experiment import Treatment


def treatment_grid(parameters: Mapping[str, Iterable[Any]] | None = None, /, **more: Iterable[Any]) -> list[Treatment]:
    """One [`Treatment`][] per combination of the given values: their Cartesian product.

    Parameters come as keyword arguments, or as a mapping for keys that are
    not Python names. Each treatment adds one value per parameter to the
    context, and is named after them in the order given, ``key=value`` joined
    by commas; strings appear as they are, other values as their ``repr``:

        treatment_grid(C=[0.01, 1], kernel=["rbf", "linear"])
        # [Treatment("C=0.01,kernel=rbf", {"C": 0.01, "kernel": "rbf"}),
        #  Treatment("C=0.01,kernel=linear", ...), Treatment("C=1,kernel=rbf", ...),
        #  Treatment("C=1,kernel=linear", ...)]

    The last parameter varies fastest. The baseline is not part of the grid:
    ``Experiment.run()`` always runs it.

    Raises [`ConfigurationError`][] for no parameters, a parameter without
    values, a single value or a string where a list of values is expected,
    and two combinations that would get the same name.
    """
    grid: dict[str, list[Any]] = {}
    for source in (parameters or {}, more):
        if not isinstance(source, Mapping):
            raise ConfigurationError(f"treatment_grid takes a mapping of parameter to values, not {source!r}")
        for key, values in source.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError(f"treatment_grid parameter names must be non-empty strings, got {key!r}")
            if key in grid:
                raise ConfigurationError(f"treatment_grid parameter {key!r} is given twice")
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise ConfigurationError(
                    f"treatment_grid parameter {key!r} needs a list of values, got {values!r}; "
                    f"for a single value write {key}=[{values!r}]"
                )
            grid[key] = list(values)
            if not grid[key]:
                raise ConfigurationError(f"treatment_grid parameter {key!r} has no values")
    if not grid:
        raise ConfigurationError("treatment_grid needs at least one parameter, e.g. treatment_grid(C=[0.1, 1])")
    treatments: list[Treatment] = []
    named: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*grid.values()):
        values = dict(zip(grid, combination))
        name = ",".join(f"{key}={_shown(value)}" for key, value in values.items())
        if name in named:
            raise ConfigurationError(
                f"treatment_grid values {named[name]!r} and {values!r} would both be named {name!r}; "
                "give values that read differently"
            )
        named[name] = values
        treatments.append(Treatment(name, values))
    return treatments


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)
