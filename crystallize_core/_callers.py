"""The loop that asks strategies, in order, to run the experiment.

pluggy's own first-result call returns the value but not who produced it; the
core needs the winner to check its answer and to name it in results and
errors, and must pass over strategies that cannot honour the run's options
without asking them, so it walks the implementations in pluggy's call order
itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from crystallize_core._columns import RecordedResults, ResultColumns
from crystallize_core._manager import RunPlugins
from crystallize_core.errors import (
    CrystallizeError,
    ExperimentInterrupted,
    ReplicateFailed,
    StrategyCapabilityError,
    StrategyContractError,
    WorkerLostError,
    logger,
)
from crystallize_core.hookspecs import ReplicateFn, RunView, capabilities_of
from crystallize_core.records import ReplicateResult


def call_strategies(
    plugins: RunPlugins,
    run: RunView,
    replicate_fn: ReplicateFn,
    expected: Sequence[int],
    columns: ResultColumns,
    settle_progress: Callable[[bool | None], None] = lambda strategy_progress: None,
) -> object:
    """Ask each ``run_experiment_loop`` implementation in turn, then the
    ``serial`` fallback; consume the first non-None answer into ``columns``,
    checking it against the ``expected`` replicate indices, and return the
    winning strategy object (``RunPlugins.name_of`` names it).

    Implementers that cannot honour the run's options are passed over
    unasked. Before each is asked, ``settle_progress`` receives its own
    ``progress`` flag. A run that another strategy runs after the chosen one
    declined says so at WARNING. Raises [`StrategyCapabilityError`][] when
    one was passed over and no other answered, [`StrategyContractError`][]
    when every implementation declined or the winner's answer breaks the
    contract.
    """
    passed_over: list[str] = []
    ask = _Asker(plugins, run, replicate_fn, expected, columns, settle_progress, passed_over)
    for impl in plugins.strategies():
        if ask(impl.plugin, impl.function, impl.argnames):
            _log_unasked(plugins, impl.plugin)
            ask.log_fall_through(impl.plugin)
            return impl.plugin
    from crystallize_core.discovery import FALLBACK_STRATEGY, load_strategy  # entry points: only for the fallback

    try:
        fallback = load_strategy(FALLBACK_STRATEGY)
    except CrystallizeError as exc:
        fallback_problem = f", and the fallback: {exc}"
    else:
        fallback_problem = ", the 'serial' fallback included"
        loop = fallback.run_experiment_loop  # type: ignore[attr-defined]
        if ask(fallback, loop, ("experiment", "replicate_fn")):
            ask.log_fall_through(fallback)
            return fallback
    if passed_over:
        raise StrategyCapabilityError(
            f"no strategy able to honour this run's options answered{fallback_problem}. Passed over: "
            f"{'; '.join(passed_over)}. Choose a strategy that can, such as 'parallel' with "
            "executor_type='process' for a timeout, or run without the option"
        )
    raise StrategyContractError(f"every strategy declined to run the experiment{fallback_problem}")


class _Asker:
    """Asks one implementation at a time, remembering whether the chosen strategy declined."""

    def __init__(self, plugins, run, replicate_fn, expected, columns, settle_progress, passed_over):
        self.plugins = plugins
        self.run = run
        self.replicate_fn = replicate_fn
        self.expected = expected
        self.columns = columns
        self.settle_progress = settle_progress
        self.passed_over = passed_over
        self.chosen_declined = False

    def __call__(self, plugin: object, function: Callable[..., object], argnames: Sequence[str]) -> bool:
        """Ask one implementation; return whether it answered, its answer then
        consumed into the columns. A stop while it runs, or while its answer
        is consumed (a lazy answer runs replicates then), is attributed to it."""
        plugins, run = self.plugins, self.run
        reason = cannot_honour(plugin, run)
        if reason is not None:
            self.passed_over.append(f"{_describe(plugin)} {reason}")
            logger().info("strategy %s passed over: it %s", _describe(plugin), reason)
            return False
        self.settle_progress(_progress_flag(plugin))
        arguments = {"experiment": run, "replicate_fn": self.replicate_fn}
        try:
            answer = function(*[arguments[argument] for argument in argnames])
            if answer is None:
                if plugin is plugins.chosen:
                    self.chosen_declined = True
                return False
            collect_answer(answer, self.expected, self.columns, plugin)
            return True
        except (ExperimentInterrupted, ReplicateFailed, WorkerLostError) as stopped:
            stopped.strategy = plugins.name_of(plugin)  # type: ignore[union-attr]  # for the partial result
            raise
        except KeyboardInterrupt as exc:
            interrupted = ExperimentInterrupted(completed=getattr(exc, "completed", None) or [])
            interrupted.strategy = plugins.name_of(plugin)  # type: ignore[attr-defined]
            raise interrupted from exc

    def log_fall_through(self, winner: object) -> None:
        """Say at WARNING that ``winner`` ran the run the chosen strategy declined."""
        if self.chosen_declined:
            plugins = self.plugins
            logger().warning(
                "strategy %s, chosen for this run by %s, declined it; %r ran it instead",
                _describe(plugins.chosen),
                plugins.chosen_from,
                plugins.name_of(winner),
            )


def _progress_flag(plugin: object) -> bool | None:
    """The strategy's own ``progress`` flag: True, False, or None where it has
    none (an attribute of that name that is no flag means something else)."""
    try:
        flag = getattr(plugin, "progress", None)
    except Exception as exc:  # a property that fails: its progress is unknown, the run goes on
        logger().warning(
            "strategy %s: reading its progress flag failed (%r); using the default", _describe(plugin), exc
        )
        return None
    return flag if isinstance(flag, bool) else None


def cannot_honour(plugin: object, run: RunView) -> str | None:
    """Why ``plugin`` cannot honour the options of ``run``, or None if it can."""
    if run.timeout is not None and not capabilities_of(plugin).timeout:
        return "cannot enforce a per-replicate timeout"
    return None


def _log_unasked(plugins: RunPlugins, winner: object) -> None:
    """Name the experiment's own strategies that the strategy chosen for the run overrode."""
    if winner is not plugins.chosen:
        return
    for plugin in plugins.experiment_plugins:
        if plugin is not winner and plugins.implements(plugin, "run_experiment_loop"):
            logger().info(
                "strategy %s in the experiment's plugins was passed over: %r was chosen for this run by %s",
                _describe(plugin),
                plugins.name_of(winner),
                plugins.chosen_from,
            )


def collect_answer(answer: object, replicates: Sequence[int], columns: ResultColumns, plugin: object) -> None:
    """Consume ``answer``, a strategy's list of results or iterator over them,
    into ``columns``; raise [`StrategyContractError`][] unless it holds
    exactly one result per replicate, in the order of ``replicates``.

    A result the columns already hold (the monitor saw it finish) is not
    stored again, so a strategy may return what it got back from
    ``replicate_fn`` without costing memory twice.
    """
    if isinstance(answer, RecordedResults) and answer.columns is columns:
        if not columns.complete():  # every replicate not run here came from the checkpoint
            raise StrategyContractError(
                f"strategy {_describe(plugin)} returned before every replicate had finished: "
                f"replicates {columns.missing()[:10]} have no result"
            )
        return
    count = len(replicates)
    if isinstance(answer, list):
        if len(answer) != count:
            raise StrategyContractError(
                f"strategy {_describe(plugin)} returned {len(answer)} results for {count} replicates"
            )
    elif not isinstance(answer, (Iterator, RecordedResults)):
        raise StrategyContractError(
            f"strategy {_describe(plugin)} returned {type(answer).__name__} from run_experiment_loop; "
            f"expected a list of {count} replicate results, an iterator over them, or None to decline"
        )
    add = columns.add
    position = -1
    for position, item in enumerate(answer):
        if position == count:
            raise StrategyContractError(
                f"strategy {_describe(plugin)} returned more than {count} results for {count} replicates"
            )
        if not isinstance(item, ReplicateResult):
            raise StrategyContractError(
                f"strategy {_describe(plugin)} returned {type(item).__name__} at position {position}; "
                "expected the value replicate_fn returned"
            )
        if item.replicate != replicates[position]:
            raise StrategyContractError(
                f"strategy {_describe(plugin)} returned replicate {item.replicate} at position {position}; "
                "results must be in replicate order"
            )
        if item is not columns.last:  # else the monitor has just kept it: the common case of a lazy answer
            add(item, True)
    if position + 1 != count:
        raise StrategyContractError(
            f"strategy {_describe(plugin)} returned {position + 1} results for {count} replicates"
        )


def _describe(plugin: object) -> str:
    # Discovery reads package metadata to name a plugin: only on these error
    # and log paths, never on a run whose strategy answers as it should.
    from crystallize_core.discovery import describe

    return describe(plugin)
