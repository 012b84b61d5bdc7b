"""The dispatch engine: drives replicates on a backend.

A strategy that runs replicates anywhere but the calling thread supplies a
[`Backend`][crystallize_core.hookspecs.Backend] — how to start workers, submit a batch and tell a dead
worker from an error — and calls [`drive`][], which owns, once for every
such strategy: batching, replicate order, a bounded window of work in
flight (memory flat in the replicate count), progress, fault records,
rerunning alone a replicate whose worker died to pin the blame,
per-replicate timeouts, fail-fast, Ctrl-C and the driver-side record of
each finished replicate. It is joblib's split: ``Parallel`` owns the loop,
a backend only submits and aborts.

Any [`concurrent.futures.Executor`][] is a backend through
[`ExecutorBackend`][]:

    from concurrent.futures import ProcessPoolExecutor
    from crystallize_core.engine import ExecutorBackend, drive

    results = drive(run, replicate_fn, ExecutorBackend(lambda: ProcessPoolExecutor(4)))

This module is where strategies import the engine from. The code lives in
a module per job: ``crystallize_core.worker`` (what runs in a worker),
``crystallize_core.backends`` (the executor backend and strategy, and the
inline-payload rule), ``crystallize_core.dispatch`` (the loop), and the
``Backend`` contract in ``crystallize_core.hookspecs``.
"""

from __future__ import annotations

from crystallize_core.backends import INLINE_PAYLOAD_BYTES, ExecutorBackend, ExecutorStrategy, inline_payload
from crystallize_core.dispatch import drive
from crystallize_core.hookspecs import Backend
from crystallize_core.worker import NEED_PAYLOAD, cpu_count, run_shipped_span, run_span, user_code_paths

__all__ = [
    "INLINE_PAYLOAD_BYTES",
    "NEED_PAYLOAD",
    "Backend",
    "ExecutorBackend",
    "ExecutorStrategy",
    "cpu_count",
    "drive",
    "inline_payload",
    "run_shipped_span",
    "run_span",
    "user_code_paths",
]
