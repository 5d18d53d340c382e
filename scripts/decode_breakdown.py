"""Where a decode step's time goes: the step's weight matmuls alone against the whole forward,
then the step with one kind of op removed at a time. Prints ms per step (batch 64, 64 steps).

    .venv/bin/python scripts/decode_breakdown.py [--hidden 512 --layers 8 --heads 8 --kv-heads 4]

Removing an op changes the numbers the model computes, not the shapes, so the timing of the rest
is unchanged; the figures explain `ponder bench generate`, they are not a benchmark themselves.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from ponder.models import Decoder, KVCache, ModelConfig
from ponder.models import cache as cache_module
from ponder.models import layers


def best_ms_per_step(fn, steps: int = 64, repeats: int = 4) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    args = ap.parse_args()
    config = ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 1024,
        "hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
        "num_key_value_heads": args.kv_heads, "head_dim": args.hidden // args.heads,
        "intermediate_size": 3 * args.hidden, "tie_word_embeddings": True, "rope_theta": 1e6})
    torch.manual_seed(0)
    model = Decoder(config).eval()
    prompt = torch.randint(1, 1024, (64, 16))

    def decode():
        cache = KVCache(config, 64, 80)
        with torch.inference_mode():
            model(prompt, cache)
            for _ in range(63):
                model(prompt[:, :1], cache)

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x, x_inner = torch.randn(64, 1, args.hidden), torch.randn(64, 1, 3 * args.hidden)

    def matmuls_only():
        with torch.inference_mode():
            for _ in range(64):
                for m in linears:
                    m(x if m.in_features == args.hidden else x_inner)
                F.linear(x, model.model.embed_tokens.weight)

    whole = best_ms_per_step(decode)
    print(f"whole forward      {whole:6.2f} ms/step")
    print(f"matmuls alone      {best_ms_per_step(matmuls_only):6.2f} ms/step")
    ablations = {
        "attention (SDPA)": (F, "scaled_dot_product_attention", lambda q, k, v, **kw: q[..., :v.shape[-1]].clone()),
        "RMSNorm": (layers.RMSNorm, "forward", lambda self, h: h),
        "cache writes": (cache_module.KVCache, "write",
                         lambda self, i, k, v, step: (self.k[i][:, :, :step.key_len], self.v[i][:, :, :step.key_len])),
        "RoPE": (layers, "apply_rope", lambda h, cos, sin: h),
        "SiLU": (F, "silu", lambda h: h),
    }
    for name, (owner, attr, stand_in) in ablations.items():
        original = getattr(owner, attr)
        setattr(owner, attr, stand_in)
        try:
            print(f"without {name:<18} saves {whole - best_ms_per_step(decode):5.2f} ms/step")
        finally:
            setattr(owner, attr, original)


if __name__ == "__main__":
    main()
