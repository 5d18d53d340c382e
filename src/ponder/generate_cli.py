"""`ponder generate`: load a checkpoint and print completions for one or more prompts."""

from __future__ import annotations

from ponder.engine import Engine, SamplingParams
from ponder.evaluate.loading import load_model
from ponder.evaluate.prompts import uses_chat
from ponder.tools import make_tool


def main(args) -> int:
    model, tokenizer = load_model(args.model, getattr(args, "device", "auto"), args.dtype)
    prompts = args.prompt
    if uses_chat(tokenizer, args.chat):  # by default, whenever the checkpoint ships a template
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                 enable_thinking=not args.no_thinking) for p in prompts]
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, stop_strings=tuple(args.stop), thinking_budget=args.thinking_budget,
        tool=make_tool(args.tool), seed=args.seed)
    results = Engine(model, tokenizer).generate(prompts, n=args.n, params=params)
    for prompt, samples in zip(args.prompt, results):
        for i, c in enumerate(samples):
            header = f"--- prompt: {prompt!r}" + (f" sample {i + 1}/{len(samples)}" if len(samples) > 1 else "")
            print(header)
            print(c.text)
            print(f"--- [{c.num_tokens} tokens, {c.finish_reason}]")
    return 0
