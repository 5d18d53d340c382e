"""Decoder building blocks: RMSNorm, rotary position embeddings, GQA attention (optionally
sliding-window and soft-capped), gated MLP (SwiGLU, or Gemma's GeGLU).

Module and parameter names follow transformers (q_proj, k_proj, ..., q_norm, gate_proj) so a
HF state dict maps onto these modules 1:1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cache import CacheStep, KVCache
from .config import ModelConfig


class RMSNorm(nn.Module):
    """x / rms(x) * weight; with `offset` (Gemma), x / rms(x) * (1 + weight): Gemma stores the
    weight as an offset from 1, so a freshly initialised (zero) weight is the identity scale."""

    def __init__(self, dim: int, eps: float = 1e-6, offset: bool = False):
        super().__init__()
        self.offset = offset
        self.weight = nn.Parameter(torch.full((dim,), self.unit_weight))
        self.eps = eps

    @property
    def unit_weight(self) -> float:
        """The stored weight that scales by 1."""
        return 0.0 if self.offset else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.offset:
            # Gemma scales in fp32 too and casts last ((x * w).to(bf16), not x.to(bf16) * w), as
            # transformers' Gemma3RMSNorm does, so bf16 results match it.
            scale = 1.0 + self.weight.float()
            return F.rms_norm(x.float(), self.weight.shape, scale, self.eps).to(x.dtype)
        if x.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        # Low precision: normalise in fp32 (the sum of squares overflows/underflows in bf16/fp16),
        # cast back, then scale -- the order transformers uses, so bf16 results match it.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction for a context extended `factor` times."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_frequencies(config: ModelConfig, local: bool = False) -> tuple[torch.Tensor, float]:
    """RoPE's inverse frequencies [rope_dim / 2] and the factor cos/sin are multiplied by, with
    the config's scaling applied (transformers' rope init functions, formula for formula).
    `local`: those of the sliding-window layers (Gemma 3: their own base, no scaling)."""
    dim, theta, scaling = config.rope_dim, config.rope_theta, config.rope_scaling
    if local:
        theta, scaling = config.rope_local_theta, None
    # on the CPU explicitly: models are built under a meta-device context when loaded
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    if scaling is None:
        return inv_freq, 1.0
    factor, original = scaling.factor, scaling.original_max_position_embeddings
    if scaling.rope_type == "linear":
        return inv_freq / factor, 1.0
    if scaling.rope_type == "llama3":
        # Wavelengths longer than the pretraining context / low_freq_factor are slowed by
        # `factor`, those shorter than context / high_freq_factor kept, the band between blended.
        wavelen = 2 * math.pi / inv_freq
        low_wavelen, high_wavelen = original / scaling.low_freq_factor, original / scaling.high_freq_factor
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (original / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        between = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(between, blended, scaled), 1.0
    # yarn: dimensions that turn fewer than beta_slow times over the pretraining context are
    # interpolated (/ factor), those that turn more than beta_fast times kept, a linear ramp between.
    def turning_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = turning_dim(scaling.beta_fast), turning_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # keep the ramp finite
    kept = 1 - ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / (high - low)).clamp(0, 1)
    inv_freq = inv_freq / factor * (1 - kept) + inv_freq * kept
    attention = scaling.attention_factor
    if attention is None:
        attention = (yarn_mscale(factor, scaling.mscale) / yarn_mscale(factor, scaling.mscale_all_dim)
                     if scaling.mscale and scaling.mscale_all_dim else yarn_mscale(factor))
    return inv_freq, attention


class RotaryTable:
    """cos/sin of RoPE angles (half-split layout), computed once in fp32 and indexed by position.

    Not a module buffer on purpose: `model.to(torch.bfloat16)` must not round the table itself
    (transformers keeps the angles in fp32 and casts cos/sin per call, as `lookup` does).
    """

    def __init__(self, config: ModelConfig, local: bool = False):
        self.inv_freq, self.attention_factor = rope_frequencies(config, local)
        self.cos = self.sin = torch.empty(0, config.rope_dim)

    def _build(self, n: int, device: torch.device) -> None:
        angles = torch.outer(torch.arange(n, dtype=torch.float32, device="cpu"), self.inv_freq)  # [n, dim/2]
        half = angles.shape[1]
        angles = torch.cat([angles, angles], dim=-1)
        self.cos = (angles.cos() * self.attention_factor).to(device)
        sin = angles.sin() * self.attention_factor
        # rotate_half(x) = cat(-x2, x1) = roll(x, half) * sign: fold the sign into sin once here.
        sin[:, :half] = -sin[:, :half]
        self.sin = sin.to(device)

    def lookup(self, positions: torch.Tensor, dtype: torch.dtype, max_pos: int):
        """cos, sin [B, T, 1, dim] for positions [B, T] (or [1, T]); max_pos bounds the positions."""
        if self.cos.shape[0] <= max_pos or self.cos.device != positions.device:
            self._build(max(2 * (max_pos + 1), 256), positions.device)
        return (self.cos[positions].to(dtype).unsqueeze(2),
                self.sin[positions].to(dtype).unsqueeze(2))


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., D] (half-split layout); `sin` carries rotate_half's sign (RotaryTable)."""
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, dims=-1), sin)


def window_causal_mask(T: int, window: int, device: torch.device) -> torch.Tensor:
    """[T, T] bool, True = may attend: key j is visible to query i when i - window < j <= i."""
    i = torch.arange(T, device=device)
    offset = i[:, None] - i[None, :]
    return (offset >= 0) & (offset < window)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
         causal: bool = False, scale: float | None = None, softcap: float | None = None) -> torch.Tensor:
    """Attention of q [B, Hq, Tq, D] over k, v [B, Hkv, Tk, D] (Hkv divides Hq: query head h reads
    key head h // (Hq / Hkv)); `mask` bool, broadcast to [B, Hq, Tq, Tk], True = may attend.

    Soft-capping (Gemma 2: scores -> c * tanh(scores / c), before the mask) has
    no fused kernel, so it is written out: scores, cap, mask, softmax in fp32, as transformers'
    eager attention does it.
    """
    if softcap is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale,
                                              enable_gqa=q.shape[1] != k.shape[1])
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    scores = torch.tanh(scores / softcap) * softcap
    if causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(k.shape[2] - q.shape[2])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype) @ v


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer: int,
           cache: KVCache | None, step: CacheStep | None, scale: float | None = None,
           window: int | None = None, softcap: float | None = None) -> torch.Tensor:
    """Attention of q [B, T, Hq, Dk] over new k [B, T, Hkv, Dk] / v [B, T, Hkv, Dv] (and the cache).

    Returns [B, T, Hq * Dv]. Query head h uses key head h // (Hq / Hkv), as transformers'
    repeat_kv does. Keys are never expanded: the queries of a key head are folded into its
    sequence axis instead, and the (head-independent) mask is repeated to match. `window`: a
    sliding-window layer (each query sees itself and the window - 1 keys before it).
    """
    B, T, Hq, _ = q.shape
    Hkv, Dv = v.shape[2], v.shape[3]
    if cache is None:
        # Plain causal attention over the T tokens (right padding cannot affect real tokens).
        mask = None if window is None or window >= T else window_causal_mask(T, window, q.device)
        out = sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask=mask, causal=mask is None,
                   scale=scale, softcap=softcap)
        return out.transpose(1, 2).reshape(B, T, Hq * Dv)
    keys, values = cache.write(layer, k, v, step)
    return attend_cached(q, keys, values, step, scale, cache.window_of(layer), softcap)


def attend_cached(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, step: CacheStep,
                  scale: float | None = None, window: int | None = None,
                  softcap: float | None = None) -> torch.Tensor:
    """Attention of q [B, T, Hq, Dk] over the keys/values [B, Hkv, key_len, D] that
    `KVCache.write` returned for this layer (the new tokens' included). Returns [B, T, Hq * Dv].
    `window`: a sliding-window layer, whose keys are its ring then the new tokens (KVCache)."""
    B, T, Hq, _ = q.shape
    Hkv, Dv = values.shape[1], values.shape[3]
    if step.causal and window is None:  # a prefill from empty: SDPA's causal kernel skips the masked blocks
        out = sdpa(q.transpose(1, 2), keys, values, causal=True, scale=scale, softcap=softcap)
        return out.transpose(1, 2).reshape(B, T, Hq * Dv)
    group = Hq // Hkv
    # [B, T, Hkv, group, D] -> [B, Hkv, T*group, D]: row t*group + g is query head kv*group + g.
    qg = q.view(B, T, Hkv, group, -1).transpose(1, 2).reshape(B, Hkv, T * group, -1)
    ring = keys.shape[2] - T  # a sliding-window layer's keys: [ring slots | the T new tokens]
    out = sdpa(qg, keys, values, mask=step.grouped_mask(group, window, ring), scale=scale, softcap=softcap)
    return out.view(B, Hkv, T, group, Dv).transpose(1, 2).reshape(B, T, Hq * Dv)


class Attention(nn.Module):
    """Grouped-query attention with RoPE; optional per-head QK-norm (Qwen3, Gemma 3), biases (Qwen2,
    Llama), and Gemma's options: a sliding window on some layers, a softmax scale of
    query_pre_attn_scalar ** -0.5, and soft-capped scores (ModelConfig.attention_softcap)."""

    def __init__(self, config: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.window = config.layer_window(layer_idx)
        self.scale, self.softcap = config.attention_scale, config.attention_softcap
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        H, D = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(H, self.n_heads * D, bias=config.qkv_bias)
        self.k_proj = nn.Linear(H, self.n_kv * D, bias=config.qkv_bias)
        self.v_proj = nn.Linear(H, self.n_kv * D, bias=config.qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * D, H, bias=config.o_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(D, config.rms_norm_eps, offset=config.norm_offset)
            self.k_norm = RMSNorm(D, config.rms_norm_eps, offset=config.norm_offset)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None = None, step: CacheStep | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.n_kv, self.head_dim)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            # QK-norm normalises each head's vector after projection and before RoPE.
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return self.o_proj(attend(q, k, v, self.layer_idx, cache, step, self.scale, self.window, self.softcap))


class SwiGLU(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with act = silu; GeGLU (Gemma) with act = GELU in its
    tanh approximation ("gelu_pytorch_tanh"), which is what Gemma was trained with."""

    def __init__(self, hidden: int, inner: int, bias: bool = False, activation: str = "silu"):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.gate_proj(x)
        gate = F.silu(gate) if self.activation == "silu" else F.gelu(gate, approximate="tanh")
        return self.down_proj(gate * self.up_proj(x))
