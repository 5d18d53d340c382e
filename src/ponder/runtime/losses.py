"""The clipped-ratio policy loss every policy-gradient method here shares: GRPO and its family
(ponder.rl) with one advantage per completion, PPO (ponder.ladder.ppo) with one per token. Log-probs
come from ponder.models.token_logprobs.

`policy_loss` is the clipped-ratio objective with
clip-higher, token- or sequence-level (GSPO) ratios, an optional k3 KL term, and three
aggregations (PPO's per-token mean over the minibatch is "dapo" with epsilon_low = epsilon_high). Each aggregation divides by a count of the WHOLE batch (passed in), so the losses of
the micro-batches sum to the batch loss and gradient accumulation needs no further scaling.
Formulas match TRL 1.16's GRPOTrainer._compute_loss; tests/test_rl_losses.py checks it.
"""

from __future__ import annotations

import torch

LOSS_TYPES = ("grpo", "dr_grpo", "dapo")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    loss_type: str = "dapo",
    level: str = "token",
    epsilon_low: float = 0.2,
    epsilon_high: float = 0.28,
    beta: float = 0.0,
    ref_logp: torch.Tensor | None = None,
    batch_sequences: int,
    batch_tokens: int,
    max_completion_length: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate loss of one micro-batch, scaled to its share of the whole batch's loss.

    logp, old_logp, ref_logp, mask: [B, T]; advantages: [B] (one per completion) or [B, T] (one
    per token, as PPO's GAE gives). old_logp None means "the policy that
    sampled is this one" (mu = 1): the ratio is 1 with the policy gradient attached.
    batch_sequences / batch_tokens: completions / loss tokens in the whole accumulated batch.
    Returns the loss and sums for metrics (clip_low, clip_high, kl over loss tokens; tokens).
    """
    mask = mask.to(logp.dtype)
    if old_logp is None:
        old_logp = logp.detach()
    log_ratio = logp - old_logp
    if level == "token":
        log_w = log_ratio
    elif level == "sequence":
        # GSPO (arXiv:2507.18071): one ratio per sequence, the geometric mean of its token ratios.
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"unknown importance sampling level {level!r} (token or sequence)")
    ratio = torch.exp(log_w)
    adv = advantages.to(logp.dtype)
    adv = adv if adv.dim() == 2 else adv.unsqueeze(1)
    # Clip-higher (DAPO, arXiv:2503.14476): a wider upper bound lets rare good tokens grow.
    clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
    per_token = -torch.min(ratio * adv, clipped * adv)
    kl = None
    if beta != 0.0:
        if ref_logp is None:
            raise ValueError("beta != 0 needs the reference model's log-probs")
        # k3 estimator of KL(pi || ref) (Schulman 2020), unbiased and always >= 0.
        kl = torch.exp(ref_logp - logp) - (ref_logp - logp) - 1
        per_token = per_token + beta * kl

    if loss_type == "grpo":
        # Mean over sequences of each sequence's token mean (GRPO as published; length-biased).
        loss = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).sum() / batch_sequences
    elif loss_type == "dr_grpo":
        # Token sum over a constant (Dr. GRPO, arXiv:2503.20783): no length bias.
        loss = (per_token * mask).sum() / (batch_sequences * max_completion_length)
    elif loss_type == "dapo":
        # Token sum over all loss tokens of the batch (DAPO token-level loss).
        loss = (per_token * mask).sum() / max(batch_tokens, 1)
    else:
        raise ValueError(f"unknown loss type {loss_type!r} (one of {', '.join(LOSS_TYPES)})")

    with torch.no_grad():
        r = ratio.expand_as(logp)
        a = adv.expand_as(logp)
        stats = {
            "clip_low": float((((r < 1 - epsilon_low) & (a < 0)).to(mask.dtype) * mask).sum()),
            "clip_high": float((((r > 1 + epsilon_high) & (a > 0)).to(mask.dtype) * mask).sum()),
            "kl": float((kl * mask).sum()) if kl is not None else 0.0,
            "tokens": float(mask.sum()),
        }
    return loss, stats
