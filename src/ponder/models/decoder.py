"""Decoder: the decoder-only transformer (Qwen3 / Qwen2 / Llama / Qwen3-MoE / DeepSeek-V3 / Gemma 3 /
Qwen3.5) with HF parameter names.

Layout (as transformers names it, so state dicts map 1:1):
    model.embed_tokens, model.layers.N.{input_layernorm, self_attn, post_attention_layernorm, mlp},
    model.norm, lm_head (absent when tie_word_embeddings: logits reuse embed_tokens.weight).
    Gemma 3 adds model.layers.N.{pre_feedforward_layernorm, post_feedforward_layernorm}; Qwen3.5's
    linear-attention layers hold model.layers.N.linear_attn instead of self_attn.

Each layer's attention and MLP come from `make_attention` / `make_mlp`; a variant (MoE MLP,
multi-head latent attention) is a new module with the same forward signature chosen there.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .cache import KVCache
from .config import ModelConfig
from .layers import Attention, RMSNorm, RotaryTable, SwiGLU
from .linear_attention import GatedAttention, GatedDeltaNet, GatedRMSNorm
from .mla import LatentAttention
from .moe import Experts, SigmoidGroupRouter, SoftmaxRouter, SparseMoE


def make_attention(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The attention block of layer `layer_idx`: forward(x, cos, sin, cache, step) -> [B, T, H]."""
    if config.mla is not None:
        return LatentAttention(config, layer_idx)
    if config.qwen3_5:  # Qwen3.5: Gated DeltaNet (HF name linear_attn) or gated full attention
        return GatedDeltaNet(config, layer_idx) if config.is_linear_layer(layer_idx) else GatedAttention(config, layer_idx)
    return Attention(config, layer_idx)


def make_mlp(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The feed-forward block of layer `layer_idx`: forward(x) -> x's shape."""
    if config.is_sparse_layer(layer_idx):
        return SparseMoE(config)
    return SwiGLU(config.hidden_size, config.intermediate_size, bias=config.mlp_bias, activation=config.hidden_act)


def make_norm(config: ModelConfig, dim: int | None = None) -> RMSNorm:
    """An RMSNorm over `dim` (default hidden_size) as the family builds it (Gemma, Qwen3.5: 1 + weight)."""
    return RMSNorm(config.hidden_size if dim is None else dim, config.rms_norm_eps, offset=config.norm_offset)


def has_adapters(model: nn.Module) -> bool:
    """Whether a layer of `model` is wrapped by an adapter (peft's LoRA layers keep the layer they
    wrap as `base_layer`): its output is then no longer that of its own weight alone."""
    return any(hasattr(m, "base_layer") for m in model.modules())


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)). Gemma also normalises
    each block's output before adding it: x + norm(attn(norm(x))), then x + norm(mlp(norm(x)));
    there `post_attention_layernorm` is the norm after attention and `pre_feedforward_layernorm`
    the one before the MLP (in the other families `post_attention_layernorm` is the latter).

    With `gradient_checkpointing` on, a training forward keeps only each block's input and
    recomputes the block in the backward pass. A mixture-of-experts block routes outside the
    recomputed part: recomputing the router could pick other experts (bf16 ties) and would count
    the load twice, so only the experts' matmuls are recomputed, with the routing already made.
    """

    def __init__(self, config: ModelConfig, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = make_norm(config)
        # the token mixer under its HF name: self_attn, or linear_attn for Qwen3.5's Gated DeltaNet
        self.mixer_name = getattr(self_attn, "hf_name", "self_attn")
        self.add_module(self.mixer_name, self_attn)
        self.post_attention_layernorm = make_norm(config)
        self.mlp = mlp
        self.sandwich = config.gemma
        if self.sandwich:
            self.pre_feedforward_layernorm = make_norm(config)
            self.post_feedforward_layernorm = make_norm(config)
        self.gradient_checkpointing = False

    def forward(self, x, cos, sin, cache=None, step=None):
        if not (self.gradient_checkpointing and cache is None and torch.is_grad_enabled()):
            x = x + self._attention(x, cos, sin, cache, step)
            return x + self._feed_forward(x)
        x = x + checkpoint(self._attention, x, cos, sin, use_reentrant=False)
        if isinstance(self.mlp, SparseMoE):
            return x + self.mlp(self.post_attention_layernorm(x), recompute_experts=True)
        return x + checkpoint(self._feed_forward, x, use_reentrant=False)

    def _attention(self, x, cos, sin, cache=None, step=None):
        """What the attention block adds to the residual stream."""
        out = getattr(self, self.mixer_name)(self.input_layernorm(x), cos, sin, cache, step)
        return self.post_attention_layernorm(out) if self.sandwich else out

    def _feed_forward(self, x):
        """What the MLP block adds to the residual stream."""
        if self.sandwich:
            return self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))
        return self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    """Embeddings, layers and final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config, make_attention(config, i), make_mlp(config, i))
            for i in range(config.num_hidden_layers)
        )
        self.norm = make_norm(config)


class Decoder(nn.Module):
    """A causal LM. `Decoder(config)` is randomly initialised; `from_pretrained` loads weights."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.rope = RotaryTable(config)
        # Gemma 3's sliding-window layers rotate with their own base (rope_local_base_freq).
        self.local_rope = RotaryTable(config, local=True) if config.rope_local_theta is not None else None
        if not self.model.embed_tokens.weight.is_meta:
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """transformers' init: normal(0, initializer_range) weights, zero biases, unit norms."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(0.0, self.config.initializer_range)
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
            elif isinstance(module, RMSNorm):
                module.weight.fill_(module.unit_weight)
            elif isinstance(module, (Experts, SoftmaxRouter, SigmoidGroupRouter, GatedDeltaNet)):
                module.reset_parameters(self.config.initializer_range)
            elif isinstance(module, GatedRMSNorm):
                module.weight.fill_(1.0)

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each decoder layer in the backward pass instead of keeping its activations
        (about a third more compute for training forwards; generation is unaffected)."""
        for layer in self.model.layers:
            layer.gradient_checkpointing = enabled

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def hidden(self, input_ids: torch.Tensor, cache: KVCache | None = None,
               lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, H] for input_ids [B, T] (see KVCache for the cache
        contract). `lengths` [B]: with a cache, row b holds lengths[b] real tokens and right
        padding after them; only the real ones are kept in the cache."""
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        if self.config.gemma:
            # Gemma scales the embedding by sqrt(hidden), the factor rounded to the model's dtype
            # first (sqrt(640) = 25.30 is 25.25 in bf16), as transformers does.
            x = x * torch.tensor(self.config.hidden_size ** 0.5, dtype=x.dtype)
        if cache is None:
            step = None
            positions = torch.arange(T, device=input_ids.device)[None]
            max_pos = T - 1
        else:
            step = cache.step(T, lengths)
            positions, max_pos = step.positions, step.key_len - 1
        rope = self.rope.lookup(positions, x.dtype, max_pos)
        local = rope if self.local_rope is None else self.local_rope.lookup(positions, x.dtype, max_pos)
        for i, layer in enumerate(self.model.layers):
            cos, sin = local if self.config.layer_window(i) is not None else rope
            x = layer(x, cos, sin, cache, step)
        if cache is not None:
            cache.advance(T if lengths is None else lengths.to(cache.lengths.device))
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head(hidden): [..., H] -> [..., vocab], soft-capped where the config says so."""
        if self.lm_head is None:
            logits = F.linear(hidden, self.model.embed_tokens.weight)
        else:
            logits = self.lm_head(hidden)
        cap = self.config.final_logit_softcapping
        return logits if cap is None else torch.tanh(logits / cap) * cap

    def linear_head(self) -> tuple[torch.Tensor, float | None] | None:
        """(weight, soft-cap) such that logits() is cap * tanh(hidden @ weight.T / cap), or the
        product alone when the cap is None: what a loss head needs to write the logits' backward
        itself (ponder.models.logprobs). None when the lm_head is more than a plain bias-free
        nn.Linear (a LoRA adapter wraps it, or hooks sit on it): only its own forward knows it."""
        cap = self.config.final_logit_softcapping
        if self.lm_head is None:
            return self.model.embed_tokens.weight, cap
        head = self.lm_head
        if (type(head).forward is nn.Linear.forward and head.bias is None
                and not head._forward_hooks and not head._forward_pre_hooks):
            return head.weight, cap
        return None

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None, head=None):
        """Logits [B, T, vocab]; with `head`, whatever `head(hidden, self.logits)` returns instead
        (the chunked loss head, ponder.models.logprobs), inside the one forward call that DDP and
        FSDP2 wrap."""
        hidden = self.hidden(input_ids, cache)
        return self.logits(hidden) if head is None else head(hidden, self.logits)

    # Files are the checkpoint module's business, not the decoder's: ponder.models.checkpoint sets
    # this to its save_checkpoint(model, path) when it loads (importing anything under
    # ponder.models loads it), so the decoder never imports the module that imports it.
    hf_writer = None

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + model.safetensors in HF layout (transformers loads it), through
        ponder.models.checkpoint.save_checkpoint."""
        if has_adapters(self):  # its state dict holds peft's `base_layer` names, which no reader expects
            raise ValueError("save_pretrained: the model holds LoRA adapters; write base + adapter as one "
                             "plain checkpoint with ponder.runtime.lora.save_merged(model, path), or the "
                             "adapter alone with ponder.runtime.lora.save_adapter(model, path)")
        Decoder.hf_writer(self, path)

    def num_parameters(self, embeddings: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if not embeddings:
            n -= self.model.embed_tokens.weight.numel()
            if self.lm_head is not None:
                n -= self.lm_head.weight.numel()
        return n

    def extra_repr(self) -> str:
        return json.dumps({"model_type": self.config.model_type, "parameters": self.num_parameters()})
