"""Where a Qwen3.5 decode step's time goes: the engine's fused step (DecodeStep) on random weights
at `ponder bench generate --arch qwen3_5`'s shape, then the same step with the linear layers'
mixers removed, with the full layers' mixers removed, and with both (the MLPs, norms and head
alone). Prints ms per step at batch 1 and 64, after a short and a long prompt: the linear layers
cost the same at every length, the full layers' attention grows with it.

    .venv/bin/python scripts/hybrid_breakdown.py [--hidden 512 --layers 8 --heads 8 --kv-heads 4]

A removed mixer returns zeros of its output's shape, so the rest computes the same shapes; the
figures explain `ponder bench generate`, they are not a benchmark themselves.
"""

from __future__ import annotations

import argparse
import time

import torch

from ponder.bench.generate import build_config
from ponder.models import Decoder, KVCache
from ponder.models.decode import DecodeStep
from ponder.models.linear_attention import GatedDeltaNet

STEPS = 16


def zeros(mixer):
    return lambda x, *rest: torch.zeros_like(x)


def ms_per_step(model, step: DecodeStep, rows: int, prompt: int) -> float:
    cache = KVCache(model.config, rows, prompt + STEPS + 1)
    with torch.inference_mode():
        model.hidden(torch.randint(1, model.config.vocab_size, (rows, prompt)), cache)
        tokens = torch.randint(1, model.config.vocab_size, (rows,))
        step(tokens, cache)  # warm-up
        start = time.perf_counter()
        for _ in range(STEPS):
            step(tokens, cache)
    return 1000 * (time.perf_counter() - start) / STEPS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--prompts", type=int, nargs="+", default=[16, 2048])
    args = p.parse_args()
    config = build_config(argparse.Namespace(arch="qwen3_5", vocab=1024, intermediate=None, **vars(args)))
    torch.manual_seed(0)
    model = Decoder(config).eval()
    full = DecodeStep(model)
    layers = list(full.layers)
    linear = [isinstance(mixer, GatedDeltaNet) for mixer, *_ in layers]

    def variant(drop_linear: bool, drop_full: bool) -> DecodeStep:
        step = DecodeStep(model, full.path)
        step.layers = [(zeros(mixer) if (drop_linear if lin else drop_full) else mixer, *rest)
                       for (mixer, *rest), lin in zip(layers, linear)]
        return step

    variants = {"whole step": full, "without the linear mixers": variant(True, False),
                "without the full mixers": variant(False, True), "MLPs, norms and head only": variant(True, True)}
    print(f"shape: hidden {args.hidden}, {args.layers} layers ({sum(linear)} linear), {args.heads}/{args.kv_heads} "
          f"heads; decode path {full.path}; {torch.get_num_threads()} threads; ms per step\n")
    print("| rows | prompt | " + " | ".join(variants) + " |")
    print("|---:|---:|" + "---:|" * len(variants))
    for rows in (1, 64):
        for prompt in args.prompts:
            times = [ms_per_step(model, step, rows, prompt) for step in variants.values()]
            print(f"| {rows} | {prompt} | " + " | ".join(f"{t:.2f}" for t in times) + " |")


if __name__ == "__main__":
    main()
