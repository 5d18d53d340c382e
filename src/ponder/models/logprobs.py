"""The loss head: log-probs (and entropy) of chosen tokens without ever holding [B, T, vocab].

At a real vocabulary (151,936 for Qwen3) one fp32 logits tensor of 16 x 512 positions is 5 GB, and
log-softmax plus its gradient hold several more. `token_logprobs` runs the lm_head on the scored
positions only, a chunk of positions at a time (temperature, log-softmax in fp32, gather, entropy),
and recomputes each chunk in the backward pass instead of keeping it: the extra memory is one
chunk's logits, whatever B x T is (TRL's chunked log-prob function and verl's FusedLinearForPPO do
the same). Positions that fit in one chunk skip the recomputation, so small models pay nothing.

The head's weight gradient is one fp32 [vocab, hidden] buffer whatever the number of chunks:
`_ChunkedHead` writes the backward out, recomputing each chunk's logits there and adding its share
with `addmm_`, and returns the buffer once. Left to autograd, every chunk's backward makes a
[vocab, hidden] gradient of its own for autograd to sum, and a tied weight's peaks at three such
tensors at once with the embedding's (1.7 GiB at Qwen3's vocabulary, measured on a CPU); this
leaves two: the buffer, and the embedding's dense gradient, which autograd adds into it. A head
that is more than weight and soft-cap (a LoRA adapter on an untied lm_head, a wrapper around the
model's `logits`) keeps the autograd path: per-chunk `torch.utils.checkpoint`.

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
    plain = None if one_chunk else _linear_head(logits_fn)
    if plain is not None:
        weight, cap = plain
        logp, entropy = _ChunkedHead.apply(h, weight, tokens, cap, temperature, chunk, with_entropy)
        return logp.view(bsz, length), entropy.view(bsz, length) if with_entropy else None
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


def _linear_head(logits_fn):
    """(weight, soft-cap) from the model whose `logits` method `logits_fn` is, where it offers them
    (Decoder.linear_head); else None, and only calling `logits_fn` gives the logits."""
    find = getattr(getattr(logits_fn, "__self__", None), "linear_head", None)
    return find() if callable(find) else None


def _logits(h, weight, cap, temperature):
    """fp32 logits of positions h [n, hidden], in the order of ops that Decoder.logits and _chunk
    use (so that both paths round alike): cap * tanh(h @ weight.T / cap), then / temperature."""
    logits = F.linear(h.float(), weight)
    if cap is not None:
        logits = logits.div_(cap).tanh_().mul_(cap)
    return logits.div_(temperature) if temperature != 1.0 else logits


class _ChunkedHead(torch.autograd.Function):
    """Log-probs [N] (and entropy [N], no gradient) of `tokens` under the logits of h [N, hidden],
    a chunk of positions at a time, with the backward written out so that the weight's gradient
    is one fp32 buffer: each chunk's logits are recomputed there and its share goes into the
    buffer by addmm_. Only h, the weight and the tokens are kept for backward. The backward takes
    autograd's steps for _chunk in autograd's order (log-softmax's, the temperature's, tanh's), so
    that the gradient reaching the body rounds as the one-piece head's does: under bf16 autocast
    the body would turn a last-bit difference into a bf16 step. A weight that needs no gradient
    (frozen under LoRA) gets none computed."""

    @staticmethod
    def forward(ctx, h, weight, tokens, cap, temperature, chunk, with_entropy):
        n = h.size(0)
        w = weight if weight.dtype == torch.float32 else weight.float()
        logp = torch.empty(n, dtype=torch.float32, device=h.device)
        entropy = torch.empty_like(logp) if with_entropy else None
        # Log-probs in fp32 even under bf16 autocast: ratios exp(logp - old) amplify rounding error.
        with torch.autocast(device_type=h.device.type, enabled=False):
            for s in range(0, n, chunk):
                logprobs = F.log_softmax(_logits(h[s:s + chunk], w, cap, temperature), dim=-1)
                logp[s:s + chunk] = logprobs.gather(-1, tokens[s:s + chunk, None]).squeeze(-1)
                if with_entropy:
                    entropy[s:s + chunk] = -(logprobs.exp() * logprobs).sum(-1)
        ctx.save_for_backward(h, weight, tokens)
        ctx.cap, ctx.temperature, ctx.chunk = cap, temperature, chunk
        if with_entropy:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        h, weight, tokens = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[:2]
        cap, temperature, chunk = ctx.cap, ctx.temperature, ctx.chunk
        w = weight if weight.dtype == torch.float32 else weight.float()
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        g = grad_logp.float()[:, None]
        with torch.autocast(device_type=h.device.type, enabled=False):
            for s in range(0, h.size(0), chunk):
                hc, gc = h[s:s + chunk].float(), g[s:s + chunk]
                logits = F.linear(hc, w)
                if cap is not None:
                    tanh = logits.div_(cap).tanh_()
                    logits = tanh * cap
                if temperature != 1.0:
                    logits = logits.div_(temperature)
                # log-softmax's backward: grad - exp(logprobs) * grad.sum(-1), grad being g at the token.
                grad = F.log_softmax(logits, dim=-1).exp_().mul_(-gc).scatter_add_(1, tokens[s:s + chunk, None], gc)
                del logits
                if temperature != 1.0:
                    grad = grad.div_(temperature)
                if cap is not None:  # through * cap, tanh (1 - tanh^2) and / cap, as autograd goes
                    grad = grad.mul_(cap).mul_(tanh.mul_(tanh).neg_().add_(1)).div_(cap)
                    del tanh
                if need_h:
                    grad_h[s:s + chunk] = grad.mm(w)
                if need_w:
                    grad_w.addmm_(grad.T, hc)
        if need_w and weight.dtype != torch.float32:
            grad_w = grad_w.to(weight.dtype)
        return grad_h, grad_w, None, None, None, None, None
