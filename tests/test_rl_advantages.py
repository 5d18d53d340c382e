"""Advantages against TRL 1.16's GRPOTrainer.

TRL computes advantages inline in `_generate_and_score_completions` (no helper to import), so
`trl_advantages` below transcribes that block (grpo_trainer.py, "unscorable_mask" through
"nan_to_num") line for line, using TRL's own `nanstd`.
"""

import math

import pytest
import torch

from ponder.rl.advantages import advantages, combine, nanstd, zero_variance_groups

trl_utils = pytest.importorskip("trl.trainer.utils", reason="trl is a test extra")
NAN = float("nan")


def trl_advantages(rewards_per_func, weights, num_generations, scale_rewards, aggregation):
    nanstd_ = trl_utils.nanstd
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    if aggregation == "sum_then_normalize":
        rewards = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
        mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
        if scale_rewards in ["group", "none"]:
            std_rewards = nanstd_(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:
            std_rewards = nanstd_(rewards).expand_as(rewards)
        adv = rewards - mean_grouped_rewards
        if scale_rewards != "none":
            adv = adv / (std_rewards + 1e-4)
    else:
        k = rewards_per_func.size(1)
        grouped = rewards_per_func.view(-1, num_generations, k)
        mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
        std_k = nanstd_(grouped, dim=1, keepdim=True)
        reward_k = ((grouped - mean_k) / (std_k + 1e-4)).view(-1, k)
        rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
        rewards[unscorable_mask] = torch.nan
        std_rewards = nanstd_(rewards).expand_as(rewards)
        adv = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


def rewards_with_gaps(seed, groups=4, g=4, k=2):
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, 3, (groups * g, k), generator=gen).float()
    r[1, 0] = NAN  # one reward not applicable
    r[5] = NAN  # every reward None: advantage must be 0
    r[8:12, 0] = 1.0  # a group equal in the first reward
    r[8:12, 1] = 2.0  # ... and in the second: zero variance
    return r


@pytest.mark.parametrize("estimator,trl_scale", [("grpo", "group"), ("dr_grpo", "none"), ("none", "none"),
                                                 ("batch", "batch")])
def test_weighted_sum_then_normalise_matches_trl(estimator, trl_scale):
    r = rewards_with_gaps(0)
    w = torch.tensor([1.0, 0.5])
    ours = advantages(r, 4, estimator, w, "sum")
    theirs = trl_advantages(r, w, 4, trl_scale, "sum_then_normalize")
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert ours[5] == 0
    assert torch.all(ours[8:12] == 0)


def test_gdpo_matches_trl_normalize_then_sum():
    r = rewards_with_gaps(1)
    r[3, 1] = 7.0  # a large-scale outlier in one reward
    w = torch.tensor([1.0, 2.0])
    ours = advantages(r, 4, "grpo", w, "gdpo")
    theirs = trl_advantages(r, w, 4, "group", "normalize_then_sum")
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert ours[5] == 0


def test_grpo_by_hand():
    r = torch.tensor([[1.0], [0.0], [0.0], [0.0]])
    std = math.sqrt(0.25)  # Bessel: values 1,0,0,0 -> var = (0.5625 + 3 * 0.0625) / 3
    adv = advantages(r, 4, "grpo")
    assert adv[0].item() == pytest.approx(0.75 / (std + 1e-4))
    assert adv[1].item() == pytest.approx(-0.25 / (std + 1e-4))
    assert torch.allclose(advantages(r, 4, "dr_grpo"), torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_zero_variance_groups_ignore_none():
    total = torch.tensor([1.0, 1.0, NAN, 1.0, 0.0, 1.0, 0.0, 0.0, NAN, NAN, NAN, NAN])
    assert zero_variance_groups(total, 4).tolist() == [True, False, True]
    assert nanstd(torch.tensor([2.0, NAN])).isnan()


def test_bad_shapes_and_names_are_errors():
    with pytest.raises(ValueError, match="groups of 4"):
        combine(torch.zeros(6, 1), None, 4)
    with pytest.raises(ValueError, match="weights"):
        combine(torch.zeros(4, 2), torch.ones(3), 4)
    with pytest.raises(ValueError, match="estimator"):
        advantages(torch.zeros(4, 1), 4, "ppo")
