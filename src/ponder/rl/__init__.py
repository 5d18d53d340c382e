"""RL from verifiable rewards: advantages, losses, the training loop, train-state checkpoints."""
