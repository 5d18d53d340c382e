"""`ponder demo`: RLVR on a tiny model, end to end on a CPU in minutes.

The embedded base model (src/ponder/assets/demo-base, re-created by scripts/make_demo_base.py)
was taught by ponder's SFT to multiply two-digit numbers two ways: a quarter of its examples
work through partial products in a <think> scratchpad, the rest answer directly. It mostly
answers directly, which a model this small cannot do reliably, so it is often wrong. GRPO with
the task's verifier as the only reward then finds that the scratchpad earns reward: held-out
accuracy rises because the model learns to reason, not because it memorised the test problems
(the held-out split never appears in training).

The demo evaluates the base model on held-out problems, runs GRPO, evaluates again, prints a
before/after table (or JSON with --json) and leaves plots and metrics in --out. A re-run with
the same --out and --seed resumes that run (a finished one is only evaluated again) and says so.
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
from ponder.rl import RLConfig, train_rl
from ponder.runtime import checkpoint
from ponder.tasks import family
from ponder.tokenizer import Tokenizer

HELD_OUT = 200  # held-out problems evaluated before and after
SFT_PROBLEMS = 6000  # train-split problems the base model was fine-tuned on
SAMPLES = 4  # samples per held-out problem for sampled pass@1

# The recipe: 64 prompts x 8 completions per step at a high learning rate (a 0.8M-parameter
# model tolerates it), Dr. GRPO advantages (no std normalisation), DAPO token-level loss with
# clip-higher, no KL. See the README for what each knob does.
DEMO_CONFIG = RLConfig(
    task="multiply:train", eval_task="multiply:test", eval_limit=HELD_OUT,  # run() passes problem_sets()
    prompts_per_step=64, group_size=8, max_new_tokens=48, temperature=1.0,
    advantage="dr_grpo", loss_type="dapo", epsilon_low=0.2, epsilon_high=0.28,
    lr=3e-4, warmup_steps=0, schedule="constant", micro_batch_size=128, max_grad_norm=1.0,
    eval_every=10, save_every=10, steps=50,
)


def problem_sets() -> tuple[list, list, list]:
    """(sft, rl, held_out). The base model was fine-tuned on SFT_PROBLEMS problems of the train
    split; GRPO samples from the whole train split; held-out problems come from the test split,
    which no training ever sees (a hash of the operand pair decides the split)."""
    task = family("multiply")
    return (task.generate("train", SFT_PROBLEMS, seed=0),
            task.generate("train", len(task.space("train")), seed=1),
            task.generate("test", HELD_OUT, seed=0))


def base_model_dir() -> Path:
    return Path(str(resources.files("ponder") / "assets" / "demo-base"))


def measure(model, tokenizer, problems, seed: int) -> dict:
    result = evaluate(model, tokenizer, problems, n=SAMPLES, k_values=(1,), temperature=1.0,
                      max_new_tokens=DEMO_CONFIG.max_new_tokens, seed=seed, progress=False)
    g, s = result.metrics["greedy"], result.metrics["sampled"]
    scratch = sum("</think>" in r["greedy"]["text"] and not r["greedy"]["text"].startswith("<think></think>")
                  for r in result.records) / len(result.records)
    return {"greedy_accuracy": g["accuracy"], "sampled_pass@1": s["pass@1"],
            "scratchpad_share": scratch, "mean_tokens": g.get("mean_tokens"),
            "right_answer_wrong_step": g["right_answer_wrong_step"]}  # the step checker's (multiply has one)


def table(before: dict, after: dict) -> str:
    rows = [("held-out greedy accuracy", "greedy_accuracy"), ("held-out sampled pass@1", "sampled_pass@1"),
            ("greedy answers using the scratchpad", "scratchpad_share"),
            ("greedy answers right with a wrong step", "right_answer_wrong_step")]
    lines = ["| metric | before | after |", "|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {100 * before[key]:.1f}% | {100 * after[key]:.1f}% |")
    return "\n".join(lines)


def run(steps: int = 50, seed: int = 0, out: str | Path = "out/demo", progress: bool = True) -> dict:
    """The whole demo; returns {before, after, steps, seconds, ...}."""
    start = time.perf_counter()
    base = base_model_dir()
    tokenizer = Tokenizer.from_pretrained(base)
    _, rl_problems, held_out = problem_sets()
    before = measure(from_pretrained(base), tokenizer, held_out, seed)

    out = Path(out) / f"seed-{seed}"
    found = checkpoint.latest(out / "checkpoints")  # train_rl resumes from it
    resumed_from = checkpoint.load_state(found)["step"] if found is not None else 0
    cfg = replace(DEMO_CONFIG, model=str(base), steps=steps, seed=seed, output_dir=str(out))
    summary = train_rl(cfg, tokenizer=tokenizer, problems=rl_problems, eval_problems=held_out,
                       progress=progress)
    trained = from_pretrained(summary["model_dir"])
    after = measure(trained, tokenizer, held_out, seed)
    return {"before": before, "after": after, "steps": summary["steps"], "resumed_from_step": resumed_from,
            "seconds": round(time.perf_counter() - start, 1), "seed": seed,
            "rollbacks": summary.get("rollbacks", 0), "output_dir": str(out),
            "model_dir": summary["model_dir"], "plots": summary.get("plots")}


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.task not in (None, "multiply"):
        raise ValueError(f"the embedded demo model knows the 'multiply' task; got --task {args.task}")
    result = run(steps=args.steps, seed=args.seed, out=args.out, progress=not args.json)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"\nGRPO on the embedded {HELD_OUT}-problem held-out multiplication set, seed {args.seed}:")
    print(table(result["before"], result["after"]))
    print(f"\n{what_ran(result)}; model, metrics.jsonl, TensorBoard events and plots in {result['output_dir']}")
    return 0


def what_ran(result: dict) -> str:
    """How many steps this run trained: all, the rest of an interrupted run, or none (finished before)."""
    steps, resumed, seconds = result["steps"], result["resumed_from_step"], result["seconds"]
    if resumed == 0:
        return f"{steps} step{'s' if steps != 1 else ''} in {seconds:.0f} s"
    if resumed >= steps:
        return (f"already trained: this folder holds a finished {steps}-step run, evaluated again in {seconds:.0f} s "
                "(another --out or --seed trains afresh)")
    more = steps - resumed
    return f"resumed at step {resumed}: {more} more step{'s' if more != 1 else ''} in {seconds:.0f} s"
