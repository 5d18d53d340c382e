"""ponder's GRPO-family loss and gradient against TRL 1.16's GRPOTrainer._compute_loss.

TRL's own `_compute_loss` runs here, unbound, on a stand-in `self` that carries the settings and
returns our per-token log-probs: the loss formula compared is TRL's code, not a transcription.
TRL's per-token log-probs are rebuilt with TRL's `selective_log_softmax` on temperature-scaled
logits of the completion positions (what its fused lm_head computes).
"""

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from ponder.models import token_logprobs
from ponder.rl.losses import policy_loss

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer", reason="trl is a test extra")
from trl.trainer.utils import selective_log_softmax  # noqa: E402

VOCAB, HID, P, L, TEMP = 11, 8, 3, 6, 0.7


class TinyCausalLM(torch.nn.Module):
    """A few hundred parameters with a causal hidden(): enough to check where gradients flow."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(VOCAB, HID)
        self.mix = torch.nn.Linear(HID, HID)
        self.head = torch.nn.Linear(HID, VOCAB, bias=False)

    def hidden(self, ids):
        e = self.emb(ids)
        causal_mean = e.cumsum(1) / torch.arange(1, ids.size(1) + 1).view(1, -1, 1)
        return torch.tanh(self.mix(causal_mean) + e)

    def logits(self, h):
        return self.head(h)

    def forward(self, ids, head=None):
        hidden = self.hidden(ids)
        return self.logits(hidden) if head is None else head(hidden, self.logits)


def make_batch(seed, batch=4):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, VOCAB, (batch, P), generator=g)
    completion = torch.randint(0, VOCAB, (batch, L), generator=g)
    lengths = torch.tensor([L, 2, 4, 1, 5, 3, L, 2][:batch])
    mask = (torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)).long()
    completion = completion * mask  # pad id 0 after each row's end
    adv = torch.randn(batch, generator=g)
    return prompt, completion, mask, adv


def trl_self(loss_type, level, eps_low, eps_high, beta, accum, logps, entropies):
    """The attributes _compute_loss reads, for one process, no vLLM, no entropy tricks."""
    identity = lambda x, **_: x  # noqa: E731
    return SimpleNamespace(
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=level,
        beta=beta,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=accum),
        loss_type=loss_type,
        epsilon_low=eps_low,
        epsilon_high=eps_high,
        use_vllm=False,
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=accum,
        max_completion_length=L,
        accelerator=SimpleNamespace(num_processes=1, gather=identity, reduce=identity, gather_for_metrics=identity),
        _entropy_bonus_enabled=False,
        aux_loss_enabled=False,
        _metrics={"train": defaultdict(list)},
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, entropies, None),
    )


def trl_logps(model, prompt, completion):
    ids = torch.cat([prompt, completion], 1)
    logits = model(ids)[:, :-1][:, -L:] / TEMP
    return selective_log_softmax(logits, completion)


def grads(model):
    out = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return out


CASES = [
    (loss_type, level, beta, off_policy)
    for loss_type in ("grpo", "dr_grpo", "dapo")
    for level in ("token", "sequence")
    for beta in (0.0, 0.04)
    for off_policy in (False, True)
]


@pytest.mark.parametrize("loss_type,level,beta,off_policy", CASES)
def test_loss_and_gradient_match_trl(loss_type, level, beta, off_policy):
    torch.manual_seed(0)
    model = TinyCausalLM()
    eps_low, eps_high = 0.2, 0.28
    micro = [make_batch(1), make_batch(2)]  # two micro-batches of one accumulated batch
    total_tokens = sum(int(m[2].sum()) for m in micro)
    total_seqs = sum(m[0].size(0) for m in micro)
    g = torch.Generator().manual_seed(3)
    # mu > 1: the sampling policy differs from the current one by enough to hit both clip bounds.
    olds = [torch.randn(m[0].size(0), L, generator=g) * 0.4 if off_policy else None for m in micro]
    refs = [torch.randn(m[0].size(0), L, generator=g) * 0.3 for m in micro]

    ponder_losses, trl_losses = [], []
    for (prompt, completion, mask, adv), old, ref in zip(micro, olds, refs):
        ids = torch.cat([prompt, completion], 1)
        logp, _ = token_logprobs(model, ids, torch.full((ids.size(0),), P), L, TEMP)
        old_logp = None if old is None else logp.detach() + old
        ref_logp = logp.detach() + ref
        loss, _ = policy_loss(
            logp, old_logp, adv, mask, loss_type=loss_type, level=level, epsilon_low=eps_low,
            epsilon_high=eps_high, beta=beta, ref_logp=ref_logp, batch_sequences=total_seqs,
            batch_tokens=total_tokens, max_completion_length=L,
        )
        loss.backward()
        ponder_losses.append(loss.detach())
    ponder_grads = grads(model)

    for (prompt, completion, mask, adv), old, ref in zip(micro, olds, refs):
        logps = trl_logps(model, prompt, completion)
        inputs = {
            "prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt),
            "completion_ids": completion, "completion_mask": mask, "advantages": adv,
            "num_items_in_batch": torch.tensor(float(total_tokens)),
            "ref_per_token_logps": logps.detach() + ref,
        }
        if old is not None:
            inputs["old_per_token_logps"] = logps.detach() + old
        fake = trl_self(loss_type, level, eps_low, eps_high, beta, 2, logps, torch.zeros_like(logps))
        loss = trl_grpo.GRPOTrainer._compute_loss(fake, None, inputs)
        loss.backward()
        trl_losses.append(loss.detach())
    trl_grads = grads(model)

    for ours, theirs in zip(ponder_losses, trl_losses):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0), (ours, theirs)
    for ours, theirs in zip(ponder_grads, trl_grads):
        assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert any(g.abs().sum() > 0 for g in ponder_grads)


def test_on_policy_loss_is_zero_but_gradient_is_policy_gradient():
    """mu = 1: ratio 1, loss value -mean(A), gradient = -sum A_i grad logp_i / tokens (REINFORCE)."""
    torch.manual_seed(0)
    model = TinyCausalLM()
    prompt, completion, mask, adv = make_batch(5)
    adv = adv - adv.mean()
    ids = torch.cat([prompt, completion], 1)
    logp, _ = token_logprobs(model, ids, torch.full((4,), P), L, TEMP)
    tokens = int(mask.sum())
    loss, stats = policy_loss(logp, None, adv, mask, loss_type="dapo", batch_sequences=4,
                              batch_tokens=tokens, max_completion_length=L)
    loss.backward()
    ours = grads(model)
    logp, _ = token_logprobs(model, ids, torch.full((4,), P), L, TEMP)
    reinforce = -(adv.unsqueeze(1) * logp * mask).sum() / tokens
    reinforce.backward()
    for a, b in zip(ours, grads(model)):
        assert torch.allclose(a, b, atol=1e-7)
    assert stats["clip_low"] == 0 and stats["clip_high"] == 0 and stats["tokens"] == tokens


def test_logprobs_use_temperature_scaled_fp32_logits_at_completion_positions():
    torch.manual_seed(0)
    model = TinyCausalLM()
    prompt, completion, mask, _ = make_batch(7)
    # Different prompt lengths per row, right-padded: row b's completion starts at starts[b].
    starts = torch.tensor([2, 3, 1, 3])
    rows = [torch.cat([prompt[b, : starts[b]], completion[b]]) for b in range(4)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.nn.functional.pad(r, (0, width - len(r))) for r in rows])
    logp, ent = token_logprobs(model, ids, starts, L, TEMP, with_entropy=True)
    for b in range(4):
        full = torch.log_softmax(model(rows[b].unsqueeze(0))[0] / TEMP, -1)
        for j in range(int(mask[b].sum())):
            expect = full[starts[b] + j - 1, completion[b, j]]
            assert torch.allclose(logp[b, j], expect, atol=1e-6)
            p = full[starts[b] + j - 1].exp()
            assert torch.allclose(ent[b, j], -(p * full[starts[b] + j - 1]).sum(), atol=1e-6)


def test_bad_settings_are_errors():
    logp = torch.zeros(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="loss type"):
        policy_loss(logp, None, torch.zeros(2), torch.ones(2, 3), loss_type="bnpo2",
                    batch_sequences=2, batch_tokens=6, max_completion_length=3)
    with pytest.raises(ValueError, match="reference"):
        policy_loss(logp, None, torch.zeros(2), torch.ones(2, 3), beta=0.1,
                    batch_sequences=2, batch_tokens=6, max_completion_length=3)
