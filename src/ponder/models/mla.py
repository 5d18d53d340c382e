"""Multi-head latent attention (DeepSeek-V2/V3), caching the compressed latent instead of per-head K/V.

Per token, MLA projects the hidden state to a small latent c (kv_lora_rank wide, RMS-normed)
plus one rotated key k_rope (qk_rope_head_dim wide) shared by every head. Head h's key is
[W_k[h] c | k_rope] and its value W_v[h] c, where kv_b_proj holds W_k and W_v stacked per head.

This module uses the "absorbed" form throughout: since q_nope . (W_k[h] c) = (W_k[h]^T q_nope) . c,
W_k is folded into the query and W_v is applied after attention, so attention runs directly over
the cached rows [c | k_rope]: multi-query attention with one key of width kv_lora_rank +
qk_rope_head_dim whose first kv_lora_rank entries are also the value. Nothing per-head is ever
expanded over the context, and the KV cache holds exactly those rows (see ModelConfig.k_head_dim).
It matches transformers' expanded form to float rounding (the parity tests check it).

Parameter names follow transformers (q_proj or q_a_proj/q_a_layernorm/q_b_proj,
kv_a_proj_with_mqa, kv_a_layernorm, kv_b_proj, o_proj).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CacheStep, KVCache
from .config import ModelConfig
from .layers import RMSNorm, apply_rope, yarn_mscale


class LatentAttention(nn.Module):
    """MLA with the same forward signature as layers.Attention: (x, cos, sin, cache, step) -> [B, T, H]."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        m = config.mla
        self.layer_idx = layer_idx
        self.n_heads = config.num_attention_heads
        self.nope, self.rope, self.rank, self.v_dim = m.qk_nope_head_dim, m.qk_rope_head_dim, m.kv_lora_rank, m.v_head_dim
        self.interleave = m.rope_interleave
        H, qk = config.hidden_size, m.qk_nope_head_dim + m.qk_rope_head_dim
        if m.q_lora_rank is None:
            self.q_proj = nn.Linear(H, self.n_heads * qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(H, m.q_lora_rank, bias=config.attention_bias)
            # transformers builds both latent norms with eps 1e-6, not rms_norm_eps.
            self.q_a_layernorm = RMSNorm(m.q_lora_rank)
            self.q_b_proj = nn.Linear(m.q_lora_rank, self.n_heads * qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, m.kv_lora_rank + m.qk_rope_head_dim, bias=config.attention_bias)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank)
        self.kv_b_proj = nn.Linear(m.kv_lora_rank, self.n_heads * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.n_heads * m.v_head_dim, H, bias=config.attention_bias)
        # The softmax scale is that of the full query/key width, not of the absorbed width; with
        # YaRN, DeepSeek also multiplies it by mscale(factor, mscale_all_dim)**2.
        self.scale = qk ** -0.5
        scaling = config.rope_scaling
        if scaling is not None and scaling.mscale_all_dim:
            self.scale *= yarn_mscale(scaling.factor, scaling.mscale_all_dim) ** 2

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        if self.interleave:
            # Pairs (x0, x1), (x2, x3), ... -> halves (x0, x2, ... | x1, x3, ...): the half-split
            # rotation of the regrouped vector is the pairwise rotation, laid out as transformers
            # lays it out (queries and keys are regrouped alike, so their dot products are unchanged).
            x = torch.cat([x[..., 0::2], x[..., 1::2]], dim=-1)
        return apply_rope(x, cos, sin)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, step: CacheStep | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        nh, r = self.n_heads, self.rank
        if hasattr(self, "q_proj"):
            q = self.q_proj(x)
        else:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x)))
        q_nope, q_rope = q.view(B, T, nh, self.nope + self.rope).split([self.nope, self.rope], dim=-1)
        latent, k_rope = self.kv_a_proj_with_mqa(x).split([r, self.rope], dim=-1)
        # The cache row of each token, [B, T, 1, r + rope]: normed latent, then the rotated shared key.
        row = torch.cat([self.kv_a_layernorm(latent).unsqueeze(2), self._rotate(k_rope.unsqueeze(2), cos, sin)], dim=-1)

        w = self.kv_b_proj.weight.view(nh, self.nope + self.v_dim, r)
        w_k, w_v = w[:, :self.nope], w[:, self.nope:]
        # Absorb W_k into the query: head h scores key row [c | k_rope] with [W_k[h]^T q_nope | q_rope].
        query = torch.cat([torch.einsum("bthn,hnr->bthr", q_nope, w_k), self._rotate(q_rope, cos, sin)], dim=-1)
        if cache is None:
            keys = row.transpose(1, 2)  # [B, 1, T, r + rope]
            out = F.scaled_dot_product_attention(query.transpose(1, 2), keys, keys[..., :r], is_causal=True,
                                                 scale=self.scale, enable_gqa=True).transpose(1, 2)
        else:
            keys, _ = cache.write(self.layer_idx, row, row[..., :0], step)  # [B, 1, key_len, r + rope]
            # All heads share the one key: fold them into the query axis (row t * nh + h), as layers.attend does.
            out = F.scaled_dot_product_attention(query.reshape(B, 1, T * nh, -1), keys, keys[..., :r],
                                                 attn_mask=step.grouped_mask(nh), scale=self.scale)
            out = out.view(B, T, nh, r)
        # out is the attention-weighted latent per head; W_v turns it into head h's value output.
        return self.o_proj(torch.einsum("bthr,hvr->bthv", out, w_v).reshape(B, T, nh * self.v_dim))
