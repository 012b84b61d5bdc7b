"""The loop that asks strategies, in order, to run the experiment.

pluggy's own first-result call returns the value but not who produced it; the
core needs the winner to check its answer and to name it in results and
errors, so it walks the implementations in pluggy's call order itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pluggy

from crystallize_core.discovery import describe
from crystallize_core.errors import ExperimentInterrupted, StrategyCapabilityError, StrategyContractError
from crystallize_core.result import ReplicateResult


def call_strategies(
    manager: pluggy.PluginManager,
    experiment: Any,
    replicate_fn: Any,
    expected: Sequence[int],
    fallback_problem: str | None = None,
) -> tuple[list, object]:
    """Ask each ``run_experiment_loop`` implementation in turn; return the first
    non-None answer, checked against the ``expected`` replicate indices, with
    the plugin that gave it.

    Raises :class:`StrategyContractError` when every implementation declines
    or the winner's answer breaks the contract.
    """
    arguments = {"experiment": experiment, "replicate_fn": replicate_fn}
    # get_hookimpls() lists implementations in reverse call order.
    for impl in reversed(manager.hook.run_experiment_loop.get_hookimpls()):
        check_capabilities(impl.plugin, experiment)
        try:
            answer = impl.function(*[arguments[name] for name in impl.argnames])
        except ExperimentInterrupted:
            raise
        except KeyboardInterrupt as exc:
            raise ExperimentInterrupted(completed=getattr(exc, "completed", None) or []) from exc
        if answer is not None:
            check_answer(answer, expected, impl.plugin)
            return answer, impl.plugin
    if fallback_problem:
        raise StrategyContractError(
            f"every strategy declined to run the experiment, and the fallback: {fallback_problem}"
        )
    raise StrategyContractError("every strategy declined to run the experiment, the 'serial' fallback included")


def check_capabilities(plugin: object, experiment: Any) -> None:
    """Refuse, before it runs, a strategy that cannot honour the run's options."""
    if getattr(experiment, "timeout", None) is not None and not getattr(plugin, "supports_timeout", False):
        raise StrategyCapabilityError(
            f"strategy {describe(plugin)} cannot enforce a per-replicate timeout; run without timeout, "
            "or choose a strategy that can stop a running replicate, such as "
            "'parallel' with executor_type='process'"
        )


def check_answer(answer: object, replicates: Sequence[int], plugin: object) -> None:
    """Raise :class:`StrategyContractError` unless ``answer`` holds exactly one
    result per replicate, in the order of ``replicates``."""
    if not isinstance(answer, list):
        raise StrategyContractError(
            f"strategy {describe(plugin)} returned {type(answer).__name__} from run_experiment_loop; "
            f"expected a list of {len(replicates)} replicate results or None to decline"
        )
    if len(answer) != len(replicates):
        raise StrategyContractError(
            f"strategy {describe(plugin)} returned {len(answer)} results for {len(replicates)} replicates"
        )
    for position, (item, expected) in enumerate(zip(answer, replicates)):
        if not isinstance(item, ReplicateResult):
            raise StrategyContractError(
                f"strategy {describe(plugin)} returned {type(item).__name__} at position {position}; "
                "expected the value replicate_fn returned"
            )
        if item.replicate != expected:
            raise StrategyContractError(
                f"strategy {describe(plugin)} returned replicate {item.replicate} at position {position}; "
                "results must be in replicate order"
            )
