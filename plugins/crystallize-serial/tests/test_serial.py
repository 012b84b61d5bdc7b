from importlib import metadata

import pytest

from crystallize_core import Experiment
from crystallize_core.testing import StrategyConformance, assert_discoverable, numbers, record
from crystallize_serial import SerialExecution


class TestSerialConformance(StrategyConformance):
    strategy_name = "serial"

    def make_strategy(self):
        return SerialExecution()


def test_discovery():
    assert_discoverable("serial", SerialExecution, distribution="crystallize-serial")


def test_is_the_fallback_when_no_strategy_is_given(monkeypatch):
    monkeypatch.delenv("CRYSTALLIZE_STRATEGY", raising=False)
    result = Experiment(numbers, [record]).run(replicates=3)
    assert result.strategy == "serial"
    assert result.metrics["baseline"]["replicate"] == [0, 1, 2]


def test_progress_is_reported_as_replicates_finish(capsys):
    Experiment(numbers, [record], plugins=[SerialExecution()]).run(replicates=7, progress=True)
    assert "replicates: 7/7 (100%)" in capsys.readouterr().err


def test_its_own_progress_flag_shows_progress_as_the_original_design_says(capsys):
    Experiment(numbers, [record], plugins=[SerialExecution(progress=True)]).run(replicates=7)
    assert "replicates: 7/7 (100%)" in capsys.readouterr().err


def test_no_progress_for_a_single_replicate(capsys):
    Experiment(numbers, [record], plugins=[SerialExecution(progress=True)]).run(replicates=1)
    assert capsys.readouterr().err == ""


def test_its_options_are_progress_and_max_workers_of_one():
    assert SerialExecution().progress is None and SerialExecution(progress=False).progress is False
    assert SerialExecution(max_workers=1).max_workers == 1
    with pytest.raises(ValueError, match="one replicate at a time"):
        SerialExecution(max_workers=2)
    with pytest.raises(TypeError, match="did you mean 'progress'"):
        SerialExecution(progres=True)
    with pytest.raises(ValueError, match="progress must be True, False or None"):
        SerialExecution(progress="yes")


def test_does_not_depend_on_the_core():
    installed_with_it = [r for r in metadata.requires("crystallize-serial") or [] if "extra ==" not in r]
    assert sorted(r.split(">")[0] for r in installed_with_it) == ["pluggy"], installed_with_it
