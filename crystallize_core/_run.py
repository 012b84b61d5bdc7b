"""One run of an experiment, from its options to its result.

The model ([`Experiment.run`][crystallize_core.experiment.Experiment.run]) checks what
the user asked for; this module runs it: it resolves the chosen strategy,
builds the replicate function, opens the checkpoint, owns the run's
columns and progress, asks the strategies in turn, and makes the result,
whole or partial. It imports nothing of the model: the model hands it the
components and the type of result to make.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from crystallize_core._callers import call_strategies
from crystallize_core._columns import ResultColumns
from crystallize_core._manager import RunPlugins
from crystallize_core._secrets import masked
from crystallize_core.context import Context
from crystallize_core.errors import ConfigurationError, ExperimentInterrupted, ReplicateFailed, WorkerLostError, logger
from crystallize_core.hookspecs import TreatmentSpec
from crystallize_core.monitor import Monitor
from crystallize_core.records import BASELINE, ReplicateResult
from crystallize_core.replicate import (
    Condition,
    ReplicateRunner,
    ReplicateSubset,
    condition_of,
    derive_seed,
    random_seed,
)

#: The environment variable naming the strategy of runs that choose none.
ENV_STRATEGY = "CRYSTALLIZE_STRATEGY"

R = TypeVar("R")


def run_experiment(
    datasource: Callable[[Context], Any],
    steps: Sequence[Callable[[Any, Context], Any]],
    plugins: Sequence[object],
    treatments: Sequence[TreatmentSpec],
    count: int,
    *,
    strategy: str | object | None,
    timeout: float | None,
    fail_fast: bool,
    checkpoint: str | os.PathLike | None,
    progress: bool | None,
    checkpoint_pickle: bool,
    result_type: Callable[..., R],
) -> R:
    """Run ``count`` replicates of the baseline and ``treatments`` and return
    the ``result_type`` made of their columns; options already checked, as
    [`Experiment.run`][crystallize_core.experiment.Experiment.run] documents them.

    A run stopped by Ctrl-C, fail-fast or a lost worker raises with a
    ``partial_result`` made of what the run's columns hold.
    """
    refuse_inside_event_loop()
    started = time.time()
    conditions = [Condition(BASELINE, None, None), *(condition_of(t) for t in treatments)]

    run_plugins = RunPlugins(plugins, chosen_strategy(strategy))
    runner = ReplicateRunner(
        datasource,
        steps,
        conditions,
        run_plugins.replicate_plugins(),
        base_seed=random_seed(),
        fail_fast=fail_fast,
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
    view = ExperimentRun(len(to_run), treatments, timeout, fail_fast, progress, plugins, datasource, steps)
    monitor = runner.sink = Monitor(len(to_run), progress, recorder, columns)
    record: dict[str, Any] = {
        "base_seed": _base_seed(runner),
        "treatments": {t.name: _treatment_parameters(t) for t in treatments},
        "started_at": started,
    }
    try:
        run_plugins.hook.before_run(experiment=view)
        winner = None
        options: dict[str, Any] = {}
        if to_run:
            try:
                winner = call_strategies(run_plugins, view, replicate_fn, to_run, columns, monitor.settle_progress)
            except (ExperimentInterrupted, ReplicateFailed, WorkerLostError) as stopped:
                if getattr(stopped, "partial_result", None) is None:
                    # Every finished replicate reached the columns, the run's
                    # one sink: the partial result is read from there alone.
                    stopped.partial_result = result_type(
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
        identify = _identity_of(winner) if winner is not None else None
        result = result_type(
            columns, names, strategy_options=options, finished_at=time.time(), identify_strategy=identify, **record
        )
        run_plugins.hook.after_run(experiment=view, result=result)
    except BaseException as failed:
        if recorder is not None:
            _close_after_failure(recorder)
            partial = getattr(failed, "partial_result", None)
            if partial is not None:
                partial.unsaved_replicates = recorder.unsaved
        raise
    finally:
        monitor.close()
        runner.sink = None
    return result


def _open_checkpoint(
    runner: ReplicateRunner, path: str | os.PathLike, allow_pickle: bool, count: int
) -> tuple[ReplicateRunner, dict[int, ReplicateResult], Any]:
    """Open the checkpoint for ``runner``'s experiment; return the runner that
    resumes it (with the stored seeds), the finished results of replicates
    below ``count`` that match their keys, and the ``Recorder`` that writes
    the rest."""
    import copy

    # Only a run with a checkpoint pays for sqlite3 and hashlib.
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


def _treatment_parameters(treatment: TreatmentSpec) -> dict[str, Any]:
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
        from crystallize_core.discovery import identify_class  # package metadata is read only when asked

        name, _, version = identify_class(kind)
        return name, version

    return identify


def _strategy_options(strategy: object) -> dict[str, Any]:
    """What a strategy was configured with, its secrets masked (see ``_secrets.masked``)."""
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
    def of(cls, treatment: TreatmentSpec) -> RunTreatment:
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
    cannot be changed. See [`RunView`][crystallize_core.hookspecs.RunView].
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
        treatments: Sequence[TreatmentSpec],
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


def refuse_inside_event_loop() -> None:
    asyncio = sys.modules.get("asyncio")  # no event loop can run where asyncio was never imported
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise ConfigurationError(
            "Experiment.run() was called from a coroutine, where an event loop is running (as in a Jupyter "
            "notebook): it would block that loop until every replicate finished. "
            "Use 'result = await experiment.arun(...)', which takes the same arguments."
        )


def chosen_strategy(strategy: object) -> tuple[object, str] | None:
    """The strategy chosen for this run, with where the choice came from."""
    if strategy is None or isinstance(strategy, str):
        if strategy is None:
            spec, origin = os.environ.get(ENV_STRATEGY, "").strip(), ENV_STRATEGY
            if not spec:
                return None
        else:
            spec, origin = strategy, "run(strategy=...)"
        # Entry points are read only for a run that names its strategy.
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
        from crystallize_core.engine import ExecutorStrategy  # already paid for: the user made an Executor

        return ExecutorStrategy(strategy), "run(strategy=...)"
    if isinstance(strategy, (int, float, bool, bytes, list, tuple, dict, set)):
        raise ConfigurationError(
            f"strategy must be a name such as 'parallel:max_workers=4' or a strategy object, got {strategy!r}"
        )
    return strategy, "run(strategy=...)"
