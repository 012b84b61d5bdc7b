"""The hook contract between the core and its plugins.

Every hook a plugin may implement is specified here, and nowhere else, with
the types of what it receives: [`RunView`][] (the run a strategy is asked
to drive), [`ReplicateFn`][] (the function that runs one replicate) and
[`Capabilities`][] (what a strategy can honour). A plugin is any object
whose methods carry ``@hookimpl``; no base class is needed:

    from crystallize_core import hookimpl

    class MyStrategy:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            return map(replicate_fn, range(experiment.replicates))

A hook implementation may accept any subset of the arguments named in its
specification, in any order; pluggy passes them by name.

The replicate hooks (``replicate_seed``, ``before_replicate``,
``before_condition``, ``after_replicate``) run for every replicate, so each
run looks up their implementations once, when it starts, and calls them
directly in pluggy's order; only a plugin that wraps one (``wrapper=True``)
is called through pluggy each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import pluggy

if TYPE_CHECKING:
    from concurrent.futures import Future

    from crystallize_core.records import ReplicateResult

PROJECT_NAME = "crystallize"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# A small immutable class rather than a frozen dataclass or a named tuple:
# building either costs a process's first run half a millisecond or more.
class Capabilities:
    """What a strategy can honour, declared as its ``capabilities`` attribute.

    Every flag defaults to False, so a strategy declares only what it does,
    by keyword; an unknown flag name is a [`TypeError`][] when the object
    is built, and the object is immutable, hashable and compares by its flags.
    The core passes over a strategy that cannot honour a run's options (a
    ``timeout`` needs [`timeout`][]) and the conformance kit holds each
    strategy to what it claims. A strategy whose abilities depend on its
    options (threads or processes) makes ``capabilities`` a property.
    """

    __slots__ = ("cancellation", "retries_dead_workers", "ships_work", "timeout")
    _FLAGS = ("timeout", "cancellation", "retries_dead_workers", "ships_work")

    #: Each replicate is stopped after ``run.timeout`` seconds of running and
    #: recorded as ``ReplicateTimeout``.
    timeout: bool
    #: Ctrl-C stops running replicates at once, rather than waiting for them.
    cancellation: bool
    #: A replicate whose worker dies is run again, alone, and recorded as
    #: ``WorkerDied`` if it keeps dying; the others are not lost.
    retries_dead_workers: bool
    #: Replicates run in other processes or machines, so every component must
    #: pickle; unpicklable ones are reported before any work.
    ships_work: bool

    def __init__(
        self,
        *,
        timeout: bool = False,
        cancellation: bool = False,
        retries_dead_workers: bool = False,
        ships_work: bool = False,
    ):
        for name, value in zip(self._FLAGS, (timeout, cancellation, retries_dead_workers, ships_work)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Capabilities cannot be changed; build new ones: {self!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Capabilities cannot be changed; build new ones: {self!r}")

    def _flags(self) -> tuple[bool, ...]:
        return tuple(getattr(self, name) for name in self._FLAGS)

    def __eq__(self, other: object) -> bool:
        return self._flags() == other._flags() if isinstance(other, Capabilities) else NotImplemented

    def __hash__(self) -> int:
        return hash(self._flags())

    def __repr__(self) -> str:
        flags = ", ".join(f"{name}={value!r}" for name, value in zip(self._FLAGS, self._flags()))
        return f"Capabilities({flags})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_capabilities, self._flags())


def _capabilities(*flags: bool) -> Capabilities:
    """Rebuild pickled [`Capabilities`][]."""
    return Capabilities(**dict(zip(Capabilities._FLAGS, flags)))


#: The capabilities of a plugin that declares none.
NO_CAPABILITIES = Capabilities()


def capabilities_of(strategy: object) -> Capabilities:
    """The [`Capabilities`][] ``strategy`` declares, or [`NO_CAPABILITIES`][].

    Raises [`TypeError`][] when its ``capabilities`` attribute is not a
    [`Capabilities`][], so that a misspelt declaration is never read as
    "can do nothing".
    """
    declared = getattr(strategy, "capabilities", NO_CAPABILITIES)
    if not isinstance(declared, Capabilities):
        raise TypeError(
            f"{type(strategy).__qualname__}.capabilities must be a crystallize_core.Capabilities, "
            f"not {type(declared).__name__}"
        )
    return declared


@runtime_checkable
class ReplicateFn(Protocol):
    """What a strategy receives as ``replicate_fn``.

    Calling it runs replicate ``position`` (``0 .. run.replicates - 1``) for
    the baseline and every treatment and returns its
    [`ReplicateResult`][]. On a resumed run the positions
    stay ``0 .. n - 1`` and the result carries the replicate's real index.
    It never raises for an error in the user's datasource or steps (that is
    captured in the result); it raises
    [`ReplicateFailed`][] under ``fail_fast`` and lets
    ``KeyboardInterrupt`` through. It pickles whenever the user's components
    do: a strategy that runs work elsewhere pickles it once
    ([`crystallize_core.dumps_replicate_fn`][]) and ships only positions.

    The user's datasource and steps may be coroutine functions: calling the
    replicate function then drives them to completion on an event loop its
    thread keeps for all its replicates (so it must not be called from a
    thread whose event loop is running). For a strategy that runs an event
    loop, the core's replicate functions also have, beyond this protocol:

    - ``await replicate_fn.acall(position)``: the awaitable form of the call,
      with the same result. Where the replicate ``awaits``, coroutine
      components are awaited on the running loop (plain ones run on its
      thread between them) and cancelling the awaiting task stops the
      replicate at its next ``await``; otherwise the replicate runs in a
      thread of the loop's default executor, so as not to block the loop.
      ``acall(position, running)`` also takes a ``RunningReplicate``
      (``crystallize_core.replicate``) of the strategy's, told which
      component the replicate enters, to time or blame it. The tasks a
      replicate starts and leaves running are cancelled when it ends.
    - ``replicate_fn.awaits``: whether the datasource or a step is a
      coroutine function, so that the replicate can be cancelled while it
      waits.

    A replicate function without ``acall`` is run in a thread
    ([`asyncio.to_thread`][]) by such a strategy.
    """

    def __call__(self, position: int, /) -> ReplicateResult: ...

    def error_result(self, position: int, exc_type: str, message: str, /) -> ReplicateResult:
        """The result to record for a replicate that could not run: its worker
        died (``"WorkerDied"``) or it ran past its timeout (``"ReplicateTimeout"``)."""
        ...

    def record(self, results: Sequence[ReplicateResult], /) -> None:
        """Report ``results``, which finished in another process or machine, to
        the run's [`ResultSink`][crystallize_core.hookspecs.ResultSink], from
        any thread of the process that drives the run (elsewhere it does
        nothing). Calls of the replicate function in that process report
        themselves; [`drive`][crystallize_core.engine.drive] reports what
        comes back to it. A strategy that ships work without the engine
        calls it as results arrive: what it never reported is lost from the
        partial result if the run stops."""
        ...


class RunResult(Protocol):
    """What the ``after_run`` hook reads of the run's result: a
    [`Result`][crystallize_core.result.Result], which offers much more (statistics,
    export), described here without reaching up to the model."""

    #: The baseline's name first, then each treatment's.
    conditions: tuple[str, ...]
    #: False for the partial result of a stopped run.
    complete: bool

    @property
    def replicate_results(self) -> list[ReplicateResult]:
        """Each replicate's record, in position order."""
        ...

    @property
    def metrics(self) -> dict[str, dict[str, list[Any]]]:
        """``metrics[condition][name]``: one value per replicate, None where missing."""
        ...

    @property
    def seeds(self) -> list[int]:
        """Each replicate's seed, in position order."""
        ...

    @property
    def strategy(self) -> str | None:
        """The name of the strategy that ran the replicates."""
        ...


class ResultSink(Protocol):
    """Where the finished replicates of one run go, in the process that drives it.

    The run owns one, and every result takes one path into it: the replicate
    function reports each replicate it finishes when called in this process,
    [`ReplicateFn.record`][crystallize_core.hookspecs.ReplicateFn.record]
    (which the dispatch engine calls) reports those that finished elsewhere,
    and a strategy's answer supplies only the replicates the sink lacks,
    checked, never stored twice. The run's result and the partial result of
    a stopped run (Ctrl-C, fail-fast, a lost worker) are read from the sink
    alone. Each method may be called from any thread of the driver; a copy
    of the sink inherited by a forked worker is never called there (the
    replicate function compares ``pid``).
    """

    #: The process id of the process that drives the run.
    pid: int

    def finished(self, results: Sequence[ReplicateResult]) -> None:
        """Keep ``results``, advance progress by as many, log their errors."""
        ...

    def finished_one(self, result: ReplicateResult) -> None:
        """``finished`` for one result: the replicate function's hot path."""
        ...

    def finished_columns(self, batch: tuple) -> bool:
        """Keep a batch packed column by column in another process (it holds
        no errors); False, having kept nothing, where rows are needed."""
        ...

    def recorded(self, replicates: Sequence[int]) -> Sequence[ReplicateResult] | None:
        """A sequence that reads the results of ``replicates`` from the sink as
        they arrive, or None where the sink keeps no results to read back."""
        ...


class TreatmentSpec(Protocol):
    """A treatment of a run, as [`RunView.treatments`][crystallize_core.hookspecs.RunView.treatments]
    holds it: read-only, its overrides a read-only mapping or the callable."""

    @property
    def name(self) -> str:
        """The condition's name."""
        ...

    @property
    def overrides(self) -> Mapping[str, Any] | Callable[..., None] | None:
        """The values the treatment adds to the context, or the callable
        ``(ctx) -> None`` that adds them."""
        ...


@runtime_checkable
class RunView(Protocol):
    """What a strategy and every run hook receive as ``experiment``: one run of an experiment.

    It answers this run's own options and the experiment's components, and
    nothing else; it cannot be changed. A run never changes the user's
    ``Experiment``, so two runs of one experiment at once do not interfere.
    """

    @property
    def replicates(self) -> int:
        """How many replicates to run: call ``replicate_fn(0 .. replicates - 1)``."""
        ...

    @property
    def treatments(self) -> Sequence[TreatmentSpec]:
        """This run's treatments (those given to ``run(treatments=...)``, or the experiment's), in order."""
        ...

    @property
    def conditions(self) -> Sequence[str]:
        """The names of the conditions each replicate runs: ``"baseline"``, then each treatment's."""
        ...

    @property
    def timeout(self) -> float | None:
        """Seconds each replicate may run, or None; only asked of strategies
        with ``Capabilities.timeout``."""
        ...

    @property
    def fail_fast(self) -> bool:
        """Whether the first error inside a replicate stops the run."""
        ...

    @property
    def progress(self) -> bool | None:
        """The run's own ``progress`` (``run(progress=...)``, ``--progress``),
        or None when the run left it to the strategy. The core shows
        progress: a strategy need not read this."""
        ...

    @property
    def plugins(self) -> Sequence[object]:
        """The experiment's plugins, in the order given."""
        ...

    @property
    def datasource(self) -> Callable[..., Any]:
        """The experiment's datasource, ``(ctx) -> data`` (read it; the
        replicate function already calls it)."""
        ...

    @property
    def pipeline(self) -> Sequence[Callable[..., Any]]:
        """The experiment's steps, ``(data, ctx) -> data``, in order, as a tuple
        (read them; the replicate function already calls them)."""
        ...


@hookspec(firstresult=True)
def run_experiment_loop(experiment: RunView, replicate_fn: ReplicateFn) -> Iterable[ReplicateResult] | None:
    """Run replicates ``0 .. experiment.replicates - 1`` and return their results.

    This is the execution strategy's hook. The implementers are asked in this
    order, and the first to return something other than ``None`` wins; none
    after it is asked:

    1. the strategy chosen for this run (``Experiment.run(strategy=...)``,
       ``crystallize run --strategy`` or the ``CRYSTALLIZE_STRATEGY``
       environment variable): the most specific choice comes first;
    2. the plugins given to ``Experiment(plugins=[...])``, in list order;
    3. the fallback: the strategy registered under the name ``serial``.

    An implementer that cannot honour the run's options (see
    [`Capabilities`][]) is passed over without being asked, and the run is
    refused only when no implementer able to honour them answered.

    Return the results of positions ``0 .. experiment.replicates - 1``, in
    that order, as a list (then do not touch it afterwards) or as an
    iterator, which the core consumes once, right after the hook returns: a
    strategy may return ``map(replicate_fn, range(experiment.replicates))``
    and run the replicates as the core asks for them, keeping none itself.
    Return ``None`` to decline and let the next implementer run it. The core
    checks the answer as it consumes it (a result per position, in order,
    each the value ``replicate_fn`` returned) and raises
    [`StrategyContractError`][], naming the strategy.

    The core keeps every result itself, compactly, as ``replicate_fn``
    reports it finished in this process; a result handed back that way is
    not stored twice, and one that never was (a replicate run elsewhere
    without [`drive`][crystallize_core.engine.drive]) is taken from the
    answer. A Ctrl-C or ``ReplicateFailed`` raised while the core consumes
    an iterator stops the run just as one raised inside the hook does, with
    the finished replicates in the partial result.

    A strategy that runs replicates anywhere but the calling thread should
    hand them to [`crystallize_core.engine.drive`][] with a backend, which
    owns batching, order, progress, faults, timeouts, fail-fast and Ctrl-C.
    One that loops itself must report each result that comes back from
    elsewhere with ``replicate_fn.record`` as it arrives (the partial result
    of a stopped run holds what the run's sink holds, and nothing else); on
    Ctrl-C stop promptly, leave no worker behind and re-raise the
    ``KeyboardInterrupt``; and let ``ReplicateFailed`` propagate.
    """


@hookspec
def before_run(experiment: RunView) -> None:
    """Called in the calling process once before the strategy is asked.

    An exception raised here stops the run before any replicate starts.
    """


@hookspec
def after_run(experiment: RunView, result: RunResult) -> None:
    """Called in the calling process with the finished
    [`Result`][crystallize_core.result.Result], after the strategy returned."""


@hookspec(firstresult=True)
def replicate_seed(replicate: int) -> int | None:
    """Return the seed of replicate ``replicate``, or ``None`` to pass.

    Called where the replicate runs (possibly another process). The same seed
    is used for the baseline and every treatment of the replicate. It must
    depend on the replicate index and the plugin's own configuration only, so
    that every strategy sees the same seeds.
    """


@hookspec
def before_replicate(replicate: int, seed: int) -> None:
    """Called where the replicate runs, before its first condition.

    An exception raised here is recorded in the replicate's errors (with
    condition ``None``) and the replicate's conditions do not run.
    """


@hookspec
def before_condition(replicate: int, condition: str, seed: int) -> None:
    """Called where the replicate runs, before each of its conditions (the
    baseline first, then each treatment), with the replicate's seed.

    Every condition of a replicate starts from the same state this way, so
    conditions stay paired for anything seeded here, such as the global
    [`random`][] module (``SeedPlugin`` does this). An exception raised here
    is recorded as that condition's error and the condition does not run.
    """


@hookspec
def after_replicate(replicate: int, result: ReplicateResult) -> None:
    """Called where the replicate runs, with its
    [`ReplicateResult`][], after its last condition.

    An exception raised here is recorded in the replicate's errors.
    """


# --- the backend contract ------------------------------------------------------
#
# What a strategy that runs replicates anywhere but the calling thread supplies
# to the dispatch engine (crystallize_core.engine.drive). Every member the
# engine calls is here, with when it is called and what happens to the work in
# flight; the engine calls nothing else, and looks nothing up by name.


@runtime_checkable
class Backend(Protocol):
    """Where a run's replicates run, as the dispatch engine
    ([`drive`][crystallize_core.engine.drive]) drives them: joblib's split, in
    which ``Parallel`` owns the loop and a backend only starts workers,
    submits batches and aborts them.

    Subclass it (``class QueueBackend(Backend)``) and implement [`start`][]
    and [`submit`][]: every other member has a default here for what a
    backend does not do. A class that does not subclass it must define every
    member; [`drive`][crystallize_core.engine.drive] raises [`TypeError`][]
    naming what is missing. Declare in [`capabilities`][] what the backend
    can do: the engine refuses a run option it cannot honour instead of
    faking it, and calls only the members the declaration needs —

    - ``ships_work``: replicates run in other processes, so the engine
      checks that the replicate function pickles before [`start`][];
    - ``timeout``: [`stop_all`][] stops every running batch at once, then
      [`restart`][] brings the workers back (and [`started_at`][] tells
      when a batch began, where [`reports_starts`][] says it can);
    - ``cancellation``: Ctrl-C calls [`stop_all`][] instead of waiting;
    - ``retries_dead_workers``: [`worker_lost`][] tells a dead worker's
      exception from an error, and the engine reruns its replicates.

    **Threads.** The engine calls every member from the thread that called
    ``drive`` (the strategy's hook, so most often the user's main thread),
    one call at a time, never from a future's callback; a member never runs
    at the same time as another of the same backend. Futures may be settled
    from any thread of the backend's. No member may wait for user code,
    except [`shutdown`][] with ``wait=True``.

    **Futures.** Every future [`submit`][] returns must settle (a result,
    an exception, or cancelled) unless the engine has given up on it:
    one that stays pending for ever hangs the run. The engine gives up on
    every future in flight when it calls [`stop_all`][], [`restart`][] or
    [`shutdown`][] (it reads each one once, without waiting, right before
    or after, keeps the results of those that finished, and never looks at
    the others again), so from then on they may stay pending or fail.
    """

    #: What this backend can do; see [`Capabilities`][]. Read once, when ``drive`` is called.
    capabilities: Capabilities = NO_CAPABILITIES
    #: ``"pool"`` when a dead worker fails every task in flight (a process
    #: pool breaks as a whole): the engine then reruns each lost batch alone,
    #: halving one that breaks the pool again, to find the replicate that
    #: kills its worker; ``"task"`` when a dead worker fails only its own tasks.
    failure_scope: str = "task"
    #: Seconds of work a batch should hold: enough to hide the cost of one task.
    target_batch_seconds: float = 0.05
    #: Whether [`started_at`][] tells when a batch starts running. If not, a
    #: timeout counts from submission, and the engine keeps no more batches
    #: out than [`start`][] said can run, so that none waits in a queue.
    reports_starts: bool = False

    def start(self, run: RunView, replicate_fn: ReplicateFn) -> int:
        """Make ``replicate_fn`` available to the workers and return how many
        batches can run at once (at least 1).

        Called once per run, before anything else but [`capabilities`][],
        after the engine checked (``ships_work``) that ``replicate_fn``
        pickles. Pickle it here, once
        ([`dumps_replicate_fn`][crystallize_core.replicate.dumps_replicate_fn],
        or [`inline_payload`][crystallize_core.engine.inline_payload] for
        what travels with every task), and start or connect to the workers.
        The engine sizes batches and the work it keeps out by the number
        returned (twice as many batches out, one per slot with a timeout);
        the user's ``max_workers`` caps it. For workers of unknown number (a
        shared queue, a cluster that scales), return how many take work now,
        or the most that should work for this run: a number too large sends
        few large batches out at once, for workers that are not there, and a
        pending task costs memory; a number too small leaves workers idle
        and can be raised by batching less (``batch_size``).
        [`shutdown`][] is called even when this raises.
        """
        ...

    def submit(self, span: range) -> Future:
        """Run positions ``span.start .. span.stop - 1`` where the workers are
        and return a [`Future`][concurrent.futures.Future] of the value of
        [`run_span`][crystallize_core.engine.run_span] (``serialize=True`` in
        another process) or [`run_shipped_span`][crystallize_core.engine.run_shipped_span]
        for them.

        Called after [`start`][], as the engine's window of work in flight
        has room, so it must return without waiting for a worker. An
        exception raised here is read by [`worker_lost`][]: a dead worker
        (a broken pool) has the batch sent again after [`restart`][], any
        other exception stops the run.
        """
        ...

    def resubmit_with_payload(self, span: range) -> Future:
        """Submit ``span`` again, this time with the pickled replicate function.

        The backend resends the experiment's bytes; the engine only asks.
        A task that calls ``run_shipped_span(key, None, ...)`` in a worker
        process that has not unpickled that function yet returns
        [`NEED_PAYLOAD`][crystallize_core.engine.NEED_PAYLOAD] instead of
        results; the engine then calls this, for that batch only, so that
        large bytes reach each worker process once instead of riding with
        every task. Called only for a future whose value was ``NEED_PAYLOAD``;
        a backend whose tasks always carry the bytes (or that ships the
        function another way) never sees it, and need not implement it.
        What it raises is read as [`submit`][]'s is.
        """
        backend = type(self).__qualname__  # not a bare raise: that would make the member abstract
        raise NotImplementedError(
            f"{backend} sent a batch without the pickled replicate function, "
            "but does not implement resubmit_with_payload() to send it again with it"
        )

    def started_at(self, future: Future, span: range) -> float | None:
        """When the batch ``span`` of ``future`` began running, on this
        process's [`time.monotonic`][] clock, or None while it waits to start.

        Read only when [`reports_starts`][] is True and the run has a
        timeout: for each batch in flight, every few tens of milliseconds
        until it started, then whenever the engine computes the next
        deadline; so it must not block. Another machine's monotonic clock
        means nothing here: a remote backend has the worker say that it
        started (a shared array for local processes; a message, an actor
        or a queue entry for a cluster) and returns this process's
        ``time.monotonic()`` of when it heard. A backend that cannot tell
        leaves [`reports_starts`][] False.
        """
        return None

    def worker_lost(self, exc: BaseException) -> str | None:
        """Whether ``exc`` means the worker running a batch died, and how.

        Called for the exception of every future that failed (with
        ``failure_scope="pool"``, every future of a broken pool fails: look
        once and cache), and for one raised by [`submit`][]. Return a few
        words ("killed by signal SIGKILL") when the worker died: the engine
        reruns the batch's replicates (``retries_dead_workers``) or ends the
        run with [`WorkerLostError`][crystallize_core.errors.WorkerLostError]
        keeping what finished. Return None when the exception escaped the
        replicate function itself (``ReplicateFailed`` under fail-fast): the
        engine raises [`escaped`][]``(exc)``. Raise to end the run with an
        error of the backend's own (a cluster left with no worker at all).
        The default recognises a broken [`concurrent.futures`][] executor.
        """
        # Imported here: a run without a backend never needs concurrent.futures.
        from concurrent.futures import BrokenExecutor

        return "the executor broke" if isinstance(exc, BrokenExecutor) else None

    def escaped(self, exc: BaseException) -> BaseException:
        """The exception to raise for ``exc``, which escaped the replicate
        function (``ReplicateFailed``, say) and may arrive wrapped in the
        backend's own exception type; unwrap it here. Called right after
        [`worker_lost`][] returned None for ``exc``."""
        return exc

    def cancel(self, future: Future) -> bool:
        """Cancel the batch of ``future`` if it has not started; return
        whether it will not run.

        Called on Ctrl-C, or an exception that stops the run, for every
        batch in flight, when the backend lacks ``cancellation``; a batch
        that is running is left to finish (see [`request_stop`][]), and the
        engine then waits for it. The default is ``future.cancel()``; a
        backend whose futures only mirror remote tasks also releases the task.
        """
        return future.cancel()

    def request_stop(self) -> None:
        """Ask the batches running in this process to stop between replicates.

        Called once, on Ctrl-C or an exception that stops the run, after
        [`cancel`][] and when the backend lacks ``cancellation``; the engine
        then waits for the futures in flight (a second Ctrl-C stops the
        wait and calls ``shutdown(wait=False)``). Must return at once. For
        in-process workers (threads) that read a flag between replicates
        ([`run_span`][crystallize_core.engine.run_span]'s ``stopping``); the
        default does nothing.
        """
        return  # a default, not an abstract member: a backend without such workers has nothing to ask

    def stop_all(self) -> None:
        """Stop every running batch now.

        Called when a replicate ran out of its time (``timeout``), then
        [`restart`][] follows; and on Ctrl-C or an exception that stops the
        run (``cancellation``), then [`shutdown`][] follows. Kill or cancel
        what runs (a process pool kills its workers, Ray cancels with
        ``force=True``) and return without waiting for user code. The
        futures in flight are given up: right after this returns the engine
        keeps those that already hold results, records the batch that ran
        out of time as ``ReplicateTimeout``, reruns the rest after
        [`restart`][], and never reads them again, so they may fail, stay
        pending or be cancelled. Needed only with ``timeout`` or ``cancellation``.
        """
        backend = type(self).__qualname__
        raise NotImplementedError(f"{backend} declares timeout or cancellation but does not implement stop_all()")

    def restart(self) -> None:
        """Bring the workers back after [`stop_all`][], or after a dead
        worker broke the pool (``failure_scope="pool"``, or [`submit`][]
        refused a batch), before anything more is submitted.

        The engine has given up on every future in flight before it calls
        this (it keeps the results of those that finished and reruns the
        others), so the backend may replace its workers outright. A backend
        whose lost tasks may go on running (a cluster's) waits here until
        they end, so that a death they cause is not blamed on a replicate
        rerun alone.
        """
        backend = type(self).__qualname__
        raise NotImplementedError(f"{backend} lost its workers but does not implement restart() to replace them")

    def shutdown(self, wait: bool = True) -> None:
        """Release the workers at the end of the run, finished, failed or
        interrupted: called once by ``drive``, last, whenever [`start`][] was called.

        Futures still in flight are given up: cancel what has not started
        and stop or kill what runs, with whatever the workers started, so
        that nothing is left behind — processes, threads, and state kept
        outside this process (a queue, keys in a store, a cluster started
        for the run). With ``wait=False`` (a second Ctrl-C) return without
        waiting for running work. Leave alone what the backend did not
        start (a cluster or an executor it was given).
        """
        return  # a default: a backend that started nothing has nothing to release
