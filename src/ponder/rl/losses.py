"""The GRPO-family policy loss. Its one home is ponder.runtime.losses, which PPO shares; RL's
trainer reads it here (tests/test_rl_losses.py checks it against TRL)."""

from ponder.runtime.losses import LOSS_TYPES, policy_loss

__all__ = ["LOSS_TYPES", "policy_loss"]
