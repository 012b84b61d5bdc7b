"""Checkpoints: finished replicates saved by the driver, so that a rerun resumes.

A checkpoint is an SQLite file in WAL mode with ``synchronous=FULL``. Results
are written only in the process that drives the run, in batches: a
``Recorder`` commits, in one transaction, what finished once a second
has passed since its last commit (or 10,000 results wait), and at the end of
the run, on errors and on Ctrl-C. A run killed outright loses only what
finished since the last commit, and a rerun runs just those again.

Opening a checkpoint never runs code from the file. Values are stored as
JSON, with a small tagged encoding for what JSON lacks (tuples, NaN and the
infinities, NumPy numbers and arrays, sets, bytes). A value that would need
pickle is refused unless the run opts in with ``checkpoint_pickle=True``.

The file records what the experiment *is* (each component's fingerprint, see
``crystallize_core.fingerprint``), so that the same experiment resumes in a
new process, and a changed one is refused with what changed.
"""

from __future__ import annotations

import base64
import json
import logging
import os
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
from crystallize_core.result import ReplicateError, ReplicateResult

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


def encode_value(value: Any, allow_pickle: bool = False) -> Any:
    """``value`` as JSON data that ``decode_value`` turns back into an equal value.

    Tags (objects with one key starting with ``$``) carry what JSON lacks:
    ``$float`` ("nan", "inf", "-inf"), ``$tuple``, ``$set``, ``$frozenset``,
    ``$complex``, ``$bytes`` (base64), ``$dict`` (a mapping whose keys are not
    all plain strings), ``$numpy`` (a NumPy bool, int, float, complex or
    string scalar, with its dtype) and ``$ndarray`` (a NumPy array of bools,
    ints, floats or complex numbers, with dtype and shape).
    Anything else raises unless ``allow_pickle``, when it becomes ``$pickle``.
    """
    kind = type(value)
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
        import pickle

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
    body = data[tag]
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
        real, imag = (decode_value(v) for v in _list(body))
        return complex(real, imag)
    if tag == "$bytes":
        return base64.b64decode(body, validate=True)
    if tag in ("$numpy", "$ndarray"):
        dtype = body if tag == "$numpy" else data.get("dtype")
        string = tag == "$numpy" and isinstance(dtype, str) and _NUMPY_STRING.match(dtype) is not None
        if not isinstance(dtype, str) or not (string or _NUMPY_DTYPE.match(dtype)):
            raise ValueError(f"bad NumPy dtype {dtype!r}")
        import numpy

        if tag == "$numpy":
            value = decode_value(data.get("value"))
            if string != (type(value) is str) or (("c" in dtype) != (type(value) is complex)):
                raise ValueError(f"a NumPy {dtype} scalar stored as {type(value).__name__}")
            return numpy.dtype(dtype).type(value)
        shape = data.get("shape")
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError(f"bad NumPy shape {shape!r}")
        return numpy.array(decode_value(body), dtype=numpy.dtype(dtype)).reshape(shape)
    if tag == "$pickle":
        if not allow_pickle:
            raise _PickledValue()
        import pickle

        return pickle.loads(base64.b64decode(body, validate=True))
    raise ValueError(f"unknown tag {tag!r}")


def _list(body: Any) -> list:
    if type(body) is not list:
        raise ValueError("a tag's body must be a list")
    return body


def encode_result(result: ReplicateResult, allow_pickle: bool = False) -> str:
    """One replicate's result as the JSON text of its checkpoint row.

    Raises [`CheckpointError`][] naming the metric whose value needs pickle
    (unless ``allow_pickle``).
    """
    metrics = result[2]
    # Most metrics are plain numbers and strings, which JSON holds as they are; this
    # check runs for every replicate, so it is a plain loop.
    plain = True
    for values in metrics.values():
        for value in values.values():
            kind = type(value)
            if (kind is float and value - value != 0.0) or (kind is not float and kind not in _PLAIN):
                plain = False
                break
    stored = metrics if plain else _encode_metrics(result, allow_pickle)
    errors = result[3]
    seed = result[1]
    duration = result[4] if len(result) > 4 else None
    return _to_json(
        [
            seed if type(seed) is int else encode_value(seed),
            # Whole nanoseconds: writing an int costs a fraction of writing a float.
            None if duration is None else int(duration * 1e9),
            stored,
            [[e.condition, e.exc_type, e.message, e.traceback] for e in errors] if errors else [],
        ]
    )


def _encode_metrics(result: ReplicateResult, allow_pickle: bool) -> dict:
    stored = {}
    for condition, values in result.metrics.items():
        try:
            stored[condition] = {name: encode_value(v, allow_pickle) for name, v in values.items()}
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


def decode_result(replicate: int, text: str, allow_pickle: bool = False) -> ReplicateResult:
    """The inverse of ``encode_result``; raises ``ValueError`` for a malformed row."""
    seed, nanoseconds, stored, errors = json.loads(text)
    if type(seed) is not int or not (nanoseconds is None or type(nanoseconds) is int):
        raise ValueError("bad seed or duration")
    duration = None if nanoseconds is None else nanoseconds / 1e9
    if type(stored) is not dict or not all(type(v) is dict for v in stored.values()):
        raise ValueError("bad metrics")
    metrics = {condition: decode_value(values, allow_pickle) for condition, values in stored.items()}
    made = []
    for condition, exc_type, message, traceback in errors:
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
            rows = connection.execute("SELECT replicate, result FROM replicates").fetchall()
        except sqlite3.Error as exc:
            connection.close()
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
                    connection.execute("ROLLBACK")
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


def _read_meta(connection: sqlite3.Connection, shown: str) -> dict:
    corrupt = CheckpointError(
        f"checkpoint {shown} has a damaged or foreign header table; it was left untouched. " + _START_OVER
    )
    try:
        meta = dict(connection.execute("SELECT key, value FROM meta"))
    except sqlite3.OperationalError:
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
    for replicate, text in rows:
        try:
            if type(replicate) is not int or type(text) is not str:
                raise ValueError("not a replicate row")
            finished[replicate] = decode_result(replicate, text, allow_pickle)
        except _PickledValue:
            pickled += 1
        except (ValueError, TypeError, KeyError, OverflowError, ImportError) as exc:
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

    def add(self, result: ReplicateResult) -> None:
        """Take one finished result; commit the batch if it is due."""
        if self._generation != _fork_generation or self._closed:
            return
        row = (result[0], encode_result(result, self.checkpoint.allow_pickle))
        with self._lock:
            if self._closed:
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
        rows = [(r[0], encode_result(r, allow_pickle)) for r in results]
        with self._lock:
            if self._closed:
                return
            pending = self._pending
            pending += rows
            if len(pending) >= self.every or time.monotonic() - self._last_commit >= self.seconds:
                self._commit()

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
        self.checkpoint.write_rows(self._pending)
        self._pending = []
        self._last_commit = time.monotonic()
