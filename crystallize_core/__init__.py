"""Crystallize: reproducible experiments whose replicates any strategy can drive.

Public names are imported on first use, so that ``import crystallize_core``
stays cheap: it loads no plugin, no progress bar and no process machinery.
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING`: importing typing would double this
# module's import time. Type checkers recognise the name.
TYPE_CHECKING = False

_EXPORTS = {
    "__version__": "crystallize_core._version",
    "Experiment": "crystallize_core.experiment",
    "Pipeline": "crystallize_core.experiment",
    "Treatment": "crystallize_core.experiment",
    "treatment_grid": "crystallize_core.sweep",
    "Context": "crystallize_core.context",
    "ContextKeyError": "crystallize_core.context",
    "Result": "crystallize_core.result",
    "ReplicateResult": "crystallize_core.records",
    "ReplicateError": "crystallize_core.records",
    "MetricSummary": "crystallize_core.summaries",
    "PairedDifference": "crystallize_core.summaries",
    "SeedPlugin": "crystallize_core.seed",
    "derive_seed": "crystallize_core.replicate",
    "dumps_replicate_fn": "crystallize_core.replicate",
    "hookimpl": "crystallize_core.hookspecs",
    "hookspec": "crystallize_core.hookspecs",
    "Capabilities": "crystallize_core.hookspecs",
    "ReplicateFn": "crystallize_core.hookspecs",
    "RunView": "crystallize_core.hookspecs",
    "TreatmentSpec": "crystallize_core.hookspecs",
    "ExecutorStrategy": "crystallize_core.backends",
    "StrategyInfo": "crystallize_core.discovery",
    "available_strategies": "crystallize_core.discovery",
    "load_strategy": "crystallize_core.discovery",
    "CheckpointError": "crystallize_core.errors",
    "CheckpointMismatchError": "crystallize_core.errors",
    "CheckpointPermissionError": "crystallize_core.errors",
    "CrystallizeError": "crystallize_core.errors",
    "ConfigurationError": "crystallize_core.errors",
    "ExperimentInterrupted": "crystallize_core.errors",
    "NotPicklableError": "crystallize_core.errors",
    "ReplicateFailed": "crystallize_core.errors",
    "ReproducibilityWarning": "crystallize_core.errors",
    "ResultFileError": "crystallize_core.errors",
    "StrategyBlockedError": "crystallize_core.errors",
    "StrategyCapabilityError": "crystallize_core.errors",
    "StrategyConflictError": "crystallize_core.errors",
    "StrategyContractError": "crystallize_core.errors",
    "StrategyLoadError": "crystallize_core.errors",
    "StrategyNotFoundError": "crystallize_core.errors",
    "StrategyOptionError": "crystallize_core.errors",
    "StrategySpecError": "crystallize_core.errors",
    "StrategyUnavailableError": "crystallize_core.errors",
    "WorkerLostError": "crystallize_core.errors",
    "WorkerSetupError": "crystallize_core.errors",
    "warn_at_user_code": "crystallize_core.errors",
}

__all__ = [*_EXPORTS]


def __getattr__(name: str) -> object:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'crystallize_core' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from crystallize_core._version import __version__
    from crystallize_core.backends import ExecutorStrategy
    from crystallize_core.context import Context, ContextKeyError
    from crystallize_core.discovery import StrategyInfo, available_strategies, load_strategy
    from crystallize_core.errors import (
        CheckpointError,
        CheckpointMismatchError,
        CheckpointPermissionError,
        ConfigurationError,
        CrystallizeError,
        ExperimentInterrupted,
        NotPicklableError,
        ReplicateFailed,
        ReproducibilityWarning,
        ResultFileError,
        StrategyBlockedError,
        StrategyCapabilityError,
        StrategyConflictError,
        StrategyContractError,
        StrategyLoadError,
        StrategyNotFoundError,
        StrategyOptionError,
        StrategySpecError,
        StrategyUnavailableError,
        WorkerLostError,
        WorkerSetupError,
        warn_at_user_code,
    )
    from crystallize_core.experiment import Experiment, Pipeline, Treatment
    from crystallize_core.hookspecs import Capabilities, ReplicateFn, RunView, TreatmentSpec, hookimpl, hookspec
    from crystallize_core.records import ReplicateError, ReplicateResult
    from crystallize_core.replicate import derive_seed, dumps_replicate_fn
    from crystallize_core.result import Result
    from crystallize_core.seed import SeedPlugin
    from crystallize_core.summaries import MetricSummary, PairedDifference
    from crystallize_core.sweep import treatment_grid
