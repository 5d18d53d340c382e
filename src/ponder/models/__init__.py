"""ponder.models: a readable PyTorch decoder for Qwen3 / Qwen2 / Llama / Qwen3-MoE / DeepSeek-V3 /
Gemma 3 (text) / Qwen3.5 (text, dense and MoE) checkpoints in HF layout.

    model = from_pretrained("path/to/checkpoint", dtype=torch.float32)
    logits = model(input_ids)                       # [B, T, vocab], plain causal
    cache = KVCache(model.config, batch=B, max_len=L)
    logits = model(prompt_ids, cache)               # prefill; then one token at a time
    model.save_pretrained("out/")                   # transformers loads it
    KVCache.bytes_per_token(model.config)           # MLA caches its latent, not per-head K/V
    KVCache.bytes_for(model.config, 32768)          # sliding-window layers keep a ring of window - 1,
                                                    # linear-attention layers a fixed-size state

Log-probs of chosen tokens for losses and scorers, in chunks of positions (never [B, T, vocab]):
token_logprobs(model, ids, starts, length, temperature, with_entropy).

Mixture-of-experts training hooks: router_stats(model) (expert load per layer, its coefficient of
variation; resets per call) and update_routing_bias(model, gamma) (DeepSeek-V3's bias balancing).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import CacheStep, KVCache
from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, LinearAttentionConfig, MLAConfig, ModelConfig, MoEConfig, RopeScaling
from .decoder import Decoder
from .logprobs import token_logprobs
from .moe import router_stats, update_routing_bias


def from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Decoder:
    """Load a HF checkpoint folder (config.json + model.safetensors or a sharded index), strictly."""
    return load_checkpoint(path, dtype=dtype, device=device)


__all__ = ["CacheStep", "CheckpointError", "ConfigError", "Decoder", "KVCache", "LinearAttentionConfig",
           "MLAConfig", "ModelConfig",
           "MoEConfig", "RopeScaling", "from_pretrained", "router_stats", "token_logprobs",
           "update_routing_bias"]
