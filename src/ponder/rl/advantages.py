"""Group-relative advantages: rewards of G completions per prompt -> one advantage per completion.

Rewards arrive as a [N, K] tensor (N = prompts x G completions, grouped contiguously; K reward
functions), NaN where a reward function returned None. Estimators are small pure functions looked
up by name in ESTIMATORS; `advantages()` combines several rewards first. Formulas follow TRL 1.16's
GRPOTrainer (Bessel-corrected std, +1e-4 in the denominator) so results can be compared with it.
"""

from __future__ import annotations

import torch

EPS = 1e-4  # added to the std, as TRL does; keeps all-equal groups finite


def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """Bessel-corrected std ignoring NaNs; NaN where fewer than two values are present."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    var = torch.where(count > 1, var * count / (count - 1).clamp(min=1), torch.full_like(var, float("nan")))
    std = var.sqrt()
    if keepdim:
        return std
    return std.squeeze() if dim is None else std.squeeze(dim)


def _group_mean(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    return torch.nanmean(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)


def _group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size == 1:
        return torch.zeros_like(rewards)
    return nanstd(rewards.view(-1, group_size), dim=1).repeat_interleave(group_size)


def grpo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + 1e-4) (GRPO, DeepSeekMath, arXiv:2402.03300)."""
    return (rewards - _group_mean(rewards, group_size)) / (_group_std(rewards, group_size) + EPS)


def dr_grpo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r - group mean, no std scaling (Dr. GRPO, arXiv:2503.20783: the std over-weights easy/hard groups)."""
    return rewards - _group_mean(rewards, group_size)


def batch(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (batch std + 1e-4) (batch scaling as in Lite PPO, arXiv:2508.08221)."""
    std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    return (rewards - _group_mean(rewards, group_size)) / (std + EPS)


ESTIMATORS = {"grpo": grpo, "dr_grpo": dr_grpo, "none": dr_grpo, "batch": batch}


def combine(
    per_reward: torch.Tensor, weights: torch.Tensor | None, group_size: int, aggregation: str = "sum"
) -> torch.Tensor:
    """One scalar reward per completion from [N, K] rewards (NaN = None); NaN when all K are None.

    "sum": weighted sum of the raw rewards. "gdpo": each reward normalised within its group first
    (GDPO, arXiv:2601.05242: keeps one high-variance reward from drowning out the others), then weighted
    and summed; `advantages()` then normalises that sum over the batch.
    """
    n, k = per_reward.shape
    if n % group_size:
        raise ValueError(f"{n} completions do not split into groups of {group_size}")
    w = torch.ones(k, dtype=per_reward.dtype) if weights is None else weights.to(per_reward.dtype)
    if w.numel() != k:
        raise ValueError(f"{w.numel()} reward weights for {k} reward functions")
    unscorable = torch.isnan(per_reward).all(dim=1)
    if aggregation == "sum":
        total = (per_reward * w).nansum(dim=1)
    elif aggregation == "gdpo":
        grouped = per_reward.view(-1, group_size, k)
        mean = torch.nanmean(grouped, dim=1, keepdim=True)
        std = nanstd(grouped, dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(mean)
        total = (((grouped - mean) / (std + EPS)).view(n, k) * w).nansum(dim=1)
    else:
        raise ValueError(f"unknown reward aggregation {aggregation!r} (sum or gdpo)")
    total[unscorable] = float("nan")
    return total


def advantages(
    per_reward: torch.Tensor,
    group_size: int,
    estimator: str = "grpo",
    weights: torch.Tensor | None = None,
    aggregation: str = "sum",
) -> torch.Tensor:
    """Advantage per completion; 0 for a completion whose rewards are all None.

    With aggregation "gdpo" the estimator is not used: the summed group-normalised rewards are
    normalised over the whole batch, as GDPO prescribes.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r} (one of {', '.join(ESTIMATORS)})")
    total = combine(per_reward, weights, group_size, aggregation)
    if aggregation == "gdpo":
        std = nanstd(total).expand_as(total) if total.numel() > 1 else torch.zeros_like(total)
        adv = (total - torch.nanmean(total)) / (std + EPS)
    else:
        adv = ESTIMATORS[estimator](total, group_size)
    return torch.nan_to_num(adv, nan=0.0)


def zero_variance_groups(total: torch.Tensor, group_size: int) -> torch.Tensor:
    """Bool per group: True where every scorable completion got the same reward (no learning signal)."""
    grouped = total.view(-1, group_size)
    lo = torch.where(torch.isnan(grouped), torch.full_like(grouped, float("inf")), grouped).amin(dim=1)
    hi = torch.where(torch.isnan(grouped), torch.full_like(grouped, float("-inf")), grouped).amax(dim=1)
    return ~(hi > lo)
