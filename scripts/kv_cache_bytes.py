"""KV-cache bytes per token (bf16, all layers) for MLA and GQA shapes: ponder's cache against
what transformers caches and against equivalent grouped-query models. Prints a Markdown table.

    .venv/bin/python scripts/kv_cache_bytes.py

The figures are arithmetic on published shapes (deterministic, nothing is timed). For the tiny
MLA shape the transformers column is measured: a real forward through transformers' model with
its DynamicCache, bytes summed over the cached tensors.
"""

from __future__ import annotations

import torch

from ponder.models import KVCache, ModelConfig

BF16 = 2

# Published shapes (config.json of each model); only the attention/cache fields matter here.
MLA_SHAPES = {
    "DeepSeek-V3 (671B)": dict(num_hidden_layers=61, num_attention_heads=128, hidden_size=7168, q_lora_rank=1536,
                               kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128),
    "DeepSeek-V2-Lite shape (16B)": dict(num_hidden_layers=27, num_attention_heads=16, hidden_size=2048,
                                         q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
                                         qk_rope_head_dim=64, v_head_dim=128),
    "bench deepseek_v3 (hidden 256, 4 layers)": dict(num_hidden_layers=4, num_attention_heads=4, hidden_size=256,
                                                     q_lora_rank=None, kv_lora_rank=256, qk_nope_head_dim=64,
                                                     qk_rope_head_dim=32, v_head_dim=64),
}
GQA_SHAPES = {
    "Qwen3-30B-A3B (MoE, GQA 32/4)": dict(num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4,
                                          head_dim=128, hidden_size=2048),
    "bench qwen3_moe (hidden 256, 4 layers)": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                                   head_dim=64, hidden_size=256),
}


def mla_config(shape: dict) -> ModelConfig:
    d = dict(shape, architectures=["DeepseekV3ForCausalLM"], model_type="deepseek_v3", vocab_size=256,
             intermediate_size=64, moe_intermediate_size=16, n_routed_experts=8, num_experts_per_tok=2,
             n_group=1, topk_group=1)
    return ModelConfig.from_hf_dict(d)


def gqa_config(shape: dict) -> ModelConfig:
    return ModelConfig(vocab_size=256, intermediate_size=64, **shape)


def transformers_measured(cfg: ModelConfig) -> int | None:
    """Bytes per token of transformers' own cache for cfg, from a real 8-token forward (bf16)."""
    try:
        import transformers
    except ImportError:
        return None
    d = cfg.to_hf_dict()
    conf = transformers.AutoConfig.for_model(d.pop("model_type"), **{k: v for k, v in d.items() if k != "architectures"})
    model = transformers.AutoModelForCausalLM.from_config(conf).to(torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.zeros(1, 8, dtype=torch.long), use_cache=True).past_key_values
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)) // 8


def main() -> None:
    print("| model | ponder (latent) | transformers 5.x | transformers 4.x (per-head K/V) "
          "| GQA, 8 KV heads | MHA |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, shape in MLA_SHAPES.items():
        cfg = mla_config(shape)
        m, L, H = cfg.mla, cfg.num_hidden_layers, cfg.num_attention_heads
        ours = KVCache.bytes_per_token(cfg, torch.bfloat16)
        measured = transformers_measured(cfg) if L * H * m.kv_lora_rank < 1e5 else None
        # transformers 5 caches [normed latent | rotated shared key] like ponder (checked on the small shape).
        hf5 = f"{measured:,} (measured)" if measured is not None else f"{L * (m.kv_lora_rank + m.qk_rope_head_dim) * BF16:,}"
        hf4 = L * H * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim) * BF16
        gqa = L * 2 * min(8, H) * m.v_head_dim * BF16
        mha = L * 2 * H * m.v_head_dim * BF16
        print(f"| {name} | {ours:,} | {hf5} | {hf4:,} | {gqa:,} | {mha:,} |")
    for name, shape in GQA_SHAPES.items():
        cfg = gqa_config(shape)
        ours = KVCache.bytes_per_token(cfg, torch.bfloat16)
        print(f"| {name} | {ours:,} (K/V, GQA) | {ours:,} | {ours:,} | - | - |")


if __name__ == "__main__":
    main()
