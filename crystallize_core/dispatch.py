"""The dispatch loop: drives every replicate of a run on a backend.

[`drive`][] owns, once for every strategy that runs replicates anywhere but
the calling thread: batching (``BatchSizer``), replicate order, a bounded window of work in flight (memory flat in the
replicate count), progress, fault records, rerunning alone a replicate whose
worker died to pin the blame, per-replicate timeouts, fail-fast, Ctrl-C and
the driver-side record of each finished replicate. A backend only starts
workers, submits batches and tells a dead worker from an error: the
[`Backend`][crystallize_core.hookspecs.Backend] contract, which is all the
loop calls.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any

from crystallize_core._columns import unpack_columns
from crystallize_core.batching import BatchSizer
from crystallize_core.errors import ReplicateFailed, StrategyCapabilityError, WorkerLostError
from crystallize_core.hookspecs import Backend, ReplicateFn, RunView
from crystallize_core.options import check_batch_size, check_max_retries, check_max_workers
from crystallize_core.records import ReplicateResult, unpack_results
from crystallize_core.replicate import check_picklable
from crystallize_core.worker import NEED_PAYLOAD

logger = logging.getLogger("crystallize")

#: Batches in flight per worker: enough to keep every worker busy while
#: results travel back, few enough that memory does not grow with the run.
IN_FLIGHT_PER_WORKER = 2
#: The longest single wait, so that waits never overflow the platform's time_t.
MAX_WAIT_SECONDS = 3600.0
#: Submissions a broken pool may refuse in a row, each followed by a restart, before the run gives up.
MAX_REFUSED_SUBMITS = 3
#: How often to look for batches that started, while a timeout's clock waits for them.
START_POLL_SECONDS = 0.05


class _Task:
    """A batch in flight. Not a dataclass: importing dataclasses and building
    one cost a process's first run about a millisecond."""

    __slots__ = ("span", "submitted")

    def __init__(self, span: range, submitted: float):
        self.span = span
        self.submitted = submitted


class _Dispatch:
    """One run's scheduling state: what is done, in flight, suspect or still to send."""

    def __init__(
        self,
        run: RunView,
        replicate_fn: ReplicateFn,
        backend: Backend,
        max_retries: int,
        batch: Any,
        max_workers: int | None = None,
    ):
        self.run = run
        self.max_workers = max_workers
        self.replicate_fn = replicate_fn
        self.backend = backend
        self.capabilities = backend.capabilities
        self.max_retries = max_retries
        self.total = run.replicates
        self.timeout = run.timeout
        self.fail_fast = bool(getattr(run, "fail_fast", False))
        # Where finished results go: the core's monitor keeps them when every
        # one reaches it (then only which positions finished is kept here, a
        # byte each), else this list, in order.
        recorded = getattr(replicate_fn, "recorded", None)
        self.recorded = recorded(self.total) if callable(recorded) else None
        self.results: list[ReplicateResult | None] | None = [None] * self.total if self.recorded is None else None
        self.finished = bytearray(self.total) if self.recorded is not None else None
        self.batch = batch
        self.in_flight: dict[Future, _Task] = {}
        #: Batches lost with a whole pool, each rerun alone; one that breaks the
        #: pool again is halved, until a death is pinned on a single replicate.
        self.suspects: deque[range] = deque()
        #: Spans to send again, not suspect: a batch a broken pool refused
        #: (whole), or replicates to run one by one to find which one fails.
        self.again: deque[range] = deque()
        self.deaths: dict[int, int] = {}
        self.report = getattr(replicate_fn, "record", None) if self.capabilities.ships_work else None
        #: Keeps a batch packed column by column and says whether it did (None:
        #: the replicate function cannot, and takes rows only).
        self.report_columns = getattr(replicate_fn, "record_columns", None) if self.report is not None else None
        #: Set when a second Ctrl-C gave up waiting for running replicates.
        self.abandoned = False
        #: Submissions refused in a row by a broken pool.
        self.refused = 0

    # scheduling ------------------------------------------------------------------

    def start(self) -> None:
        slots = self.backend.start(self.run, self.replicate_fn)
        # Below what the backend could run at once, max_workers holds the
        # tasks out to that many: a cluster would start every task it is sent.
        self.capped = False
        if self.max_workers is not None and self.max_workers < slots:
            self.capped, slots = True, self.max_workers
        fixed = 1 if self.timeout is not None else (None if self.batch == "auto" else self.batch)
        self.sizer = BatchSizer(self.total, slots, target_seconds=self.backend.target_batch_seconds, fixed=fixed)
        # With a timeout each replicate needs a clock of its own, started when
        # it starts: never more tasks out than can run.
        self.window = slots if self.timeout is not None or self.capped else slots * IN_FLIGHT_PER_WORKER
        self.slots = slots

    def next_span(self) -> range | None:
        if self.suspects:
            return None if self.in_flight else self.suspects[0]
        if self.again:
            return self.again.popleft()
        return self.sizer.next_span()

    def current_window(self) -> int:
        """How many batches may be out now."""
        sizer = self.sizer
        if sizer.fixed is None and not sizer.measured:
            # The first small batches are for measuring, and the first
            # measurement ends the ramp: a second one per slot would only add
            # a round trip.
            return self.slots
        if self.timeout is None and not self.capped and sizer.size >= sizer.share:
            # Batches as large as the run's share make a short run (about
            # batches_per_worker x target_seconds a worker, or less): up to
            # that many go out per worker, most often all of it, so that no
            # worker waits a round trip for its next batch.
            return max(self.window, self.slots * sizer.batches_per_worker)
        return self.window

    def fill(self) -> None:
        window = self.current_window()
        while len(self.in_flight) < window:
            span = self.next_span()
            if span is None:
                return
            try:
                future = self.backend.submit(span)
            except Exception as exc:
                self.refused += 1
                how = self.backend.worker_lost(exc)
                if how is None:
                    raise
                if self.refused > MAX_REFUSED_SUBMITS:
                    raise WorkerLostError(
                        f"the workers' pool kept breaking ({how}): it refused {self.refused} batches in a row, "
                        "each after being replaced"
                    ) from exc
                # The pool broke before this batch went out: it is blameless
                # (a suspect stays at the head of its queue).
                if not (self.suspects and self.suspects[0] == span):
                    self.again.appendleft(span)
                if not self.in_flight:  # no failing future will bring the pool back
                    self.backend.restart()
                return
            self.refused = 0
            self.in_flight[future] = _Task(span, time.monotonic())

    def pending(self) -> bool:
        """Whether replicates remain to be sent."""
        return bool(self.suspects or self.again) or self.sizer.next_index < self.total

    def deadline(self, future: Future, task: _Task) -> float | None:
        """When ``task`` runs out of time, or None while it has not started."""
        assert self.timeout is not None
        if not self.backend.reports_starts:
            return task.submitted + self.timeout
        began = self.backend.started_at(future, task.span)
        return None if began is None else began + self.timeout

    def loop(self) -> Sequence[Any]:
        self.start()
        while True:
            self.fill()
            if not self.in_flight:
                if self.pending():  # the pool was found broken and replaced: send again
                    continue
                if self.results is None:
                    assert self.recorded is not None
                    return self.recorded
                return self.results
            wait_for = None
            if self.timeout is not None:
                deadlines = [self.deadline(f, t) for f, t in self.in_flight.items()]
                known = [d for d in deadlines if d is not None]
                wait_for = min(max(0.0, min(known) - time.monotonic()), MAX_WAIT_SECONDS) if known else None
                if len(known) < len(deadlines):  # look again soon for batches that start meanwhile
                    wait_for = min(wait_for if wait_for is not None else START_POLL_SECONDS, START_POLL_SECONDS)
            done, _ = wait(self.in_flight, timeout=wait_for, return_when=FIRST_COMPLETED)
            lost: list[tuple[_Task, str]] = []
            for future in done:
                task = self.in_flight[future]
                outcome = self.outcome(future, task)
                del self.in_flight[future]  # only now: a Ctrl-C before this still harvests it
                if isinstance(outcome, str):
                    lost.append((task, outcome))
            if lost:
                self.recover(lost)
            if self.timeout is not None:
                self.enforce_timeouts()

    def outcome(self, future: Future, task: _Task) -> str | None:
        """Store a finished batch; return how its worker died, if it did."""
        try:
            value = future.result()
        except BaseException as exc:
            how = self.backend.worker_lost(exc)
            if how is None:
                escaped = self.backend.escaped(exc)
                if escaped is exc:
                    raise
                raise escaped from None
            return how
        if value == NEED_PAYLOAD:
            try:
                resent = self.backend.resubmit_with_payload(task.span)
            except Exception as exc:  # the pool broke meanwhile: the batch is lost with it
                how = self.backend.worker_lost(exc)
                if how is None:
                    raise
                return how
            self.in_flight[resent] = _Task(task.span, time.monotonic())
            return None
        packed, seconds = value
        count = self.store(task.span, packed)
        self.sizer.record(count, seconds)
        return None

    def store(self, span: range, packed: list | bytes) -> int:
        """Keep a batch's results; return how many it held."""
        if isinstance(packed, bytes):
            try:
                rows = pickle.loads(packed)
            except Exception as exc:  # a class the driver cannot import, say
                self.undeliverable(span, exc)
                return 0
        else:
            rows = packed
        if self.suspects and self.suspects[0] == span:
            self.suspects.popleft()
        if self.results is None and self.report is None:  # each reported itself where it ran, in this process
            count = len(rows[3]) if type(rows) is tuple else len(rows)
            self.keep(span.start, count)
            return count
        if type(rows) is tuple:  # packed column by column
            count = len(rows[3])
            if self.results is None and self.report_columns is not None and self.report_columns(rows):
                self.keep(span.start, count)
                return count
            rows = unpack_columns(rows)
        results = unpack_results(rows)
        self.keep(span.start, len(results), results)
        if self.report is not None:
            self.report(results)
        return len(results)

    def keep(self, start: int, count: int, results: list[ReplicateResult] | None = None) -> None:
        """Note that positions ``start .. start + count - 1`` finished, with their results."""
        if self.results is not None:
            self.results[start : start + count] = results  # type: ignore[assignment]
        else:
            self.finished[start : start + count] = b"\x01" * count  # type: ignore[index]

    def undeliverable(self, span: range, exc: Exception) -> None:
        """The results of ``span`` could not be unpickled here: run each alone, and
        record the one whose result still cannot be."""
        if self.suspects and self.suspects[0] == span:
            self.suspects.popleft()
        if len(span) > 1:
            self.again.extend(_one_by_one(span))
            return
        self.fault(
            span.start,
            "UnpicklingError",
            f"the result of replicate {self.replicate_of(span.start)} came back from its worker but cannot be "
            f"unpickled here ({type(exc).__name__}: {exc}); record metric values whose types this process can "
            "import, such as numbers, strings or lists",
        )

    # faults ------------------------------------------------------------------------

    def recover(self, lost: list[tuple[_Task, str]]) -> None:
        how = lost[0][1]
        if not self.capabilities.retries_dead_workers:
            raise WorkerLostError(
                f"a worker running replicates died ({how}) and this backend cannot replace it or rerun its "
                "replicates; the replicates that finished are in the partial result"
            )
        if self.backend.failure_scope == "task":
            for task, died in lost:
                if len(task.span) == 1:
                    self.blame(task.span.start, died)
                else:  # each on its own: only the culprit dies again
                    self.again.extend(_one_by_one(task.span))
            return
        # The whole pool broke: keep what finished, and since which replicate
        # killed it is unknown, rerun each lost batch alone, halving those that
        # break it again: one death among n replicates costs about 2 log2(n)
        # batches run alone, not n.
        broken = [task for task, _ in lost]
        for future, task in list(self.in_flight.items()):
            del self.in_flight[future]
            if _succeeded(future):
                self.outcome(future, task)
            else:
                broken.append(task)
        self.backend.restart()
        span = broken[0].span
        if len(broken) == 1 and len(span) == 1:  # it ran alone in the pool: the death is its own
            self.blame(span.start, how)
        elif len(broken) == 1 and self.suspects and self.suspects[0] == span:  # alone, and broke it again
            self.suspects.popleft()
            middle = span.start + len(span) // 2
            self.suspects.extendleft([range(middle, span.stop), range(span.start, middle)])
        else:
            self.suspects.extend(task.span for task in broken)

    def blame(self, position: int, how: str) -> None:
        """The worker died with ``position`` running alone: count it, retry or record it."""
        deaths = self.deaths[position] = self.deaths.get(position, 0) + 1
        if deaths > self.max_retries:
            if self.suspects and self.suspects[0] == range(position, position + 1):
                self.suspects.popleft()
            self.fault(
                position,
                "WorkerDied",
                f"the worker running this replicate died ({how}), {deaths} time(s) with the replicate running "
                "alone. Common causes: running out of memory (the OOM killer sends SIGKILL), a crash in native "
                "code (SIGSEGV), os._exit() or sys.exit() in a worker.",
            )
        elif self.backend.failure_scope == "pool":
            if not self.suspects or self.suspects[0] != range(position, position + 1):
                self.suspects.appendleft(range(position, position + 1))
        else:
            self.again.append(range(position, position + 1))

    def enforce_timeouts(self) -> None:
        now = time.monotonic()
        expired = {f for f, t in self.in_flight.items() if (self.deadline(f, t) or now + 1) <= now}
        if not expired:
            return
        for future in self.in_flight:
            failed = future.exception() if future.done() and not future.cancelled() else None
            if failed is not None and self.backend.worker_lost(failed) is None:
                raise self.backend.escaped(failed)  # it failed on its own account, not for the timeout
        self.backend.stop_all()
        for future, task in list(self.in_flight.items()):
            del self.in_flight[future]
            if _succeeded(future):
                self.outcome(future, task)
            elif future in expired:
                position = task.span.start
                if self.suspects and self.suspects[0] == task.span:
                    self.suspects.popleft()
                self.fault(
                    position,
                    "ReplicateTimeout",
                    f"replicate {self.replicate_of(position)} ran longer than the timeout of {self.timeout} s "
                    "and was stopped",
                )
            else:
                self.again.extend(_one_by_one(p for p in task.span if not any(p in s for s in self.suspects)))
        self.backend.restart()

    def replicate_of(self, position: int) -> int:
        replicates = getattr(self.replicate_fn, "replicates", None)
        return replicates[position] if replicates is not None else position

    def fault(self, position: int, exc_type: str, message: str) -> None:
        result = self.replicate_fn.error_result(position, exc_type, message)
        self.keep(position, 1, [result])
        if self.fail_fast:
            raise ReplicateFailed(result.errors[0])

    # stopping ----------------------------------------------------------------------

    def harvest(self) -> None:
        """Keep the batches that finished but were not collected yet."""
        for future, task in list(self.in_flight.items()):
            if _succeeded(future):
                self.store(task.span, future.result()[0])
                del self.in_flight[future]

    def stop(self, interrupted: bool) -> None:
        """Stop for Ctrl-C or an exception: start nothing new, keep what finished."""
        self.harvest()
        if self.capabilities.cancellation:
            if self.in_flight:
                # No future is cancelled first: a pool that breaks under a
                # cancelled future fails it again (an error in the pool's thread
                # before Python 3.12).
                self.backend.stop_all()
                self.harvest()
            return
        for future in self.in_flight:
            self.backend.cancel(future)
        self.backend.request_stop()
        self.harvest()
        if not self.in_flight:
            return
        running = sum(len(t.span) for f, t in self.in_flight.items() if not f.cancelled())
        if interrupted and running:
            logger.warning(
                "Ctrl-C: waiting for up to %d running replicate(s) to finish; press Ctrl-C again to stop waiting",
                running,
            )
        try:
            wait(self.in_flight)
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting, keep what finished
            self.abandoned = True
        self.harvest()

    def completed(self) -> list[ReplicateResult]:
        if self.results is None:
            recorded, finished = self.recorded, self.finished
            return [recorded[p] for p in range(self.total) if finished[p]]  # type: ignore[index]
        return [r for r in self.results if r is not None]


def _one_by_one(positions: Iterable[int]) -> list[range]:
    """Each position as a span of its own."""
    return [range(p, p + 1) for p in positions]


def _succeeded(future: Future) -> bool:
    """Whether ``future`` holds a batch's results (never blocks)."""
    return future.done() and not future.cancelled() and future.exception() is None and future.result() != NEED_PAYLOAD


def _check_backend(backend: object) -> None:
    """Raise [`TypeError`][] naming what ``backend`` lacks of the
    [`Backend`][crystallize_core.hookspecs.Backend] contract, if anything."""
    if isinstance(backend, Backend):
        return
    missing = [name for name in dir(Backend) if not name.startswith("_") and not hasattr(backend, name)]
    raise TypeError(
        f"{type(backend).__qualname__} is not a backend of the dispatch engine: it lacks {', '.join(missing)}. "
        "Subclass crystallize_core.engine.Backend to inherit a default for each member it does not need"
    )


def drive(
    run: RunView,
    replicate_fn: ReplicateFn,
    backend: Backend,
    *,
    max_retries: int = 1,
    batch_size: int | str = "auto",
    max_workers: int | None = None,
) -> Sequence[ReplicateResult]:
    """Run every replicate of ``run`` on ``backend`` and return the results in order.

    The results are a list, or, when the replicate function reports each
    result to the core's monitor (the core's own does), a light sequence
    that reads them from there: the engine keeps none itself.

    ``max_retries`` is how many times a replicate whose worker died is run
    again, alone, before it is recorded as ``WorkerDied`` (backends with
    ``retries_dead_workers``); ``batch_size`` is ``"auto"`` or the number of
    replicates per task; ``max_workers``, when below what the backend's
    ``start`` says it can run at once, is the most tasks out at a time (so
    the most replicates running at once). With ``run.timeout`` each replicate runs as its own
    task and is stopped and recorded as ``ReplicateTimeout`` once it has run
    that long. Under ``run.fail_fast`` the first captured error, dead worker
    or timeout stops the run with [`ReplicateFailed`][].

    On Ctrl-C, or any exception that escapes, nothing new starts, running
    replicates are stopped (``cancellation``) or waited for (a second Ctrl-C
    stops the wait), and the exception is re-raised with the finished
    results in its ``completed`` attribute, for the core's partial result.
    Replicate functions that ship are checked for pickling before any work.
    """
    check_max_retries(max_retries)
    check_batch_size(batch_size)
    check_max_workers(max_workers)
    _check_backend(backend)
    capabilities = backend.capabilities
    if run.timeout is not None and not capabilities.timeout:
        raise StrategyCapabilityError(
            f"backend {type(backend).__qualname__} cannot stop a running replicate, so it cannot enforce a timeout"
        )
    if capabilities.ships_work:
        check_picklable(replicate_fn)
    dispatch = _Dispatch(run, replicate_fn, backend, max_retries, batch_size, max_workers)
    try:
        return dispatch.loop()
    except BaseException as stopped:
        try:
            dispatch.stop(interrupted=isinstance(stopped, KeyboardInterrupt))
        except KeyboardInterrupt:  # a second Ctrl-C while stopping: keep what finished, stop waiting
            dispatch.abandoned = True
        finally:
            stopped.completed = dispatch.completed()  # type: ignore[attr-defined]
        raise stopped
    finally:
        backend.shutdown(wait=not dispatch.abandoned)
