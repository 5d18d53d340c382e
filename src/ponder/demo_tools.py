"""`ponder demo --task tools`: RL that teaches a tiny model *when* to call a calculator.

The embedded base model (src/ponder/assets/tools-demo-base, re-created by
scripts/make_tools_demo_base.py) was taught by ponder's SFT on the "products" task
(ponder.tasks.products): easy products (by 1, 10 or 100: ``347*10=``) and hard ones (three
digits by three, ``347*862=``), a quarter of its examples calling the calculator
(``<calc>347*862</calc><output>299114</output>``), the rest answering directly, whatever the
kind. So it knows the tool's format but rarely uses it: greedy, it answers everything in its
head, which works for easy products and not for hard ones.

GRPO samples with the calculator on (ponder.tools.Calculator, in-process) and rewards the task's
verifier minus a small cost per call (ponder.rewards.tools.tool_cost). A call pays on hard
problems and costs a little on easy ones, so the policy should learn to call on the hard ones
only. The demo measures held-out problems of each kind before and after (greedy accuracy, the
share of answers that call the tool, tokens per problem, forced tool output included), prints a
table (or JSON with --json), and leaves plots of the training batches' call rate and accuracy
per kind in --out.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path

from ponder.evaluate import evaluate
from ponder.models import from_pretrained
from ponder.rewards.tools import tool_calls
from ponder.rl import RLConfig, train_rl
from ponder.runtime.metrics import plot
from ponder.tasks import family
from ponder.tokenizer import Tokenizer
from ponder.tools import Calculator

TASK = "products"
HELD_OUT = 100  # held-out problems per kind, evaluated before and after
SFT_PROBLEMS = 6000  # train-split problems the base model was fine-tuned on (half of each kind)
SFT_CALL_SHARE = 0.25  # share of the SFT examples that call the calculator, whatever the kind
RL_PROBLEMS = 4000  # train-split problems GRPO samples from (half of each kind)
# Reward given up per call. It must exceed the easy problems' error rate without the tool (else
# calling there is right), and be large enough that the early spill-over of calls into easy
# problems recedes within the run: at 0.2 a few easy calls were left after 50 steps.
CALL_COST = 0.3

# The recipe of the plain demo (ponder.demo) at half the batch, plus the tool and its cost.
# (Std-normalised "grpo" advantages were tried once too: the policy lost its end of sequence after
# hard answers and ran into the token cap.)
DEMO_CONFIG = RLConfig(
    task=f"{TASK}:train", eval_task=f"{TASK}:test", eval_limit=2 * HELD_OUT,  # run() passes problem_sets()
    rewards=["correct", "tool_cost"], reward_weights=[1.0, CALL_COST], tool="calculator",
    prompts_per_step=32, group_size=8, max_new_tokens=40, temperature=1.0,
    advantage="dr_grpo", loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28,
    lr=3e-4, warmup_steps=0, schedule="constant", micro_batch_size=128, max_grad_norm=1.0,
    eval_every=10, save_every=10, steps=50,
)


def problem_sets() -> tuple[list, list, list]:
    """(sft, rl, held_out). Held-out problems come from the test split, which no training sees."""
    task = family(TASK)
    return (task.generate("train", SFT_PROBLEMS, seed=0), task.generate("train", RL_PROBLEMS, seed=1),
            task.generate("test", 2 * HELD_OUT, seed=0))


def base_model_dir() -> Path:
    return Path(str(resources.files("ponder") / "assets" / "tools-demo-base"))


def measure(model, tokenizer, problems) -> dict:
    """Greedy, with the calculator on, per kind: accuracy, share of answers that call the tool,
    mean completion tokens; plus one hard problem's completion as an example."""
    result = evaluate(model, tokenizer, problems, n=0, k_values=(), max_new_tokens=DEMO_CONFIG.max_new_tokens,
                      tool=Calculator(), progress=False)
    out: dict = {}
    for level in family(TASK).LEVELS:
        rows = [r["greedy"] for r, p in zip(result.records, problems) if p.meta["level"] == level]
        out[level] = {"accuracy": sum(r["correct"] for r in rows) / len(rows),
                      "tool_rate": sum(tool_calls(r["text"]) > 0 for r in rows) / len(rows),
                      "tokens": sum(r["tokens"] for r in rows) / len(rows)}
    example = next(i for i, p in enumerate(problems) if p.meta["level"] == "hard")
    out["example"] = problems[example].prompt + result.records[example]["greedy"]["text"]
    return out


def table(before: dict, after: dict) -> str:
    lines = ["| kind | greedy accuracy before | after | tool-call rate before | after | tokens before | after |",
             "|---|---|---|---|---|---|---|"]
    for level in family(TASK).LEVELS:
        b, a = before[level], after[level]
        lines.append(f"| {level} | {100 * b['accuracy']:.1f}% | {100 * a['accuracy']:.1f}% "
                     f"| {100 * b['tool_rate']:.1f}% | {100 * a['tool_rate']:.1f}% "
                     f"| {b['tokens']:.1f} | {a['tokens']:.1f} |")
    return "\n".join(lines)


def plot_by_kind(out: Path) -> list[Path]:
    """Call rate and accuracy of each step's training completions (sampled), per kind."""
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    levels = family(TASK).LEVELS
    return plot(history, out, {"tool_call_rate": [f"tools/{k}/call_share" for k in levels],
                               "accuracy_by_kind": [f"tools/{k}/accuracy" for k in levels]})


def run(steps: int = DEMO_CONFIG.steps, seed: int = 0, out: str | Path = "out/demo",
        progress: bool = True) -> dict:
    """The whole demo; returns {before, after, steps, seconds, seed, ...}."""
    start = time.perf_counter()
    base = base_model_dir()
    tokenizer = Tokenizer.from_pretrained(base)
    _, rl_problems, held_out = problem_sets()
    before = measure(from_pretrained(base), tokenizer, held_out)

    out = Path(out) / f"tools-seed-{seed}"  # beside the plain demo's seed-S folders
    cfg = replace(DEMO_CONFIG, model=str(base), steps=steps, seed=seed, output_dir=str(out))
    summary = train_rl(cfg, tokenizer=tokenizer, problems=rl_problems, eval_problems=held_out,
                       progress=progress)
    after = measure(from_pretrained(summary["model_dir"]), tokenizer, held_out)
    plots = [str(p) for p in plot_by_kind(out)] + list(summary.get("plots") or [])
    return {"before": before, "after": after, "steps": summary["steps"],
            "seconds": round(time.perf_counter() - start, 1), "seed": seed,
            "output_dir": str(out), "model_dir": summary["model_dir"], "plots": plots}


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run(steps=args.steps, seed=args.seed, out=args.out, progress=not args.json)
    if args.json:  # the shape: per kind, accuracies and rates as fractions
        print(json.dumps({"before": {k: result["before"][k] for k in family(TASK).LEVELS},
                          "after": {k: result["after"][k] for k in family(TASK).LEVELS},
                          **{k: result[k] for k in ("steps", "seconds", "seed")}}))
        return 0
    print(f"\nGRPO with the calculator on {HELD_OUT} easy + {HELD_OUT} hard held-out products, seed {args.seed}:")
    print(table(result["before"], result["after"]))
    print(f"\nA hard problem before: {result['before']['example']}\n"
          f"               after:  {result['after']['example']}")
    print(f"\n{result['steps']} steps in {result['seconds']:.0f} s; model, metrics.jsonl, TensorBoard events "
          f"and plots in {result['output_dir']}")
    return 0
