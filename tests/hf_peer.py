"""Test helper: build a transformers twin of a ponder ModelConfig offline, with every weight random.

transformers' default init leaves norm weights at 1 and biases at 0, which hides bugs (a
missing QK-norm weight or a dropped bias would still match), so `randomize` redraws them all.
transformers is a test extra: a test that needs it is skipped (not failed) where it is missing.
"""

from __future__ import annotations

import pytest
import torch

from ponder.models import ModelConfig


def import_transformers():
    return pytest.importorskip("transformers", reason="transformers (the test extra) is the parity peer")


def hf_config(cfg: ModelConfig):
    transformers = import_transformers()
    if cfg.model_type == "gemma3_text":  # its many options: ponder's own config.json dict, read by transformers
        d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
        return transformers.Gemma3TextConfig(**d, attn_implementation="eager")
    if cfg.qwen3_5:  # likewise: Qwen3.5's linear-attention (and expert) fields from ponder's dict
        d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
        kind = transformers.Qwen3_5MoeTextConfig if cfg.moe is not None else transformers.Qwen3_5TextConfig
        return kind(**d, attn_implementation="eager")

    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters={**(cfg.rope_scaling.to_hf() if cfg.rope_scaling else {"rope_type": "default"}),
                         "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_position_embeddings, tie_word_embeddings=cfg.tie_word_embeddings,
        attn_implementation="eager",
    )
    if cfg.model_type == "qwen3":
        return transformers.Qwen3Config(attention_bias=cfg.attention_bias, **common)
    if cfg.model_type == "qwen2":
        return transformers.Qwen2Config(**common)
    return transformers.LlamaConfig(attention_bias=cfg.attention_bias, mlp_bias=cfg.mlp_bias, **common)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Redraw every parameter: weights ~ N(0, 0.1), norms ~ 1 + N(0, 0.2), biases ~ N(0, 0.1)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if "norm" in name:
            p.copy_(1.0 + 0.2 * noise)
        else:
            p.copy_(0.1 * noise)


def hf_model(cfg: ModelConfig, seed: int = 0):
    """A transformers *ForCausalLM (eager attention, fp32, eval mode) shaped like cfg, randomized."""
    transformers = import_transformers()

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="eager")
    randomize(model, seed)
    return model.float().eval()
