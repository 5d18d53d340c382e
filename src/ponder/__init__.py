"""ponder: turn small base LLMs into reasoning models with RL from verifiable rewards
and inference-time scaling, and measure the result honestly."""

__version__ = "0.1.0"
