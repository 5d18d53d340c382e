"""KV-cache bytes (bf16, all layers) for MLA, GQA and sliding-window shapes: ponder's cache against
what transformers caches and against equivalent grouped-query models. Prints Markdown tables.

    .venv/bin/python scripts/kv_cache_bytes.py

The figures are arithmetic on published shapes (deterministic, nothing is timed). For the tiny
MLA shape the transformers column is measured: a real forward through transformers' model with
its DynamicCache, bytes summed over the cached tensors.

Sliding windows (Gemma 3): bytes per token while the sequence is within the window, and the
whole cache of one sequence at 4k and 32k positions, against a cache that keeps every position
on every layer; ponder's are also checked against a KVCache actually allocated (one row), and,
on a tiny Gemma shape, against transformers' cache after a forward past the window.

Linear-attention hybrids (Qwen3.5): three of four layers keep a fixed-size state (conv inputs in
bf16, the delta rule's state in fp32) whatever the length; the full layers keep K/V. The cache of
one sequence at 1k, 8k and 32k positions against the same model with full attention on every
layer, checked against a KVCache actually allocated, and on a tiny shape against transformers'
cache after a forward.
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


# google/gemma-3-270m's config.json: 18 layers, five sliding (window 512) then one full, repeated;
# 1 KV head of 256.
GEMMA3_270M = dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=262144,
                   hidden_size=640, intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, sliding_window=512,
                   rope_theta=1000000.0, rope_local_base_freq=10000.0, _sliding_window_pattern=6,
                   max_position_embeddings=32768)
POSITIONS = (4096, 32768)

# transformers' Qwen3_5TextConfig and Qwen3_5MoeTextConfig defaults (their docstrings: Qwen3.5-9B
# and Qwen3.5-35B-A3B style): every fourth layer full, linear layers with 16 key heads and 32 value
# heads of 128, conv kernel 4. Only the attention/cache fields matter here.
QWEN3_5_SHAPES = {
    "Qwen3_5TextConfig defaults (32 layers, GQA 16/4 x 256)": dict(
        model_type="qwen3_5_text", hidden_size=4096, intermediate_size=12288, num_hidden_layers=32,
        num_attention_heads=16, num_key_value_heads=4, head_dim=256),
    "Qwen3_5MoeTextConfig defaults (40 layers, GQA 16/2 x 256)": dict(
        model_type="qwen3_5_text", hidden_size=2048, intermediate_size=512, num_hidden_layers=40,
        num_attention_heads=16, num_key_value_heads=2, head_dim=256),
}
HYBRID_POSITIONS = (1024, 8192, 32768)


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


def allocated(cfg: ModelConfig, positions: int) -> int:
    """Bytes of a one-row bf16 KVCache for `positions` tokens, summed over its tensors (on the meta
    device: the shapes are real, nothing is allocated)."""
    return KVCache(cfg, 1, positions, dtype=torch.bfloat16, device="meta").nbytes


def transformers_sliding_measured(cfg: ModelConfig, tokens: int) -> int | None:
    """Bytes of transformers' own cache for cfg after a forward of `tokens` tokens (bf16)."""
    try:
        import transformers
    except ImportError:
        return None
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    model = transformers.AutoModelForCausalLM.from_config(transformers.Gemma3TextConfig(**d)).to(torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.zeros(1, tokens, dtype=torch.long), use_cache=True).past_key_values
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))


def sliding_window_table() -> None:
    cfg = ModelConfig.from_hf_dict(GEMMA3_270M)
    per_token = KVCache.bytes_per_token(cfg, torch.bfloat16)
    sliding = sum(w is not None for w in map(cfg.layer_window, range(cfg.num_hidden_layers)))
    print(f"\nGemma 3 270M shape ({sliding} of {cfg.num_hidden_layers} layers sliding, window {cfg.sliding_window}, "
          f"{cfg.num_key_value_heads} KV head of {cfg.head_dim}), one sequence, bf16:\n")
    print("| positions | ponder (rings on sliding layers) | keep everything | ratio |")
    print("|---:|---:|---:|---:|")
    print(f"| per token (within the window) | {per_token:,} | {per_token:,} | 1.00 |")
    for n in POSITIONS:
        ours, everything = KVCache.bytes_for(cfg, n, torch.bfloat16), per_token * n
        assert ours == allocated(cfg, n)
        print(f"| {n:,} | {ours:,} ({ours / 2**20:.1f} MiB) | {everything:,} ({everything / 2**20:.1f} MiB) "
              f"| {everything / ours:.2f} |")
    full_layers = cfg.num_hidden_layers - sliding
    print(f"\nPast the window each new token adds {per_token * full_layers // cfg.num_hidden_layers:,} bytes "
          f"(the {full_layers} full layers) instead of {per_token:,}.")
    tiny = ModelConfig.from_hf_dict({**GEMMA3_270M, "vocab_size": 64, "hidden_size": 32, "intermediate_size": 32,
                                     "num_hidden_layers": 6, "head_dim": 16, "sliding_window": 8})
    measured = transformers_sliding_measured(tiny, 40)
    if measured is not None:
        print(f"\nTiny Gemma shape (6 layers, window 8) after 40 tokens: ponder {KVCache.bytes_for(tiny, 40, torch.bfloat16):,} "
              f"bytes, transformers' DynamicCache {measured:,} bytes (measured).")


def transformers_hybrid_measured(cfg: ModelConfig, tokens: int) -> int | None:
    """Bytes of transformers' own Qwen3.5 cache for cfg after a forward of `tokens` tokens (bf16):
    every tensor its cache layers hold (keys, values, conv and recurrent states)."""
    try:
        import transformers
    except ImportError:
        return None
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen3_5TextConfig(**d)).to(torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.zeros(1, tokens, dtype=torch.long), use_cache=True).past_key_values
    total = 0
    for layer in cache.layers:
        for value in vars(layer).values():
            for t in (value.values() if isinstance(value, dict) else [value]):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
    return total


def hybrid_table() -> None:
    print("\nLinear-attention hybrids (Qwen3.5), one sequence, bf16 (the delta rule's state in fp32):\n")
    print("| shape | positions | ponder (hybrid) | full attention on every layer | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, shape in QWEN3_5_SHAPES.items():
        cfg = ModelConfig(vocab_size=256, **shape)
        everywhere = ModelConfig(vocab_size=256, **{**shape, "model_type": "qwen3"})  # same heads, all full
        per_token = KVCache.bytes_per_token(everywhere, torch.bfloat16)
        for n in HYBRID_POSITIONS:
            ours, full = KVCache.bytes_for(cfg, n, torch.bfloat16), per_token * n
            assert ours == allocated(cfg, n)
            print(f"| {name} | {n:,} | {ours:,} ({ours / 2**20:.1f} MiB) | {full:,} ({full / 2**20:.1f} MiB) "
                  f"| {full / ours:.2f} |")
        linear = sum(map(cfg.is_linear_layer, range(cfg.num_hidden_layers)))
        fixed = KVCache.bytes_for(cfg, 0, torch.bfloat16)
        print(f"| {name}: the {linear} linear layers' fixed state | | {fixed:,} ({fixed / 2**20:.1f} MiB) | | |")
    tiny = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, model_type="qwen3_5_text")
    measured = transformers_hybrid_measured(tiny, 40)
    if measured is not None:
        print(f"\nTiny Qwen3.5 shape (4 layers, 3 linear) after 40 tokens: ponder "
              f"{KVCache.bytes_for(tiny, 40, torch.bfloat16):,} bytes, transformers' cache {measured:,} bytes (measured).")


if __name__ == "__main__":
    main()
    sliding_window_table()
    hybrid_table()
