"""Qwen3.5's two token mixers: Gated DeltaNet (linear attention) and gated full attention.

Gated DeltaNet (Yang et al., 2024) keeps, per value head, a state S [Dk, Dv] that each token
first decays, then corrects towards its value (the delta rule), and reads with its query:

    S <- exp(g_t) * S                       # forget (g_t <= 0, per head)
    S <- S + beta_t * k_t (v_t - S^T k_t)^T  # write only what S does not yet predict for k_t
    o_t = S^T q_t

So the state has a fixed size whatever the sequence length: a layer's cache is this state plus
the last kernel - 1 inputs of the short causal convolution that precedes it (cache.py).

Two forms of the same recurrence, checked against each other in tests/test_qwen3_5.py:
`recurrent_delta_rule` walks the tokens one by one (decoding: one token per row), and
`chunked_delta_rule` handles 64 tokens at a time with matmuls (training and prefill), the form
transformers' torch fallback and flash-linear-attention use. Pure torch, no kernels.

Gated attention is Qwen3's attention (QK-norm, GQA) with a sigmoid gate on its output (a second
query-sized projection, interleaved per head with the query in q_proj) and RoPE on the first
quarter of each head only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CacheStep, KVCache
from .config import ModelConfig
from .layers import Attention, RMSNorm, apply_rope, attend


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last axis (flash-linear-attention's, as transformers has it)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def recurrent_delta_rule(q, k, v, g, beta, state):
    """The gated delta rule token by token. q, k [B, H, T, Dk] (normalised, q scaled), v [B, H, T, Dv],
    g, beta [B, H, T], state [B, H, Dk, Dv], all fp32. Returns (out [B, H, T, Dv], final state)."""
    outs = []
    for t in range(q.shape[2]):
        state = state * g[:, :, t].exp()[..., None, None]
        k_t = k[:, :, t]
        predicted = (state * k_t[..., None]).sum(-2)  # S^T k: [B, H, Dv]
        delta = (v[:, :, t] - predicted) * beta[:, :, t, None]
        state = state + k_t[..., None] * delta[..., None, :]
        outs.append((state * q[:, :, t, :, None]).sum(-2))
    return torch.stack(outs, dim=2), state


def chunked_delta_rule(q, k, v, g, beta, state, chunk: int = 64):
    """The gated delta rule `chunk` tokens at a time (same arguments and result as
    recurrent_delta_rule).

    Within a chunk the T sequential rank-one updates are folded into one triangular solve (the
    "UT transform" of DeltaNet): with the decays relative to the chunk's start, the values each
    token actually writes are u = (I + L)^-1 (beta v - beta k S0-reads), L the strictly lower
    part of (beta k k^T) * decay. Then the chunk's outputs are its queries reading the incoming
    state plus a causal, decayed attention over the chunk's own writes; the state moves on by
    one matmul. Only the loop over chunks is sequential.
    """
    B, H, T, Dk = k.shape
    pad = (chunk - T % chunk) % chunk
    if pad:  # padded steps decay nothing (g = 0) and write nothing (beta = 0)
        q, k, v = (F.pad(x, (0, 0, 0, pad)) for x in (q, k, v))
        g, beta = F.pad(g, (0, pad)), F.pad(beta, (0, pad))
    n = (T + pad) // chunk
    q, k, v = (x.reshape(B, H, n, chunk, x.shape[-1]) for x in (q, k, v))
    g, beta = g.reshape(B, H, n, chunk), beta.reshape(B, H, n, chunk)

    cum = g.cumsum(-1)  # log of the decay from the chunk's start to each step
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    # decay[i, j] = exp(cum_i - cum_j): how much of step j's write is left at step i (j <= i)
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta, v_beta = k * beta[..., None], v * beta[..., None]
    lower = (k_beta @ k.transpose(-1, -2)) * decay  # its diagonal is ignored: the system is unit-triangular
    u = torch.linalg.solve_triangular(lower, v_beta, upper=False, unitriangular=True)
    w = torch.linalg.solve_triangular(lower, k_beta * cum.exp()[..., None], upper=False, unitriangular=True)
    attn = (q @ k.transpose(-1, -2)) * decay  # causal, decayed attention within the chunk
    q_in = q * cum.exp()[..., None]  # queries reading the incoming state, decayed to their step
    k_out = k * (cum[..., -1:] - cum).exp()[..., None]  # keys as the chunk's end state holds them
    chunk_decay = cum[..., -1].exp()[..., None, None]

    out = torch.empty_like(v)
    for i in range(n):
        written = u[:, :, i] - w[:, :, i] @ state  # what each step writes, given the incoming state
        out[:, :, i] = q_in[:, :, i] @ state + attn[:, :, i] @ written
        state = state * chunk_decay[:, :, i] + k_out[:, :, i].transpose(-1, -2) @ written
    return out.reshape(B, H, n * chunk, -1)[:, :, :T], state


class GatedRMSNorm(nn.Module):
    """RMSNorm of each value head's output, times silu(z) (the output gate); in fp32 as transformers'
    Qwen3_5RMSNormGated, which scales in the input dtype before gating."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))  # a plain scale (not 1 + weight): starts at 1
        self.eps = eps

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        normed = F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)
        return ((self.weight * normed) * F.silu(z.float())).to(x.dtype)


class GatedDeltaNet(nn.Module):
    """Qwen3.5's linear-attention layer (HF name `linear_attn`): project to q, k, v (one matrix),
    the gate z, and per value head beta (write strength) and a (decay); a depthwise causal conv
    + silu over [q | k | v]; L2-normalised q and k; the gated delta rule; a gated RMSNorm; out_proj."""

    hf_name = "linear_attn"

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        lin = config.linear
        self.layer_idx = layer_idx
        self.n_k, self.n_v = lin.num_key_heads, lin.num_value_heads
        self.dk, self.dv = lin.key_head_dim, lin.value_head_dim
        self.key_dim, self.value_dim, self.kernel = lin.key_dim, lin.value_dim, lin.conv_kernel_dim
        H, C = config.hidden_size, lin.conv_dim
        self.in_proj_qkv = nn.Linear(H, C, bias=False)
        self.in_proj_z = nn.Linear(H, lin.value_dim, bias=False)
        self.in_proj_b = nn.Linear(H, self.n_v, bias=False)
        self.in_proj_a = nn.Linear(H, self.n_v, bias=False)
        self.conv1d = nn.Conv1d(C, C, self.kernel, groups=C, bias=False, padding=self.kernel - 1)
        self.dt_bias = nn.Parameter(torch.ones(self.n_v))
        # decay rate per head: A = exp(A_log), transformers' init draws A ~ U(0.01, 16)
        self.A_log = nn.Parameter(torch.zeros(self.n_v))  # drawn by reset_parameters
        self.norm = GatedRMSNorm(self.dv, config.rms_norm_eps)
        self.out_proj = nn.Linear(lin.value_dim, H, bias=False)

    @torch.no_grad()
    def reset_parameters(self, std: float) -> None:
        self.conv1d.weight.normal_(0.0, std)
        self.dt_bias.fill_(1.0)
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(0.01, 16).log_())

    def _conv(self, x: torch.Tensor, cache: KVCache | None, step: CacheStep | None) -> torch.Tensor:
        """silu(causal depthwise conv) of x [B, C, T], continuing the cached inputs; stores the last
        kernel - 1 real inputs of each row back into the cache."""
        T, keep = x.shape[-1], self.kernel - 1
        weight = self.conv1d.weight
        if cache is None:
            return F.silu(F.conv1d(x.to(weight.dtype), weight, padding=keep, groups=x.shape[1])[..., :T]).to(x.dtype)
        full = torch.cat([cache.conv[self.layer_idx].to(x.dtype), x], dim=-1)  # [B, C, keep + T]
        out = F.silu(F.conv1d(full.to(weight.dtype), weight, groups=x.shape[1])).to(x.dtype)  # [B, C, T]
        if step.counts is None:
            cache.conv[self.layer_idx] = full[..., T:].to(cache.conv[self.layer_idx].dtype)
        else:  # right padding: row b's last real inputs end at keep + counts[b]
            idx = step.counts.to(x.device)[:, None] + torch.arange(keep, device=x.device)  # [B, keep]
            held = full.gather(2, idx[:, None, :].expand(-1, full.shape[1], -1))
            cache.conv[self.layer_idx] = held.to(cache.conv[self.layer_idx].dtype)
        return out

    def forward(self, x: torch.Tensor, cos=None, sin=None, cache: KVCache | None = None,
                step: CacheStep | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        qkv = self._conv(self.in_proj_qkv(x).transpose(1, 2), cache, step).transpose(1, 2)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        z = self.in_proj_z(x).view(B, T, self.n_v, self.dv)
        beta = self.in_proj_b(x).sigmoid()
        # log decay g = -A * softplus(a + dt_bias) <= 0, in fp32 (exp(A_log) overflows in fp16)
        g = -self.A_log.float().exp() * F.softplus(self.in_proj_a(x).float() + self.dt_bias)

        # [B, T, heads, D] -> [B, heads, T, D] in fp32; each key head serves n_v / n_k value heads
        group = self.n_v // self.n_k
        q = q.reshape(B, T, self.n_k, self.dk).repeat_interleave(group, dim=2)
        k = k.reshape(B, T, self.n_k, self.dk).repeat_interleave(group, dim=2)
        q, k, v = (t.transpose(1, 2).float() for t in (q, k, v.reshape(B, T, self.n_v, self.dv)))
        q, k = l2norm(q) * self.dk ** -0.5, l2norm(k)
        g, beta = g.transpose(1, 2), beta.transpose(1, 2).float()
        if step is not None and step.counts is not None:
            # right padding must not move the state: its steps neither decay (g = 0) nor write (beta = 0)
            real = (torch.arange(T, device=x.device) < step.counts.to(x.device)[:, None])[:, None]  # [B, 1, T]
            g, beta = g * real, beta * real

        if cache is None:
            state = q.new_zeros(B, self.n_v, self.dk, self.dv)
        else:
            state = cache.state[self.layer_idx].float()
        rule = recurrent_delta_rule if T == 1 else chunked_delta_rule
        # fp32 under a bf16 autocast too (training's dtype: bfloat16): the state accumulates
        # over the whole sequence, and the triangular solve wants one dtype
        with torch.autocast(x.device.type, enabled=False):
            out, state = rule(q, k, v, g, beta, state)
        if cache is not None:
            cache.state[self.layer_idx] = state.to(cache.state[self.layer_idx].dtype)
        out = self.norm(out.transpose(1, 2).to(x.dtype), z)  # [B, T, n_v, dv]
        return self.out_proj(out.reshape(B, T, self.value_dim))


class GatedAttention(Attention):
    """Qwen3.5's full attention: Qwen3's (QK-norm before RoPE, GQA) with q_proj twice as wide,
    [query | gate] per head, the output multiplied by sigmoid(gate) before o_proj, and RoPE on the
    first rope_dim channels of each head (the rest pass unrotated)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.q_proj = nn.Linear(config.hidden_size, 2 * self.n_heads * self.head_dim, bias=config.qkv_bias)
        self.rope_dim = config.rope_dim

    def _rope(self, x, cos, sin):
        if self.rope_dim == self.head_dim:
            return apply_rope(x, cos, sin)
        return torch.cat([apply_rope(x[..., :self.rope_dim], cos, sin), x[..., self.rope_dim:]], dim=-1)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, step: CacheStep | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, gate = self.q_proj(x).view(B, T, self.n_heads, 2 * self.head_dim).chunk(2, dim=-1)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        q, k = self._rope(self.q_norm(q), cos, sin), self._rope(self.k_norm(k), cos, sin)
        out = attend(q, k, v, self.layer_idx, cache, step, self.scale, self.window, self.softcap)
        return self.o_proj(out * torch.sigmoid(gate.reshape(B, T, -1)))
