"""The experiment model: a datasource, a pipeline of steps, treatments and plugins."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from crystallize_core.context import Context
from crystallize_core.errors import ConfigurationError, ExperimentInterrupted
from crystallize_core.replicate import REPLICATE_HOOKS, Condition, ReplicateRunner, ReplicateSubset
from crystallize_core.result import BASELINE, ReplicateResult, Result, replicate_results_from


class Pipeline:
    """An ordered sequence of steps; each step is a callable ``(data, ctx) -> data``."""

    def __init__(self, steps: Iterable[Callable[[Any, Context], Any]]):
        self.steps: tuple[Callable[[Any, Context], Any], ...] = tuple(steps)
        for position, step in enumerate(self.steps):
            if not callable(step):
                raise ConfigurationError(
                    f"pipeline step {position} is a {type(step).__name__}, not a callable (data, ctx) -> data"
                )

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
    *how* the replicates are driven (see :mod:`crystallize_core.hookspecs`).
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
        #: The replicate count; during ``run()``, how many replicates the strategy must run.
        self.replicates: int = _check_replicates(replicates)
        self.fail_fast: bool = _check_flag("fail_fast", fail_fast)
        #: During ``run()``, the per-replicate timeout in seconds the strategy must enforce, or None.
        self.timeout: float | None = None

    def run(
        self,
        treatments: Sequence[Treatment] | None = None,
        replicates: int | None = None,
        *,
        strategy: str | object | None = None,
        timeout: float | None = None,
        fail_fast: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
    ) -> Result:
        """Run every replicate for the baseline and each treatment and return the :class:`Result`.

        ``strategy`` is a strategy name with options (``"parallel:max_workers=4"``)
        or a strategy object; it is asked after the experiment's own plugins.
        Without it, ``CRYSTALLIZE_STRATEGY`` is read.

        ``timeout`` limits each replicate to that many seconds; a strategy that
        cannot enforce it is refused (:class:`StrategyCapabilityError`).
        ``fail_fast`` stops at the first error inside a replicate and raises
        :class:`ReplicateFailed`; by default errors are captured, logged as they
        happen, and the run goes on. ``checkpoint`` names a file that receives
        each finished replicate; rerunning with the same file skips them and
        returns the same result as an uninterrupted run.

        Raises on bad input before any replicate starts. Ctrl-C raises
        :class:`ExperimentInterrupted` carrying the partial result.
        """
        count = self.replicates if replicates is None else _check_replicates(replicates)
        chosen = self.treatments if treatments is None else _check_treatments(treatments)
        stop_early = self.fail_fast if fail_fast is None else _check_flag("fail_fast", fail_fast)
        _check_timeout(timeout)
        conditions = [Condition(BASELINE, None, None), *(t.condition() for t in chosen)]

        from crystallize_core._callers import call_strategies
        from crystallize_core._manager import plugin_manager_for_run
        from crystallize_core.discovery import identify

        named = _named_strategy(strategy)
        fallback, fallback_problem = _fallback_strategy()
        manager = plugin_manager_for_run(self.plugins, named, fallback)
        in_replicates = {id(i.plugin) for hook in REPLICATE_HOOKS for i in getattr(manager.hook, hook).get_hookimpls()}
        replicate_plugins = [p for p in (*self.plugins, named, fallback) if id(p) in in_replicates]
        runner = ReplicateRunner(
            self.datasource,
            self.pipeline.steps,
            conditions,
            replicate_plugins,
            base_seed=secrets.randbits(32),
            fail_fast=stop_early,
        )
        finished: dict[int, ReplicateResult] = {}
        if checkpoint is not None:
            from crystallize_core.checkpoint import Checkpoint, fingerprint

            runner.checkpoint, finished, runner.base_seed = Checkpoint.open(
                checkpoint, fingerprint(runner.components()), runner.base_seed
            )
        to_run = [i for i in range(count) if i not in finished] if finished else range(count)
        replicate_fn = runner if len(to_run) == count else ReplicateSubset(runner, to_run)
        names = [c.name for c in conditions]

        saved = self.replicates, self.timeout
        self.replicates, self.timeout = len(to_run), timeout
        try:
            manager.hook.before_run(experiment=self)
            name = version = None
            ran: list[ReplicateResult] = []
            if to_run:
                try:
                    ran, winner = call_strategies(manager, self, replicate_fn, to_run, fallback_problem)
                except ExperimentInterrupted as interrupted:
                    if interrupted.partial_result is None:
                        done = [*finished.values(), *(interrupted.completed or ())]
                        interrupted.partial_result = Result(replicate_results_from(done), names, complete=False)
                    raise
                name, _, version = identify(winner)
            if finished:
                ran = [*ran, *(finished[i] for i in range(count) if i in finished)]
                ran.sort(key=lambda r: r.replicate)
            result = Result(ran, names, strategy=name, strategy_version=version)
            manager.hook.after_run(experiment=self, result=result)
            return result
        finally:
            self.replicates, self.timeout = saved

    def __repr__(self) -> str:
        return (
            f"Experiment(datasource={getattr(self.datasource, '__qualname__', self.datasource)!r}, "
            f"pipeline={self.pipeline!r}, treatments={[t.name for t in self.treatments]}, "
            f"plugins={[type(p).__qualname__ for p in self.plugins]})"
        )


def _named_strategy(strategy: str | object | None) -> object | None:
    from crystallize_core.discovery import ENV_STRATEGY, load_strategy, naming_origin, parse_strategy_spec

    if strategy is None:
        spec, origin = os.environ.get(ENV_STRATEGY, "").strip(), ENV_STRATEGY
        if not spec:
            return None
    elif isinstance(strategy, str):
        spec, origin = strategy, "run(strategy=...)"
    else:
        return strategy
    with naming_origin(origin):
        name, options = parse_strategy_spec(spec)
        return load_strategy(name, **options)


def _fallback_strategy() -> tuple[object | None, str | None]:
    """The ``serial`` strategy, or None and the reason when it is blocked or
    broken: the run then fails only if every other strategy declines."""
    from crystallize_core.discovery import FALLBACK_STRATEGY, load_strategy
    from crystallize_core.errors import CrystallizeError

    try:
        return load_strategy(FALLBACK_STRATEGY), None
    except CrystallizeError as exc:
        return None, str(exc)


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
