"""Checkpoints: finished replicates saved by the driver, so that a rerun resumes.

A checkpoint is an SQLite file in WAL mode with ``synchronous=FULL``. Results
are written only in the process that drives the run, in batches: a
``Recorder`` commits, in one transaction, what finished once a second
has passed since its last commit (or 10,000 results wait), and at the end of
the run, on errors and on Ctrl-C. A run killed outright loses only what
finished since the last commit, and a rerun runs just those again.

Opening a checkpoint never runs code from the file. Values are stored as
JSON (the codec is ``crystallize_core._codec``); a value that would need
pickle is refused unless the run opts in with ``checkpoint_pickle=True``.
Rows are read as data, held to the codec's checks and to their key (see
``OpenedCheckpoint.matching``); a row failing a check costs only its
replicate, which runs again.

A checkpoint that cannot be written (a full disk, an I/O error) does not stop
the run: the ``Recorder`` warns once and lists the replicates it could not
save, and the run goes on in memory.

The file records what the experiment *is* (each component's fingerprint, see
``crystallize_core.fingerprint``), so that the same experiment resumes in a
new process, and a changed one is refused with what changed.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from crystallize_core._codec import MAX_ROW_CHARS, StoredPickle, UnstorableValue, decode_result, encode_result
from crystallize_core.errors import CheckpointError, CheckpointMismatchError, CheckpointPermissionError
from crystallize_core.fingerprint import differences
from crystallize_core.records import ReplicateResult

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
        except StoredPickle:
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
