"""What one replicate is: the ``replicate_fn`` a strategy calls.

This is the per-replicate hot path, so it does as little as it can: no copies
of the experiment, no hook calls when no plugin implements a replicate hook,
and a random generator only for the contexts that ask for one.
"""

from __future__ import annotations

import io
import operator
import os
import pickle
import sys
import time
import types
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from crystallize_core.context import Context
from crystallize_core.errors import NotPicklableError, ReplicateFailed
from crystallize_core.records import ReplicateError, ReplicateResult

if TYPE_CHECKING:
    from crystallize_core.hookspecs import ResultSink

_MASK64 = (1 << 64) - 1
# NamedTuple's generated __new__ is Python code; tuple.__new__ skips it on the hot path.
_new_result = tuple.__new__

#: Exceptions from the user's code that are never captured: Ctrl-C stops the
#: run, and GeneratorExit closes the coroutine of a replicate being torn down.
_UNCAPTURED = (KeyboardInterrupt, GeneratorExit)
#: What a plain component returns when it hands back a coroutine to await:
#: an identity check costs the plain path next to nothing.
_Coroutine = types.CoroutineType


class _Process:
    """This process's id, kept current across ``fork`` without a system call
    per replicate (each result checks it, to stay silent in a forked worker)."""

    pid = os.getpid()

    @classmethod
    def forked(cls) -> None:
        cls.pid = os.getpid()


if hasattr(os, "register_at_fork"):  # no fork, and so no change of id, elsewhere
    os.register_at_fork(after_in_child=_Process.forked)

#: The replicate-level hooks; plugins implementing any of them travel with the
#: replicate function to wherever replicates run.
REPLICATE_HOOKS = ("replicate_seed", "before_replicate", "before_condition", "after_replicate")


def random_seed() -> int:
    """A fresh 32-bit base seed from the operating system's randomness
    (``os.urandom``: ``secrets`` would cost a run a millisecond to import)."""
    return int.from_bytes(os.urandom(4), "little")


def _as_seed(seed: Any, hook: Callable[..., Any]) -> int:
    """A ``replicate_seed`` answer as a Python int (a NumPy integer, say), or a
    TypeError naming the plugin: seeds go to ``random``, NumPy and checkpoints."""
    if not isinstance(seed, bool):
        try:
            return operator.index(seed)
        except TypeError:
            pass
    owner = type(getattr(hook, "__self__", hook)).__qualname__
    raise TypeError(f"{owner}.replicate_seed returned {type(seed).__name__} {seed!r}; a seed must be an int")


def derive_seed(base_seed: int, replicate: int) -> int:
    """A 32-bit seed for ``replicate``, from the base seed and index only.

    SplitMix64 finalisation: stable across processes, platforms and Python
    versions (unlike ``hash``), and neighbouring indices give unrelated seeds.
    The result fits NumPy's legacy ``np.random.seed``.
    """
    z = ((base_seed & _MASK64) + (replicate + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 32


class Condition:
    """The baseline or one treatment, as the replicate function applies it."""

    __slots__ = ("apply", "name", "values")

    def __init__(self, name: str, values: Mapping[str, Any] | None, apply: Callable[[Context], None] | None):
        self.name = name
        self.values = values
        self.apply = apply

    def __getstate__(self):
        return (self.name, self.values, self.apply)

    def __setstate__(self, state):
        self.name, self.values, self.apply = state


def condition_of(treatment: Any) -> Condition:
    """The condition that applies ``treatment`` (a name and its overrides: a
    mapping of context values, a callable ``(ctx) -> None``, or None)."""
    overrides = treatment.overrides
    if isinstance(overrides, Mapping):
        return Condition(treatment.name, dict(overrides), None)
    return Condition(treatment.name, None, overrides)


class ReplicateRunner:
    """Runs replicate ``i`` for every condition and returns its [`ReplicateResult`][].

    Picklable whenever the datasource, steps, treatments and replicate-level
    plugins are. Whatever the user's datasource and steps raise is captured in
    the result, ``SystemExit`` and [`asyncio.CancelledError`][] included;
    only ``KeyboardInterrupt`` (and ``GeneratorExit``) propagate, and a
    cancellation of the task running ``acall``.

    The datasource and steps may be coroutine functions (``async def``, or
    objects whose ``__call__`` is one), mixed freely with plain ones: they are
    awaited (see ``awaits``). Called as a plain function, such a replicate
    is driven to completion on an event loop that its thread keeps for all its
    replicates; a strategy that runs an event loop awaits ``acall``.
    """

    def __init__(
        self,
        datasource: Callable[[Context], Any],
        steps: Sequence[Callable[[Any, Context], Any]],
        conditions: Sequence[Condition],
        plugins: Sequence[object] = (),
        base_seed: int = 0,
        fail_fast: bool = False,
    ):
        self.datasource = datasource
        self.steps = tuple(steps)
        self.conditions = tuple(conditions)
        self.plugins = tuple(plugins)
        self.base_seed = base_seed
        #: Raise [`ReplicateFailed`][] at the first captured error instead of continuing.
        self.fail_fast = fail_fast
        #: The run's [`ResultSink`][crystallize_core.hookspecs.ResultSink], told of each
        #: replicate this function finishes in the driver process. It stays
        #: behind when the function is pickled, and is silent in forked workers.
        self.sink: ResultSink | None = None
        self._hooks = ReplicateHooks.of(self.plugins)
        self._awaited = _awaited(self.datasource, self.steps)

    def __getstate__(self):
        return (self.datasource, self.steps, self.conditions, self.plugins, self.base_seed, self.fail_fast)

    def __setstate__(self, state):
        self.datasource, self.steps, self.conditions, self.plugins, self.base_seed, self.fail_fast = state
        self.sink = None
        self._hooks = ReplicateHooks.of(self.plugins)
        self._awaited = _awaited(self.datasource, self.steps)

    @property
    def awaits(self) -> bool:
        """Whether the datasource or a step is a coroutine function, so that
        ``acall`` waits on the running event loop rather than in a thread."""
        return self._awaited is not None

    def components(self) -> Iterator[tuple[str, object]]:
        """Each user-supplied part with a label, for error messages."""
        yield "datasource", self.datasource
        for step in self.steps:
            yield f"step {_describe(step)}", step
        for condition in self.conditions:
            for part in (condition.values, condition.apply):
                if part is not None:
                    yield f"treatment {condition.name!r}", part
        for plugin in self.plugins:
            yield f"plugin {type(plugin).__qualname__}", plugin

    def seed(self, replicate: int) -> int:
        """The seed of ``replicate``: a plugin's answer, else derived from the run's base seed."""
        hooks = self._hooks
        if hooks is not None:
            for call in hooks.replicate_seed:
                seed = call(replicate)
                if seed is not None:
                    return seed if type(seed) is int else _as_seed(seed, call)
        return derive_seed(self.base_seed, replicate)

    def error_result(self, replicate: int, exc_type: str, message: str) -> ReplicateResult:
        """The result of a replicate that could not run, for a strategy to record.

        For faults outside the user's code, such as a worker process that died
        or a replicate past its timeout. Call it where the run is driven. Such
        a result is never checkpointed: a rerun tries the replicate again.
        """
        error = ReplicateError(replicate, None, exc_type, message, "")
        return self._report(ReplicateResult(replicate, self.seed(replicate), {}, (error,)))

    def record(self, results: Sequence[ReplicateResult]) -> None:
        """Tell the driver of results that finished in another process.

        The dispatch engine calls this with each batch that comes back; results
        of calls made in the driver process are recorded by the call itself.
        """
        sink = self.sink
        if sink is not None and sink.pid == _Process.pid:
            sink.finished(results)

    def record_columns(self, batch: tuple) -> bool:
        """``record`` for a batch packed column by column in another
        process; False when it must be recorded as rows instead (the driver
        keeps no columns here, or writes a checkpoint, which takes rows)."""
        sink = self.sink
        return sink is not None and sink.pid == _Process.pid and sink.finished_columns(batch)

    def recorded(self, count: int) -> Sequence[ReplicateResult] | None:
        """The results of positions ``0 .. count - 1``, read from the driver's
        sink, when every result of this function reaches it (calls in this
        process report themselves, results from elsewhere go to ``record``);
        else None. A loop that reports every result need then keep none."""
        return self._recorded(range(count))

    def _recorded(self, replicates: Sequence[int]) -> Sequence[ReplicateResult] | None:
        sink = self.sink
        if sink is None or sink.pid != _Process.pid:
            return None
        return sink.recorded(replicates)

    def _report(self, result: ReplicateResult) -> ReplicateResult:
        sink = self.sink
        if sink is not None and sink.pid == _Process.pid:
            sink.finished_one(result)
        return result

    def __call__(self, replicate: int) -> ReplicateResult:
        if self._awaited is not None:
            from crystallize_core._aio import run_coroutine  # asyncio loads for coroutine steps only

            return self._report(run_coroutine(self._arun(replicate)))
        return self._report(self._run(replicate))

    async def acall(self, replicate: int, running: RunningReplicate | None = None) -> ReplicateResult:
        """The awaitable form of ``self(replicate)``, for a strategy that runs an event loop.

        Where the replicate ``awaits``, its coroutine components are
        awaited on the running loop and its plain ones run on the loop's
        thread between them, so many replicates wait at once; cancelling the
        awaiting task stops the replicate at its next ``await``. Otherwise the
        replicate runs in a thread of the loop's default executor (as
        [`asyncio.to_thread`][] does), so that it never blocks the loop.

        ``running``, a [`RunningReplicate`][crystallize_core.replicate.RunningReplicate]
        of the strategy's, is told which component the replicate enters.
        """
        if self._awaited is None:
            import asyncio

            return await asyncio.get_running_loop().run_in_executor(None, self, replicate)
        return self._report(await self._arun(replicate, running))

    def _run(self, replicate: int) -> ReplicateResult:
        began = time.perf_counter()
        seed, failed = self._begin(replicate, began)
        if failed is not None:
            return failed
        metrics: dict[str, dict[str, Any]] = {}
        errors: list[ReplicateError] = []
        datasource = self.datasource
        steps = self.steps
        before_condition = self._hooks.before_condition if self._hooks is not None else ()
        for condition in self.conditions:
            ctx = Context(condition.values, replicate, condition.name, seed)
            step = None  # the step running when an error is raised, None before the first
            try:
                for call in before_condition:
                    call(replicate, condition.name, seed)
                if condition.apply is not None:
                    condition.apply(ctx)
                data = datasource(ctx)
                if type(data) is _Coroutine:
                    data = _await_returned(data, "datasource", datasource)
                for step in steps:
                    data = step(data, ctx)
                    if type(data) is _Coroutine:
                        data = _await_returned(data, "step", step)
            except BaseException as exc:
                if isinstance(exc, _UNCAPTURED):
                    raise
                error = ReplicateError.from_exception(replicate, condition.name, exc)
                if step is not None and data is None and _about_none(exc):
                    error = self._given_none(error, step)
                errors.append(self._captured(error))
                continue
            metrics[condition.name] = ctx.metrics._values
        return self._end(replicate, seed, metrics, errors, began)

    async def _arun(self, replicate: int, running: RunningReplicate | None = None) -> ReplicateResult:
        """``_run``, awaiting the coroutine components (and whatever awaitable a
        plain one returns). The tasks the replicate starts and leaves running
        are cancelled when it ends."""
        from crystallize_core._aio import enter_replicate, leave_replicate  # asyncio: for event loops only

        if running is None:
            running = RunningReplicate()
        token = enter_replicate(running)
        try:
            return await self._arun_conditions(replicate, running)
        finally:
            leave_replicate(running, token)

    async def _arun_conditions(self, replicate: int, running: RunningReplicate) -> ReplicateResult:
        from inspect import isawaitable

        from crystallize_core._aio import cancel_requested  # asyncio: for event loops only

        began = time.perf_counter()
        seed, failed = self._begin(replicate, began)
        if failed is not None:
            return failed
        assert self._awaited is not None  # only called where the replicate awaits
        source_awaited, steps_awaited = self._awaited
        metrics: dict[str, dict[str, Any]] = {}
        errors: list[ReplicateError] = []
        datasource = self.datasource
        steps = tuple(zip(self.steps, steps_awaited))
        before_condition = self._hooks.before_condition if self._hooks is not None else ()
        for condition in self.conditions:
            ctx = Context(condition.values, replicate, condition.name, seed)
            step = None  # as in _run
            try:
                for call in before_condition:
                    call(replicate, condition.name, seed)
                if condition.apply is not None:
                    condition.apply(ctx)
                running.enter("datasource", datasource)
                data = datasource(ctx)
                if source_awaited or isawaitable(data):
                    data = await data
                for step, awaited in steps:
                    given = data
                    running.enter("step", step)
                    data = step(given, ctx)
                    if awaited or isawaitable(data):
                        data = await data
            except BaseException as exc:
                if isinstance(exc, _UNCAPTURED) or (_is_cancellation(exc) and cancel_requested()):
                    raise
                error = ReplicateError.from_exception(replicate, condition.name, exc)
                if step is not None and given is None and _about_none(exc):
                    error = self._given_none(error, step)
                errors.append(self._captured(error))
                continue
            metrics[condition.name] = ctx.metrics._values
        return self._end(replicate, seed, metrics, errors, began)

    def _begin(self, replicate: int, began: float) -> tuple[int, ReplicateResult | None]:
        """The replicate's seed, after the ``before_replicate`` hooks; or the
        result of a replicate those hooks stopped."""
        hooks = self._hooks
        if hooks is None:
            return derive_seed(self.base_seed, replicate), None
        seed = None
        try:
            seed = self.seed(replicate)
            for call in hooks.before_replicate:
                call(replicate, seed)
        except Exception as exc:
            error = self._captured(ReplicateError.from_exception(replicate, None, exc))
            fallback = derive_seed(self.base_seed, replicate) if seed is None else seed
            return fallback, ReplicateResult(replicate, fallback, {}, (error,), time.perf_counter() - began)
        return seed, None

    def _end(
        self,
        replicate: int,
        seed: int,
        metrics: dict[str, dict[str, Any]],
        errors: list[ReplicateError],
        began: float,
    ) -> ReplicateResult:
        """The replicate's result, with its duration, after the ``after_replicate`` hooks."""
        result = _new_result(
            ReplicateResult,
            (replicate, seed, metrics, tuple(errors) if errors else (), time.perf_counter() - began),
        )
        hooks = self._hooks
        if hooks is not None and hooks.after_replicate:
            try:
                for call in hooks.after_replicate:
                    call(replicate, result)
            except Exception as exc:
                error = self._captured(ReplicateError.from_exception(replicate, None, exc))
                result = result._replace(errors=(*errors, error))
        return result

    def _given_none(self, error: ReplicateError, step: Callable[..., Any]) -> ReplicateError:
        """``error``, raised by ``step`` on the None it was given, with the
        component that returned that None named: most often a step that
        forgot to ``return``."""
        from crystallize_core._usercode import describe_callable  # sysconfig: to word an error only

        steps = self.steps
        if sum(s is step for s in steps) != 1:  # which occurrence failed is unknown
            return error._replace(message=f"{error.message} [the data it was given was None]")
        position = next(i for i, s in enumerate(steps) if s is step)
        producer = (
            f"step {describe_callable(steps[position - 1])}"
            if position
            else f"datasource {describe_callable(self.datasource)}"
        )
        note = f"{producer} returned None, which step {describe_callable(step)} was given as its data"
        return error._replace(message=f"{error.message} [{note}]")

    def _captured(self, error: ReplicateError) -> ReplicateError:
        """With fail_fast, stop the run at a captured error."""
        if self.fail_fast:
            raise ReplicateFailed(error)
        return error


class RunningReplicate:
    """One replicate while its code runs on an event loop: the component it is
    in and the tasks it started.

    The replicate function keeps one per replicate it runs awaiting; a
    strategy may pass its own (a subclass) to ``acall`` to follow the
    replicate: ``enter`` is called as the replicate enters its datasource and
    each step, before calling it. The tasks the replicate starts are listed
    in ``started`` with the component that started them; those still running
    when the replicate ends are cancelled, with a warning that names it.
    """

    __slots__ = ("component", "kind", "started")

    def __init__(self) -> None:
        #: ``"datasource"`` or ``"step"``: what ``component`` is.
        self.kind = "datasource"
        #: The datasource or step running now (None before the first).
        self.component: object = None
        #: ``(task, kind, component)`` for each task started by the replicate.
        self.started: list[tuple[Any, str, object]] = []

    def enter(self, kind: str, component: object) -> None:
        """The replicate enters ``component`` (its datasource or a step, ``kind`` says which)."""
        self.kind = kind
        self.component = component

    def follow(self, coro: Any) -> Any:
        """The coroutine to run in a task the replicate starts, in place of
        ``coro``: ``coro`` itself, unless a strategy follows those tasks too
        (its time on the loop is the replicate's)."""
        return coro


def _await_returned(awaitable: Any, kind: str, component: object) -> Any:
    """Drive what a plain component returned, a coroutine, to its value, on this
    thread's event loop: a plain function returning a coroutine is awaited as
    an ``async def`` one is."""
    from crystallize_core._aio import await_returned, run_coroutine  # asyncio: for coroutine steps only

    running = RunningReplicate()
    running.enter(kind, component)
    try:
        return run_coroutine(await_returned(running, awaitable))
    except BaseException:
        awaitable.close()  # never started (this thread runs a loop): no "never awaited" warning
        raise


class ReplicateHooks:
    """The replicate-level hooks of a run's plugins, resolved once to plain calls.

    Each attribute is a tuple of callables in the order pluggy would call
    them, each taking the hook's arguments positionally in the order the
    hook specification names them and passing on those its implementation
    declares. Calling them in turn is what pluggy's call does (the first
    exception propagates; ``replicate_seed`` stops at the first answer that
    is not None), at a fraction of the cost per replicate. A plugin that
    wraps a replicate hook keeps pluggy's own call for that hook.
    """

    __slots__ = REPLICATE_HOOKS
    replicate_seed: tuple[Callable[..., Any], ...]
    before_replicate: tuple[Callable[..., Any], ...]
    before_condition: tuple[Callable[..., Any], ...]
    after_replicate: tuple[Callable[..., Any], ...]

    def __init__(self, manager: Any):
        from crystallize_core import hookspecs  # with pluggy, only where a replicate plugin takes part

        for name in REPLICATE_HOOKS:
            caller = getattr(manager.hook, name)
            spec = _argnames(getattr(hookspecs, name))
            impls = caller.get_hookimpls()
            if any(impl.hookwrapper or impl.wrapper for impl in impls):
                calls: tuple[Callable[..., Any], ...] = (_keywords(caller, spec),)
            else:  # pluggy calls the last of the list first
                calls = tuple(_positional(impl.function, impl.argnames, spec) for impl in reversed(impls))
            setattr(self, name, calls)

    @classmethod
    def of(cls, plugins: Sequence[object]) -> ReplicateHooks | None:
        """The hooks of ``plugins`` (registered as a run registers them), or None without plugins."""
        if not plugins:
            return None
        # pluggy is loaded only where a replicate plugin takes part: a worker
        # process that runs a plain pipeline starts without it.
        from crystallize_core._plugin_manager import new_plugin_manager

        manager = new_plugin_manager()
        for plugin in reversed(plugins):  # pluggy asks the last registered first
            manager.register(plugin)
        return cls(manager)


def _about_none(exc: BaseException) -> bool:
    """Whether ``exc`` is what using None as data raises (``'NoneType' object is not iterable``)."""
    return isinstance(exc, (TypeError, AttributeError)) and "NoneType" in str(exc)


def _argnames(spec: Callable[..., Any]) -> tuple[str, ...]:
    code = spec.__code__
    return code.co_varnames[: code.co_argcount]


def _positional(function: Callable[..., Any], argnames: Sequence[str], spec: tuple[str, ...]) -> Callable[..., Any]:
    if tuple(argnames) == spec:
        return function
    picks = tuple(spec.index(name) for name in argnames)
    if len(picks) == 1:
        (only,) = picks
        return lambda *arguments: function(arguments[only])
    return lambda *arguments: function(*[arguments[k] for k in picks])


def _keywords(caller: Any, spec: tuple[str, ...]) -> Callable[..., Any]:
    def call(*arguments: Any) -> Any:
        return caller(**dict(zip(spec, arguments)))

    return call


class ReplicateSubset:
    """Runs only some replicates: position ``k`` is replicate ``replicates[k]``.

    What a strategy receives when a checkpoint already holds the others; it
    looks like any replicate function over ``0 .. len(replicates) - 1``.
    """

    def __init__(self, runner: ReplicateRunner, replicates: Sequence[int]):
        self.runner = runner
        self.replicates = tuple(replicates)

    def __call__(self, position: int) -> ReplicateResult:
        return self.runner(self.replicates[position])

    @property
    def awaits(self) -> bool:
        """See ``ReplicateRunner.awaits``."""
        return self.runner.awaits

    def acall(self, position: int, running: RunningReplicate | None = None) -> Coroutine[Any, Any, ReplicateResult]:
        """The awaitable form of ``self(position)``: see ``ReplicateRunner.acall``."""
        return self.runner.acall(self.replicates[position], running)

    def error_result(self, position: int, exc_type: str, message: str) -> ReplicateResult:
        return self.runner.error_result(self.replicates[position], exc_type, message)

    def record(self, results: Sequence[ReplicateResult]) -> None:
        self.runner.record(results)

    def record_columns(self, batch: tuple) -> bool:
        return self.runner.record_columns(batch)

    def recorded(self, count: int) -> Sequence[ReplicateResult] | None:
        """See ``ReplicateRunner.recorded``."""
        return self.runner._recorded(self.replicates[:count])

    def components(self) -> Iterator[tuple[str, object]]:
        return self.runner.components()


def dumps_replicate_fn(replicate_fn: Callable[[int], Any]) -> bytes:
    """Pickle ``replicate_fn`` once for shipping to other processes.

    Importable code goes by reference, as [`pickle`][] sends it; functions
    and classes defined in ``__main__`` (a notebook, or a script run
    directly), which a fresh worker process cannot import, go by value with
    cloudpickle, as loky sends them (see ``pickle_for_workers``).

    Raises [`NotPicklableError`][] naming the component (datasource, step,
    treatment or plugin) that cannot be pickled and how to fix it, so that a
    strategy can fail before any replicate starts.
    """
    buffer = io.BytesIO()
    _pickle_into(replicate_fn, buffer)
    return buffer.getvalue()


def check_picklable(replicate_fn: Callable[[int], Any]) -> None:
    """Raise [`NotPicklableError`][] as [`dumps_replicate_fn`][] would, keeping nothing.

    For strategies whose workers inherit the replicate function (a ``fork``
    start method) yet must refuse what other start methods could not ship.
    Large buffers are streamed to nowhere rather than copied.
    """
    _pickle_into(replicate_fn, _Discard())


class _Discard:
    def write(self, data) -> int:
        # pickle hands large buffers over as they are: a PickleBuffer (a NumPy
        # array's data, under protocol 5) has a size but no len().
        return memoryview(data).nbytes

    def seek(self, position: int) -> int:
        return 0

    def truncate(self, size: int | None = None) -> int:
        return 0


class _FromMain(Exception):
    """Met a function or class defined in ``__main__`` while pickling by reference."""


class _ByReference(pickle.Pickler):
    """pickle's own pickler, stopping at code defined in ``__main__``: a worker
    process that did not run the user's script or notebook cannot import it."""

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and getattr(obj, "__module__", None) == "__main__":
            raise _FromMain
        return NotImplemented


def pickle_for_workers(obj: object, file: Any) -> None:
    """Pickle ``obj`` into ``file`` (``write``, ``seek`` and ``truncate``) for
    another process: by reference, as [`pickle`][] does, except the functions
    and classes defined in ``__main__``, which go by value with cloudpickle
    (as loky and Ray send them), so that workers started by ``spawn`` or
    ``forkserver``, or on other machines, can run what a notebook or a
    script defines (cloudpickle also sends lambdas and nested functions by
    value then; without code of ``__main__``'s they refuse to pickle, as
    with [`pickle`][]). A worker needs cloudpickle installed to read it.
    Importable code goes by reference either way."""
    try:
        _ByReference(file, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
        return
    except _FromMain:
        file.seek(0)
        file.truncate(0)
    # cloudpickle is imported by runs that ship code defined in __main__, and only by them.
    import cloudpickle

    cloudpickle.Pickler(file, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)


def _pickle_into(replicate_fn: Callable[[int], Any], sink) -> None:
    try:
        pickle_for_workers(replicate_fn, sink)
    except Exception as whole_failed:
        components = getattr(replicate_fn, "components", None)
        label, reason = "the replicate function", whole_failed
        for part_label, part in components() if components is not None else ():
            try:
                pickle_for_workers(part, _Discard())
            except Exception as part_failed:
                label, reason = part_label, part_failed
                break
        raise NotPicklableError(
            f"{label} cannot be pickled ({type(reason).__name__}: {reason}). Strategies that run replicates "
            "in other processes must send it there: define it at the top level of an importable module "
            "(not as a lambda, a nested function or an object holding locks, files or sockets), "
            "or choose a strategy that runs in this process, such as executor_type='thread'."
        ) from whole_failed


def _awaited(datasource: object, steps: Sequence[object]) -> tuple[bool, tuple[bool, ...]] | None:
    """Which of the datasource and steps return awaitables; None when none does."""
    source = is_coroutine_function(datasource)
    each = tuple(is_coroutine_function(step) for step in steps)
    return (source, each) if source or any(each) else None


def is_coroutine_function(component: object) -> bool:
    """Whether calling ``component`` returns a coroutine to await: an ``async def``
    function (also through [`functools.partial`][]) or an object whose
    ``__call__`` is one."""
    import inspect  # already imported by pluggy wherever a run starts

    if inspect.iscoroutinefunction(component):
        return True
    call = type(component).__call__ if callable(component) else None
    return not inspect.isroutine(component) and inspect.iscoroutinefunction(call)


def _is_cancellation(exc: BaseException) -> bool:
    # asyncio is imported by whoever cancelled a task; no need to import it here.
    asyncio = sys.modules.get("asyncio")
    return asyncio is not None and isinstance(exc, asyncio.CancelledError)


def _describe(obj: object) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return repr(name)
