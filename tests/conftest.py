import pytest

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _no_strategy_steering(monkeypatch):
    """Tests start with no strategy chosen or blocked by the environment."""
    for name in ("CRYSTALLIZE_STRATEGY", "CRYSTALLIZE_BLOCK_STRATEGIES", "CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
