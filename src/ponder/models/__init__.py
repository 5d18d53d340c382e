"""ponder.models: a readable PyTorch decoder for Qwen3 / Qwen2 / Llama checkpoints in HF layout.

    model = from_pretrained("path/to/checkpoint", dtype=torch.float32)
    logits = model(input_ids)                       # [B, T, vocab], plain causal
    cache = KVCache(model.config, batch=B, max_len=L)
    logits = model(prompt_ids, cache)               # prefill; then one token at a time
    model.save_pretrained("out/")                   # transformers loads it
"""

from __future__ import annotations

from pathlib import Path

import torch

from .cache import CacheStep, KVCache
from .checkpoint import CheckpointError, load_checkpoint
from .config import ConfigError, ModelConfig
from .decoder import Decoder


def from_pretrained(path: str | Path, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Decoder:
    """Load a HF checkpoint folder (config.json + model.safetensors or a sharded index), strictly."""
    return load_checkpoint(path, dtype=dtype, device=device)


__all__ = ["CacheStep", "CheckpointError", "ConfigError", "Decoder", "KVCache", "ModelConfig",
           "from_pretrained"]
