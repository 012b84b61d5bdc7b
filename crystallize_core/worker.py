"""What runs where the replicates run: a worker thread, process or cluster node.

The functions a backend's tasks call ([`run_span`][], and
[`run_shipped_span`][] for a replicate function shipped as pickled bytes),
the packing of a batch's results for the trip back to the driver, and the
helpers a backend reads where its workers start ([`cpu_count`][],
[`user_code_paths`][]). Nothing here schedules, retries or talks to a pool:
that is the dispatch engine's ([`crystallize_core.dispatch`][]). A worker
process imports this module and what a replicate needs, nothing more.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from crystallize_core._columns import pack_columns
from crystallize_core.context import unpicklable_message
from crystallize_core.errors import WorkerSetupError
from crystallize_core.records import ReplicateError, ReplicateResult, pack_results

if TYPE_CHECKING:
    from threading import Event

    from crystallize_core.hookspecs import ReplicateFn


def run_span(
    replicate_fn: Callable[[int], ReplicateResult],
    start: int,
    stop: int,
    stopping: Event | None = None,
    serialize: bool = False,
) -> tuple[list | bytes, float]:
    """Run positions ``start .. stop - 1`` and return ``(packed results, seconds)``.

    What a backend's workers run for each batch. With ``stopping`` (an
    in-process backend), a set event ends the batch between replicates, so
    Ctrl-C and fail-fast need not wait for a whole batch. With ``serialize``
    (a worker in another process) the results come pickled, so that one that
    cannot be pickled here, or unpickled in the driver, costs only itself:
    the engine records it on its replicate instead of losing the batch.
    """
    began = time.perf_counter()
    results = []
    for position in range(start, stop):
        if stopping is not None and stopping.is_set():
            break
        results.append(replicate_fn(position))
    packed = _dumps_results(results) if serialize else pack_results(results)
    return packed, time.perf_counter() - began


def _dumps_results(results: list[ReplicateResult]) -> bytes:
    columns = pack_columns(results)
    if columns is not None:
        return pickle.dumps(columns, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        return pickle.dumps(pack_results(results), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        return pickle.dumps(pack_results([_sendable(r) for r in results]), protocol=pickle.HIGHEST_PROTOCOL)


def _sendable(result: ReplicateResult) -> ReplicateResult:
    """``result`` without the metric values that cannot be pickled, each recorded as an error instead."""
    try:
        pickle.dumps(tuple(result), protocol=pickle.HIGHEST_PROTOCOL)
        return result
    except Exception:
        pass
    metrics, errors = {}, list(result.errors)
    for condition, values in result.metrics.items():
        kept = {}
        for name, value in values.items():
            try:
                pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                message = unpicklable_message(name, exc)
                kind = "crystallize_core.errors.NotPicklableError"  # as Metrics.add raises it
                errors.append(ReplicateError(result.replicate, condition, kind, message, ""))
            else:
                kept[name] = value
        metrics[condition] = kept
    return result._replace(metrics=metrics, errors=tuple(errors))


#: Replicate functions unpickled in this process, by key, newest last.
_shipped: OrderedDict[str, ReplicateFn] = OrderedDict()
_SHIPPED_KEPT = 4
#: What [`run_shipped_span`][] returns for a task sent without the pickled
#: replicate function to a process that does not hold it yet: the engine then
#: calls the backend's ``resubmit_with_payload`` for the batch, so the bytes
#: travel once per worker process, not with every batch.
NEED_PAYLOAD = "crystallize:need-payload"


def run_shipped_span(key: str, payload: bytes | None, start: int, stop: int) -> tuple[list | bytes, float] | str:
    """[`run_span`][] for a replicate function shipped as pickled bytes.

    Each process unpickles a function once and keeps it under ``key``; a task
    sent without ``payload`` to a process that lacks it returns
    [`NEED_PAYLOAD`][], and the engine sends it again with the bytes.
    """
    replicate_fn = _shipped.get(key)
    if replicate_fn is None:
        if payload is None:
            return NEED_PAYLOAD
        try:
            replicate_fn = pickle.loads(payload)
        except (Exception, SystemExit):  # a module that calls sys.exit() when imported where it cannot run
            import traceback  # only on this error path

            raise WorkerSetupError(traceback.format_exc()) from None
        _shipped[key] = replicate_fn
        while len(_shipped) > _SHIPPED_KEPT:
            _shipped.popitem(last=False)
    return run_span(replicate_fn, start, stop, serialize=True)


# --- for backends, where their workers start ----------------------------------


def cpu_count() -> int:
    """How many CPUs this process may run on (its affinity where the platform
    says, else the machine's count)."""
    counter = getattr(os, "process_cpu_count", None)  # Python 3.13+: honours affinity
    if counter is not None:
        return counter() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def user_code_paths() -> list[str]:
    """Folders on this driver's import path that are neither Python's own nor
    an installed package's: where the experiment's modules live (the folder of
    a ``crystallize run path/to/file.py:NAME`` target, say). A backend whose
    workers do not inherit the driver's import path puts these on theirs."""
    installed = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths: list[str] = []
    for entry in sys.path:
        folder = os.path.realpath(entry or os.curdir)
        inside_installed = any(folder == root or folder.startswith(root + os.sep) for root in installed)
        if os.path.isdir(folder) and not inside_installed and folder not in paths:
            paths.append(folder)
    return paths
