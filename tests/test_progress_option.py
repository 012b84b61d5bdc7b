"""``progress``: a flag of every strategy, as the original design gives it, and of every run.

The run's own value wins when given; otherwise the flag of the strategy being
asked decides, settled for each strategy as it is asked; otherwise a bar on a
terminal only. A bar is tested on a real terminal (a pseudo-terminal), plain
lines where standard error is a pipe.
"""

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import textwrap

import pytest

from crystallize_core import Experiment, hookimpl, load_strategy
from crystallize_core.testing import Decliner, numbers, record
from crystallize_parallel import ParallelExecution
from crystallize_serial import SerialExecution


def on_a_terminal(code: str) -> str:
    """Run ``code`` in a fresh interpreter whose standard error is a terminal; return what it wrote there."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal has a size
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "CRYSTALLIZE_STRATEGY"},
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal is gone once every writer closed it
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert done.returncode == 0, shown.decode(errors="replace")
    return shown.decode(errors="replace")


STUDY = """
from crystallize_core import Experiment
from crystallize_core.testing import numbers, record
from crystallize_parallel import ParallelExecution
from crystallize_serial import SerialExecution
"""


@pytest.mark.parametrize("strategy", ["SerialExecution(progress=True)", "ParallelExecution(progress=True)"])
def test_the_original_designs_progress_flag_shows_a_tqdm_bar_for_several_replicates(strategy):
    shown = on_a_terminal(STUDY + f"Experiment(numbers, [record], plugins=[{strategy}]).run(replicates=6)")
    assert "replicates: 100%" in shown and "6/6" in shown, shown


@pytest.mark.parametrize("strategy", ["SerialExecution(progress=True)", "ParallelExecution(progress=True)"])
def test_the_progress_flag_shows_nothing_for_a_single_replicate(strategy):
    shown = on_a_terminal(STUDY + f"Experiment(numbers, [record], plugins=[{strategy}]).run(replicates=1)")
    assert shown == ""


def test_a_strategys_progress_false_hides_the_bar_a_terminal_would_show():
    shown = on_a_terminal(STUDY + "Experiment(numbers, [record]).run(replicates=6, strategy=SerialExecution())")
    assert "6/6" in shown, "the default on a terminal is a bar"
    code = STUDY + "Experiment(numbers, [record]).run(replicates=6, strategy=SerialExecution(progress=False))"
    assert on_a_terminal(code) == ""


def test_the_runs_own_progress_wins_over_the_strategys():
    code = (
        STUDY
        + "Experiment(numbers, [record]).run(replicates=6, strategy=SerialExecution(progress=True), progress=False)"
    )
    assert on_a_terminal(code) == ""


@pytest.mark.parametrize("strategy", [SerialExecution(progress=True), ParallelExecution(progress=True)])
def test_a_strategys_progress_true_shows_progress_off_a_terminal(strategy, capsys):
    Experiment(numbers, [record]).run(replicates=5, strategy=strategy)
    assert "replicates: 5/5 (100%)" in capsys.readouterr().err


def test_the_runs_progress_true_wins_over_a_strategys_false(capsys):
    Experiment(numbers, [record]).run(replicates=5, strategy=SerialExecution(progress=False), progress=True)
    assert "replicates: 5/5 (100%)" in capsys.readouterr().err


def test_off_a_terminal_nothing_is_shown_unless_someone_asks(capsys):
    Experiment(numbers, [record]).run(replicates=5, strategy=SerialExecution())
    assert capsys.readouterr().err == ""


class DecliningWithProgress(Decliner):
    progress = True


def test_progress_is_settled_for_each_strategy_as_it_is_asked(capsys):
    # The first asked wants lines, declines; the fallback has no flag: the default (nothing off a terminal).
    result = Experiment(numbers, [record], plugins=[DecliningWithProgress()]).run(replicates=5)
    assert result.strategy == "serial" and capsys.readouterr().err == ""
    # The other way round: a strategy asked after a decliner shows its own.
    result = Experiment(numbers, [record], plugins=[Decliner(), ParallelExecution(progress=True)]).run(replicates=5)
    assert result.strategy == "parallel" and "replicates: 5/5" in capsys.readouterr().err


def test_a_bar_opened_for_a_strategy_that_declined_leaves_no_line_on_the_terminal():
    code = STUDY + textwrap.dedent(
        """
        from crystallize_core.testing import Decliner
        class Loud(Decliner):
            progress = True
        Experiment(numbers, [record], plugins=[Loud(), SerialExecution(progress=False)]).run(replicates=6)
        """
    )
    shown = on_a_terminal(code)
    assert "6/6" not in shown and "100%" not in shown, shown


class NotAFlag:
    """A plugin whose ``progress`` means something else: not taken for the flag."""

    def progress(self):
        raise AssertionError("never called")

    @hookimpl
    def run_experiment_loop(self, experiment, replicate_fn):
        return [replicate_fn(i) for i in range(experiment.replicates)]


class BrokenFlag(NotAFlag):
    @property
    def progress(self):
        raise RuntimeError("no progress here")


def test_a_progress_property_that_fails_costs_the_flag_not_the_run(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="crystallize"):
        assert Experiment(numbers, [record], plugins=[BrokenFlag()]).run(replicates=3).strategy == "BrokenFlag"
    assert any("BrokenFlag" in r.getMessage() and "no progress here" in r.getMessage() for r in caplog.records)


def test_a_progress_attribute_that_is_not_a_flag_is_ignored(capsys):
    assert Experiment(numbers, [record], plugins=[NotAFlag()]).run(replicates=3).strategy == "NotAFlag"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["serial", "parallel", "async"])
@pytest.mark.parametrize("text, value", [("true", True), ("False", False), ("none", None)])
def test_every_shipped_strategy_takes_progress_by_name(name, text, value):
    assert load_strategy(name, progress=value).progress is value
    from crystallize_core.discovery import parse_strategy_spec

    assert parse_strategy_spec(f"{name}:progress={text}") == (name, {"progress": value})


@pytest.mark.parametrize("name", ["serial", "parallel", "async"])
def test_every_shipped_strategy_takes_max_workers_by_name(name):
    from crystallize_core.discovery import parse_strategy_spec

    name, options = parse_strategy_spec(f"{name}:max_workers=1")
    assert load_strategy(name, **options).max_workers == 1


def test_serial_refuses_more_than_one_worker_naming_the_fix():
    from crystallize_core import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"one replicate at a time.*choose 'parallel'"):
        SerialExecution(max_workers=4)


@pytest.mark.parametrize("name", ["serial", "parallel", "async"])
def test_progress_must_be_a_flag(name):
    from crystallize_core import ConfigurationError

    with pytest.raises(ConfigurationError, match="progress must be True, False or None, got 'yes'"):
        load_strategy(name, progress="yes")
