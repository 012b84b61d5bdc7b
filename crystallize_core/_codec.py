"""The value codec of checkpoint rows: a replicate's result as JSON and back.

JSON, with a small tagged encoding for what JSON lacks (tuples, NaN and the
infinities, integers of any size, NumPy numbers and arrays, sets, bytes). A
value that would need pickle is refused unless the caller allows it. Rows
are read as data: bounded in size and depth before they are parsed and held
to the kinds of value the encoder writes. The file that holds the rows is
``crystallize_core.checkpoint``.
"""

from __future__ import annotations

import base64
import json
import pickle
import re
import sys
from collections.abc import Callable
from typing import Any

from crystallize_core.errors import CheckpointError
from crystallize_core.records import ReplicateError, ReplicateResult


class _NeedsPickle(Exception):
    """A value JSON cannot hold, found while encoding."""

    def __init__(self, value: Any):
        dtype = getattr(value, "dtype", None) if type(value).__module__ == "numpy" else None
        of = f" of dtype {dtype}" if dtype is not None else ""
        super().__init__(f"{type(value).__module__}.{type(value).__qualname__}{of}")


class StoredPickle(Exception):
    """A stored pickle, met while decoding without consent."""


_PLAIN = frozenset({str, int, bool, type(None)})
#: NumPy dtypes whose values are Python bools, ints, floats and complex
#: numbers: not longdouble (f12, f16, c24, c32), whose values stay NumPy
#: scalars.
_NUMPY_DTYPE = re.compile(r"^[<>|=]?(?:b1|[iu][1248]|f[248]|c(?:8|16))$")
#: The same for NumPy strings, as scalars only: an array of them gives every
#: element the width of its longest, so a small crafted file could make
#: reading it allocate without bound (one long string, many empty ones).
_NUMPY_STRING = re.compile(r"^[<>|=]?U[0-9]{1,9}$")
#: Integers from this size on are stored as ``$int`` (hexadecimal text):
#: Python reads and writes decimal integers only up to a set number of digits
#: (4,300 by default, 640 at the least); hexadecimal has no such limit, and
#: converts in linear time.
_HUGE_INT = 1 << 2000
_HEX_INT = re.compile(r"-?0x[0-9a-f]+")
#: The longest row, in characters, a checkpoint writes or reads; a longer one
#: is never parsed (a crafted file must not make reading it allocate without bound).
MAX_ROW_CHARS = 64 * 1024 * 1024
#: The deepest nesting of JSON arrays and objects in a row (a metric value
#: sits three levels down); deeper rows are neither written nor parsed.
MAX_DEPTH = 100
#: The keys of each tag object ``encode_value`` writes.
_TAG_KEYS = {
    "$numpy": frozenset({"$numpy", "value"}),
    "$ndarray": frozenset({"$ndarray", "dtype", "shape"}),
}


def encode_value(value: Any, allow_pickle: bool = False) -> Any:
    """``value`` as JSON data that ``decode_value`` turns back into an equal value.

    Tags (objects with one key starting with ``$``) carry what JSON lacks:
    ``$float`` ("nan", "inf", "-inf"), ``$int`` (an integer of 2,000 bits or
    more, as hexadecimal text), ``$tuple``, ``$set``, ``$frozenset``,
    ``$complex``, ``$bytes`` (base64), ``$dict`` (a mapping whose keys are not
    all plain strings), ``$numpy`` (a NumPy bool, int, float, complex or
    string scalar, with its dtype) and ``$ndarray`` (a NumPy array of bools,
    ints, floats or complex numbers, with dtype and shape).
    Anything else raises unless ``allow_pickle``, when it becomes ``$pickle``.
    """
    kind = type(value)
    if kind is int:
        return value if -_HUGE_INT < value < _HUGE_INT else {"$int": hex(value)}
    if kind in _PLAIN:
        return value
    if kind is float:
        if value - value == 0.0:
            return value
        return {"$float": "nan" if value != value else ("inf" if value > 0 else "-inf")}
    if kind is list:
        return [encode_value(v, allow_pickle) for v in value]
    if kind is tuple:
        return {"$tuple": [encode_value(v, allow_pickle) for v in value]}
    if kind is dict:
        if all(type(k) is str and not k.startswith("$") for k in value):
            return {k: encode_value(v, allow_pickle) for k, v in value.items()}
        return {"$dict": [[encode_value(k, allow_pickle), encode_value(v, allow_pickle)] for k, v in value.items()]}
    if kind is set or kind is frozenset:
        return {f"${kind.__name__}": [encode_value(v, allow_pickle) for v in value]}
    if kind is complex:
        return {"$complex": [encode_value(value.real), encode_value(value.imag)]}
    if kind is bytes:
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    numpy = sys.modules.get("numpy")
    if numpy is not None and kind.__module__ == "numpy":
        dtype = getattr(value, "dtype", None)
        if dtype is not None:
            if isinstance(value, numpy.generic):
                if _NUMPY_DTYPE.match(dtype.str) or _NUMPY_STRING.match(dtype.str):
                    return {"$numpy": dtype.str, "value": encode_value(value.item())}
            elif kind is numpy.ndarray and _NUMPY_DTYPE.match(dtype.str):
                return {"$ndarray": encode_value(value.tolist()), "dtype": dtype.str, "shape": list(value.shape)}
    if allow_pickle:
        return {"$pickle": base64.b64encode(pickle.dumps(value, protocol=4)).decode("ascii")}
    raise _NeedsPickle(value)


def decode_value(data: Any, allow_pickle: bool = False) -> Any:
    """The inverse of ``encode_value``; raises ``ValueError`` for anything it did not write.

    A stored pickle is unpickled only with ``allow_pickle``.
    """
    kind = type(data)
    if kind in _PLAIN or kind is float:
        return data
    if kind is list:
        return [decode_value(v, allow_pickle) for v in data]
    if kind is not dict:
        raise ValueError(f"unexpected {kind.__name__} in a stored value")
    tag = next((k for k in data if k.startswith("$")), None)
    if tag is None:
        return {k: decode_value(v, allow_pickle) for k, v in data.items()}
    if data.keys() != (_TAG_KEYS.get(tag) or {tag}):
        raise ValueError(f"a {tag} object with keys {sorted(data)}")
    body = data[tag]
    if tag == "$int":
        if type(body) is not str or _HEX_INT.fullmatch(body) is None:
            raise ValueError(f"bad $int {body[:40] if type(body) is str else body!r}")
        return int(body, 16)
    if tag == "$float":
        if body not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad $float {body!r}")
        return float(body)
    if tag == "$tuple":
        return tuple(decode_value(v, allow_pickle) for v in _list(body))
    if tag == "$set":
        return {decode_value(v, allow_pickle) for v in _list(body)}
    if tag == "$frozenset":
        return frozenset(decode_value(v, allow_pickle) for v in _list(body))
    if tag == "$dict":
        return {decode_value(k, allow_pickle): decode_value(v, allow_pickle) for k, v in _list(body)}
    if tag == "$complex":
        parts = [decode_value(v) for v in _list(body)]
        if len(parts) != 2 or not all(type(part) in (int, float) for part in parts):
            raise ValueError("a $complex is two numbers")
        return complex(*parts)
    if tag == "$bytes":
        if type(body) is not str:
            raise ValueError("a $bytes body is base64 text")
        return base64.b64decode(body, validate=True)
    if tag in ("$numpy", "$ndarray"):
        dtype = body if tag == "$numpy" else data.get("dtype")
        string = tag == "$numpy" and isinstance(dtype, str) and _NUMPY_STRING.match(dtype) is not None
        if not isinstance(dtype, str) or not (string or _NUMPY_DTYPE.match(dtype)):
            raise ValueError(f"bad NumPy dtype {dtype!r}")
        import numpy

        if tag == "$numpy":
            value = decode_value(data.get("value"))
            if (
                string != (type(value) is str)
                or (("c" in dtype) != (type(value) is complex))
                or type(value) not in (bool, int, float, complex, str)
            ):
                raise ValueError(f"a NumPy {dtype} scalar stored as {type(value).__name__}")
            return numpy.dtype(dtype).type(value)
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"bad NumPy shape {shape!r}")
        return numpy.array(decode_value(body), dtype=numpy.dtype(dtype)).reshape(shape)
    if tag == "$pickle":
        if type(body) is not str:
            raise ValueError("a $pickle body is base64 text")
        if not allow_pickle:
            raise StoredPickle()

        return pickle.loads(base64.b64decode(body, validate=True))
    raise ValueError(f"unknown tag {tag!r}")


def _list(body: Any) -> list:
    if type(body) is not list:
        raise ValueError("a tag's body must be a list")
    return body


class UnstorableValue(CheckpointError):
    """A replicate's result that no checkpoint row can hold: longer than
    ``MAX_ROW_CHARS`` or nested deeper than ``MAX_DEPTH``. Its message names
    the metric, its condition and replicate; ``replicate`` is the index."""

    def __init__(self, message: str, replicate: int, metric: tuple[str, str] | None):
        super().__init__(message)
        self.replicate = replicate
        #: ``(condition, metric)`` of the value at fault, or None for the errors' text.
        self.metric = metric


def encode_result(result: ReplicateResult, allow_pickle: bool = False) -> str:
    """One replicate's result as the JSON text of its checkpoint row.

    Raises [`CheckpointError`][] naming the metric whose value needs pickle
    (unless ``allow_pickle``), and ``UnstorableValue`` naming the metric that
    makes the row too long or too deep to be read back.
    """
    metrics = result[2]
    # Most metrics are plain numbers and strings, which JSON holds as they are; this
    # check runs for every replicate, so it is a plain loop.
    plain = True
    for values in metrics.values():
        for value in values.values():
            kind = type(value)
            if (
                (kind is float and value - value != 0.0)
                or (kind is not float and kind not in _PLAIN)
                # Written as decimal only where any reader can parse it back: not
                # while another thread lifted the int-to-text limit for an export.
                or (kind is int and not -_HUGE_INT < value < _HUGE_INT)
            ):
                plain = False
                break
    try:
        stored = metrics if plain else _encode_metrics(result, allow_pickle)
        try:
            text = _row_text(result, stored)
        except ValueError:  # an int past the digits Python writes in decimal: encode again, tagging it
            text = _row_text(result, _encode_metrics(result, allow_pickle))
        # A metric name starting with "$" would read back as a tag: its condition is stored as a $dict.
        if plain and '"$' in text and any(name[:1] == "$" for values in metrics.values() for name in values):
            text = _row_text(result, _encode_metrics(result, allow_pickle))
    except RecursionError:  # a value nested past what Python can walk (or holding itself)
        raise _unstorable(result, allow_pickle, deep=True) from None
    if len(text) > MAX_ROW_CHARS:
        raise _unstorable(result, allow_pickle, deep=False)
    if _too_deep(text):
        raise _unstorable(result, allow_pickle, deep=True)
    return text


def _row_text(result: ReplicateResult, stored: dict) -> str:
    errors = result[3]
    seed = result[1]
    duration = result[4] if len(result) > 4 else None
    return _to_json(
        [
            seed if type(seed) is int and -_HUGE_INT < seed < _HUGE_INT else encode_value(seed),
            # Whole nanoseconds: writing an int costs a fraction of writing a float.
            None if duration is None else int(duration * 1e9),
            stored,
            [[e.condition, e.exc_type, e.message, e.traceback] for e in errors] if errors else [],
        ]
    )


#: What the nesting of JSON text depends on: escapes (skipped), quotes and brackets.
_JSON_TOKEN = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _depth(text: str) -> int:
    """How deep JSON ``text`` nests arrays and objects, found without parsing
    it (parsing is what must not recurse without bound), in one linear pass:
    a crafted row must not make the check itself slow."""
    depth = deepest = 0
    in_string = False
    for token in _JSON_TOKEN.findall(text):
        if token == '"':
            in_string = not in_string
        elif in_string or token[0] == "\\":
            continue
        elif token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _too_deep(text: str) -> bool:
    """Whether JSON ``text`` nests arrays and objects deeper than ``MAX_DEPTH``."""
    # The common case costs two counts: too few brackets to nest that deep.
    return text.count("[") + text.count("{") > MAX_DEPTH and _depth(text) > MAX_DEPTH


def _unstorable(result: ReplicateResult, allow_pickle: bool, deep: bool) -> UnstorableValue:
    """Why ``result`` makes no row a checkpoint could read back, naming the
    metric at fault: the deepest (or longest) value."""
    worst, worst_size = None, -1
    for condition, values in result.metrics.items():
        for name, value in values.items():
            try:
                text = _to_json(encode_value(value, allow_pickle))
                size = _depth(text) if deep else len(text)
            except Exception:  # RecursionError: past what Python can walk
                size = sys.maxsize
            if size > worst_size:
                worst, worst_size = (condition, name), size
    limit = f"nested at most {MAX_DEPTH} deep" if deep else f"at most {MAX_ROW_CHARS:,} characters long"
    if worst is None:
        what = f"the errors of replicate {result.replicate}"
    else:
        what = f"metric {worst[1]!r} of condition {worst[0]!r} (replicate {result.replicate})"
    return UnstorableValue(
        f"{what} cannot be stored in a checkpoint, whose rows are {limit}: record a smaller or flatter value "
        "(or save it to a file of your own and record its path)",
        result.replicate,
        worst,
    )


def _encode_metrics(result: ReplicateResult, allow_pickle: bool) -> dict:
    stored = {}
    for condition, values in result.metrics.items():
        try:
            stored[condition] = encode_value(values, allow_pickle)
        except _NeedsPickle as needs:
            name = next(n for n, v in values.items() if _needs_pickle(v))
            raise CheckpointError(
                f"metric {name!r} of condition {condition!r} (replicate {result.replicate}) is a {needs}, "
                "which a checkpoint could store only with pickle, and reading a pickle runs code from the "
                "file. Record plain values (numbers, strings, lists, dicts, NumPy arrays and scalars of "
                "bools, ints, floats and complex numbers up to 64 bits a part; NumPy string scalars), or pass "
                "checkpoint_pickle=True to run() if you will only ever open checkpoints you trust"
            ) from None
    return stored


def _refuse(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON")


def _json_writer() -> Callable[[Any], str]:
    """Strict, compact JSON text. json.dumps builds an encoder on every call, which
    costs more than writing a small row; the C encoder is built once and reused."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (PyPy, a stripped build)
        return json.JSONEncoder(allow_nan=False, separators=(",", ":"), default=_refuse).encode
    write = make(None, _refuse, encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    join = "".join

    def to_json(value: Any) -> str:
        return join(write(value, 0))

    return to_json


_to_json = _json_writer()


def _needs_pickle(value: Any) -> bool:
    try:
        encode_value(value)
    except _NeedsPickle:
        return True
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


#: Strict JSON: NaN and the infinities are written as tags, never as bare words.
_parse = json.JSONDecoder(parse_constant=_refuse_constant).decode


def decode_result(replicate: int, text: str, allow_pickle: bool = False) -> ReplicateResult:
    """The inverse of ``encode_result``; raises ``ValueError`` for a malformed row.

    The row is measured before it is parsed: one longer than ``MAX_ROW_CHARS``
    or nested deeper than ``MAX_DEPTH`` is refused unread.
    """
    if len(text) > MAX_ROW_CHARS:
        raise ValueError(f"a row of {len(text):,} characters, over the {MAX_ROW_CHARS:,} a checkpoint writes")
    if _too_deep(text):
        raise ValueError(f"a row nested over the {MAX_DEPTH} levels a checkpoint writes")
    row = _parse(text)
    if type(row) is not list or len(row) != 4:
        raise ValueError("a row is a list of seed, duration, metrics and errors")
    seed, nanoseconds, stored, errors = row
    if type(seed) is dict:  # a huge seed, as $int
        seed = decode_value(seed)
    if type(seed) is not int or not (nanoseconds is None or (type(nanoseconds) is int and nanoseconds >= 0)):
        raise ValueError("bad seed or duration")
    duration = None if nanoseconds is None else nanoseconds / 1e9
    if type(stored) is not dict:
        raise ValueError("bad metrics")
    metrics = {}
    for condition, values in stored.items():
        # A condition's metrics are a mapping of names: a plain object, or a $dict where a name starts with "$".
        decoded = decode_value(values, allow_pickle) if type(values) is dict else None
        if type(decoded) is not dict or not all(type(name) is str and name for name in decoded):
            raise ValueError(f"the metrics of condition {condition!r} are not a mapping of names to values")
        metrics[condition] = decoded
    if type(errors) is not list:
        raise ValueError("bad error records")
    made = []
    for error in errors:
        if type(error) is not list or len(error) != 4:
            raise ValueError("bad error record")
        condition, exc_type, message, traceback = error
        if not (condition is None or type(condition) is str) or not all(
            type(t) is str for t in (exc_type, message, traceback)
        ):
            raise ValueError("bad error record")
        made.append(ReplicateError(replicate, condition, exc_type, message, traceback))
    return ReplicateResult(replicate, seed, metrics, tuple(made), duration)
