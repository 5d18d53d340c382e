"""DecodeStep: one decode step (one new token per row) of an fp32 or bf16 decoder with
grouped-query attention (dense or mixture-of-experts MLPs; Gemma 3's layout too), with fewer and
faster ops than `Decoder.forward`. The engine uses it for every step after the prefill.

Same math as `model(tokens[:, None], cache)[:, -1]` (tests hold the two together), rearranged:
  - q/k/v are one matmul and a dense MLP's gate/up another (weights concatenated);
  - each RMSNorm's weight is folded into the matmul that follows it (norm(x) @ W.T ==
    (x * rms) @ (W * w).T), so a norm costs one reduction and one multiply (a mixture-of-experts
    block, which runs as its own module, multiplies by the weight first);
  - QK-norm and RoPE run once over the query and key heads together;
  - on the CPU, the residual add + norm, and the QK-norm + RoPE + cache write, are each one call
    of a small C kernel (decode_kernels.c, compiled at first use; torch ops where no compiler works);
  - on the CPU, weights are held packed for the row count (PackedLinear), by MKL where the CPU
    has AMX and by oneDNN elsewhere (`decode_path`), with the same result: on Intel with AMX,
    MKL's packed matmuls took 1.2x less time than `F.linear`; on AMD Zen 4, MKL's GEMM (packed
    or not) is slow, and oneDNN's packed matmuls took about 2x less time than `F.linear`
    (scripts/decode_breakdown.py shows the split).

Gemma 3: the norms scale by 1 + weight (folded as such); the norms after attention and after the
MLP are applied to the block's output before the residual add (they cannot be folded); the MLP is
GeGLU; sliding-window layers attend through their ring with the torch ops (`layers.attend`), as
the C kernel writes keys by position; logits are soft-capped where the config says so.

Why a second forward: at decode time a row is one token, so the matmuls are tiny and the cost
is the number of ops; training and the prefill keep the readable `Decoder.forward`. The packed
copies are made from the weights of the time: build a new DecodeStep after the weights change.
They are a second copy of the weights: `DecodeStep.fits` says whether the device has room for it.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from .cache import CacheStep, KVCache
from .cpu_kernels import kernels
from .decoder import Decoder, has_adapters
from .layers import apply_rope, attend, attend_cached
from .moe import SparseMoE

# MKL's packed GEMM (what torch.compile's CPU backend uses for frozen fp32 linears).
_HAS_MKL_PACK = torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


# oneDNN's packed fp32 linear (what torch.compile's CPU backend uses where MKL is absent).
_HAS_ONEDNN_PACK = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")

DECODE_PATHS = ("mkl", "onednn", "unpacked", "plain")


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (Linux /proc/cpuinfo's amx_tile flag; False where unknown)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def decode_path(model) -> str:
    """How the engine runs a decode step of `model`: DecodeStep with its weights packed by "mkl" or
    "onednn", or "unpacked" (`F.linear`), or "plain" (`Decoder.forward`).

    $PONDER_DECODE picks one (a packing this machine lacks falls back to "unpacked"; a model that
    DecodeStep does not mirror always gets "plain"). Otherwise the choice is by CPU feature, never
    by a timing, so the same seed on the same machine always takes the same path: MKL packing
    where the CPU has AMX (Intel Sapphire Rapids measured), oneDNN packing on other CPUs (AMD Zen 4
    measured, where MKL's GEMM is slow), `F.linear` off the CPU.
    """
    chosen = os.environ.get("PONDER_DECODE", "").strip().lower()
    if chosen and chosen not in DECODE_PATHS:
        raise ValueError(f"PONDER_DECODE={chosen!r}: expected one of {', '.join(DECODE_PATHS)}")
    if not DecodeStep.supports(model):
        return "plain"
    available = _packings(model.device, model.dtype) | {"unpacked", "plain"}
    if chosen:
        return chosen if chosen in available else "unpacked"
    if "mkl" in available and cpu_has_amx():
        return "mkl"
    return "onednn" if "onednn" in available else "unpacked"


def _packings(device: torch.device, dtype: torch.dtype = torch.float32) -> set[str]:
    """The weight packings PackedLinear can use on `device` for weights of `dtype`: MKL's is fp32
    only; oneDNN's takes bf16 where the CPU has bf16 instructions."""
    if device.type != "cpu":
        return set()
    if dtype == torch.bfloat16:
        return {"onednn"} if _HAS_ONEDNN_PACK and torch.ops.mkldnn._is_mkldnn_bf16_supported() else set()
    return {name for name, there in (("mkl", _HAS_MKL_PACK), ("onednn", _HAS_ONEDNN_PACK)) if there}


class PackedLinear:
    """x @ W.T + bias, where W = make_weight() is a model weight or several fused ones.

    With `pack` ("mkl" or "onednn", CPU only), W is kept only in that library's packed form for
    the current number of rows, and re-packed (from the model's parameters) when that number
    changes: packed small-batch matmuls are faster than `F.linear` (see the module's notes), with
    the same result, and no second copy of W is held. With `pack` None, W is built once and used
    with `F.linear`.
    """

    def __init__(self, make_weight, bias: torch.Tensor | None, pack: str | None):
        self.make_weight, self.bias, self.pack, self.rows = make_weight, bias, pack, 0
        self.weight = None if pack else make_weight().contiguous()
        self.packed = self.shape_only = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight is not None:
            return F.linear(x, self.weight, self.bias)
        if x.shape[0] != self.rows:  # the first call, or finished rows were dropped
            self.packed = None  # free the old packing before building the new one
            weight = self.make_weight().contiguous()
            if self.pack == "mkl":
                self.packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, x.shape[0])
                # With the row count it was packed for, _mkl_linear reads only the shape of its
                # plain-weight argument: a zero-stride stand-in that holds no memory.
                self.shape_only = weight.new_empty(()).expand(weight.shape)
            else:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, x.shape[0])
            self.rows = x.shape[0]
        if self.pack == "mkl":
            return torch.ops.mkl._mkl_linear(x, self.packed, self.shape_only, self.bias, self.rows)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _onednn_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x @ weight.T by oneDNN on a plain (unpacked) weight."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")


def _fused(weights: list[torch.Tensor], norm_weight: torch.Tensor | None = None):
    """make_weight for PackedLinear: the weights stacked by rows, times the RMSNorm weight that
    precedes them (norm(x) @ W.T == (x * rms) @ (W * w).T)."""

    def make_weight() -> torch.Tensor:
        weight = torch.cat(weights) if len(weights) > 1 else weights[0]
        return weight if norm_weight is None else (weight * norm_weight).to(weight.dtype)

    return make_weight


class DenseMLP:
    """down(act(gate) * up), gate and up from one fused matmul; act is silu (SwiGLU) or GELU's
    tanh approximation (Gemma's GeGLU)."""

    def __init__(self, gate_up: PackedLinear, down: PackedLinear, activation: str = "silu"):
        self.gate_up, self.down, self.activation = gate_up, down, activation

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        gate = F.silu(gate) if self.activation == "silu" else F.gelu(gate, approximate="tanh")
        return self.down(gate.mul_(up))


def _sparse_mlp(block: SparseMoE, norm_weight: torch.Tensor):
    """A mixture-of-experts block as it is (routing, experts, load counts), after the norm's weight."""
    return lambda h: block(h * norm_weight)


# The projections DecodeStep fuses: a LoRA adapter on one of them is merged into its copy.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _weight(linear) -> torch.Tensor:
    """A projection's weight as its forward applies it. A LoRA layer (peft's, which keeps the
    original as `base_layer`) gets its active adapters' low-rank updates merged in, so a LoRA
    policy decodes on the same packed matmuls as a plain one; the step is rebuilt whenever the
    adapter's weights change, as for any weight."""
    base = getattr(linear, "base_layer", None)
    if base is None:
        return linear.weight
    weight = base.weight
    if linear.merged or linear.disable_adapters:
        return weight
    for name in linear.active_adapters:
        if name in linear.lora_A:
            weight = weight + linear.get_delta_weight(name).to(weight.dtype)
    return weight


def _adapters_mergeable(model) -> bool:
    """Every adapter is a LoRA layer on a projection the step fuses (not the embedding or head)."""
    return all(name.rsplit(".", 1)[-1] in PROJECTIONS and hasattr(m, "get_delta_weight")
               for name, m in model.named_modules() if hasattr(m, "base_layer"))


def _scale(norm) -> torch.Tensor:
    """What an RMSNorm multiplies by: its weight, or for Gemma's 1 + weight, in fp32 as the model
    computes it (a copy made from the weights of the time)."""
    return 1.0 + norm.weight.float() if norm.offset else norm.weight


def _cat_bias(*modules) -> torch.Tensor | None:
    biases = [m.bias for m in modules]
    return None if biases[0] is None else torch.cat(biases)


def free_memory(device: torch.device) -> int | None:
    """Bytes the device could still give this process (CUDA: its free memory; CPU: Linux's
    MemAvailable); None where that is unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return None


class DecodeStep:
    """`step(tokens [B], cache) -> logits [B, vocab]`: one token per row (see KVCache's contract)."""

    @staticmethod
    def fits(model) -> bool:
        """Whether the device can hold the step's copy of the weights (fused or packed) and still
        have as much free again, for the KV cache and what else runs; unknown counts as yes."""
        free = free_memory(model.device)
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        return free is None or 2 * weights <= free

    @staticmethod
    def supports(model) -> bool:
        """A plain `Decoder` (a subclass may change the forward this step mirrors) with grouped-query
        attention (not MLA) in fp32 or bf16, whose adapters, if any, are LoRA on the projections
        (merged into the step's copies); the others keep `Decoder.forward`. Mixture-of-experts MLPs
        run as their own modules inside the step, and so do Qwen3.5's token mixers (Gated DeltaNet with
        its conv and recurrent state, gated attention): the step fuses their norms and MLPs."""
        config = model.config
        return (type(model) is Decoder and config.mla is None and model.dtype in (torch.float32, torch.bfloat16)
                and (not has_adapters(model) or _adapters_mergeable(model)))

    @torch.no_grad()
    def __init__(self, model, path: str | None = None):
        """`path`: "mkl", "onednn" (packed weights, CPU only) or "unpacked"; None: as `decode_path`
        says."""
        if not self.supports(model):
            raise ValueError("DecodeStep needs an fp32 or bf16 decoder with grouped-query attention (not MLA) "
                             "and no adapters but LoRA on its projections")
        config = model.config
        self.model, self.eps = model, config.rms_norm_eps
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                    config.head_dim)
        self.gemma, self.scale = config.gemma, config.attention_scale
        # Qwen3.5: each layer's token mixer runs as the model's module, on the input norm's output
        self.hybrid, self.offset = config.qwen3_5, config.norm_offset
        self.windows = [config.layer_window(i) for i in range(config.num_hidden_layers)]
        if path is None:
            path = decode_path(model)
        if path in ("mkl", "onednn") and path not in _packings(model.device, model.dtype):
            path = "unpacked"
        if path not in ("mkl", "onednn", "unpacked"):
            raise ValueError(f"DecodeStep path {path!r}: expected mkl, onednn or unpacked")
        self.path = path
        pack = None if path == "unpacked" else path
        self.layers = []
        # Gemma's block outputs are normed before the residual add: (norm weight, or None) per layer
        self.post_norms: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for layer in model.model.layers:
            if self.hybrid:  # (mixer, its norm's scale, -, MLP with its norm folded in)
                mlp = layer.mlp
                self.layers.append((getattr(layer, layer.mixer_name), _scale(layer.input_layernorm), None,
                                    self._mlp(mlp, _scale(layer.post_attention_layernorm), pack)))
                self.post_norms.append(None)
                continue
            attn, mlp = layer.self_attn, layer.mlp
            qk_norm = None
            if attn.q_norm is not None:  # one weight row per head, query heads then key heads
                qk_norm = torch.cat([_scale(attn.q_norm).expand(self.heads, -1),
                                     _scale(attn.k_norm).expand(self.kv_heads, -1)])
            qkv = [attn.q_proj, attn.k_proj, attn.v_proj]
            mlp_norm = layer.pre_feedforward_layernorm if self.gemma else layer.post_attention_layernorm
            feed_forward = self._mlp(mlp, _scale(mlp_norm), pack)
            self.layers.append((
                PackedLinear(_fused([_weight(m) for m in qkv], _scale(layer.input_layernorm)), _cat_bias(*qkv), pack),
                qk_norm,
                PackedLinear(_fused([_weight(attn.o_proj)]), attn.o_proj.bias, pack),
                feed_forward,
            ))
            self.post_norms.append((_scale(layer.post_attention_layernorm), _scale(layer.post_feedforward_layernorm))
                                   if self.gemma else None)
        # The output head reads the model's own weight, the final norm's weight applied to the
        # rows instead of folded in: a folded (or packed) copy of it would be a second
        # vocab x hidden matrix, 0.6 GB at Qwen3's 151,936 x 1024, for a multiply of B x hidden.
        self.head_weight = model.model.embed_tokens.weight if model.lm_head is None else model.lm_head.weight
        # oneDNN reads the plain weight directly (no packed copy) and, where MKL is slow, still
        # runs several times faster than F.linear (AMD Zen 4, 8192 x 512 head at batch 64).
        self.head_linear = _onednn_linear if self.path == "onednn" else F.linear
        self.final_norm = _scale(model.model.norm)
        self.embed_scale = (torch.tensor(config.hidden_size ** 0.5, dtype=model.dtype, device=model.device)
                            if self.gemma else None)
        self.softcap = config.final_logit_softcapping
        self.eps_tensor = torch.tensor(self.eps, device=model.device)
        # the fused C kernels (fp32, CPU); None: the same steps as torch ops
        self.kernels = kernels() if model.device.type == "cpu" and model.dtype == torch.float32 else None

    @staticmethod
    def _mlp(mlp, norm_scale: torch.Tensor, pack: str | None):
        """The feed-forward block after its norm: dense (gate and up fused, the norm's weight folded
        in, packed) or mixture-of-experts (the block as it is)."""
        if isinstance(mlp, SparseMoE):
            return _sparse_mlp(mlp, norm_scale)
        return DenseMLP(
            PackedLinear(_fused([_weight(mlp.gate_proj), _weight(mlp.up_proj)], norm_scale),
                         _cat_bias(mlp.gate_proj, mlp.up_proj), pack),
            PackedLinear(_fused([_weight(mlp.down_proj)]), mlp.down_proj.bias, pack), mlp.activation)

    def _rms(self, x: torch.Tensor) -> torch.Tensor:
        """1 / sqrt(mean(x^2) + eps) over the last axis, from a single fused reduction (in fp32)."""
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float32)
        return torch.addcmul(self.eps_tensor, norm, norm, value=1.0 / x.shape[-1]).rsqrt_()

    def _normed(self, x: torch.Tensor) -> torch.Tensor:
        """x RMS-normalised without a weight; in bf16 normalised in fp32 and cast back, as RMSNorm does."""
        if x.dtype == torch.float32:
            return x * self._rms(x)
        return (x.float() * self._rms(x)).to(x.dtype)

    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor | None):
        """The residual sum x + delta (x when delta is None; the kernel adds in place) and that
        sum RMS-normalised, without the norm's weight (it is folded into the next matmul)."""
        if self.kernels is None:
            x = x if delta is None else x + delta
            return x, self._normed(x)
        h = torch.empty_like(x)
        self.kernels.add_rms(x.data_ptr(), None if delta is None else delta.data_ptr(), h.data_ptr(),
                             x.shape[0], x.shape[1], self.eps)
        return x, h

    @staticmethod
    def _rope(table, step: CacheStep, dtype: torch.dtype):
        """cos, sin [B, D] of the step's positions."""
        cos, sin = table.lookup(step.positions, dtype, step.key_len - 1)
        return cos.view(cos.shape[0], -1), sin.view(sin.shape[0], -1)

    def _normed_scaled(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm(x) with its (scale) weight applied, as the model's norm computes it: Gemma's in
        fp32 and cast last (Qwen3.5's too)."""
        if self.offset:
            return (x.float() * self._rms(x) * weight).to(x.dtype)
        return self._normed(x) * weight

    def _attend(self, layer: int, qkv: torch.Tensor, qk_norm: torch.Tensor | None, cos: torch.Tensor,
                sin: torch.Tensor, cache: KVCache, step: CacheStep) -> torch.Tensor:
        """Attention output [B, Hq * D] from the projection qkv [B, (Hq + 2 Hkv) * D]: QK-norm (when
        the model has it) and RoPE on the query and key heads together, the new key and value
        written to the cache, then attention over the cache. A sliding-window layer's ring is
        written by `KVCache.write`: the C kernel writes by position."""
        B, Hq, Hkv, D = qkv.shape[0], self.heads, self.kv_heads, self.head_dim
        k_cache, v_cache = cache.k[layer], cache.v[layer]
        window = self.windows[layer]
        if (self.kernels is None or window is not None
                or not (k_cache.is_contiguous() and v_cache.is_contiguous())):
            qkv = qkv.view(B, Hq + 2 * Hkv, D)
            qk = qkv[:, :Hq + Hkv]
            if qk_norm is not None:
                qk = self._normed_scaled(qk, qk_norm)
            qk = apply_rope(qk, cos[:, None], sin[:, None])
            return attend(qk[:, None, :Hq], qk[:, None, Hq:], qkv[:, None, Hq + Hkv:], layer, cache, step,
                          self.scale, window)
        positions = step.positions.contiguous()  # held here: the kernel reads it through a pointer
        self.kernels.qk_norm_rope_write(
            qkv.data_ptr(), B, Hq, Hkv, D, None if qk_norm is None else qk_norm.data_ptr(), self.eps,
            cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
            positions.data_ptr(), k_cache.shape[2])
        q = qkv.view(B, 1, Hq + 2 * Hkv, D)[:, :, :Hq]
        return attend_cached(q, k_cache[:, :, :step.key_len], v_cache[:, :, :step.key_len], step, self.scale)

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        B = tokens.shape[0]
        step = cache.step(1)
        # a new tensor (not a view of the embedding), so the kernels may update it in place
        x = F.embedding(tokens, self.model.model.embed_tokens.weight)  # [B, hidden]
        if self.embed_scale is not None:
            x = x * self.embed_scale
        rope = self._rope(self.model.rope, step, x.dtype)
        local = rope if self.model.local_rope is None else self._rope(self.model.local_rope, step, x.dtype)
        x, h = self._add_norm(x, None)
        if self.hybrid:
            return self._hybrid(x, h, cache, step)
        for i, (qkv_proj, qk_norm, o_proj, feed_forward) in enumerate(self.layers):
            cos, sin = local if self.windows[i] is not None else rope
            out = o_proj(self._attend(i, qkv_proj(h), qk_norm, cos, sin, cache, step).view(B, -1))
            post = self.post_norms[i]
            x, h = self._add_norm(x, out if post is None else self._normed_scaled(out, post[0]))
            out = feed_forward(h)
            x, h = self._add_norm(x, out if post is None else self._normed_scaled(out, post[1]))
        return self._head(h, cache)

    def _hybrid(self, x: torch.Tensor, h: torch.Tensor, cache: KVCache, step: CacheStep) -> torch.Tensor:
        """Qwen3.5's layers: the mixer module on [B, 1, hidden] (a linear layer takes the recurrent
        form and updates its state in the cache; a full one attends over its keys), then the fused MLP."""
        cos, sin = self.model.rope.lookup(step.positions, x.dtype, step.key_len - 1)
        for mixer, norm_scale, _, feed_forward in self.layers:
            out = mixer(self._normed_scaled(x, norm_scale)[:, None], cos, sin, cache, step)[:, 0]
            x, h = self._add_norm(x, out)
            x, h = self._add_norm(x, feed_forward(h))
        return self._head(h, cache)

    def _head(self, h: torch.Tensor, cache: KVCache) -> torch.Tensor:
        cache.advance(1)
        h = (h.float() * self.final_norm).to(h.dtype) if self.offset else h * self.final_norm
        logits = self.head_linear(h, self.head_weight)
        return logits if self.softcap is None else torch.tanh(logits / self.softcap) * self.softcap
