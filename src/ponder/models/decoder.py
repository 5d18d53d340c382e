"""Decoder: the decoder-only transformer (Qwen3 / Qwen2 / Llama / Qwen3-MoE / DeepSeek-V3) with HF parameter names.

Layout (as transformers names it, so state dicts map 1:1):
    model.embed_tokens, model.layers.N.{input_layernorm, self_attn, post_attention_layernorm, mlp},
    model.norm, lm_head (absent when tie_word_embeddings: logits reuse embed_tokens.weight).

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
from .mla import LatentAttention
from .moe import Experts, SigmoidGroupRouter, SoftmaxRouter, SparseMoE


def make_attention(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The attention block of layer `layer_idx`: forward(x, cos, sin, cache, step) -> [B, T, H]."""
    if config.mla is not None:
        return LatentAttention(config, layer_idx)
    return Attention(config, layer_idx)


def make_mlp(config: ModelConfig, layer_idx: int) -> nn.Module:
    """The feed-forward block of layer `layer_idx`: forward(x) -> x's shape."""
    if config.is_sparse_layer(layer_idx):
        return SparseMoE(config)
    return SwiGLU(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)


def has_adapters(model: nn.Module) -> bool:
    """Whether a layer of `model` is wrapped by an adapter (peft's LoRA layers keep the layer they
    wrap as `base_layer`): its output is then no longer that of its own weight alone."""
    return any(hasattr(m, "base_layer") for m in model.modules())


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)).

    With `gradient_checkpointing` on, a training forward keeps only each block's input and
    recomputes the block in the backward pass. A mixture-of-experts block routes outside the
    recomputed part: recomputing the router could pick other experts (bf16 ties) and would count
    the load twice, so only the experts' matmuls are recomputed, with the routing already made.
    """

    def __init__(self, config: ModelConfig, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = self_attn
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp
        self.gradient_checkpointing = False

    def forward(self, x, cos, sin, cache=None, step=None):
        if not (self.gradient_checkpointing and cache is None and torch.is_grad_enabled()):
            x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, step)
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + checkpoint(self._attention, x, cos, sin, use_reentrant=False)
        if isinstance(self.mlp, SparseMoE):
            return x + self.mlp(self.post_attention_layernorm(x), recompute_experts=True)
        return x + checkpoint(self._feed_forward, x, use_reentrant=False)

    def _attention(self, x, cos, sin):
        return self.self_attn(self.input_layernorm(x), cos, sin, None, None)

    def _feed_forward(self, x):
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
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Decoder(nn.Module):
    """A causal LM. `Decoder(config)` is randomly initialised; `from_pretrained` loads weights."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(
            config.hidden_size, config.vocab_size, bias=False)
        self.rope = RotaryTable(config)
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
                module.weight.fill_(1.0)
            elif isinstance(module, (Experts, SoftmaxRouter, SigmoidGroupRouter)):
                module.reset_parameters(self.config.initializer_range)

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

    def hidden(self, input_ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-normed hidden states [B, T, H] for input_ids [B, T] (see KVCache for the cache contract)."""
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        if cache is None:
            step = None
            positions = torch.arange(T, device=input_ids.device)[None]
            max_pos = T - 1
        else:
            step = cache.step(T)
            positions, max_pos = step.positions, step.key_len - 1
        cos, sin = self.rope.lookup(positions, x.dtype, max_pos)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache, step)
        if cache is not None:
            cache.advance(T)
        return self.model.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """lm_head(hidden): [..., H] -> [..., vocab]."""
        if self.lm_head is None:
            return F.linear(hidden, self.model.embed_tokens.weight)
        return self.lm_head(hidden)

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
