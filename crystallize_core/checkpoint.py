"""Checkpoints: finished replicates saved as they finish, so a rerun resumes.

A checkpoint is an SQLite file. Each finished replicate is committed where it
ran, in its own transaction with ``synchronous=FULL``, so a crash — of a
worker or of the whole run — loses at most the replicates that were still
running. The file also records which experiment wrote it (a fingerprint of its
components, treatments and seed plugins) and the base seed, and refuses to
mix in results of another experiment.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from crystallize_core.errors import CheckpointMismatchError, ConfigurationError
from crystallize_core.result import ReplicateResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicates (replicate INTEGER PRIMARY KEY, result BLOB NOT NULL);
"""
_FORMAT = "crystallize-checkpoint-1"


def fingerprint(components: Iterable[tuple[str, object]]) -> str:
    """A stable digest of an experiment's parts, the same in every process and run."""
    digest = hashlib.sha256()
    for label, component in components:
        digest.update(f"{label}={_identity(component)}\n".encode())
    return digest.hexdigest()


def _identity(component: object) -> str:
    qualname = getattr(component, "__qualname__", None)
    if qualname is not None and getattr(component, "__module__", None):
        return f"{component.__module__}:{qualname}"
    kind = type(component)
    name = f"{kind.__module__}:{kind.__qualname__}"
    if isinstance(component, dict):
        return f"{name}{sorted((str(k), repr(v)) for k, v in component.items())}"
    if kind.__repr__ is not object.__repr__:
        return f"{name}:{component!r}"
    try:
        return f"{name}:{hashlib.sha256(pickle.dumps(component, protocol=4)).hexdigest()}"
    except Exception:
        return name


class Checkpoint:
    """An open checkpoint file; picklable (by path), so workers append to it too."""

    def __init__(self, path: str | os.PathLike):
        self.path = str(path)
        self._local = threading.local()

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _connection(self) -> sqlite3.Connection:
        # One connection per process and thread: SQLite connections survive
        # neither a fork nor sharing between threads.
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")
            local.connection, local.pid = connection, os.getpid()
        return local.connection

    @classmethod
    def open(cls, path: str | os.PathLike, experiment_fingerprint: str, base_seed: int):
        """Open or create the checkpoint at ``path`` for this experiment.

        Returns ``(checkpoint, finished results by replicate, base seed)``;
        the base seed is the one stored when the file was created, so that a
        resumed run gives every replicate the seed it would have had.
        Raises :class:`CheckpointMismatchError` if another experiment wrote it.
        """
        location = Path(path)
        if location.is_dir():
            raise ConfigurationError(f"checkpoint {str(path)!r} is a directory; give a file path")
        if not location.parent.exists():
            raise ConfigurationError(f"checkpoint folder {str(location.parent)!r} does not exist")
        checkpoint = cls(path)
        try:
            connection = checkpoint._connection()
            connection.executescript(_SCHEMA)
            connection.execute("BEGIN IMMEDIATE")
            stored = dict(connection.execute("SELECT key, value FROM meta"))
            if not stored:
                connection.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", _FORMAT), ("fingerprint", experiment_fingerprint), ("base_seed", str(base_seed))],
                )
                stored = {"format": _FORMAT, "fingerprint": experiment_fingerprint, "base_seed": str(base_seed)}
            connection.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise ConfigurationError(f"checkpoint {str(path)!r} is not a Crystallize checkpoint: {exc}") from None
        if stored.get("format") != _FORMAT:
            raise CheckpointMismatchError(f"checkpoint {str(path)!r} has format {stored.get('format')!r}")
        if stored["fingerprint"] != experiment_fingerprint:
            raise CheckpointMismatchError(
                f"checkpoint {str(path)!r} was written by a different experiment or seed (its datasource, "
                "steps, treatments or seed plugins differ); use another checkpoint path, or delete this "
                "file to start over"
            )
        finished = {
            replicate: pickle.loads(blob)
            for replicate, blob in connection.execute("SELECT replicate, result FROM replicates")
        }
        return checkpoint, finished, int(stored["base_seed"])

    def append(self, result: ReplicateResult) -> None:
        """Commit one finished replicate's result durably."""
        blob = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        self._connection().execute("INSERT OR REPLACE INTO replicates VALUES (?, ?)", (result.replicate, blob))
