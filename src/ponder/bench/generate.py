"""`ponder bench generate`: ponder's engine against transformers `generate`, same weights,
same prompts, batch and lengths, measured in one run; plus the machine's fp32 matmul rate and
memory bandwidth (decoding one sequence reads every weight per token: bandwidth is its ceiling).

Random weights at a chosen shape (`--arch`, `--hidden`, ...) and random prompt ids, or a real
checkpoint (`--model DIR`): its weights, and real prompts (word problems asked with its chat
template, as `ponder eval` asks them; their lengths differ, so transformers pads on the left).
Both sides generate exactly `--new-tokens` per row (no stop token), prefill included."""

from __future__ import annotations

import json
import tempfile
import time

import torch

from ponder.engine import Engine, SamplingParams
from ponder.models import Decoder, KVCache, ModelConfig
from ponder.models.decode import decode_path


def matmul_gflops(size: int = 2048, dtype=torch.float32, repeats: int = 10) -> float:
    """The machine's dense matmul rate: the ceiling a decoder's FLOP count is compared with."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def memory_gbps(megabytes: int = 512, repeats: int = 5) -> float:
    """The machine's read bandwidth, GB/s: the best of a few full reads of a buffer far larger
    than the caches (a sum touches each byte once)."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = min(_timed(x.sum) for _ in range(repeats))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def real_prompts(tokenizer, batch: int) -> list[list[int]]:
    """`batch` prompt ids: held-out word problems asked as `ponder eval` asks them."""
    from ponder.evaluate.prompts import build_prompt
    from ponder.tasks import load_task

    return [tokenizer.encode(build_prompt(p, tokenizer)) for p in load_task("wordproblems:test", limit=batch)]


def cpu_name() -> str:
    """The CPU as `lscpu` names it (model name, family, model), for the figures to say where they
    were taken; "unknown" off Linux."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        return "unknown"
    return f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})"


def flops_per_token(config: ModelConfig, model: torch.nn.Module, context: float) -> float:
    """2 x non-embedding parameters a token uses, plus attention (QK^T and AV) over `context` keys."""
    embedding = sum(p.numel() for name, p in model.named_parameters()
                    if "embed_tokens" in name or name.startswith("lm_head"))
    non_embedding = sum(p.numel() for p in model.parameters()) - embedding
    if config.moe is not None:  # a token runs k of the E routed experts
        routed = sum(p.numel() for name, p in model.named_parameters() if ".experts." in name)
        non_embedding -= routed * (1 - config.moe.num_experts_per_tok / config.moe.num_experts)
    # MLA attends in its absorbed form: keys of width kv_lora_rank + rope, values of width kv_lora_rank.
    value_width = config.mla.kv_lora_rank if config.mla is not None else config.v_head_dim
    linear = sum(map(config.is_linear_layer, range(config.num_hidden_layers)))
    full = config.num_hidden_layers - linear
    attention = 2 * full * config.num_attention_heads * (config.k_head_dim + value_width) * context
    if linear:  # a Gated DeltaNet token: decay, read (S^T k), write (k delta^T) and query its state, whatever the context
        lin = config.linear
        attention += 8 * linear * lin.num_value_heads * lin.key_head_dim * lin.value_head_dim
    return 2 * non_embedding + attention


def build_config(args) -> ModelConfig:
    model_type = {"qwen3_5": "qwen3_5_text"}.get(args.arch, args.arch)
    architecture = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM",
                    "qwen3_moe": "Qwen3MoeForCausalLM", "deepseek_v3": "DeepseekV3ForCausalLM",
                    "qwen3_5_text": "Qwen3_5ForCausalLM"}[model_type]
    head_dim = args.hidden // args.heads
    return ModelConfig.from_hf_dict({
        "architectures": [architecture], "model_type": model_type,
        "vocab_size": args.vocab, "hidden_size": args.hidden, "num_hidden_layers": args.layers,
        "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads,
        "head_dim": args.hidden // args.heads, "intermediate_size": args.intermediate or 3 * args.hidden,
        "max_position_embeddings": 4096, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "eos_token_id": 0,
        # Sparse shapes, small and fixed: 8 routed experts, 2 per token, each as wide as the
        # hidden size; MLA with DeepSeek-V3's proportions (latent = 4 heads' width, rope = half a head).
        **({"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": args.hidden,
            "norm_topk_prob": True} if args.arch == "qwen3_moe" else {}),
        **({"n_routed_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": args.hidden,
            "n_shared_experts": 1, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 1,
            "routed_scaling_factor": 2.5, "norm_topk_prob": True, "q_lora_rank": None,
            "kv_lora_rank": 4 * (args.hidden // args.heads), "qk_nope_head_dim": args.hidden // args.heads,
            "qk_rope_head_dim": args.hidden // args.heads // 2, "v_head_dim": args.hidden // args.heads,
            "rope_interleave": True} if args.arch == "deepseek_v3" else {}),
        # Qwen3.5's proportions: three linear layers per full one, RoPE on a quarter of each head,
        # twice as many value heads as key heads in the linear layers, conv kernel 4.
        **({"full_attention_interval": 4, "partial_rotary_factor": 0.25, "linear_conv_kernel_dim": 4,
            "linear_num_key_heads": max(1, args.heads // 2), "linear_num_value_heads": args.heads,
            "linear_key_head_dim": head_dim, "linear_value_head_dim": head_dim} if model_type == "qwen3_5_text" else {}),
    })


def best_times(fns, repeats: int) -> list[float]:
    """Best wall time of each function over `repeats` rounds. The functions take turns within a
    round, so a slow spell of a shared machine hits all of them, not only whichever ran then."""
    for fn in fns:
        fn()  # warm-up: first-call allocations and lazy initialisation are not what we measure
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_initialized():  # GPU work is asynchronous: wait for it before reading the clock
                torch.cuda.synchronize()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def main(args) -> int:
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    if args.model:
        from ponder.models import from_pretrained
        from ponder.tokenizer import Tokenizer

        model = from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        config = model.config
        prompts = real_prompts(Tokenizer.from_pretrained(args.model), args.batch)
    else:
        config = build_config(args)
        model = Decoder(config).to(dtype=dtype, device=args.device).eval()
        prompts = torch.randint(1, args.vocab, (args.batch, args.prompt_len)).tolist()
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=1.0, stop_token_ids=())
    engine = Engine(model)
    width = max(map(len, prompts))

    def run_ponder():
        out = engine.generate(prompts, n=1, params=params)
        assert all(c[0].num_tokens == args.new_tokens for c in out)

    runs = [run_ponder]
    try:
        from transformers import AutoModelForCausalLM
    except ImportError:
        print("transformers not installed: peer skipped (pip install -e '.[test]')")
    else:
        if args.model:
            peer = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
        else:
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                peer = AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype).to(args.device).eval()
        # prompts of different lengths: padded on the left, masked out, as transformers batches them
        input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts], device=args.device)
        attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=args.device)

        def run_peer():
            with torch.inference_mode():
                out = peer.generate(input_ids, attention_mask=attention_mask, do_sample=True,
                                    temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens,
                                    min_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=0)
            assert out.shape[1] == width + args.new_tokens

        runs.append(run_peer)

    times = best_times(runs, args.repeats)
    ponder_s, peer_s = times[0], (times[1] if len(times) > 1 else None)

    tokens = len(prompts) * args.new_tokens
    prompt_len = sum(map(len, prompts)) / len(prompts)
    context = prompt_len + args.new_tokens / 2
    flops = flops_per_token(config, model, context) * tokens
    if args.device == "cpu":
        peak, bandwidth = matmul_gflops(dtype=dtype), memory_gbps()
    else:
        peak = bandwidth = float("nan")
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    result = {
        "model": args.model,
        "shape": {"arch": config.model_type, "hidden": config.hidden_size, "layers": config.num_hidden_layers,
                  "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
                  "vocab": config.vocab_size, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)},
        "batch": len(prompts), "prompt_len": round(prompt_len, 1), "new_tokens": args.new_tokens,
        "dtype": args.dtype, "threads": torch.get_num_threads(),
        "decode_path": decode_path(model), "cpu": cpu_name(),
        "cache_bytes_per_token": KVCache.bytes_per_token(config, dtype),
        # one row's whole cache at its final length (linear-attention layers: a fixed-size state)
        "cache_bytes_per_sequence": KVCache.bytes_for(config, int(prompt_len) + args.new_tokens, dtype),
        "ponder_tok_s": round(tokens / ponder_s, 1),
        "transformers_tok_s": round(tokens / peer_s, 1) if peer_s else None,
        "ratio": round(peer_s / ponder_s, 2) if peer_s else None,
        # three significant figures, not one decimal: a tiny shape on a busy machine runs at under 0.05 GFLOP/s
        "ponder_gflops": float(f"{flops / ponder_s / 1e9:.3g}"),
        "matmul_gflops": round(peak, 1),
        "fraction_of_matmul": round(flops / ponder_s / 1e9 / peak, 3),
        "transformers_fraction_of_matmul": round(flops / peer_s / 1e9 / peak, 3) if peer_s else None,
        # every weight is read once per decode step: at batch 1 that bounds tokens per second
        "weight_MB": round(weight_bytes / 1e6, 1),
        "memory_GBps": round(bandwidth, 1),
        "bandwidth_bound_steps_s": round(bandwidth * 1e9 / weight_bytes, 1),
    }
    if args.json:
        print(json.dumps(result))
    else:
        s = result["shape"]
        print((f"model: {args.model}; " if args.model else "") +
              f"shape: {s['arch']} hidden {s['hidden']}, {s['layers']} layers, {s['heads']}/{s['kv_heads']} heads, "
              f"vocab {s['vocab']}, {s['params_M']}M params; batch {result['batch']}, prompt {result['prompt_len']}, "
              f"{args.new_tokens} new tokens, {args.dtype}, {result['threads']} threads; "
              f"KV cache {result['cache_bytes_per_token']:,} bytes/token, "
              f"{result['cache_bytes_per_sequence']:,} bytes/sequence at its final length")
        print(f"CPU: {result['cpu']}; decode path: {result['decode_path']} (PONDER_DECODE overrides)")
        print(f"ponder        {result['ponder_tok_s']:>10,.0f} tok/s  ({result['ponder_gflops']} GFLOP/s, "
              f"{100 * result['fraction_of_matmul']:.0f}% of {result['matmul_gflops']} GFLOP/s matmul)")
        if peer_s:
            print(f"transformers  {result['transformers_tok_s']:>10,.0f} tok/s  "
                  f"({100 * result['transformers_fraction_of_matmul']:.0f}% of the same matmul rate)")
            print(f"ratio         {result['ratio']:.2f}x")
        print(f"weights {result['weight_MB']:,} MB read per decode step; memory {result['memory_GBps']} GB/s: "
              f"at most {result['bandwidth_bound_steps_s']} steps/s (a batch-1 ceiling)")
    return 0
