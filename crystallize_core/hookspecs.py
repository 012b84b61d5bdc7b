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
    [`Result`][crystallize_core.Result], which offers much more (statistics,
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
    [`Result`][crystallize_core.Result], after the strategy returned."""


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
