"""RL from verifiable rewards: advantages, losses, the training loop, train-state checkpoints.

    ponder train rl CONFIG.yaml key=value ...        # command line
    from ponder.rl import RLConfig, train_rl         # Python: train_rl(RLConfig(...)) -> summary
"""

from __future__ import annotations

from ponder.rl.config import RLConfig
from ponder.evaluate.heldout import evaluate_greedy
from ponder.rl.trainer import train_rl

__all__ = ["RLConfig", "train_rl", "evaluate_greedy"]
