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

from ponder.ladder.common import (LadderConfig, ScalarModel, chunks, clip_and_step, completion_logprobs, copy_decoder,
                                  padded, round_seed, sample_groups, start)
from ponder.runtime.training import ProblemStream, adamw, autocast

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
    lr: float = 1e-4  # AdamW learning rate of the policy (constant)
    value_lr: float = 1e-4  # AdamW learning rate of the value model (constant)
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


# --- estimators and losses (pure functions; tests/test_ladder_ppo.py checks them) ----------------------

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


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                clip: float, tokens: float | None = None) -> tuple[torch.Tensor, float]:
    """PPO's clipped surrogate, -min(r A, clip(r, 1-clip, 1+clip) A) per token, summed over masked
    tokens and divided by `tokens` (default: this batch's; pass the minibatch's when accumulating).
    Returns the loss and how many tokens had their ratio clipped."""
    ratio = torch.exp(logp - old_logp)
    per_token = torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip, 1 + clip))
    clipped = float((((ratio - 1).abs() > clip).to(mask.dtype) * mask).sum())
    return (per_token * mask).sum() / (tokens or mask.sum()), clipped


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
    run = start(cfg, model, tokenizer, problems, eval_problems)
    device = run.device
    engine = run.engine()
    policy_params = [p for p in run.model.parameters() if p.requires_grad]
    optimizer = run.optimizer(policy_params)
    critic = ScalarModel(copy_decoder(run.model)).to(device).train()
    critic_optimizer = adamw(critic.parameters(), cfg.value_lr)
    reference = copy_decoder(run.model).eval().requires_grad_(False) if cfg.kl_coef else None
    if cfg.reward == "model" and reward_model is None:
        reward_model = ScalarModel.load(cfg.reward_model)
    if reward_model is not None:
        reward_model = reward_model.to(device).eval().requires_grad_(False)
    models = 2 + (reference is not None) + (cfg.reward == "model")
    prompts = ProblemStream(len(run.problems), cfg.seed)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    trained = {"policy": run.model, "critic": critic}  # the reference and the reward model stay as loaded
    saved = run.resume(trained, [optimizer, critic_optimizer])
    metrics = run.metrics(engine, saved)
    if saved is None:
        done = samples = 0
    else:
        prompts = ProblemStream(**saved["prompts"])
        shuffle.set_state(saved["shuffle"])
        done, samples = saved["step"], saved["samples"]
    for step in range(done + 1, cfg.steps + 1):
        flat = [s for g in sample_groups(run, engine, prompts.take(cfg.prompts_per_round), round_seed(cfg.seed, step))
                for s in g]
        samples += len(flat)
        rows = [(s.prompt_ids, s.token_ids) for s in flat]
        verifier = torch.tensor([s.reward for s in flat], device=device)
        score = model_reward(reward_model, rows, cfg, device) if cfg.reward == "model" else verifier
        record: dict[str, Any] = {"step": step, "accuracy": verifier.mean().item(), "reward": score.mean().item()}
        if cfg.reward == "model":
            record["reward_gap"] = (score - verifier).mean().item()
            record["reward_agreement"] = ((score > 0.5).float() == verifier).float().mean().item()

        # Everything the update compares against is fixed here, before the first optimizer step.
        length = max(len(c) for _, c in rows)
        old_logp = torch.zeros(len(rows), length, device=device)
        old_values, ref_logp, mask = torch.zeros_like(old_logp), torch.zeros_like(old_logp), torch.zeros_like(old_logp)
        with torch.no_grad():
            for idx in chunks(list(range(len(rows))), cfg.micro_batch_size):
                part = [rows[i] for i in idx]
                logp, m = completion_logprobs(run.model, part, cfg, device)
                old_logp[idx, :m.size(1)], mask[idx, :m.size(1)] = logp, m
                old_values[idx, :m.size(1)] = state_values(critic, part, cfg, device).float()
                if reference is not None:
                    ref_logp[idx, :m.size(1)] = completion_logprobs(reference, part, cfg, device)[0]
        token_rewards = -cfg.kl_coef * (old_logp - ref_logp) * mask if reference is not None else torch.zeros_like(mask)
        last = mask.sum(-1).long() - 1
        token_rewards[torch.arange(len(rows), device=device), last] += score.float()
        advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = whiten(advantages, mask)
        if reference is not None:
            record["kl"] = (((old_logp - ref_logp) * mask).sum() / mask.sum()).item()

        totals = {"policy_loss": 0.0, "value_loss": 0.0, "clipped": 0.0, "tokens": 0.0}
        for _ in range(cfg.ppo_epochs):
            for mb in chunks(torch.randperm(len(rows), generator=shuffle).tolist(), cfg.minibatch_size):
                tokens = mask[mb].sum().item()
                for idx in chunks(mb, cfg.micro_batch_size):
                    part = [rows[i] for i in idx]
                    logp, m = completion_logprobs(run.model, part, cfg, device)
                    width = m.size(1)
                    pl, clipped = policy_loss(logp, old_logp[idx, :width], advantages[idx, :width], m, cfg.clip, tokens)
                    pl.backward()
                    vl = value_loss(state_values(critic, part, cfg, device), old_values[idx, :width],
                                    returns[idx, :width], m, cfg.value_clip, tokens)
                    vl.backward()
                    totals["policy_loss"] += pl.item()
                    totals["value_loss"] += vl.item()
                    totals["clipped"] += clipped
                totals["tokens"] += tokens
                record["grad_norm"] = clip_and_step(policy_params, optimizer, cfg.max_grad_norm)
                clip_and_step(list(critic.parameters()), critic_optimizer, cfg.max_grad_norm)
        updates = cfg.ppo_epochs * len(chunks(range(len(rows)), cfg.minibatch_size))
        record.update({"policy_loss": totals["policy_loss"] / updates, "value_loss": totals["value_loss"] / updates,
                       "clip_frac": totals["clipped"] / max(totals["tokens"], 1.0),
                       "value_mean": ((old_values * mask).sum() / mask.sum()).item(), "samples": samples})
        if run.due(step, cfg.steps):
            record.update(run.evaluate(engine))
        metrics.log(record)
        run.save(step, trained, [optimizer, critic_optimizer], {
            "step": step, "samples": samples, "prompts": prompts.state(), "shuffle": shuffle.get_state(),
            "history": metrics.history})
        if progress and (step % 10 == 0 or step == cfg.steps):
            log.info(f"ppo step {step}/{cfg.steps}: sampled accuracy {record['accuracy']:.3f}, "
                     f"reward {record['reward']:.3f}, held-out {record.get('eval/accuracy', float('nan')):.3f}")
    metrics.close()
    series = {"ppo_reward": ["accuracy", "reward", "eval/accuracy"], "ppo_losses": ["policy_loss", "value_loss"]}
    summary = run.finish(metrics.history, series)
    gaps = [r["reward_gap"] for r in metrics.history if "reward_gap" in r]
    return {**summary, "steps": cfg.steps, "samples": samples, "models_in_memory": models,
            "reward_gap_first": gaps[0] if gaps else None, "reward_gap_last": gaps[-1] if gaps else None,
            "seconds": time.perf_counter() - t_start}
