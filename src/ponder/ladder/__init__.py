"""The post-training ladder: the methods GRPO is measured against, each with its own loop.

    rft.py           rejection-sampling fine-tuning (expert iteration): sample, keep verified, SFT
    dpo.py           DPO on verifier-labelled pairs, offline or re-sampled every K steps (online)
    reward_model.py  a Bradley-Terry reward model trained on verifier-labelled pairs
    ppo.py           token-level PPO with a value model and GAE; reward from the verifier or the reward model
    compare.py       `ponder ladder`: every rung on the demo's model and task, same number of samples

All run on the training runtime RL and SFT use (ponder.runtime: optimizer and schedule, clipping,
chunked loss head, metrics and TensorBoard, checkpoints, torchrun with DDP / FSDP2, LoRA,
activation checkpointing) through common.py (LadderConfig extends TrainConfig, Run extends
TrainingRun; sampling with the task's verifier; the scalar-head model).
"""
