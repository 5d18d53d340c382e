"""RL from verifiable rewards: advantages, losses, the training loop, train-state checkpoints.

    ponder train rl CONFIG.yaml key=value ...        # command line
    from ponder.rl import RLConfig, train_rl         # Python: train_rl(RLConfig(...)) -> summary
"""

from __future__ import annotations

import json
import logging
import sys

from ponder.rl.config import RLConfig
from ponder.rl.trainer import evaluate_greedy, train_rl

__all__ = ["RLConfig", "train_rl", "evaluate_greedy", "main"]


def main(args) -> int:
    """`ponder train rl CONFIG.yaml key=value ...`: train, print the summary as JSON."""
    from ponder.config import ConfigError, load_config

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(RLConfig, args.config, args.overrides)
        summary = train_rl(cfg)
    except (ConfigError, ValueError, OSError) as exc:  # bad config or data: the message names the place
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in summary.items() if k != "final"}, indent=1))
    return 0
