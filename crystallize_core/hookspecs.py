"""The hook contract between the core and its plugins.

Every hook a plugin may implement is specified here, and nowhere else. A plugin
is any object whose methods carry ``@hookimpl``; no base class is needed::

    from crystallize_core import hookimpl

    class MyStrategy:
        @hookimpl
        def run_experiment_loop(self, experiment, replicate_fn):
            return [replicate_fn(i) for i in range(experiment.replicates)]

A hook implementation may accept any subset of the arguments named in its
specification, in any order; pluggy passes them by name.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "crystallize"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec(firstresult=True)
def run_experiment_loop(experiment, replicate_fn):
    """Run replicates ``0 .. experiment.replicates - 1`` and return their results.

    This is the execution strategy's hook. The implementers are asked in this
    order, and the first to return something other than ``None`` wins; none
    after it is asked:

    1. the plugins given to ``Experiment(plugins=[...])``, in list order;
    2. the strategy chosen by name (``Experiment.run(strategy=...)``, the
       ``CRYSTALLIZE_STRATEGY`` environment variable or ``crystallize run
       --strategy``);
    3. the fallback: the strategy registered under the name ``serial``.

    ``replicate_fn(i)`` runs replicate ``i`` for the baseline and every
    treatment and returns its :class:`~crystallize_core.ReplicateResult`. It
    never raises for an error inside the user's datasource or steps: such
    errors are captured in the result. It is picklable whenever the user's
    components are, so a strategy that runs work in other processes pickles it
    once (:func:`crystallize_core.dumps_replicate_fn`) and ships only indices.

    Return a list of exactly ``experiment.replicates`` results, the result of
    replicate ``i`` at position ``i``, and do not touch the list afterwards.
    The core checks this and raises
    :class:`~crystallize_core.StrategyContractError`, naming the strategy,
    when it does not hold. Return ``None`` to decline and let the next
    implementer run the experiment.

    When Ctrl-C (``KeyboardInterrupt``) arrives, stop promptly, leave no
    worker behind, and re-raise it with the results finished so far in its
    ``completed`` attribute (a list of replicate results, in any order), or
    raise :class:`~crystallize_core.ExperimentInterrupted` with
    ``completed=...``; the caller receives ``ExperimentInterrupted`` carrying
    the partial :class:`~crystallize_core.Result`.
    """


@hookspec
def before_run(experiment):
    """Called in the calling process once before the strategy is asked.

    ``experiment.replicates`` is already set. An exception raised here stops
    the run before any replicate starts.
    """


@hookspec
def after_run(experiment, result):
    """Called in the calling process with the finished
    :class:`~crystallize_core.Result`, after the strategy returned."""


@hookspec(firstresult=True)
def replicate_seed(replicate):
    """Return the seed of replicate ``replicate``, or ``None`` to pass.

    Called where the replicate runs (possibly another process). The same seed
    is used for the baseline and every treatment of the replicate. It must
    depend on the replicate index and the plugin's own configuration only, so
    that every strategy sees the same seeds.
    """


@hookspec
def before_replicate(replicate, seed):
    """Called where the replicate runs, before its first condition.

    An exception raised here is recorded in the replicate's errors (with
    condition ``None``) and the replicate's conditions do not run.
    """


@hookspec
def after_replicate(replicate, result):
    """Called where the replicate runs, with its
    :class:`~crystallize_core.ReplicateResult`, after its last condition.

    An exception raised here is recorded in the replicate's errors.
    """
