"""RLConfig: every option of `ponder train rl`, with its default and where the idea comes from.

A YAML file maps onto it one to one (`ponder.config.load_config`); `key=value` overrides follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ponder.runtime.training import TrainConfig


@dataclass
class RLConfig(TrainConfig):
    """RL options; the model, optimisation, memory, device and checkpoint options every trainer
    shares come from ponder.runtime.training.TrainConfig."""

    # --- data ---
    task: str = "multiply:train"  # ponder.tasks name of the training problems (e.g. math500, multiply:train)
    task_path: str | None = None  # data file for a file-backed task
    task_split: str | None = None  # split of a Hugging Face dataset task_path (e.g. train); None: its only split
    eval_split: str | None = None  # split of a Hugging Face dataset eval_path (e.g. test); None: its only split
    prompt_column: str | None = None  # task jsonl (your own records): field holding the prompt; None: "prompt" or "problem"
    answer_column: str | None = None  # task jsonl: field holding the gold answer; None: "answer"
    task_limit: int | None = None  # use only the first N training problems
    eval_task: str | None = None  # held-out problems for greedy evaluation; None: no held-out eval
    eval_path: str | None = None  # data file for the held-out task
    eval_limit: int | None = 64  # held-out problems per evaluation
    chat: bool | None = None  # wrap prompts in the chat template; None: when the checkpoint ships one (ponder.evaluate.prompts, as `ponder eval`)
    instruction: str | None = None  # appended to math and your own problems after a blank line; None: ponder.evaluate.prompts.MATH_INSTRUCTION; "": none
    extract: Literal["lenient", "strict"] = "lenient"  # how the "correct" reward, accuracy and eval read a math answer: lenient (a box, else an answer line, else the last number: as `ponder eval`) or strict (a box or an answer line only)
    enable_thinking: bool = True  # chat template: leave thinking on (False writes an empty think block)
    output_dir: str = "out/rl"  # checkpoints, metrics.jsonl, TensorBoard events, plots, final model

    # --- rewards ---
    rewards: list[str] = field(default_factory=lambda: ["correct"])  # reward functions: "correct" (the task's verifier), a name in ponder.rewards, or "module:function"
    reward_weights: list[float] | None = None  # one weight per reward; None: all 1
    reward_aggregation: Literal["sum", "gdpo"] = "sum"  # "sum": weighted sum then normalise; "gdpo": normalise each reward in its group first (GDPO, arXiv:2601.05242)

    # --- sampling ---
    prompts_per_step: int = 8  # distinct prompts per step
    group_size: int = 8  # G: completions per prompt (GRPO, arXiv:2402.03300)
    max_new_tokens: int = 64  # completion cap; truncated completions count as "length"
    temperature: float = 1.0  # sampling temperature; log-probs are taken on logits / temperature
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    stop_strings: list[str] = field(default_factory=list)  # extra stop strings besides the eos token
    tool: Literal["none", "calculator", "python"] = "none"  # tool-integrated reasoning (ponder.tools): run the policy's <calc> (in-process) or ```python (sandbox) blocks and force their output, masked from the loss (ToRL, arXiv:2503.23383); held-out evaluation uses it too

    # --- advantages and loss ---
    advantage: Literal["grpo", "dr_grpo", "none", "batch"] = "grpo"  # grpo: group mean+std; dr_grpo/none: group mean only (Dr. GRPO, arXiv:2503.20783); batch: group mean, batch std (arXiv:2508.08221)
    loss_type: Literal["grpo", "dr_grpo", "dapo"] = "dapo"  # aggregation: grpo per-sequence mean; dr_grpo token sum / (B x max_new_tokens); dapo token sum / loss tokens in the batch (DAPO, arXiv:2503.14476)
    importance_sampling: Literal["token", "sequence"] = "token"  # sequence: one ratio per completion (GSPO, arXiv:2507.18071)
    epsilon_low: float = 0.2  # lower clip bound of the ratio, 1 - epsilon_low (PPO)
    epsilon_high: float = 0.28  # upper clip bound, 1 + epsilon_high; above epsilon_low is clip-higher (DAPO)
    mu: int = 1  # policy updates per generated batch (GRPO's mu); > 1 reuses samples with clipped ratios
    beta: float = 0.0  # weight of the k3 KL to the initial policy; 0 (off) as in DAPO and Dr. GRPO
    dynamic_sampling: bool = False  # drop groups whose rewards are all equal and sample more prompts (DAPO)
    max_sampling_tries: int = 3  # generation rounds per step when dynamic sampling refills the batch
    overlong: Literal["none", "mask", "soft"] = "none"  # mask: truncated completions leave the loss (DAPO overlong filtering); soft: length penalty reward (DAPO soft overlong punishment)
    overlong_buffer: int = 16  # soft: the penalty ramps from 0 to -overlong_penalty over the last N tokens of the cap
    overlong_penalty: float = 1.0  # soft: penalty at the cap
    truncation_warning: float = 0.5  # warn loudly when more than this share of completions hits the cap

    # --- optimisation ---
    steps: int = 50  # optimizer steps (one generated batch each, times mu)

    # --- evaluation, rollback ---
    eval_every: int = 10  # held-out greedy evaluation every N steps (and at the end); 0: only at the end
    rollback: bool = True  # on collapse return to the last good checkpoint with a lower lr
    rollback_lr_factor: float = 0.5  # lr multiplier applied at each rollback
    rollback_eval_drop: float = 0.25  # collapse when held-out accuracy falls this far (absolute) below its best
    rollback_entropy_factor: float = 4.0  # collapse when entropy exceeds this multiple of its running mean
    max_rollbacks: int = 3  # give up (error) after this many rollbacks

    # --- mixture-of-experts policies ---
    routing_bias_gamma: float = 0.0  # DeepSeek-V3 auxiliary-loss-free balancing: bias += gamma * sign(mean load - load) after each step; 0: off

    def __post_init__(self) -> None:
        super().__post_init__()
        positive = ("prompts_per_step", "max_new_tokens", "mu", "steps", "max_sampling_tries")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "max_rollbacks", "overlong_buffer"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (greedy sampling gives GRPO no variance)")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2, got {self.group_size}: GRPO compares each completion "
                             "with the others of its group, so one alone has no advantage")
        if not 0 <= self.epsilon_low < 1 or self.epsilon_high < 0:
            raise ValueError(f"need 0 <= epsilon_low < 1 and epsilon_high >= 0, got {self.epsilon_low}, {self.epsilon_high}")
        if self.reward_weights is not None and len(self.reward_weights) != len(self.rewards):
            raise ValueError(f"{len(self.reward_weights)} reward_weights for {len(self.rewards)} rewards")
        if not self.rewards:
            raise ValueError("rewards: give at least one reward function")
        if self.routing_bias_gamma < 0:
            raise ValueError("routing_bias_gamma must be >= 0")
        if not 0 < self.rollback_lr_factor <= 1:
            raise ValueError("rollback_lr_factor must be in (0, 1]")
        if self.overlong == "soft" and not 0 < self.overlong_buffer < self.max_new_tokens:
            raise ValueError("overlong='soft' needs 0 < overlong_buffer < max_new_tokens")
