"""Discovery against real distribution metadata on sys.path."""

import os
import subprocess
import sys

import pytest
from installed import GOOD_STRATEGY, install_distribution

from crystallize_core import (
    Experiment,
    StrategyBlockedError,
    StrategyConflictError,
    StrategyLoadError,
    StrategyNotFoundError,
    StrategyOptionError,
    StrategySpecError,
    available_strategies,
    load_strategy,
)
from crystallize_core.discovery import _scan, parse_strategy_spec
from crystallize_core.testing import numbers, record


@pytest.fixture
def site(tmp_path, monkeypatch):
    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    _scan.cache_clear()
    yield folder
    _scan.cache_clear()
    for name in [n for n, m in sys.modules.items() if str(getattr(m, "__file__", "")).startswith(str(folder))]:
        del sys.modules[name]


def by_name(infos):
    return {(i.name, i.distribution): i for i in infos}


def test_lists_installed_strategies_from_metadata_without_importing(site):
    install_distribution(
        site, "reverse-strategy", "2.5", {"reverse": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY}
    )
    infos = by_name(available_strategies())
    info = infos[("reverse", "reverse-strategy")]
    assert (info.version, info.target, info.status) == ("2.5", "reverse_mod:Reverse", "not loaded")
    assert infos[("serial", "crystallize-serial")].is_fallback
    assert "reverse_mod" not in sys.modules


def test_load_checks_each_strategy_and_a_broken_one_hides_nothing(site):
    install_distribution(
        site, "broken-strategy", "0.1", {"broken": "broken_mod:Nope"}, {"broken_mod": "import does_not_exist\n"}
    )
    install_distribution(
        site, "reverse-strategy", "2.5", {"reverse": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY}
    )
    infos = by_name(available_strategies(load=True))
    broken = infos[("broken", "broken-strategy")]
    assert broken.status.startswith("broken: ") and "does_not_exist" in broken.error
    assert infos[("reverse", "reverse-strategy")].status == "ok"
    assert infos[("serial", "crystallize-serial")].status == "ok"


def test_a_strategy_that_fails_to_import_is_named_with_its_distribution(site):
    install_distribution(site, "broken-strategy", "0.1", {"broken": "broken_mod:Nope"}, {"broken_mod": "1 / 0\n"})
    with pytest.raises(StrategyLoadError, match=r"'broken' from broken-strategy .*ZeroDivisionError"):
        load_strategy("broken")
    assert load_strategy("serial") is not None


def test_two_distributions_claiming_one_name_are_both_named(site):
    install_distribution(site, "first-dist", "1.0", {"dup": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY})
    install_distribution(site, "second-dist", "2.0", {"dup": "reverse_mod:Reverse"}, {})
    with pytest.raises(StrategyConflictError, match=r"first-dist 1\.0 and second-dist 2\.0"):
        load_strategy("dup")
    statuses = {i.distribution: i.status for i in available_strategies() if i.name == "dup"}
    assert statuses == {
        "first-dist": "broken: name 'dup' is also registered by second-dist",
        "second-dist": "broken: name 'dup' is also registered by first-dist",
    }


def test_unknown_name_lists_what_is_installed_and_suggests_no_package(site):
    with pytest.raises(StrategyNotFoundError, match=r"no strategy named 'quantum' .*installed: .*serial") as caught:
        load_strategy("quantum")
    assert "pip install" not in str(caught.value) and "did you mean" not in str(caught.value)


@pytest.mark.parametrize("typo", ["paralel", "parallell", "Parallel", "seriel"])
def test_a_typo_gets_did_you_mean_from_the_installed_names_only(site, typo):
    expected = "serial" if typo == "seriel" else "parallel"
    with pytest.raises(
        StrategyNotFoundError, match=rf"no strategy named '{typo}' is installed; did you mean '{expected}'\?"
    ):
        load_strategy(typo)
    with pytest.raises(StrategyNotFoundError) as caught:
        load_strategy(typo)
    assert "pip install" not in str(caught.value) and f"crystallize-{typo}" not in str(caught.value)


def test_a_blocked_name_is_not_suggested(site, monkeypatch):
    monkeypatch.setenv("CRYSTALLIZE_BLOCK_STRATEGIES", "parallel")
    with pytest.raises(StrategyNotFoundError) as caught:
        load_strategy("paralel")
    message = str(caught.value)
    assert "did you mean" not in message and "parallel" not in message.partition("installed:")[2]
    assert "serial" in message.partition("installed:")[2]


@pytest.mark.parametrize(
    "how, origin",
    [("argument", "run(strategy=...): "), ("environment", "CRYSTALLIZE_STRATEGY: ")],
)
def test_an_unknown_name_says_where_it_came_from(site, monkeypatch, how, origin):
    experiment = Experiment(numbers, [record])
    if how == "environment":
        monkeypatch.setenv("CRYSTALLIZE_STRATEGY", "paralel:max_workers=2")
        run = lambda: experiment.run(replicates=1)  # noqa: E731
    else:
        run = lambda: experiment.run(replicates=1, strategy="paralel:max_workers=2")  # noqa: E731
    with pytest.raises(StrategyNotFoundError) as caught:
        run()
    assert str(caught.value).startswith(origin + "no strategy named 'paralel' is installed; did you mean 'parallel'?")


def test_unknown_option_names_the_valid_ones(site):
    install_distribution(
        site, "reverse-strategy", "2.5", {"reverse": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY}
    )
    with pytest.raises(StrategyOptionError, match=r"no option 'workers' \(valid options: decline, tag\)"):
        load_strategy("reverse", workers=2)


def test_selected_by_name_through_run_and_the_environment(site, monkeypatch):
    install_distribution(
        site, "reverse-strategy", "2.5", {"reverse": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY}
    )
    result = Experiment(numbers, [record]).run(replicates=4, strategy="reverse")
    assert (result.strategy, result.strategy_version) == ("reverse", "2.5")
    monkeypatch.setenv("CRYSTALLIZE_STRATEGY", "reverse:tag='x'")
    assert Experiment(numbers, [record]).run(replicates=2).strategy == "reverse"
    monkeypatch.setenv("CRYSTALLIZE_STRATEGY", "reverse:decline=True")
    assert Experiment(numbers, [record]).run(replicates=2).strategy == "serial", "a declining strategy must pass on"


def test_blocked_names_are_listed_and_refused(site, monkeypatch):
    install_distribution(
        site, "reverse-strategy", "2.5", {"reverse": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY}
    )
    monkeypatch.setenv("CRYSTALLIZE_BLOCK_STRATEGIES", "reverse, other")
    (info,) = [i for i in available_strategies(load=True) if i.name == "reverse"]
    assert info.status == "blocked" and "CRYSTALLIZE_BLOCK_STRATEGIES" in info.blocked
    assert "reverse_mod" not in sys.modules, "a blocked strategy must not be imported"
    with pytest.raises(StrategyBlockedError, match="'reverse' is blocked by CRYSTALLIZE_BLOCK_STRATEGIES"):
        load_strategy("reverse")


def test_disabled_autoload_keeps_only_the_fallback(site, monkeypatch):
    install_distribution(
        site, "reverse-strategy", "2.5", {"reverse": "reverse_mod:Reverse"}, {"reverse_mod": GOOD_STRATEGY}
    )
    monkeypatch.setenv("CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD", "1")
    statuses = {i.name: i.status for i in available_strategies(load=True)}
    assert statuses["serial"] == "ok" and statuses["reverse"] == "blocked" and statuses["parallel"] == "blocked"
    with pytest.raises(StrategyBlockedError, match="autoload disabled"):
        load_strategy("reverse")
    assert Experiment(numbers, [record]).run(replicates=2).strategy == "serial"


def test_a_blocked_fallback_fails_only_when_needed(site, monkeypatch):
    monkeypatch.setenv("CRYSTALLIZE_BLOCK_STRATEGIES", "serial")
    from crystallize_core import StrategyContractError
    from crystallize_core.testing import LoopStrategy

    assert Experiment(numbers, [record], plugins=[LoopStrategy()]).run(replicates=2).strategy == "LoopStrategy"
    with pytest.raises(StrategyContractError, match="'serial' is blocked"):
        Experiment(numbers, [record]).run(replicates=2)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("parallel", ("parallel", {})),
        ("parallel:executor_type=process,max_workers=4", ("parallel", {"executor_type": "process", "max_workers": 4})),
        (" ray : resources={'a': 1, 'b': 2}, num_gpus=0.5 ", ("ray", {"resources": {"a": 1, "b": 2}, "num_gpus": 0.5})),
        ("x:flag=True,name='a,b'", ("x", {"flag": True, "name": "a,b"})),
    ],
)
def test_strategy_specifications_parse(spec, expected):
    assert parse_strategy_spec(spec) == expected


@pytest.mark.parametrize("spec", ["", ":x=1", "parallel:executor_type", "parallel:=3", "para llel"])
def test_malformed_specifications_say_what_is_expected(spec):
    with pytest.raises(StrategySpecError, match="malformed"):
        parse_strategy_spec(spec)


def test_malformed_environment_specification_names_the_variable(monkeypatch):
    monkeypatch.setenv("CRYSTALLIZE_STRATEGY", "parallel:workers")
    with pytest.raises(StrategySpecError, match="CRYSTALLIZE_STRATEGY: malformed option 'workers'"):
        Experiment(numbers, [record]).run(replicates=1)


def test_import_loads_no_plugin_no_tqdm_and_no_process_machinery():
    code = (
        "import sys, crystallize_core\n"
        "from crystallize_core import available_strategies\n"
        "available_strategies()\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in "
        "('crystallize_serial', 'crystallize_parallel', 'tqdm', 'multiprocessing') "
        "or m == 'concurrent.futures.process']\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bare_import_loads_only_the_package_itself():
    code = (
        "import sys; import crystallize_core; "
        "print(sorted(m for m in sys.modules if 'crystallize' in m or m == 'pluggy'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['crystallize_core']"


def test_a_strategy_selected_by_name_that_implements_no_hook_is_refused_before_work(site, tmp_path):
    from crystallize_core import ConfigurationError
    from crystallize_core.testing import RecordRuns

    install_distribution(site, "hookless", "1.0", {"hookless": "hookless_mod:Hookless"}, {"hookless_mod": HOOKLESS})
    log = tmp_path / "runs.txt"
    with pytest.raises(ConfigurationError, match=r"'hookless' from hookless 1\.0, chosen as the strategy by run"):
        Experiment(numbers, [RecordRuns(str(log)), record]).run(replicates=2, strategy="hookless")
    assert not log.exists()


def test_a_strategy_is_known_by_its_entry_point_name_whoever_built_it(site):
    install_distribution(site, "good-strategy", "2.0", {"reverse": "good_mod:Reverse"}, {"good_mod": GOOD_STRATEGY})
    from good_mod import Reverse  # built by hand, not through load_strategy

    result = Experiment(numbers, [record], plugins=[Reverse()]).run(replicates=3)
    assert (result.strategy, result.strategy_version) == ("reverse", "2.0")


HOOKLESS = """
class Hookless:
    '''Forgot the @hookimpl.'''

    def run_experiment_loop(self, experiment, replicate_fn):
        return [replicate_fn(i) for i in range(experiment.replicates)]
"""


@pytest.mark.parametrize("how", ["run(strategy=...)", "the experiment's plugins"])
def test_a_run_whose_strategy_object_answers_reads_no_package_metadata(how):
    """Reading entry points costs a fresh process tens of milliseconds: it is
    left until something asks for the strategy's name, which is then right."""
    chosen = "strategy=SerialExecution()" if how == "run(strategy=...)" else ""
    plugins = "" if chosen else "SerialExecution()"
    code = (
        "import sys\n"
        "from crystallize_core import Experiment, SeedPlugin\n"
        "from crystallize_serial import SerialExecution\n"
        "def source(ctx): return 1\n"
        "def record(data, ctx): ctx.metrics.add('x', data); return data\n"
        f"experiment = Experiment(source, [record], plugins=[SeedPlugin(seed=3), {plugins}])\n"
        f"result = experiment.run(replicates=3, {chosen})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('importlib.metadata', 'crystallize_parallel', "
        "'crystallize_core.discovery', 'logging', 'dataclasses'))))\n"
        "print(result.strategy, result.strategy_version is not None)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CRYSTALLIZE_STRATEGY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    loaded, named = out.stdout.strip().splitlines()
    assert loaded == "[]"
    assert named == "serial True"
