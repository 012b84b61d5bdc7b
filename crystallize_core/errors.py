"""The exceptions Crystallize raises on purpose.

Every one derives from [`CrystallizeError`][] except
[`ExperimentInterrupted`][], which is a [`KeyboardInterrupt`][] so that
code which handles Ctrl-C keeps working.
"""

from __future__ import annotations

import sys
from typing import Any


class CrystallizeError(Exception):
    """Base class of the errors Crystallize raises for bad input or broken plugins."""


class ConfigurationError(CrystallizeError, ValueError):
    """An experiment, strategy or option was given a value it cannot take."""


class StrategyNotFoundError(CrystallizeError, LookupError):
    """No installed strategy has the requested name."""


class StrategyBlockedError(CrystallizeError):
    """The requested strategy is blocked by ``CRYSTALLIZE_BLOCK_STRATEGIES`` or
    ignored because ``CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD`` is set."""


class StrategyConflictError(CrystallizeError):
    """Two distributions register a strategy under the same name."""


class StrategyLoadError(CrystallizeError, ImportError):
    """A strategy's entry point could not be imported."""


class StrategyOptionError(ConfigurationError, TypeError):
    """A strategy was given an option it does not accept."""


class StrategySpecError(ConfigurationError):
    """A strategy specification such as ``"parallel:max_workers=4"`` is malformed."""


class StrategyContractError(CrystallizeError):
    """A strategy broke the ``run_experiment_loop`` contract."""


class NotPicklableError(CrystallizeError, TypeError):
    """A component of the experiment cannot be sent to another process."""


class StrategyCapabilityError(ConfigurationError):
    """The chosen strategy cannot honour a run option, such as a timeout."""


class StrategyUnavailableError(ConfigurationError):
    """The strategy chosen for a run cannot do its job here: its cluster cannot
    be reached within its connect timeout, or has no worker. It is raised, never
    turned into declining, so that a run chosen for a cluster does not run
    elsewhere unnoticed; the message names the strategy and the address."""


class CheckpointError(ConfigurationError):
    """A checkpoint file cannot be used: corrupt, truncated, another application's,
    of an older format, or holding values the run may not read or write."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint file belongs to a different experiment or seed."""


class CheckpointPermissionError(CheckpointError, PermissionError):
    """A checkpoint file, or its folder, cannot be read or written."""


class ResultFileError(CrystallizeError, ValueError):
    """A file given to [`Result.load`][crystallize_core.result.Result.load] cannot be
    read as a saved result: empty, truncated or corrupt, another program's,
    of a format it cannot tell by the name, or written by a newer Crystallize.
    The message names the file and, where it can, the line."""


class WorkerLostError(CrystallizeError):
    """A worker died and its backend can neither replace it nor rerun its
    replicates (an executor that was passed in, not made by a factory).

    ``partial_result`` is the [`Result`][] of the
    replicates that finished.
    """

    partial_result: Any = None
    completed: Any = None


class WorkerSetupError(CrystallizeError, RuntimeError):
    """A worker could not unpickle the experiment it was sent, so no replicate
    can run there: most often a module the experiment's code comes from is not
    importable where the worker runs.

    ``worker_traceback`` is the traceback of the error in the worker. Raised
    in the driver, ending the run, by every strategy that ships the
    experiment to other processes.
    """

    def __init__(self, worker_traceback: str):
        super().__init__(worker_traceback)
        self.worker_traceback = worker_traceback

    def __str__(self) -> str:
        return (
            "a worker could not unpickle the experiment, so no replicate can run there. Where the error "
            "names a module, make it importable on the workers (installed there, or on their PYTHONPATH; "
            f"see the strategy's docs). The worker's traceback:\n{self.worker_traceback}"
        )


class ReplicateFailed(CrystallizeError):
    """With ``fail_fast``, the first error inside a replicate.

    ``error`` is the [`ReplicateError`][];
    ``partial_result`` the result of the replicates that finished, when known.
    """

    def __init__(self, error: Any, partial_result: Any = None):
        super().__init__(f"{error} (fail_fast stopped the run)\n{error.traceback}".rstrip())
        self.error = error
        self.partial_result = partial_result
        #: Replicate results a strategy hands to the core; the core turns them
        #: into ``partial_result``.
        self.completed: Any = None

    def __reduce__(self):
        return (type(self), (self.error,))


class ExperimentInterrupted(KeyboardInterrupt):
    """The run was stopped by Ctrl-C (or ``SIGINT``).

    ``partial_result`` is the [`Result`][] of the
    replicates that finished before the interruption (``None`` where the
    strategy could not report them).
    """

    def __init__(self, message: str = "experiment interrupted", partial_result: Any = None, completed: Any = None):
        super().__init__(message)
        self.partial_result = partial_result
        #: Replicate results a strategy hands to the core; the core turns them
        #: into ``partial_result``.
        self.completed = completed


class ReproducibilityWarning(UserWarning):
    """The chosen way of running cannot promise the same numbers for the same seed."""


def warn_at_user_code(message: str, category: type[Warning] = ReproducibilityWarning) -> None:
    """Issue ``message`` as a ``category`` warning that points at the user's code.

    The warning is attributed to the innermost calling frame outside
    Crystallize's own packages (``crystallize_core``, every ``crystallize_*``
    plugin, and pluggy, which calls the hooks), so that it names the user's
    line, such as their ``experiment.run(...)`` call, and the user's warning
    filters for their own module apply to it.
    """
    import warnings

    from crystallize_core._usercode import user_frame  # sysconfig: paid by the first warning only

    _, skipped = user_frame(sys._getframe(1))
    warnings.warn(message, category, stacklevel=2 + skipped)


def logger() -> Any:
    """The ``crystallize`` logger. [`logging`][] is imported when something is
    logged, not by every run: a process pays for each import on its first run."""
    import logging

    return logging.getLogger("crystallize")
