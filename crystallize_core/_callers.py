"""The loop that asks strategies, in order, to run the experiment.

pluggy's own first-result call returns the value but not who produced it; the
core needs the winner to check its answer and to name it in results and
errors, so it walks the implementations in pluggy's call order itself.
"""

from __future__ import annotations

from typing import Any

import pluggy

from crystallize_core.discovery import describe
from crystallize_core.errors import ExperimentInterrupted, StrategyContractError
from crystallize_core.result import ReplicateResult


def call_strategies(
    manager: pluggy.PluginManager, experiment: Any, replicate_fn: Any, fallback_problem: str | None = None
) -> tuple[list, object]:
    """Ask each ``run_experiment_loop`` implementation in turn; return the first
    non-None answer, checked, with the plugin that gave it.

    Raises :class:`StrategyContractError` when every implementation declines
    or the winner's answer breaks the contract.
    """
    arguments = {"experiment": experiment, "replicate_fn": replicate_fn}
    # get_hookimpls() lists implementations in reverse call order.
    for impl in reversed(manager.hook.run_experiment_loop.get_hookimpls()):
        try:
            answer = impl.function(*[arguments[name] for name in impl.argnames])
        except ExperimentInterrupted:
            raise
        except KeyboardInterrupt as exc:
            raise ExperimentInterrupted(completed=getattr(exc, "completed", None) or []) from exc
        if answer is not None:
            check_answer(answer, experiment.replicates, impl.plugin)
            return answer, impl.plugin
    if fallback_problem:
        raise StrategyContractError(
            f"every strategy declined to run the experiment, and the fallback: {fallback_problem}"
        )
    raise StrategyContractError("every strategy declined to run the experiment, the 'serial' fallback included")


def check_answer(answer: object, replicates: int, plugin: object) -> None:
    """Raise :class:`StrategyContractError` unless ``answer`` holds exactly one
    result per replicate, in replicate order."""
    if not isinstance(answer, list):
        raise StrategyContractError(
            f"strategy {describe(plugin)} returned {type(answer).__name__} from run_experiment_loop; "
            f"expected a list of {replicates} replicate results or None to decline"
        )
    if len(answer) != replicates:
        raise StrategyContractError(
            f"strategy {describe(plugin)} returned {len(answer)} results for {replicates} replicates"
        )
    for position, item in enumerate(answer):
        if not isinstance(item, ReplicateResult):
            raise StrategyContractError(
                f"strategy {describe(plugin)} returned {type(item).__name__} at position {position}; "
                "expected the value replicate_fn returned"
            )
        if item.replicate != position:
            raise StrategyContractError(
                f"strategy {describe(plugin)} returned replicate {item.replicate} at position {position}; "
                "results must be in replicate order"
            )
