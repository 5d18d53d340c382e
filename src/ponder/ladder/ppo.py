"""Token-level PPO with a value model (the RLHF recipe: arXiv:1707.06347, arXiv:2203.02155).

    ponder train ppo CONFIG.yaml key=value ...     # or train_ppo(PPOConfig(...))

One step: sample group_size completions for prompts_per_round prompts; score each completion
once, at its last token, by the task's verifier (RLVR with PPO) or by a learned reward model
(`reward: model`, trained by `ponder train rm`: RLHF); optionally subtract a per-token KL
penalty to the starting policy; estimate per-token advantages with GAE from the value model;
then ppo_epochs passes of minibatch updates of the clipped-ratio policy loss and the clipped
value loss.

The value model is a copy of the starting policy with a scalar head (common.ScalarModel), the
choice of InstructGPT, OpenRLHF and TRL's PPO trainer: it starts from features that already read
the task, so its values mean something after a few steps, and having its own weights keeps the
value loss from pulling on the policy. The price is a second full model in memory and in every
update: what GRPO's group baseline removes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ponder.ladder.common import (LadderConfig, Run, ScalarModel, chunks, completion_logprobs, micro_batches,
                                  over_ranks, padded, sample_groups)
from ponder.runtime import distributed
from ponder.runtime.losses import policy_loss
from ponder.runtime.training import autocast, lr_at

log = logging.getLogger("ponder.ladder")


@dataclass
class PPOConfig(LadderConfig):
    output_dir: str = "out/ppo"  # metrics.jsonl, TensorBoard events, plots, final model
    steps: int = 50  # generation rounds, each followed by ppo_epochs passes of minibatch updates
    ppo_epochs: int = 1  # passes over each step's samples
    minibatch_size: int = 512  # samples per optimizer step of the policy and the value model
    gamma: float = 1.0  # GAE discount (1: the verifier's reward at the end counts in full at every token)
    lam: float = 1.0  # GAE lambda: 1 is Monte-Carlo returns (verl's default), 0 one-step TD; below 1 an untrained value model shrinks early tokens' credit, which favours short completions
    clip: float = 0.2  # policy ratio clip: 1 +- clip
    value_clip: float = 0.2  # new values stay within +- value_clip of the values at sampling (clipped value loss)
    kl_coef: float = 0.0  # per-token penalty kl_coef * (logp - ref_logp) in the reward; 0: off, and no reference model is kept
    whiten_advantages: bool = True  # normalise advantages to mean 0, std 1 over the step's completion tokens
    lr: float = 1e-4  # AdamW peak learning rate of the policy
    value_lr: float = 1e-4  # AdamW peak learning rate of the value model (the policy's schedule)
    reward: Literal["verifier", "model"] = "verifier"  # score at a completion's last token: the task's verifier, or a learned reward model
    reward_model: str | None = None  # reward: model: folder written by `ponder train rm`

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.ppo_epochs < 1 or self.minibatch_size < 1:
            raise ValueError("steps, ppo_epochs and minibatch_size must be >= 1")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1 and self.clip > 0 and self.value_clip > 0):
            raise ValueError("need 0 <= gamma, lam <= 1 and clip, value_clip > 0")
        if self.reward == "model" and not self.reward_model:
            raise ValueError("reward: model needs reward_model (a folder written by `ponder train rm`)")


# --- estimators and losses (pure functions; tests/test_ladder_losses.py checks them) -------------------
# The clipped policy loss is the one RL uses (ponder.runtime.losses.policy_loss, "dapo" aggregation:
# the minibatch's token mean, with epsilon_low = epsilon_high = clip).

def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (arXiv:1506.02438) over right-padded rows.

    rewards, values, mask: [B, T]; values[:, t] is V of the state before token t. A row ends
    where its mask does: the state after its last token is terminal (value 0), and whatever
    rewards or values sit in the padding are ignored. Returns (advantages, returns = A + V), zero
    in the padding.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        next_value = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = delta + gamma * lam * running  # 0 throughout the padding: rewards and values are 0 there
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """x shifted and scaled to mean 0, std 1 over the masked entries (zero elsewhere)."""
    n = mask.sum()
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip: float, tokens: float | None = None) -> torch.Tensor:
    """Clipped value loss 0.5 max((V - R)^2, (V_clipped - R)^2), V_clipped = V_old + clip(V - V_old,
    +-clip), summed over masked tokens and divided by `tokens` (default: this batch's)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    per_token = 0.5 * torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return (per_token * mask).sum() / (tokens or mask.sum())


def state_values(value_model: ScalarModel, rows, cfg: LadderConfig, device) -> torch.Tensor:
    """Values [B, L] of the states before each completion token of (prompt ids, completion ids) rows."""
    ids, starts, length, _ = padded(rows, device)
    positions = (starts.unsqueeze(1) - 1 + torch.arange(length, device=device)).clamp(max=ids.size(1) - 1)
    with autocast(device, cfg.dtype):
        return value_model(ids, positions)


# --- the loop ---------------------------------------------------------------------------------------

def train_ppo(cfg: PPOConfig, *, model=None, tokenizer=None, problems=None, eval_problems=None,
              reward_model: ScalarModel | None = None, progress: bool = True) -> dict[str, Any]:
    """PPO as `cfg` says. Returns a summary (held-out accuracy, samples, seconds, models held in
    memory; with a reward model, the gap between its reward and the verifier's)."""
    from ponder.ladder.reward_model import reward as model_reward

    t_start = time.perf_counter()
    # The KL reference is the starting policy: with LoRA the model with its adapter off, else a
    # frozen copy (sharded under FSDP2). The value model starts as a copy too.
    keep_reference = bool(cfg.kl_coef) and cfg.lora is None
    run = Run(cfg, model, tokenizer, problems, eval_problems, copies=1 + keep_reference)
    device = run.device
    critic_module = ScalarModel(run.copies.pop())
    critic, critic_optimizer = run.add_model("critic", critic_module, cfg.value_lr)
    critic_params = [p for p in critic_module.parameters() if p.requires_grad]
    reference = run.frozen(run.copies.pop()) if keep_reference else None
    if cfg.reward == "model" and reward_model is None:
        reward_model = ScalarModel.load(cfg.reward_model)
    if reward_model is not None:
        reward_model = run.frozen(reward_model)
    models = 2 + (reference is not None) + (cfg.reward == "model")
    shuffle = torch.Generator().manual_seed(cfg.seed)
    saved = run.resume()
    metrics = run.start_metrics(saved)
    done = samples = 0
    if saved is not None:
        shuffle.set_state(saved["shuffle"])
        done, samples = saved["step"], saved["samples"]
    world = distributed.world()

    def fixed(part):
        """Per row: the sampling policy's log-probs, the values and the reference's log-probs."""
        logp, _ = completion_logprobs(run.net, part, cfg, device)
        values = state_values(critic, part, cfg, device).float()
        ref = None
        if cfg.kl_coef and reference is not None:
            ref = completion_logprobs(reference, part, cfg, device)[0]
        elif cfg.kl_coef:
            with run.reference():
                ref = completion_logprobs(run.net, part, cfg, device)[0]
        return [(logp[i, :len(c)].cpu(), values[i, :len(c)].cpu(), None if ref is None else ref[i, :len(c)].cpu())
                for i, (_, c) in enumerate(part)]

    for step in range(done + 1, cfg.steps + 1):
        lr = run.set_step_lr(step, cfg.steps)
        run.set_lr(lr_at(cfg, step, cfg.steps, cfg.value_lr / cfg.lr), critic_optimizer)
        flat = [s for g in sample_groups(run, run.stream.take(cfg.prompts_per_round), step) for s in g]
        samples += len(flat)
        rows = [(s.prompt_ids, s.token_ids) for s in flat]
        verifier = torch.tensor([s.reward for s in flat], device=device)
        score = verifier
        if cfg.reward == "model":
            score = torch.tensor(over_ranks(run, rows, lambda part: model_reward(reward_model, part, cfg, device).tolist()),
                                 device=device)
        record: dict[str, Any] = {"step": step, "lr": lr, "accuracy": verifier.mean().item(),
                                  "reward": score.mean().item()}
        if cfg.reward == "model":
            record["reward_gap"] = (score - verifier).mean().item()
            record["reward_agreement"] = ((score > 0.5).float() == verifier).float().mean().item()

        # Everything the update compares against is fixed here, before the first optimizer step.
        length = max(len(c) for _, c in rows)
        old_logp = torch.zeros(len(rows), length, device=device)
        old_values, ref_logp, mask = torch.zeros_like(old_logp), torch.zeros_like(old_logp), torch.zeros_like(old_logp)
        for i, (logp, values, ref) in enumerate(over_ranks(run, rows, fixed)):
            n = len(logp)
            old_logp[i, :n], old_values[i, :n], mask[i, :n] = logp.to(device), values.to(device), 1.0
            if ref is not None:
                ref_logp[i, :n] = ref.to(device)
        kl = cfg.kl_coef != 0
        token_rewards = -cfg.kl_coef * (old_logp - ref_logp) * mask if kl else torch.zeros_like(mask)
        last = mask.sum(-1).long() - 1
        token_rewards[torch.arange(len(rows), device=device), last] += score.float()
        advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        if kl:
            record["kl"] = (((old_logp - ref_logp) * mask).sum() / mask.sum()).item()

        totals = {"policy_loss": 0.0, "value_loss": 0.0, "clipped": 0.0}
        tokens_seen = 0.0
        for _ in range(cfg.ppo_epochs):
            for mb in chunks(torch.randperm(len(rows), generator=shuffle).tolist(), cfg.minibatch_size):
                tokens = mask[mb].sum().item()  # the minibatch's, over every rank
                parts = micro_batches(run, mb, cfg.micro_batch_size)
                for b, (idx, real) in enumerate(parts):
                    part = [rows[i] for i in idx]
                    with run.accumulate(b, len(parts)), distributed.no_sync(critic, b == len(parts) - 1):
                        logp, m = completion_logprobs(run.net, part, cfg, device)
                        width = m.size(1)
                        pl, stats = policy_loss(logp, old_logp[idx, :width], advantages[idx, :width], m,
                                                loss_type="dapo", epsilon_low=cfg.clip, epsilon_high=cfg.clip,
                                                batch_sequences=len(mb), batch_tokens=tokens,
                                                max_completion_length=cfg.max_new_tokens)
                        vl = value_loss(state_values(critic, part, cfg, device), old_values[idx, :width],
                                        returns[idx, :width], m, cfg.value_clip, tokens)
                        # DDP / FSDP average gradients over ranks; the minibatch's loss needs their sum.
                        ((pl + vl) * float(real) * world).backward()
                    if real:
                        totals["policy_loss"] += pl.item()
                        totals["value_loss"] += vl.item()
                        totals["clipped"] += stats["clip_low"] + stats["clip_high"]
                tokens_seen += tokens
                record["grad_norm"] = run.step()
                run.step(critic_params, critic_optimizer)
        totals = dict(zip(totals, distributed.all_sum(list(totals.values())).tolist()))
        updates = cfg.ppo_epochs * len(chunks(range(len(rows)), cfg.minibatch_size))
        record.update({"policy_loss": totals["policy_loss"] / updates, "value_loss": totals["value_loss"] / updates,
                       "clip_frac": totals["clipped"] / max(tokens_seen, 1.0),
                       "value_mean": ((old_values * mask).sum() / mask.sum()).item(), "samples": samples})
        if run.due(step, cfg.steps):
            record.update(run.evaluate())
        metrics.log(record)
        if run.checkpoint_due(step, cfg.steps):
            run.save(step, {"samples": samples, "shuffle": shuffle.get_state(), "history": metrics.history})
        if progress and distributed.is_main() and (step % 10 == 0 or step == cfg.steps):
            log.info(f"ppo step {step}/{cfg.steps}: sampled accuracy {record['accuracy']:.3f}, "
                     f"reward {record['reward']:.3f}, held-out {record.get('eval/accuracy', float('nan')):.3f}")
    series = {"ppo_reward": ["accuracy", "reward", "eval/accuracy"], "ppo_losses": ["policy_loss", "value_loss"]}
    summary = run.finish(metrics.history, series)
    metrics.close()
    gaps = [r["reward_gap"] for r in metrics.history if "reward_gap" in r]
    return {**summary, "steps": cfg.steps, "samples": samples, "models_in_memory": models,
            "reward_gap_first": gaps[0] if gaps else None, "reward_gap_last": gaps[-1] if gaps else None,
            "seconds": time.perf_counter() - t_start}
