"""The `ponder` command line: argument parsing, then each subcommand calls into its module.

Imports are lazy so that `ponder grade` does not pay for torch and `ponder --help` is instant.
Bad input (a missing or broken checkpoint, task data, config, option) is reported the same way
by every command: one `ponder CMD: error: ...` line naming the file or field, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys


# What bad input raises (ConfigError, CheckpointError and TaskFileError are ValueErrors; a missing
# or unreadable file is an OSError): reported as one line, where anything else keeps its traceback.
USER_ERRORS = (ValueError, OSError)

TOOLS = ("none", "calculator", "python")  # ponder.tools.make_tool's names


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N")


def _data_args(p: argparse.ArgumentParser) -> None:
    """Where a command's problems come from (ponder.tasks.load_task's arguments)."""
    p.add_argument("--data", default=None,
                   help="task data: a JSON, JSONL, .gz or parquet file, or a Hugging Face dataset "
                        "(a save_to_disk folder, or a hub id already in the local cache)")
    p.add_argument("--split", default=None, help="split of a Hugging Face dataset --data (default: its only one)")
    p.add_argument("--prompt-column", default=None,
                   help="--task jsonl: the field holding the prompt (default: prompt or problem)")
    p.add_argument("--answer-column", default=None,
                   help="--task jsonl: the field holding the gold answer (default: answer)")
    p.add_argument("--limit", type=int, default=None, help="first N problems only")


def _asking_args(p: argparse.ArgumentParser) -> None:
    """How problems are asked and answers read: the same options, and defaults, as training's."""
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap prompts in the model's chat template (default: when the checkpoint ships one)")
    p.add_argument("--instruction", default=None,
                   help="appended to math problems after a blank line (default: ask for step-by-step reasoning "
                        "and a \\boxed{} answer; '' for none)")
    p.add_argument("--extract", default="lenient", choices=["lenient", "strict"],
                   help="how a math answer is read: lenient (a box, else an answer line, else the last number) "
                        "or strict (a box or an answer line only)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ponder", description="Turn small base LLMs into reasoning models with RL from verifiable "
                                   "rewards and inference-time scaling, and measure the result.")
    sub = parser.add_subparsers(dest="command", required=True)

    # --- generate (ponder.engine) ---
    p = sub.add_parser("generate", help="sample completions from a checkpoint")
    p.add_argument("--model", required=True, help="HF-layout checkpoint folder")
    p.add_argument("--prompt", action="append", required=True, help="prompt text (repeatable)")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt in the model's chat template (default: when the checkpoint ships one)")
    p.add_argument("--no-thinking", action="store_true", help="chat: enable_thinking=False")
    p.add_argument("--n", type=int, default=1, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 means greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--thinking-budget", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--tool", default="none", choices=TOOLS,
                   help="run the model's <calc> blocks (calculator, in-process) or ```python blocks (python, "
                        "in the sandbox) and write their output back (ponder.tools)")
    p.add_argument("--python-tool", dest="tool", action="store_const", const="python", help="same as --tool python")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    _device_arg(p)
    p.set_defaults(func=lambda a: __import__("ponder.generate_cli", fromlist=["main"]).main(a))

    # --- bench (ponder.bench) ---
    p = sub.add_parser("bench", help="benchmarks against peers measured in the same run")
    bench = p.add_subparsers(dest="bench", required=True)
    b = bench.add_parser("generate", help="ponder engine vs transformers generate")
    b.add_argument("--model", default=None,
                   help="a checkpoint folder: its real weights and real prompts (else random weights at the shape below)")
    b.add_argument("--hidden", type=int, default=256)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--heads", type=int, default=4)
    b.add_argument("--kv-heads", type=int, default=2)
    b.add_argument("--intermediate", type=int, default=None, help="default 3 x hidden")
    b.add_argument("--vocab", type=int, default=1024)
    b.add_argument("--arch", default="qwen3", help="qwen3, qwen2, llama, qwen3_moe, deepseek_v3, qwen3_5")
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--prompt-len", type=int, default=16)
    b.add_argument("--new-tokens", type=int, default=64)
    b.add_argument("--repeats", type=int, default=5, help="rounds; ponder and the peer take turns in each, best of each kept")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    b.add_argument("--device", default="cpu")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=lambda a: __import__("ponder.bench.generate", fromlist=["main"]).main(a))
    b = bench.add_parser("grade", help="ponder math grader vs math-verify on MATH-500 pairs")
    b.add_argument("--data", default=None, help="MATH-500 jsonl (default ../shared/data/math500_test.jsonl)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=lambda a: __import__("ponder.bench.grade", fromlist=["main"]).main(a))
    b = bench.add_parser("grpo", help="ponder GRPO step vs TRL GRPOTrainer step")
    b.add_argument("--prompts", type=int, default=8)
    b.add_argument("--group", type=int, default=8)
    b.add_argument("--max-new-tokens", type=int, default=64)
    b.add_argument("--steps", type=int, default=5)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=lambda a: __import__("ponder.bench.grpo", fromlist=["main"]).main(a))
    b = bench.add_parser("memory", help="peak memory of a GRPO step at Qwen3-0.6B width and vocabulary vs TRL")
    b.add_argument("--layers", type=int, default=2, help="decoder layers (the 0.6B model has 28)")
    b.add_argument("--model", default=None, help="an existing checkpoint folder to measure instead (e.g. Gemma 3)")
    b.add_argument("--prompts", type=int, default=2)
    b.add_argument("--group", type=int, default=8)
    b.add_argument("--max-new-tokens", type=int, default=128)
    b.add_argument("--steps", type=int, default=2, help="GRPO steps per variant (the first warms up)")
    b.add_argument("--variants", default=",".join(("trl", "full", "chunked", "ckpt", "lora")),
                   help="comma-separated: trl, full, chunked, ckpt, lora")
    b.add_argument("--head", action="store_true", help="measure the loss head alone: body, chunked and one-piece head")
    b.add_argument("--shapes", default="16x512,8x256", help="with --head: comma-separated B x T completion shapes")
    b.add_argument("--device", default="cpu", help="cpu, or cuda (peak allocated GPU memory then)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    b.add_argument("--root", help=argparse.SUPPRESS)
    b.add_argument("--variant", help=argparse.SUPPRESS)
    b.add_argument("--batch", type=int, default=16, help=argparse.SUPPRESS)
    b.add_argument("--length", type=int, default=512, help=argparse.SUPPRESS)
    b.set_defaults(func=lambda a: __import__("ponder.bench.memory", fromlist=["main"]).main(a))
    b = bench.add_parser("score", help="scoring code completions serially vs side by side (the RL loop's pool)")
    b.add_argument("--programs", type=int, default=512, help="how many programs to score")
    b.add_argument("--workers", type=int, default=None, help="parallel run's workers (default: one per CPU)")
    b.add_argument("--wall-s", type=float, default=2.0, help="time limit per program (looping ones hit it)")
    b.add_argument("--data", default=None, help="HumanEval jsonl.gz (default ../shared/data/HumanEval.jsonl.gz; "
                                                "synthesized programs when absent)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=lambda a: __import__("ponder.bench.score", fromlist=["main"]).main(a))

    # --- grade (ponder.rewards) ---
    p = sub.add_parser("grade", help="grade a JSONL of answers (math) or programs (code)")
    p.add_argument("file", help="input JSONL")
    p.add_argument("--kind", default="math", choices=["math", "code"])
    p.add_argument("--out", default=None, help="output JSONL (default stdout)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--extract", default="lenient", choices=["strict", "lenient"],
                   help="math: how an answer is taken from a `response` (strict: boxed/final line only)")
    p.set_defaults(func=lambda a: __import__("ponder.rewards.grade_cli", fromlist=["main"]).main(a))

    # --- eval (ponder.evaluate) ---
    p = sub.add_parser("eval", help="evaluate a checkpoint on a task")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True, help="math500, gsm8k, humaneval, jsonl, or a synthetic task")
    _data_args(p)
    _device_arg(p)
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--k", type=_ints, default=[1], help="pass@k / maj@k values, e.g. 1,4,8")
    p.add_argument("--strategy", default=None,
                   help="greedy|sample|majority|weighted-majority|best-of-n|refine")
    p.add_argument("--scorer", default="loglik", help="best-of-n scorer: oracle (upper bound)|loglik|judge|verifier "
                                                  "(a verifier ponder verify-study trained, --judge-model DIR)")
    p.add_argument("--rounds", type=int, default=2, help="refine: rounds")
    p.add_argument("--judge-model", default=None, help="best-of-n --scorer judge: judge checkpoint (default: --model); --scorer verifier: the verifier")
    p.add_argument("--thinking-budget", type=int, default=None, help="--strategy: force </think> after B tokens")
    p.add_argument("--extend-thinking", type=int, default=0,
                   help="--strategy: budget forcing, replace an early </think> by 'Wait' up to W times")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--tool", default="none", choices=TOOLS,
                   help="run the model's <calc> blocks (calculator) or ```python blocks (python, in the sandbox) "
                        "and write their output back (no --strategy)")
    p.add_argument("--python-tool", dest="tool", action="store_const", const="python", help="same as --tool python")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    _asking_args(p)
    p.set_defaults(func=lambda a: __import__("ponder.evaluate" if a.strategy is None else "ponder.scaling.command",
                                             fromlist=["main"]).main(a))

    # --- scale-curve (ponder.scaling) ---
    p = sub.add_parser("scale-curve", help="accuracy against generated tokens for N = 1, 2, 4, ...")
    p.add_argument("--model", required=True)
    p.add_argument("--task", required=True, help="math500, gsm8k, humaneval, jsonl, or a synthetic task")
    _data_args(p)
    _device_arg(p)
    p.add_argument("--n", type=_ints, default=[1, 2, 4, 8, 16])
    p.add_argument("--draws", type=int, default=200,
                   help="weighted majority: random N-subsets averaged per N (all when fewer exist)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verifier", default=None,
                   help="a verifier ponder verify-study trained: best-of-N by its scores as one more line")
    p.add_argument("--out", default="out/scale-curve")
    p.set_defaults(func=lambda a: __import__("ponder.scaling", fromlist=["main"]).main(a))

    # --- train (ponder.sft, ponder.rl, ponder.ladder) ---
    p = sub.add_parser("train", help="supervised fine-tuning, RL from verifiable rewards, the ladder's "
                                     "other methods (rft, dpo, ppo, rm: a reward model), and trm (ponder.trm)")
    train = p.add_subparsers(dest="kind", required=True)
    for kind in ("sft", "rl", "rft", "dpo", "ppo", "rm", "trm"):
        t = train.add_parser(kind)
        t.add_argument("config", help="YAML config")
        t.add_argument("overrides", nargs="*", help="key=value overrides")
        t.set_defaults(func=run_training)

    # --- ladder (ponder.ladder.compare) ---
    p = sub.add_parser("ladder", help="RFT, DPO, PPO (verifier / reward model) and GRPO side by side on the demo")
    p.add_argument("--methods", default=",".join(("grpo", "rft", "dpo", "dpo-online", "ppo", "ppo-rm")),
                   help="comma-separated subset of grpo,rft,dpo,dpo-online,ppo,ppo-rm")
    p.add_argument("--samples", type=int, default=25600, help="completions generated for training, per rung")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--held-out", type=int, default=200, help="held-out problems for greedy accuracy")
    p.add_argument("--out", default="out/ladder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: __import__("ponder.ladder.compare", fromlist=["main"]).main(a))

    # --- trm eval / compare (ponder.trm) ---
    __import__("ponder.trm.commands", fromlist=["add_parser"]).add_parser(sub)

    # --- verify-study (ponder.verify.commands, ponder.verify.study) ---
    __import__("ponder.verify.commands", fromlist=["add_parser"]).add_parser(sub)

    # --- convert (ponder.models.gguf) ---
    p = sub.add_parser("convert", help="import a GGUF file as a Hugging Face checkpoint folder (needs ponder[gguf])")
    p.add_argument("file", help="the .gguf file")
    p.add_argument("out_dir", help="the folder to write (safetensors, config.json, tokenizer, chat template)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the dequantised weights (default float32)")
    p.set_defaults(func=_convert)

    # --- demo (ponder.demo) ---
    p = sub.add_parser("demo", help="evaluate the embedded base model, run GRPO, evaluate again")
    p.add_argument("--steps", type=int, default=50, help="GRPO steps (default 50)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds training and evaluation sampling; each seed trains in its own folder (default 0)")
    p.add_argument("--task", default=None,
                   help="synthetic task family (default: the embedded one, multiply); 'tools': the calculator demo "
                        "(ponder.demo_tools), RL that learns when to call a tool")
    p.add_argument("--out", default="out/demo",
                   help="run folder: OUT/seed-S holds model, metrics and plots; a re-run resumes it (default out/demo)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line, no progress bar")
    p.set_defaults(func=lambda a: __import__("ponder.demo_tools" if a.task == "tools" else "ponder.demo",
                                             fromlist=["main"]).main(a))
    return parser


def _convert(args) -> int:
    import torch

    from ponder.models.gguf import convert_gguf

    out = convert_gguf(args.file, args.out_dir, dtype=getattr(torch, args.dtype))
    print(f"wrote {out}")
    return 0


def run_training(args) -> int:
    """`ponder train sft|rl|rft|dpo|ppo|rm CONFIG.yaml key=value ...`: train, print the summary as JSON."""
    import json
    import logging

    from ponder.config import load_config

    if args.kind == "rl":
        from ponder.rl import RLConfig as config_class, train_rl as run
    elif args.kind == "rft":
        from ponder.ladder.rft import RFTConfig as config_class, train_rft as run
    elif args.kind == "dpo":
        from ponder.ladder.dpo import DPOConfig as config_class, train_dpo as run
    elif args.kind == "ppo":
        from ponder.ladder.ppo import PPOConfig as config_class, train_ppo as run
    elif args.kind == "rm":
        from ponder.ladder.reward_model import RewardModelConfig as config_class, train_reward_model as run
    elif args.kind == "trm":  # a Tiny Recursive Model on 6x6 Sudoku (ponder.trm)
        from ponder.trm.train import TRMConfig as config_class, train_trm as run
    else:
        from ponder.sft import SFTConfig as config_class, train_sft as run
    from ponder.runtime import distributed

    rank = f"[rank {os.environ['RANK']}] " if distributed.launched() else ""
    logging.basicConfig(level=logging.INFO, format=f"{rank}%(levelname)s %(name)s: %(message)s")
    try:
        summary = run(load_config(config_class, args.config, args.overrides))
    finally:
        distributed.shutdown()
    summary.pop("final", None)  # the last metrics record: in metrics.jsonl already
    if not rank or os.environ["RANK"] == "0":
        print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        return 130
    except USER_ERRORS as exc:  # the message names the file, field or option
        print(f"ponder {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
