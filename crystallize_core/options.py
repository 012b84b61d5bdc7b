"""The options every strategy shares, checked in one place with one message each.

A strategy's constructor checks ``max_workers``, ``max_retries``,
``batch_size`` and ``progress`` with these functions, so that the same
mistake reads the same under every strategy, and decorates its class with
[`strategy_options`][] so that a misspelt option is answered with the
option it most likely meant, as the name form (``"parallel:max_worker=2"``)
is.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from crystallize_core.errors import ConfigurationError, StrategyOptionError

StrategyClass = TypeVar("StrategyClass", bound=type)


def whole_number(value: object, minimum: int) -> bool:
    """Whether ``value`` is an ``int`` (not a ``bool``) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_max_workers(value: object) -> int | None:
    """``max_workers``: the most replicates running at once, a positive integer or None (the strategy's default)."""
    if value is not None and not whole_number(value, minimum=1):
        raise ConfigurationError(f"max_workers must be a positive integer or None, got {value!r}")
    return value  # type: ignore[return-value]


def check_max_retries(value: object) -> int:
    """``max_retries``: how often a replicate whose worker died is run again, a non-negative integer."""
    if not whole_number(value, minimum=0):
        raise ConfigurationError(f"max_retries must be a non-negative integer, got {value!r}")
    return value  # type: ignore[return-value]


def check_batch_size(value: object) -> int | str:
    """``batch_size``: ``"auto"`` or the number of replicates sent to a worker at once."""
    if value != "auto" and not whole_number(value, minimum=1):
        raise ConfigurationError(f"batch_size must be 'auto' or a positive integer, got {value!r}")
    return value  # type: ignore[return-value]


def check_progress(value: object) -> bool | None:
    """``progress``: True, False, or None (the default: a bar on a terminal)."""
    if value is not None and not isinstance(value, bool):
        raise ConfigurationError(f"progress must be True, False or None, got {value!r}")
    return value


def check_connect_timeout(value: object) -> float:
    """``connect_timeout``: the seconds a cluster strategy waits for its cluster to answer, a positive number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigurationError(f"connect_timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def unknown_options_message(owner: str, unknown: Iterable[str], valid: Iterable[str]) -> str:
    """``owner has no option 'x'; did you mean 'y'? (valid options: ...)``."""
    import difflib  # only on an error path

    unknown, valid = list(unknown), list(valid)
    guesses = [
        f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name)
        for name in unknown
        for close in [difflib.get_close_matches(name, valid, n=1, cutoff=0.6)]
    ]
    plural = "s" if len(unknown) > 1 else ""
    return f"{owner} has no option{plural} {', '.join(guesses)} (valid options: {', '.join(valid) or 'none'})"


def keyword_names(function: Callable[..., Any]) -> list[str]:
    """The names ``function`` accepts as keywords, in order (``self`` left out)."""
    import inspect  # only on an error path, or when a strategy is loaded by name

    parameters = inspect.signature(function).parameters.values()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [p.name for p in parameters if p.kind in kinds and p.name != "self"]


def strategy_options(cls: StrategyClass) -> StrategyClass:
    """Class decorator: a misspelt keyword given to ``cls(...)`` raises
    [`StrategyOptionError`][crystallize_core.StrategyOptionError] (a [`TypeError`][])
    naming the option it most likely meant and every valid one, instead of
    Python's bare "unexpected keyword argument".

    The constructor's signature is kept ([`inspect.signature`][] and the
    documentation see the real parameters), and an error raised inside it
    passes unchanged.
    """
    init = cls.__dict__.get("__init__")
    if init is None:
        raise TypeError(f"@strategy_options needs {cls.__qualname__} to define __init__")

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except TypeError as exc:
            # Raised by the call itself (binding the arguments), not from inside
            # __init__, when the traceback ends in this frame.
            if exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
                raise
            valid = keyword_names(init)
            unknown = [name for name in kwargs if name not in valid]
            if not unknown:
                raise
            owner = f"{type(self).__name__}()"  # a subclass is named as the user wrote it
            raise StrategyOptionError(unknown_options_message(owner, unknown, valid)) from None

    cls.__init__ = __init__  # type: ignore[misc]
    return cls
