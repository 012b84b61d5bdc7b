"""Checkpoints: finished replicates saved by the driver, so that a rerun resumes.

A checkpoint is an SQLite file in WAL mode with ``synchronous=FULL``. Results
are written only in the process that drives the run, in batches: a
``Recorder`` commits, in one transaction, what finished once a second
has passed since its last commit (or 10,000 results wait), and at the end of
the run, on errors and on Ctrl-C. A run killed outright loses only what
finished since the last commit, and a rerun runs just those again.

Opening a checkpoint never runs code from the file. Values are stored as
JSON, with a small tagged encoding for what JSON lacks (tuples, NaN and the
infinities, integers of any size, NumPy numbers and arrays, sets, bytes). A
value that would need pickle is refused unless the run opts in with
``checkpoint_pickle=True``. Rows are read as data: bounded in size and depth
before they are parsed, held to the kinds of value the encoder writes, and to
their key (see ``OpenedCheckpoint.matching``); a row failing a check costs
only its replicate, which runs again.

A checkpoint that cannot be written (a full disk, an I/O error) does not stop
the run: the ``Recorder`` warns once and lists the replicates it could not
save, and the run goes on in memory.

The file records what the experiment *is* (each component's fingerprint, see
``crystallize_core.fingerprint``), so that the same experiment resumes in a
new process, and a changed one is refused with what changed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import pickle
import re
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crystallize_core.errors import CheckpointError, CheckpointMismatchError, CheckpointPermissionError
from crystallize_core.fingerprint import differences
from crystallize_core.records import ReplicateError, ReplicateResult

FORMAT = "crystallize-checkpoint-2"
#: Stored in the SQLite header (``PRAGMA application_id``): "CRYS".
APPLICATION_ID = 0x43525953
_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS replicates (replicate INTEGER PRIMARY KEY, result TEXT NOT NULL)",
)
_START_OVER = "Use another checkpoint path, or delete the file to start over."
_log = logging.getLogger("crystallize")

# Forked children inherit the driver's recorders; they must never write.
_fork_generation = 0


def _after_fork_in_child() -> None:
    global _fork_generation
    _fork_generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# --- values -----------------------------------------------------------------------------


class _NeedsPickle(Exception):
    """A value JSON cannot hold, found while encoding."""

    def __init__(self, value: Any):
        dtype = getattr(value, "dtype", None) if type(value).__module__ == "numpy" else None
        of = f" of dtype {dtype}" if dtype is not None else ""
        super().__init__(f"{type(value).__module__}.{type(value).__qualname__}{of}")


class _PickledValue(Exception):
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
            raise _PickledValue()

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


# --- the file ---------------------------------------------------------------------------------


class OpenedCheckpoint:
    """What ``Checkpoint.open`` found: the checkpoint, its finished results and stored seeds."""

    def __init__(self, checkpoint: Checkpoint, finished: dict[int, ReplicateResult], base_seed: int, drawn: dict):
        self.checkpoint = checkpoint
        #: Finished results by replicate index, rows that could not be read left out.
        self.finished = finished
        #: The base seed stored when the file was created.
        self.base_seed = base_seed
        #: The drawn seed of each ``SeedPlugin(seed=None)``, by plugin label.
        self.drawn_seeds: dict[str, int] = drawn

    def matching(
        self, replicates: int, conditions: Sequence[str], seed_of: Callable[[int], int]
    ) -> dict[int, ReplicateResult]:
        """The finished results a run of ``replicates`` replicates over
        ``conditions`` can take, each held to its key.

        A row is kept when it holds the seed its index gives (``seed_of``,
        the run's own seed function: a row copied to another index is
        refused), every condition it names is one of ``conditions``, and each
        of those is there, with its metrics or its error (or the replicate
        has an error of its own). Each row refused is named in a warning and
        its replicate runs again; the file is not changed.
        """
        asked = set(conditions)
        kept = {}
        for replicate, result in self.finished.items():
            if replicate >= replicates:  # a larger run's checkpoint holds more
                continue
            named = set(result.metrics) | {e.condition for e in result.errors}
            stray = sorted(c for c in named if c is not None and c not in asked)
            if stray:
                problem = f"it holds condition(s) {', '.join(map(repr, stray))}, which this run does not have"
            elif None not in named and not asked <= named:
                missing = ", ".join(repr(c) for c in conditions if c not in named)
                problem = f"it holds neither metrics nor an error for condition(s) {missing}"
            else:
                expected = seed_of(replicate)
                if result.seed == expected:
                    kept[replicate] = result
                    continue
                problem = f"it holds seed {result.seed}, but replicate {replicate} has seed {expected}"
            _log.warning(
                "checkpoint %s: the row of replicate %s does not match its key (%s); that replicate runs again",
                repr(self.checkpoint.path),
                replicate,
                problem,
            )
        return kept


class Checkpoint:
    """An open checkpoint file, written by the process that drives the run.

    Use ``open``; write with ``record``, or through a ``Recorder``.
    """

    def __init__(self, path: str | os.PathLike, connection: sqlite3.Connection, allow_pickle: bool = False):
        self.path = str(path)
        self.allow_pickle = allow_pickle
        self._connection: sqlite3.Connection | None = connection
        self._lock = threading.Lock()

    def __reduce__(self):
        raise TypeError("a Checkpoint is written by the process driving the run and cannot be sent elsewhere")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        components: Mapping[str, Mapping[str, Any]],
        base_seed: int,
        drawn_seeds: Mapping[str, int] | None = None,
        allow_pickle: bool = False,
    ) -> OpenedCheckpoint:
        """Open the checkpoint at ``path`` for this experiment, or create it.

        ``components`` is ``experiment_components``' description of the
        experiment; ``base_seed`` and ``drawn_seeds`` are stored when the file
        is created, and the stored ones are returned when it exists, so that a
        resumed run gives every replicate the seed it would have had.

        Raises, naming the path and leaving the file untouched:
        [`CheckpointMismatchError`][] when another experiment wrote it,
        saying what changed; [`CheckpointPermissionError`][] when it, or
        its folder, cannot be written; [`CheckpointError`][] when it is not
        a Crystallize checkpoint (corrupt, truncated, another application's
        database, an older format). A row that cannot be read costs only its
        replicate, which runs again.
        """
        shown = repr(str(path))
        location = Path(path)
        if location.is_symlink() and not location.exists():
            raise CheckpointError(
                f"checkpoint {shown} is a symbolic link to {os.readlink(location)!r}, which does not exist "
                "(or is a loop of links); create the link's target or give another path"
            )
        if location.is_dir():
            raise CheckpointError(f"checkpoint {shown} is a directory; give a file path")
        folder = location.parent
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {str(folder)!r} does not exist; create it first")
        exists = location.exists()
        if exists and location.stat().st_size > 0:
            _check_header(location, shown)
        if not os.access(folder, os.W_OK | os.X_OK) or (exists and not os.access(location, os.W_OK)):
            what = "its folder is" if exists and os.access(location, os.W_OK) else "it is"
            raise CheckpointPermissionError(
                f"checkpoint {shown}: permission denied: {what} not writable (SQLite also writes "
                f"-wal and -shm files beside it); fix the permissions or use another path"
            )
        if not exists or location.stat().st_size == 0:
            _create_file(location, shown, components, base_seed, dict(drawn_seeds or {}))
            _check_header(location, shown)  # another run may have created it first: read what is there
        try:
            connection = sqlite3.connect(str(location), timeout=60, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise CheckpointError(f"checkpoint {shown} cannot be opened: {exc}") from None
        try:
            stored = _read_meta(connection, shown)
            # A row too long to parse is measured, never fetched: see MAX_ROW_CHARS.
            rows = connection.execute(
                "SELECT replicate, CASE WHEN length(result) <= ? THEN result END, length(result) FROM replicates",
                (MAX_ROW_CHARS,),
            ).fetchall()
        except sqlite3.Error as exc:
            connection.close()
            if _io_failure(exc):  # the file may be sound: never advise deleting it
                raise CheckpointError(
                    f"checkpoint {shown} cannot be read ({exc}): the disk is full or failing, or the -wal and "
                    "-shm files SQLite keeps beside it cannot be written; it was left untouched: free some space "
                    "and run again"
                ) from None
            raise CheckpointError(
                f"checkpoint {shown} cannot be read ({exc}): it is corrupt or truncated, and was left untouched. "
                + _START_OVER
            ) from None
        except CheckpointError:
            connection.close()
            raise
        changes = differences(stored["components"], components)
        if changes:
            connection.close()
            raise CheckpointMismatchError(
                f"checkpoint {shown} was written by a different experiment: {'; '.join(changes)}. " + _START_OVER
            )
        connection.execute("PRAGMA synchronous=FULL")
        finished = _decode_rows(rows, shown, allow_pickle, connection)
        return OpenedCheckpoint(cls(location, connection, allow_pickle), finished, stored["base_seed"], stored["drawn"])

    def record(self, results: Sequence[ReplicateResult]) -> None:
        """Commit ``results`` durably, in one transaction.

        Raises [`CheckpointError`][] for a value that would need pickle
        (unless opened with ``allow_pickle``), naming its metric, before
        writing anything.
        """
        self.write_rows([(r.replicate, encode_result(r, self.allow_pickle)) for r in results])

    def write_rows(self, rows: Sequence[tuple[int, str]]) -> None:
        """Commit rows made by ``encode_result`` durably, in one transaction."""
        if not rows:
            return
        with self._lock:
            connection = self._connection
            if connection is None:
                raise CheckpointError(f"checkpoint {self.path!r} is closed")
            try:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany("INSERT OR REPLACE INTO replicates VALUES (?, ?)", rows)
                connection.execute("COMMIT")
            except BaseException as exc:  # Ctrl-C too: never leave a transaction open
                if connection.in_transaction:
                    try:
                        connection.execute("ROLLBACK")
                    except sqlite3.Error:  # SQLite rolled back itself (a full disk, an I/O error)
                        pass
                if isinstance(exc, sqlite3.Error):
                    raise CheckpointError(f"checkpoint {self.path!r}: cannot write ({exc})") from None
                raise

    def close(self) -> None:
        """Close the file; further writes raise."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


def _check_header(location: Path, shown: str) -> None:
    try:
        with open(location, "rb") as file:
            header = file.read(100)
    except PermissionError:
        raise CheckpointPermissionError(f"checkpoint {shown}: permission denied: it is not readable") from None
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise CheckpointError(
            f"checkpoint {shown} is not a Crystallize checkpoint (not an SQLite database: corrupt, truncated or "
            f"another kind of file); it was left untouched. " + _START_OVER
        )
    if int.from_bytes(header[68:72], "big") != APPLICATION_ID:
        raise CheckpointError(
            f"checkpoint {shown} is not a Crystallize checkpoint (an SQLite database of another application, "
            f"or of a Crystallize older than format 2, whose pickled rows are not read for safety); it was left "
            f"untouched. " + _START_OVER
        )


def _create_file(location: Path, shown: str, components: Mapping, base_seed: int, drawn: dict) -> None:
    """Create a checkpoint at ``location`` whole, or not at all.

    It is written under a temporary name beside it, synced, and only then
    linked into place, so that a run killed meanwhile leaves no half-made
    checkpoint (at most a hidden temporary file), and of two runs creating
    one at once, the first wins and the
    second opens it. Being new, the file needs no rollback journal while it is
    written; it is in WAL mode, with its header (and the application id that
    marks it as a checkpoint) in the file itself, before it gets its name.
    """
    temporary = location.with_name(f".{location.name}.{os.getpid()}-{threading.get_ident()}.creating")
    try:
        connection = sqlite3.connect(str(temporary), isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode=OFF")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute("BEGIN IMMEDIATE")
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            for statement in _SCHEMA:
                connection.execute(statement)
            meta = {
                "format": FORMAT,
                "components": json.dumps(components, sort_keys=True),
                "base_seed": str(base_seed),
                "drawn_seeds": json.dumps(drawn, sort_keys=True),
            }
            connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            connection.execute("COMMIT")
            connection.execute("PRAGMA journal_mode=WAL")
        finally:
            connection.close()
        if location.exists():  # an empty file the user made: replace it
            os.replace(temporary, location)
        else:
            try:
                os.link(temporary, location)  # fails if another run created it meanwhile: that one is used
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not location.exists():
                    os.replace(temporary, location)
        _sync_folder(location.parent)
    except (sqlite3.Error, OSError) as exc:
        raise CheckpointError(f"checkpoint {shown} cannot be created: {exc}") from None
    finally:
        for leftover in (temporary, Path(f"{temporary}-wal"), Path(f"{temporary}-shm")):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass


def _sync_folder(folder: Path) -> None:
    """Make a new name in ``folder`` durable (POSIX; elsewhere the rename is as durable as it gets)."""
    flags = getattr(os, "O_DIRECTORY", None)
    if flags is None:
        return
    descriptor = os.open(folder, os.O_RDONLY | flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


#: SQLite's primary result codes for a failing file system: SQLITE_IOERR,
#: SQLITE_FULL and SQLITE_CANTOPEN.
_IO_FAILURES = frozenset({10, 13, 14})
#: SQLite's own messages for those codes, for Python 3.10, whose errors carry no code.
_IO_FAILURE_MESSAGES = ("disk I/O error", "database or disk is full", "unable to open database file")


def _io_failure(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` comes from the file system (a full disk, an I/O error), not from the file's content."""
    code = getattr(exc, "sqlite_errorcode", None)
    if type(code) is int:
        return code & 0xFF in _IO_FAILURES
    return str(exc).startswith(_IO_FAILURE_MESSAGES)


def _read_meta(connection: sqlite3.Connection, shown: str) -> dict:
    corrupt = CheckpointError(
        f"checkpoint {shown} has a damaged or foreign header table; it was left untouched. " + _START_OVER
    )
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta"))
    except sqlite3.OperationalError as exc:
        if _io_failure(exc):
            raise
        raise corrupt from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {shown} has format {meta.get('format')!r}, not {FORMAT!r}; it was left untouched. "
            + _START_OVER
        )
    try:
        components = json.loads(meta["components"])
        base_seed = int(meta["base_seed"])
        drawn = json.loads(meta["drawn_seeds"])
    except (KeyError, ValueError):
        raise corrupt from None
    if not isinstance(components, dict) or not isinstance(drawn, dict):
        raise corrupt
    return {"components": components, "base_seed": base_seed, "drawn": drawn}


def _decode_rows(rows: list, shown: str, allow_pickle: bool, connection: sqlite3.Connection) -> dict:
    finished: dict[int, ReplicateResult] = {}
    pickled = 0
    for replicate, text, length in rows:
        try:
            if type(replicate) is not int or replicate < 0:
                raise ValueError("not a replicate index")
            if text is None and type(length) is int and length > MAX_ROW_CHARS:
                raise ValueError(f"a row of {length:,} characters, over the {MAX_ROW_CHARS:,} a checkpoint writes")
            if type(text) is not str:
                raise ValueError("not a replicate row")
            finished[replicate] = decode_result(replicate, text, allow_pickle)
        except _PickledValue:
            pickled += 1
        except (
            ValueError,
            TypeError,
            KeyError,
            OverflowError,
            ImportError,
            RecursionError,
            pickle.UnpicklingError,
            EOFError,
        ) as exc:
            _log.warning(
                "checkpoint %s: the row of replicate %s cannot be read (%s: %s); that replicate runs again",
                shown,
                replicate,
                type(exc).__name__,
                exc,
            )
    if pickled:
        connection.close()
        raise CheckpointError(
            f"checkpoint {shown} holds values stored with pickle in {pickled} row(s) (it was written with "
            "checkpoint_pickle=True), and unpickling runs code from the file. Pass checkpoint_pickle=True only "
            "if you trust where the file came from"
        )
    return finished


class Recorder:
    """The driver's batching writer: finished results go to the checkpoint in batches.

    ``add_many`` encodes results at once (so a value that needs pickle is
    refused at the replicate that recorded it) and commits the pending batch,
    in one transaction, when ``every`` results are waiting or ``seconds`` have
    passed since the last commit; ``close`` commits the rest, and must be
    called at the end of the run, after an error and after Ctrl-C. A result
    waits at most until the first result after ``seconds`` have passed, or the
    end of the run. A replicate recorded twice keeps its last result. Safe to
    call from several threads. In a process forked from the driver it does
    nothing: only the driver writes.

    Nothing computed is lost to the file: when a commit fails (a full disk,
    an I/O error) it warns once, naming the file and the error, and writes no
    more; a result no row can hold (``UnstorableValue``) is warned of by
    metric. Either way the run goes on, and ``unsaved`` lists the replicates
    that have no row; what was committed stays readable.
    """

    def __init__(self, checkpoint: Checkpoint, every: int = 10_000, seconds: float = 1.0):
        self.checkpoint = checkpoint
        self.every = every
        self.seconds = seconds
        self._pending: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._last_commit = time.monotonic()
        self._closed = False
        self._generation = _fork_generation
        #: Why the file cannot be written, once a commit failed; nothing is written after.
        self._broken: str | None = None
        self._unsaved: set[int] = set()
        self._unstorable_warned: set[tuple[str, str] | None] = set()

    @property
    def unsaved(self) -> list[int]:
        """The replicates taken that have no row in the file, in index order."""
        with self._lock:
            return sorted(self._unsaved)

    def add(self, result: ReplicateResult) -> None:
        """Take one finished result; commit the batch if it is due."""
        if self._generation != _fork_generation or self._closed:
            return
        try:
            row = (result[0], encode_result(result, self.checkpoint.allow_pickle))
        except UnstorableValue as refused:
            self._refused(refused)
            return
        with self._lock:
            if self._closed:
                return
            if self._broken is not None:
                self._unsaved.add(row[0])
                return
            pending = self._pending
            pending.append(row)
            if len(pending) >= self.every or time.monotonic() - self._last_commit >= self.seconds:
                self._commit()

    def add_many(self, results: Iterable[ReplicateResult]) -> None:
        """Take finished results; commit the batch if it is due."""
        if self._generation != _fork_generation or self._closed:
            return
        allow_pickle = self.checkpoint.allow_pickle
        rows = []
        for result in results:
            try:
                rows.append((result[0], encode_result(result, allow_pickle)))
            except UnstorableValue as refused:
                self._refused(refused)
        with self._lock:
            if self._closed:
                return
            if self._broken is not None:
                self._unsaved.update(replicate for replicate, _ in rows)
                return
            pending = self._pending
            pending += rows
            if len(pending) >= self.every or time.monotonic() - self._last_commit >= self.seconds:
                self._commit()

    def _refused(self, refused: UnstorableValue) -> None:
        with self._lock:
            self._unsaved.add(refused.replicate)
            if refused.metric in self._unstorable_warned:  # one warning per metric, not per replicate
                return
            self._unstorable_warned.add(refused.metric)
        _log.warning(
            "checkpoint %r: %s; replicate %s is kept in memory and not saved (the result lists it in "
            "unsaved_replicates)",
            self.checkpoint.path,
            refused,
            refused.replicate,
        )

    def flush(self) -> None:
        """Commit what is pending now."""
        if self._generation != _fork_generation:
            return
        with self._lock:
            self._commit()

    def close(self) -> None:
        """Commit what is pending and close the checkpoint; later results are ignored."""
        if self._generation != _fork_generation:
            return
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._commit()
            finally:
                self.checkpoint.close()

    def _commit(self) -> None:
        # Pending rows are dropped only once written: a commit cut short by
        # Ctrl-C is rolled back, and closing the recorder writes them again.
        if self._broken is not None or not self._pending:
            return
        try:
            self.checkpoint.write_rows(self._pending)
        except CheckpointError as failed:  # rolled back: what was committed before stays as it was
            self._broken = str(failed)
            self._unsaved.update(replicate for replicate, _ in self._pending)
            self._pending = []
            _log.warning(
                "%s; the run goes on in memory, and the replicates not saved are listed in the result's "
                "unsaved_replicates (a rerun with this checkpoint runs them again)",
                failed,
            )
            return
        self._pending = []
        self._last_commit = time.monotonic()
