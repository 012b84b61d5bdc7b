from crystallize_core.testing import StrategyConformance
from crystallize_shuffled import ShuffledExecution


class TestShuffledConformance(StrategyConformance):
    strategy_name = "shuffled"

    def make_strategy(self):
        return ShuffledExecution(max_workers=3, shuffle_seed=1)

    def make_declining_strategy(self):
        return ShuffledExecution(min_replicates=1_000_000)
