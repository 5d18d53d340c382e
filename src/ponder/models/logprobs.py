"""The loss head: log-probs (and entropy) of chosen tokens without ever holding [B, T, vocab].

At a real vocabulary (151,936 for Qwen3) one fp32 logits tensor of 16 x 512 positions is 5 GB, and
log-softmax plus its gradient hold several more. `token_logprobs` runs the lm_head on the scored
positions only, a chunk of positions at a time (temperature, log-softmax in fp32, gather, entropy),
and recomputes each chunk in the backward pass instead of keeping it: the extra memory is one
chunk's logits, whatever B x T is (TRL's chunked log-prob function and verl's FusedLinearForPPO do
the same). Positions that fit in one chunk skip the recomputation, so small models pay nothing.

It runs inside the model's forward (`model(ids, head=...)`), so DDP and FSDP2 wrappers see one
ordinary forward call and gather or synchronise as they do for logits.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 512  # positions per chunk: 512 x 151,936 fp32 logits are 0.3 GB


def token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    starts: torch.Tensor,
    length: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int = CHUNK_TOKENS,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob [B, length] of each completion token, and optionally the policy entropy there.

    `input_ids` holds prompt then completion in each row, right-padded (causal attention means the
    padding after a row's end changes nothing before it). Completion token j of row b sits at
    `starts[b] + j` and is predicted from position `starts[b] + j - 1`. Positions past a row's end
    are clamped and give junk that the caller masks out. `model(ids, head=fn)` must return
    `fn(hidden, logits_fn)` (ponder's Decoder does). The entropy carries no gradient (a metric).
    """
    head = partial(_score, input_ids=input_ids, starts=starts, length=length, temperature=temperature,
                   with_entropy=with_entropy, chunk_tokens=chunk_tokens)
    return model(input_ids, head=head)


def _score(hidden, logits_fn, *, input_ids, starts, length, temperature, with_entropy, chunk_tokens):
    bsz, seq = input_ids.shape
    offsets = torch.arange(length, device=input_ids.device)
    pred_pos = (starts.to(input_ids.device).unsqueeze(1) - 1 + offsets).clamp(0, seq - 1)
    tok_pos = (pred_pos + 1).clamp(max=seq - 1)
    h = hidden.gather(1, pred_pos.unsqueeze(-1).expand(-1, -1, hidden.size(-1))).reshape(bsz * length, -1)
    tokens = input_ids.gather(1, tok_pos).reshape(-1)
    chunk = max(1, chunk_tokens) if chunk_tokens else h.size(0)
    one_chunk = h.size(0) <= chunk
    pieces = []
    for s in range(0, h.size(0), chunk):
        args = (h[s:s + chunk], tokens[s:s + chunk], logits_fn, temperature, with_entropy)
        # Recompute in backward rather than keep [chunk, vocab] alive for autograd, chunk after chunk.
        pieces.append(_chunk(*args) if one_chunk or not torch.is_grad_enabled()
                      else checkpoint(_chunk, *args, use_reentrant=False))
    logp = torch.cat([p[0] for p in pieces]).view(bsz, length)
    entropy = torch.cat([p[1] for p in pieces]).view(bsz, length) if with_entropy else None
    return logp, entropy


def _chunk(h, tokens, logits_fn, temperature, with_entropy):
    # Log-probs in fp32 even under bf16 autocast: ratios exp(logp - old) amplify rounding error.
    with torch.autocast(device_type=h.device.type, enabled=False):
        logits = logits_fn(h.float()).float()
        if temperature != 1.0:
            logits = logits / temperature
        logprobs = F.log_softmax(logits, dim=-1)
    token_logp = logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            entropy = -(logprobs.exp() * logprobs).sum(-1)
    return token_logp, entropy
