"""Where a decode step's time goes: the decode paths the engine can take (Decoder.forward, and
DecodeStep with MKL-packed, oneDNN-packed or unpacked weights; which one this machine takes),
then the chosen DecodeStep without attention, with only its matmuls and attention (every norm,
RoPE, SiLU and residual add removed), its matmuls alone (MKL-packed, oneDNN-packed, and unpacked
with F.linear). Prints ms per step (batch 64, 63 steps after a 16-token prompt), the resident memory
the chosen DecodeStep's weights add, and a ceiling for `ponder bench generate`'s share of the matmul rate: the prefill plus 63 steps of matmuls and attention alone,
as if every other op were free.

    .venv/bin/python scripts/decode_breakdown.py [--hidden 512 --layers 8 --heads 8 --kv-heads 4]

Removing an op changes the numbers the model computes, not the shapes, so the timing of the rest
is unchanged; the figures explain `ponder bench generate`, they are not a benchmark themselves.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from ponder.bench.generate import build_config, flops_per_token, matmul_gflops
from ponder.models import Decoder, KVCache
from ponder.models.decode import DecodeStep, _packings, cpu_has_amx, decode_path
from ponder.models.layers import attend

ROWS, PROMPT, STEPS = 64, 16, 63


def best_ms_per_step(step, config, repeats: int = 5) -> float:
    tokens = torch.randint(1, config.vocab_size, (ROWS,))

    def decode():
        cache = KVCache(config, ROWS, PROMPT + STEPS + 1)
        cache.lengths[:] = PROMPT  # the keys' values do not change the timing
        with torch.inference_mode():
            for _ in range(STEPS):
                step(tokens, cache)

    decode()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        decode()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best / STEPS


def matmuls_and_attention(fast: DecodeStep):
    """DecodeStep's forward with everything but the matmuls and attention taken out."""

    def step(tokens, cache):
        B, Hq, Hkv, D = tokens.shape[0], fast.heads, fast.kv_heads, fast.head_dim
        plan = cache.step(1)
        x = F.embedding(tokens, fast.model.model.embed_tokens.weight)
        for i, (qkv_proj, _, o_proj, mlp) in enumerate(fast.layers):
            qkv = qkv_proj(x).view(B, Hq + 2 * Hkv, D)
            out = attend(qkv[:, None, :Hq], qkv[:, None, Hq:Hq + Hkv], qkv[:, None, Hq + Hkv:], i, cache, plan)
            x = o_proj(out.view(B, -1))
            x = mlp.down(mlp.gate_up(x).chunk(2, dim=-1)[0])
        cache.advance(1)
        return fast.head_linear(x, fast.head_weight)

    return step


def matmuls_only(fast: DecodeStep):
    """The step's weight matmuls alone, as `fast` runs them (packed or `F.linear`)."""
    linears = [linear for qkv, _, o, mlp in fast.layers for linear in (qkv, o, mlp.gate_up, mlp.down)]
    inputs = [torch.randn(ROWS, linear.make_weight().shape[1]) for linear in linears]
    head_input = torch.randn(ROWS, fast.head_weight.shape[1])

    def step(tokens, cache):
        for linear, x in zip(linears, inputs):
            linear(x)
        fast.head_linear(head_input, fast.head_weight)  # the head is never packed

    return step


def best_prefill_ms(model, config, repeats: int = 5) -> float:
    """The engine's prefill: ROWS prompts of PROMPT tokens into an empty cache, the last logits."""
    prompts = torch.randint(1, config.vocab_size, (ROWS, PROMPT))
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.inference_mode():
            cache = KVCache(config, ROWS, PROMPT + STEPS + 1)
            model.logits(model.hidden(prompts, cache=cache)[:, -1])
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def resident_mb() -> float:
    """This process's resident memory (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=4)
    args = ap.parse_args()
    # the shape `ponder bench generate` builds for the same flags
    config = build_config(argparse.Namespace(arch="qwen3", vocab=1024, intermediate=None, **vars(args)))
    torch.manual_seed(0)
    model = Decoder(config).eval()
    model_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    cache = KVCache(config, ROWS, PROMPT + 1)
    with torch.inference_mode():  # touch the cache and warm the allocator, so neither is counted below
        model(torch.zeros(ROWS, 1, dtype=torch.long), cache)
    before = resident_mb() if os.path.exists("/proc/self/statm") else None
    path = decode_path(model)
    fast = DecodeStep(model, "unpacked" if path == "plain" else path)
    fast(torch.zeros(ROWS, dtype=torch.long), cache)  # the first call packs the weights
    if before is not None:
        print(f"DecodeStep's weights ({fast.path}): +{resident_mb() - before:.0f} MB resident "
              f"(the model's weights: {model_mb:.0f} MB)")
    steps = {name: fast if name == fast.path else DecodeStep(model, name)
             for name in ["unpacked", *sorted(_packings(model.device))]}

    def model_step(tokens, cache):
        return model(tokens[:, None], cache)[:, -1]

    print(f"the engine's decode path here: {path} (CPU has AMX: {cpu_has_amx()}; "
          f"PONDER_DECODE={os.environ.get('PONDER_DECODE', '')!r})")
    print(f"Decoder.forward (plain)    {best_ms_per_step(model_step, config):6.2f} ms/step")
    for name, step in steps.items():
        print(f"DecodeStep {name:15s} {best_ms_per_step(step, config):6.2f} ms/step")
    print(f"the {fast.path} DecodeStep:")
    sdpa = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = lambda q, k, v, **kw: q[..., :v.shape[-1]].clone()
    try:
        print(f"  without attention        {best_ms_per_step(fast, config):6.2f} ms/step")
    finally:
        F.scaled_dot_product_attention = sdpa
    floor = best_ms_per_step(matmuls_and_attention(fast), config)
    print(f"  matmuls + attention only {floor:6.2f} ms/step")
    for name, step in steps.items():
        print(f"  matmuls alone, {name:9s} {best_ms_per_step(matmuls_only(step), config):6.2f} ms/step")
    prefill = best_prefill_ms(model, config)
    tokens = ROWS * (STEPS + 1)
    flops = flops_per_token(config, model, PROMPT + (STEPS + 1) / 2) * tokens
    ceiling_s = (prefill + STEPS * floor) / 1e3
    peak = matmul_gflops()
    print(f"prefill ({ROWS} x {PROMPT} tokens)     {prefill:6.2f} ms")
    print(f"ceiling: prefill + {STEPS} x matmuls + attention = {1e3 * ceiling_s:.0f} ms for {tokens} tokens, "
          f"{flops / ceiling_s / 1e9:.0f} GFLOP/s = {100 * flops / ceiling_s / 1e9 / peak:.0f}% of the "
          f"{peak:.0f} GFLOP/s matmul rate (counted as `ponder bench generate` counts)")


if __name__ == "__main__":
    main()
