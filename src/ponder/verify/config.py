"""The study's sizes (`ponder verify-study` options map onto them one to one)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StudyConfig:
    """Sizes of every part; the defaults are the measured small setting (docs/verify.md)."""

    steps: int = 10  # generator GRPO steps per arm
    prompts_per_step: int = 16  # prompts per generator step
    group_size: int = 8  # completions per prompt; samples per arm = steps x prompts x group
    seeds: tuple[int, ...] = (0,)  # generator seeds per arm
    held_out: int = 200  # test-split problems for the generator's evaluation
    label_problems: int = 1000  # training problems sampled for verifier labels (per checkpoint)
    label_temperatures: tuple[float, ...] = (0.7, 1.0, 1.3)  # sampling temperatures of the labels
    verifier_sft_steps: int = 300  # verifier SFT steps (batch 64): its own work right on 91% of held-out problems
    meta_sft_steps: int = 300  # the meta-verifier's own solver: SFT steps (batch 64), seed 1
    verifier_rl_steps: int = 5  # verifier GRPO steps, plain and meta variant
    test_problems: int = 100  # held-out problems for best-of-N and refinement
    best_of: int = 16  # samples per problem for the selection curve
    refine_rounds: int = 8  # refinement rounds at most
    max_new_tokens: int = 48  # generator completion cap (the demo's)
    out: str = "out/verify-study"  # everything the study writes
    threads: int = 1  # torch threads (the 2-core CPU is shared)
