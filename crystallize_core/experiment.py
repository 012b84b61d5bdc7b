"""The experiment model: a datasource, a pipeline of steps, treatments and plugins."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

from crystallize_core.context import Context
from crystallize_core.errors import ConfigurationError, ExperimentInterrupted, ReplicateFailed, WorkerLostError
from crystallize_core.replicate import (
    Condition,
    ReplicateRunner,
    ReplicateSubset,
    derive_seed,
    is_coroutine_function,
    random_seed,
)
from crystallize_core.result import BASELINE, ReplicateResult, Result

#: The environment variable naming the strategy of runs that choose none.
ENV_STRATEGY = "CRYSTALLIZE_STRATEGY"


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
        if isinstance(self.overrides, Mapping):
            return Condition(self.name, dict(self.overrides), None)
        return Condition(self.name, None, self.overrides)

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
        _refuse_inside_event_loop()
        started = time.time()
        count = self.replicates if replicates is None else _check_replicates(replicates)
        chosen = self.treatments if treatments is None else _check_treatments(treatments)
        stop_early = self.fail_fast if fail_fast is None else _check_flag("fail_fast", fail_fast)
        _check_flag("checkpoint_pickle", checkpoint_pickle)
        if checkpoint_pickle and checkpoint is None:
            raise ConfigurationError("checkpoint_pickle=True applies to a checkpoint: pass checkpoint=PATH too")
        _check_timeout(timeout)
        if progress is not None:
            _check_flag("progress", progress)
        conditions = [Condition(BASELINE, None, None), *(t.condition() for t in chosen)]

        from crystallize_core._callers import call_strategies
        from crystallize_core._columns import ResultColumns
        from crystallize_core._manager import RunPlugins
        from crystallize_core.monitor import Monitor

        plugins = RunPlugins(self.plugins, _chosen_strategy(strategy))
        runner = ReplicateRunner(
            self.datasource,
            self.pipeline.steps,
            conditions,
            plugins.replicate_plugins(),
            base_seed=random_seed(),
            fail_fast=stop_early,
        )
        # Row i takes replicate i's result, whoever reports it and in whatever order.
        columns = ResultColumns(count)
        recorder = None
        to_run: Sequence[int] = range(count)
        if checkpoint is not None:
            runner, finished, recorder = _open_checkpoint(runner, checkpoint, checkpoint_pickle, count)
            if finished:
                columns.add_many(finished.values())
                to_run = columns.missing()
            del finished
        replicate_fn = runner if len(to_run) == count else ReplicateSubset(runner, to_run)
        names = [c.name for c in conditions]
        view = ExperimentRun(
            len(to_run), chosen, timeout, stop_early, progress, self.plugins, self.datasource, self.pipeline
        )
        monitor = runner.monitor = Monitor(len(to_run), progress, recorder, columns)
        record: dict[str, Any] = {
            "base_seed": _base_seed(runner),
            "treatments": {t.name: _treatment_parameters(t) for t in chosen},
            "started_at": started,
        }
        try:
            plugins.hook.before_run(experiment=view)
            winner = None
            options: dict[str, Any] = {}
            if to_run:
                try:
                    winner = call_strategies(plugins, view, replicate_fn, to_run, columns, monitor.settle_progress)
                except (ExperimentInterrupted, ReplicateFailed, WorkerLostError) as stopped:
                    if getattr(stopped, "partial_result", None) is None:
                        # What finished reached the columns; a strategy may also
                        # hand over results that never passed the monitor.
                        for finished_result in getattr(stopped, "completed", None) or ():
                            if isinstance(finished_result, ReplicateResult):
                                columns.add(finished_result, new=True)
                        stopped.partial_result = Result(
                            columns,
                            names,
                            strategy=getattr(stopped, "strategy", None),
                            complete=False,
                            finished_at=time.time(),
                            **record,
                        )
                    raise
                options = _strategy_options(winner)
            if recorder is not None:
                recorder.close()  # the last batch: the result says what could not be saved
                record["unsaved_replicates"] = recorder.unsaved
            result = Result(columns, names, strategy_options=options, finished_at=time.time(), **record)
            if winner is not None:
                result._name_strategy_later(_identity_of(winner))
            plugins.hook.after_run(experiment=view, result=result)
        except BaseException as failed:
            if recorder is not None:
                _close_after_failure(recorder)
                partial = getattr(failed, "partial_result", None)
                if isinstance(partial, Result):
                    partial.unsaved_replicates = recorder.unsaved
            raise
        finally:
            runner.monitor.close()
            runner.monitor = None
        return result

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


def _open_checkpoint(
    runner: ReplicateRunner, path: str | os.PathLike, allow_pickle: bool, count: int
) -> tuple[ReplicateRunner, dict[int, ReplicateResult], Any]:
    """Open the checkpoint for ``runner``'s experiment; return the runner that
    resumes it (with the stored seeds), the finished results of replicates
    below ``count`` that match their keys, and the ``Recorder`` that writes
    the rest."""
    import copy

    from crystallize_core.checkpoint import Checkpoint, Recorder
    from crystallize_core.fingerprint import experiment_components, plugin_labels
    from crystallize_core.seed import SeedPlugin

    labelled = plugin_labels(runner.plugins)
    drawn = {label: p.seed for label, p in labelled if isinstance(p, SeedPlugin) and p.seed_drawn}
    opened = Checkpoint.open(path, experiment_components(runner), runner.base_seed, drawn, allow_pickle)
    plugins = []
    for label, plugin in labelled:
        stored = opened.drawn_seeds.get(label)
        if isinstance(plugin, SeedPlugin) and plugin.seed_drawn and isinstance(stored, int):
            plugin = copy.copy(plugin)  # the user's plugin keeps its own seed
            plugin.seed = stored
        plugins.append(plugin)
    resumed = ReplicateRunner(
        runner.datasource,
        runner.steps,
        runner.conditions,
        plugins,
        base_seed=opened.base_seed,
        fail_fast=runner.fail_fast,
    )

    def seed_of(replicate: int) -> int:
        try:
            return resumed.seed(replicate)
        except Exception:  # a seed hook that raises: the replicate ran with the derived seed (see _begin)
            return derive_seed(resumed.base_seed, replicate)

    finished = opened.matching(count, [c.name for c in runner.conditions], seed_of)
    return resumed, finished, Recorder(opened.checkpoint)


def _close_after_failure(recorder: Any) -> None:
    """Commit what finished before the run failed, without hiding why it failed."""
    from crystallize_core.errors import logger

    try:
        recorder.close()
    except Exception as exc:
        logger().error("the checkpoint could not be written after the run failed: %s", exc)


def _base_seed(runner: ReplicateRunner) -> int | None:
    """The seed replicate seeds derive from, when known: the first seed-giving
    plugin's, if it is a [`SeedPlugin`][], else the run's own."""
    seed_module = sys.modules.get("crystallize_core.seed")  # not imported: then no plugin is a SeedPlugin
    for plugin in runner.plugins:
        if hasattr(plugin, "replicate_seed"):
            return plugin.seed if seed_module is not None and isinstance(plugin, seed_module.SeedPlugin) else None
    return runner.base_seed


def _treatment_parameters(treatment: Treatment) -> dict[str, Any]:
    overrides = treatment.overrides
    if overrides is None or isinstance(overrides, Mapping):
        return {"overrides": dict(overrides or {}), "function": None}
    return {"overrides": None, "function": _qualified_name(overrides)}


def _qualified_name(function: object) -> str:
    name = getattr(function, "__qualname__", None) or type(function).__qualname__
    module = getattr(function, "__module__", None) or type(function).__module__
    return f"{module}.{name}"


def _identity_of(strategy: object) -> Callable[[], tuple[str, str | None]]:
    """The strategy's name and version, found when first asked (from its class
    only: a result must not keep the strategy, and what it holds, alive)."""
    kind = type(strategy)

    def identify() -> tuple[str, str | None]:
        from crystallize_core.discovery import identify_class

        name, _, version = identify_class(kind)
        return name, version

    return identify


def _strategy_options(strategy: object) -> dict[str, Any]:
    """What a strategy was configured with, its secrets masked (see ``_secrets.masked``)."""
    from crystallize_core._secrets import masked

    return masked(_configured_options(strategy))


def _configured_options(strategy: object) -> dict[str, Any]:
    """What its ``options()`` method returns, else its ``__init__`` parameters
    read back from attributes of the same name."""
    options = getattr(strategy, "options", None)
    if callable(options):
        try:
            return dict(options())
        except Exception:
            return {}
    if isinstance(options, Mapping):
        return dict(options)
    init = type(strategy).__init__
    if init is object.__init__:  # no options; and inspect would parse object's text signature, slowly
        return {}
    import inspect

    try:
        parameters = inspect.signature(init).parameters
    except (TypeError, ValueError):
        return {}
    found = {}
    for name, parameter in parameters.items():
        if name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        try:
            found[name] = getattr(strategy, name)
        except Exception:  # no attribute of that name, or a property that failed
            continue
    return found


# A small immutable class rather than a named tuple: building one costs a
# process's first run half a millisecond (see Capabilities).
class RunTreatment:
    """A treatment as a run's view holds it: its name and a read-only copy of its overrides."""

    __slots__ = ("name", "overrides")

    name: str
    overrides: Mapping[str, Any] | Callable[[Context], None] | None

    def __init__(self, name: str, overrides: Mapping[str, Any] | Callable[[Context], None] | None):
        if isinstance(overrides, Mapping) and not isinstance(overrides, MappingProxyType):
            overrides = MappingProxyType(dict(overrides))
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "overrides", overrides)

    @classmethod
    def of(cls, treatment: Treatment | RunTreatment) -> RunTreatment:
        return treatment if isinstance(treatment, RunTreatment) else cls(treatment.name, treatment.overrides)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a run's treatment cannot be changed (setting {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:  # a mapping proxy does not pickle
        overrides = self.overrides
        return (RunTreatment, (self.name, dict(overrides) if isinstance(overrides, Mapping) else overrides))

    def __repr__(self) -> str:
        overrides = dict(self.overrides) if isinstance(self.overrides, Mapping) else self.overrides
        return f"RunTreatment({self.name!r}, {overrides!r})"


class ExperimentRun:
    """One run of an [`Experiment`][]: what a strategy and every run hook receive as ``experiment``.

    It answers the run's own options — ``replicates`` (how many to run now),
    ``treatments`` and ``conditions`` (those of this run, the baseline's name
    first), ``timeout``, ``fail_fast``, ``progress`` and ``plugins`` — and
    the experiment's ``datasource`` and ``pipeline``; nothing else, and it
    cannot be changed. See [`RunView`][crystallize_core.RunView].
    """

    __slots__ = (
        "conditions",
        "datasource",
        "fail_fast",
        "pipeline",
        "plugins",
        "progress",
        "replicates",
        "timeout",
        "treatments",
    )

    replicates: int
    treatments: tuple[RunTreatment, ...]
    conditions: tuple[str, ...]
    timeout: float | None
    fail_fast: bool
    progress: bool | None
    plugins: tuple[object, ...]
    datasource: Callable[[Context], Any]
    pipeline: tuple[Callable[[Any, Context], Any], ...]

    def __init__(
        self,
        replicates: int,
        treatments: Sequence[Treatment | RunTreatment],
        timeout: float | None,
        fail_fast: bool,
        progress: bool | None,
        plugins: Sequence[object],
        datasource: Callable[[Context], Any],
        pipeline: Iterable[Callable[[Any, Context], Any]],
    ):
        fields = {
            "replicates": replicates,
            "treatments": tuple(RunTreatment.of(t) for t in treatments),
            "conditions": (BASELINE, *(t.name for t in treatments)),
            "timeout": timeout,
            "fail_fast": fail_fast,
            "progress": progress,
            "plugins": tuple(plugins),
            "datasource": datasource,
            "pipeline": tuple(pipeline),
        }
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"a run's view cannot be changed (setting {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a run's view cannot be changed (deleting {name!r})")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ExperimentRun,
            (
                self.replicates,
                self.treatments,
                self.timeout,
                self.fail_fast,
                self.progress,
                self.plugins,
                self.datasource,
                self.pipeline,
            ),
        )

    def __repr__(self) -> str:
        return (
            f"ExperimentRun(replicates={self.replicates}, conditions={list(self.conditions)}, "
            f"timeout={self.timeout!r}, fail_fast={self.fail_fast}, progress={self.progress!r})"
        )


def _refuse_inside_event_loop() -> None:
    asyncio = sys.modules.get("asyncio")  # no event loop can run where asyncio was never imported
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise ConfigurationError(
            "Experiment.run() was called from a coroutine, where an event loop is running (as in a Jupyter "
            "notebook): it would block that loop until every replicate finished. "
            "Use 'result = await experiment.arun(...)', which takes the same arguments."
        )


def _chosen_strategy(strategy: object) -> tuple[object, str] | None:
    """The strategy chosen for this run, with where the choice came from."""
    if strategy is None or isinstance(strategy, str):
        if strategy is None:
            spec, origin = os.environ.get(ENV_STRATEGY, "").strip(), ENV_STRATEGY
            if not spec:
                return None
        else:
            spec, origin = strategy, "run(strategy=...)"
        from crystallize_core.discovery import load_strategy, naming_origin, parse_strategy_spec

        with naming_origin(origin):
            name, options = parse_strategy_spec(spec)
            return load_strategy(name, **options), origin
    if isinstance(strategy, type):
        raise ConfigurationError(
            f"strategy must be a name or a strategy object, not the class {strategy.__qualname__}: "
            f"pass {strategy.__qualname__}() instead"
        )
    futures = sys.modules.get("concurrent.futures")  # not imported: then no object is an Executor
    if futures is not None and isinstance(strategy, futures.Executor):
        from crystallize_core.engine import ExecutorStrategy

        return ExecutorStrategy(strategy), "run(strategy=...)"
    if isinstance(strategy, (int, float, bool, bytes, list, tuple, dict, set)):
        raise ConfigurationError(
            f"strategy must be a name such as 'parallel:max_workers=4' or a strategy object, got {strategy!r}"
        )
    return strategy, "run(strategy=...)"


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
    from crystallize_core._usercode import describe_callable

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
