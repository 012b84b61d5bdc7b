"""The experiment model: a datasource, a pipeline of steps, treatments and plugins."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from crystallize_core.context import Context
from crystallize_core.errors import ConfigurationError
from crystallize_core.records import BASELINE
from crystallize_core.replicate import (
    Condition,
    condition_of,
    is_coroutine_function,
)
from crystallize_core.result import Result


class Pipeline:
    """An ordered sequence of steps; each step is a callable ``(data, ctx) -> data``."""

    def __init__(self, steps: Iterable[Callable[[Any, Context], Any]]):
        self.steps: tuple[Callable[[Any, Context], Any], ...] = tuple(steps)
        for position, step in enumerate(self.steps):
            if not callable(step):
                raise ConfigurationError(
                    f"pipeline step {position} is a {type(step).__name__}, not a callable (data, ctx) -> data"
                )
            check_call(step, f"pipeline step {position}", "step(data, ctx)", 2)

    def __iter__(self):
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __repr__(self) -> str:
        names = ", ".join(getattr(s, "__qualname__", type(s).__qualname__) for s in self.steps)
        return f"Pipeline([{names}])"


class Treatment:
    """A named variation of the baseline.

    ``overrides`` is either a mapping whose items are added to the context, or
    a callable ``(ctx) -> None`` that adds them itself.
    """

    __slots__ = ("name", "overrides")

    def __init__(self, name: str, overrides: Mapping[str, Any] | Callable[[Context], None] | None = None):
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a treatment needs a non-empty name, got {name!r}")
        if name == BASELINE:
            raise ConfigurationError(f"{BASELINE!r} names the untreated condition; choose another treatment name")
        if overrides is not None and not isinstance(overrides, Mapping) and not callable(overrides):
            raise ConfigurationError(
                f"treatment {name!r}: overrides must be a mapping or a callable (ctx) -> None, "
                f"not {type(overrides).__name__}"
            )
        if callable(overrides) and is_coroutine_function(overrides):
            raise ConfigurationError(
                f"treatment {name!r}: overrides must be a plain callable (ctx) -> None, not a coroutine function; "
                "do the awaiting in a step (steps may be async def)"
            )
        if callable(overrides) and not isinstance(overrides, Mapping):
            check_call(overrides, f"treatment {name!r}: overrides", "overrides(ctx)", 1)
        self.name = name
        self.overrides = overrides

    def condition(self) -> Condition:
        return condition_of(self)

    def __repr__(self) -> str:
        return f"Treatment({self.name!r}, {self.overrides!r})"


class Experiment:
    """A datasource and a pipeline, run for a baseline and treatments over replicates.

    ``run()`` decides *what* a replicate is; the execution strategy decides
    *how* the replicates are driven (see [`crystallize_core.hookspecs`][]).
    Treatments, a replicate count and ``fail_fast`` given here are the
    defaults of ``run()``.
    """

    def __init__(
        self,
        datasource: Callable[[Context], Any],
        pipeline: Pipeline | Sequence[Callable[[Any, Context], Any]],
        plugins: Sequence[object] = (),
        treatments: Sequence[Treatment] = (),
        replicates: int = 1,
        fail_fast: bool = False,
    ):
        if not callable(datasource):
            raise ConfigurationError(f"datasource must be a callable (ctx) -> data, not {type(datasource).__name__}")
        check_call(datasource, "datasource", "datasource(ctx)", 1)
        self.datasource = datasource
        self.pipeline = pipeline if isinstance(pipeline, Pipeline) else Pipeline(pipeline)
        self.plugins: list[object] = list(plugins)
        for plugin in self.plugins:
            if plugin is None or isinstance(plugin, (str, type)):
                raise ConfigurationError(
                    f"plugins must be plugin objects, got {plugin!r}; "
                    "select a strategy by name with run(strategy=...) or load_strategy(name)"
                )
        self.treatments: list[Treatment] = _check_treatments(treatments)
        #: The default replicate count of ``run()``.
        self.replicates: int = _check_replicates(replicates)
        self.fail_fast: bool = _check_flag("fail_fast", fail_fast)

    def run(
        self,
        treatments: Sequence[Treatment] | None = None,
        replicates: int | None = None,
        *,
        strategy: str | object | None = None,
        timeout: float | None = None,
        fail_fast: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
        progress: bool | None = None,
        checkpoint_pickle: bool = False,
    ) -> Result:
        """Run every replicate for the baseline and each treatment and return the [`Result`][].

        ``strategy`` is a strategy name with options (``"parallel:max_workers=4"``)
        or a strategy object; it is asked before the experiment's own plugins.
        Without it, ``CRYSTALLIZE_STRATEGY`` is read.

        ``timeout`` limits each replicate to that many seconds; strategies that
        cannot enforce it are passed over, and the run is refused
        ([`StrategyCapabilityError`][]) when none that can answers.
        ``fail_fast`` stops at the first error inside a replicate and raises
        [`ReplicateFailed`][]; by default errors are captured, logged as they
        happen (a bounded number), and the run goes on. ``progress`` shows a
        bar on a terminal (``None``, the default, shows it only there; ``True``
        also writes plain lines elsewhere; ``False`` hides it).

        ``checkpoint`` names a file that receives finished replicates, committed
        in batches by this process; rerunning the same experiment with the same
        file skips them and returns the same result as an uninterrupted run.
        Metric values are stored as JSON; a value that would need pickle is
        refused unless ``checkpoint_pickle=True``, which lets the checkpoint
        hold and read pickles: only use it for files you trust, since reading
        a pickle can run any code. A checkpoint that cannot be written (a full
        disk, an I/O error) does not stop the run: it goes on in memory, one
        warning names the file and the error, and the result's
        ``unsaved_replicates`` lists the replicates the file does not hold.

        The experiment itself is never changed, so one experiment may run in
        several threads at once. Raises on bad input before any replicate
        starts. Ctrl-C raises [`ExperimentInterrupted`][] carrying the
        partial result. Called from a coroutine (where an event loop is
        running, as in a Jupyter notebook), it raises
        [`ConfigurationError`][]: ``await`` [`arun`][] there instead.
        """
        count = self.replicates if replicates is None else _check_replicates(replicates)
        chosen = self.treatments if treatments is None else _check_treatments(treatments)
        stop_early = self.fail_fast if fail_fast is None else _check_flag("fail_fast", fail_fast)
        _check_flag("checkpoint_pickle", checkpoint_pickle)
        if checkpoint_pickle and checkpoint is None:
            raise ConfigurationError("checkpoint_pickle=True applies to a checkpoint: pass checkpoint=PATH too")
        _check_timeout(timeout)
        if progress is not None:
            _check_flag("progress", progress)
        # Defining an experiment stays cheap: pluggy and the run's machinery load with its first run.
        from crystallize_core._run import run_experiment

        return run_experiment(
            self.datasource,
            self.pipeline.steps,
            self.plugins,
            chosen,
            count,
            strategy=strategy,
            timeout=timeout,
            fail_fast=stop_early,
            checkpoint=checkpoint,
            progress=progress,
            checkpoint_pickle=checkpoint_pickle,
            result_type=Result,
        )

    async def arun(self, *args: Any, **kwargs: Any) -> Result:
        """Run the experiment from a coroutine: ``result = await experiment.arun(...)``.

        Takes the same arguments as [`run`][] and returns the same
        [`Result`][]. The run happens in a worker thread
        ([`asyncio.to_thread`][]), so the calling event loop stays free
        while replicates run, whichever strategy drives them; the ``async``
        strategy runs its own event loop in that thread. Cancelling the
        awaiting task does not stop the replicates already running: the run
        finishes in its thread and its result is discarded.
        """
        import asyncio

        return await asyncio.to_thread(self.run, *args, **kwargs)

    def __repr__(self) -> str:
        return (
            f"Experiment(datasource={getattr(self.datasource, '__qualname__', self.datasource)!r}, "
            f"pipeline={self.pipeline!r}, treatments={[t.name for t in self.treatments]}, "
            f"plugins={[type(p).__qualname__ for p in self.plugins]})"
        )


def check_call(component: Callable[..., Any], role: str, call: str, arguments: int) -> None:
    """Refuse ``component`` unless it can be called with ``arguments``
    positional arguments, as ``call`` shows the core calls it: a one-line
    error naming the function and its file:line, before any replicate runs."""
    import inspect  # pluggy imports it wherever an experiment runs

    # What a call reaches can be told several ways, and the only promise here
    # is no false refusal: the signature a decorator's __wrapped__ shows, the
    # wrapper's own, and for an object the bound __call__'s (inspect misreads
    # a staticmethod __call__). Any one that takes the call is enough.
    candidates: list[Any] = [component]
    if not inspect.isroutine(component) and not isinstance(component, type):
        candidates.append(cast(Any, component).__call__)
    refusal = None
    for candidate in candidates:
        for follow_wrapped in (True, False):
            try:
                signature = inspect.signature(candidate, follow_wrapped=follow_wrapped)
            except (TypeError, ValueError):  # a builtin or C callable without a signature: it answers when called
                return
            try:
                signature.bind(*range(arguments))
                return
            except TypeError as exc:
                refusal = refusal or (signature, exc)
    from crystallize_core._usercode import describe_callable  # only to word a refusal

    assert refusal is not None
    raise ConfigurationError(
        f"{role} {describe_callable(component)} takes {refusal[0]}, but Crystallize calls it as {call} "
        f"({refusal[1]}); give it that signature"
    )


def _check_replicates(replicates: object) -> int:
    if not isinstance(replicates, int) or isinstance(replicates, bool) or replicates < 1:
        raise ConfigurationError(f"replicates must be a positive integer, got {replicates!r}")
    return replicates


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {value!r}")
    return value


def _check_timeout(timeout: object) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


def _check_treatments(treatments: object) -> list[Treatment]:
    if isinstance(treatments, (Treatment, str, Mapping)) or not isinstance(treatments, Iterable):
        raise ConfigurationError(f"treatments must be a list of Treatment objects, got {treatments!r}")
    checked = list(treatments)
    seen: set[str] = set()
    for treatment in checked:
        if not isinstance(treatment, Treatment):
            raise ConfigurationError(f"treatments must be Treatment objects, got {treatment!r}")
        if treatment.name in seen:
            raise ConfigurationError(f"two treatments are named {treatment.name!r}; names must be unique")
        seen.add(treatment.name)
    return checked
