import pytest
import ray


@pytest.fixture(scope="session", autouse=True)
def local_ray():
    """One real local Ray instance for the whole session, with 2 CPUs, started
    before any test so that its processes are not mistaken for leftovers."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(autouse=True)
def _no_strategy_steering(monkeypatch):
    for name in ("CRYSTALLIZE_STRATEGY", "CRYSTALLIZE_BLOCK_STRATEGIES", "CRYSTALLIZE_DISABLE_PLUGIN_AUTOLOAD"):
        monkeypatch.delenv(name, raising=False)
