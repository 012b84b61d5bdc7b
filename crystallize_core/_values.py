"""Metric values as numbers and as JSON, whatever the user recorded.

A metric may hold anything: Python or NumPy numbers, bools, strings, None,
sequences, arrays, objects. This module decides which of them count as
numbers in a summary, computes the summary's statistics without overflowing
on extreme values, and turns any value into strict JSON. NumPy is never
imported here: its types are recognised only when the user has imported it.
"""

from __future__ import annotations

import math
import sys
from _thread import allocate_lock  # not threading: importing this module must stay cheap
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

#: How non-finite floats are written in JSON output, which has no literal for them.
NAN_JSON = "NaN"
INF_JSON = "Infinity"
NEG_INF_JSON = "-Infinity"

FINITE, NAN, INF, NON_NUMERIC, MISSING = range(5)


def classify(value: Any) -> tuple[int, float]:
    """``(kind, number)``: kind is FINITE (with the value as a float), NAN, INF
    (either sign, or an integer beyond a float's range), NON_NUMERIC or MISSING (None)."""
    kind = type(value)
    if kind is float:
        if value - value == 0.0:  # false for nan and both infinities
            return FINITE, value
        return (NAN if value != value else INF), 0.0
    if kind is int or kind is bool:
        try:
            return FINITE, float(value)
        except OverflowError:
            return INF, 0.0
    if value is None:
        return MISSING, 0.0
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.generic):
        if value.dtype.kind not in "biuf":  # complex, strings, dates: not numbers to average
            return NON_NUMERIC, 0.0
        item = value.item()
        return classify(float(value) if isinstance(item, numpy.generic) else item)  # longdouble stays NumPy
    if isinstance(value, (int, float)):  # subclasses, such as IntEnum
        return classify(int(value) if isinstance(value, int) else float(value))
    import numbers

    if isinstance(value, numbers.Real):  # Fraction, Decimal
        try:
            return classify(float(value))
        except (OverflowError, ValueError):
            return INF, 0.0
    return NON_NUMERIC, 0.0


def mean_and_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of finite floats, free of overflow.

    None where undefined: the mean of nothing, the deviation of fewer than two
    values. Values near the float range (``1e308``) are scaled first, so their
    sum cannot overflow; a deviation beyond the float range is ``inf``.
    """
    n = len(values)
    if n == 0:
        return None, None
    try:
        mean = math.fsum(values) / n
        spread = math.fsum((v - mean) ** 2 for v in values) if n > 1 else 0.0
        if math.isfinite(mean) and math.isfinite(spread):
            return mean, math.sqrt(spread / (n - 1)) if n > 1 else None
    except OverflowError:
        pass
    scale = max(abs(v) for v in values)
    scaled = [v / scale for v in values]
    scaled_mean = math.fsum(scaled) / n
    mean = scaled_mean * scale
    if n == 1:
        return mean, None
    scaled_std = math.sqrt(math.fsum((v - scaled_mean) ** 2 for v in scaled) / (n - 1))
    try:
        return mean, scaled_std * scale
    except OverflowError:
        return mean, math.inf


# --- Student's t quantile, without SciPy ------------------------------------------------


@lru_cache(maxsize=256)
def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t distribution with ``df`` degrees of freedom.

    For ``df <= 200`` the distribution function (through the regularised
    incomplete beta function) is inverted by bisection, agreeing with SciPy to
    about 1e-14; beyond that the Cornish-Fisher expansion around the normal
    quantile, whose relative error there is below 1e-10.
    """
    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability must be between 0 and 1, got {probability}")
    if df < 1:
        raise ValueError(f"degrees of freedom must be at least 1, got {df}")
    if probability < 0.5:
        return -t_quantile(1.0 - probability, df)
    if probability == 0.5:
        return 0.0
    if df > 200:
        from statistics import NormalDist

        z = NormalDist().inv_cdf(probability)
        z2 = z * z
        g1 = (z2 + 1) * z / 4
        g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
        g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
        g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
        return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4
    low, high = 0.0, 1.0
    while _t_cdf(high, df) < probability:
        low, high = high, high * 2
    for _ in range(200):
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if _t_cdf(middle, df) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _t_cdf(t: float, df: int) -> float:
    """P(T <= t) for t >= 0."""
    x = df / (df + t * t)
    return 1.0 - 0.5 * _incomplete_beta(df / 2, 0.5, x)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (Numerical Recipes' betai)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by Lentz's method."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        even = m * (b - m) * x / ((qam + m2) * (a + m2))
        odd = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        for numerator in (even, odd):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            step = c * d
            h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return h


# --- JSON ------------------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data that [`json.dumps`][] writes as strict JSON.

    Non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"``; NumPy scalars become Python numbers and arrays nested
    lists; tuples, sets and other sequences become lists; mapping keys become
    strings; anything else becomes its ``repr``.
    """
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is float:
        if value - value == 0.0:
            return value
        return NAN_JSON if value != value else (INF_JSON if value > 0 else NEG_INF_JSON)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        if isinstance(value, numpy.generic):
            item = value.item()
            if isinstance(item, numpy.generic):  # longdouble and friends stay NumPy
                return plain(float(value)) if value.dtype.kind == "f" else repr(value)
            return plain(item)
        if isinstance(value, numpy.ndarray):
            return plain(value.tolist()) if value.dtype.kind != "V" else repr(value)
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, range)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray, memoryview))
    ):
        return [plain(item) for item in value]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return plain(float(value))
    found, number = classify(value)
    if found == FINITE:
        return number
    if found == NAN:
        return NAN_JSON
    if found == INF:
        return INF_JSON if value > 0 else NEG_INF_JSON
    return repr(value)


def plain_rows(rows: Iterable[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
    """Each row with its values made ``plain``."""
    for row in rows:
        yield {key: plain(value) for key, value in row.items()}


class _AnyIntDigits:
    """While entered, ints of any length convert to and from decimal text.

    Python refuses to write an int of more than ``sys.get_int_max_str_digits()``
    digits (4300 by default) as text, which would lose a finished run's output
    to one huge metric; JSON and CSV hold such an int exactly, so exports lift
    the limit around their writing. The limit is one setting for the whole
    interpreter: entries from several threads at once share one lift, and
    the last to leave puts the previous limit back.
    """

    def __init__(self) -> None:
        self._lock = allocate_lock()
        self._entered = 0
        self._before = 0

    def __enter__(self) -> None:
        setter = getattr(sys, "set_int_max_str_digits", None)
        if setter is None:  # a Python without the limit
            return
        with self._lock:
            if self._entered == 0:
                self._before = sys.get_int_max_str_digits()
                setter(0)
            self._entered += 1

    def __exit__(self, *exc_info: object) -> None:
        setter = getattr(sys, "set_int_max_str_digits", None)
        if setter is None:
            return
        with self._lock:
            self._entered -= 1
            if self._entered == 0:
                setter(self._before)


#: ``with any_int_digits:`` lifts Python's int-to-text limit for an export.
any_int_digits = _AnyIntDigits()
