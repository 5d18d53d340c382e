"""`ponder ladder`: every rung of the post-training ladder on the demo's model and task, side by side.

    ponder ladder [--methods grpo,rft,dpo,dpo-online,ppo,ppo-rm] [--samples 25600] [--seed 0] [--json]

Every rung starts from the embedded demo base model (ponder.demo), trains on the multiply task's
train split and is scored by greedy accuracy on the same held-out problems, with the same number
of completions generated for training (`--samples`; the default is the demo's GRPO budget,
50 steps x 64 prompts x 8). Each rung runs in its own process, so its peak memory is its own.
The reward model of ppo-rm is trained first on samples of its own, counted apart.

Writes OUT/ladder.json, OUT/ladder.md (the table) and OUT/ladder.png; prints the table, or with
--json one JSON object as the last line.
"""

from __future__ import annotations

import json
import multiprocessing
import resource
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

METHODS = ("grpo", "rft", "dpo", "dpo-online", "ppo", "ppo-rm")
DESCRIPTIONS = {
    "grpo": "GRPO, verifier reward, group baseline",
    "rft": "rejection-sampling fine-tuning",
    "dpo": "DPO, offline pairs from the base",
    "dpo-online": "DPO, pairs re-sampled from the policy",
    "ppo": "PPO + value model, verifier reward",
    "ppo-rm": "PPO + value model, learned reward model",
}
PROMPTS, GROUP = 64, 8  # the demo's shape of one generation round
RFT_ROUNDS = 5  # RFT's rounds (fewer when the budget has fewer demo steps)
DPO_REFRESHES = 5  # online DPO's sampling rounds (at most one per step)


def rung(method: str, samples: int, seed: int, out: str, held_out: int) -> dict:
    """Train one rung from the demo base model; returns its accuracy, samples, seconds, peak memory."""
    import torch

    from ponder.demo import DEMO_CONFIG, base_model_dir, problem_sets
    from ponder.tokenizer import Tokenizer

    start = time.perf_counter()
    base = str(base_model_dir())
    tokenizer = Tokenizer.from_pretrained(base)
    _, problems, eval_problems = problem_sets()
    eval_problems = eval_problems[:held_out]
    steps = max(1, samples // (PROMPTS * GROUP))
    where = str(Path(out) / f"seed-{seed}" / method)
    for old in (where, where + "-reward-model"):  # every rung starts fresh (GRPO would resume a checkpoint)
        shutil.rmtree(old, ignore_errors=True)
    common = dict(model=base, seed=seed, eval_every=0, save_every=0, max_new_tokens=DEMO_CONFIG.max_new_tokens,
                  group_size=GROUP, micro_batch_size=DEMO_CONFIG.micro_batch_size)
    data = dict(tokenizer=tokenizer, problems=problems, eval_problems=eval_problems, progress=False)
    extra: dict = {}
    if method == "grpo":
        from ponder.rl import train_rl

        cfg = replace(DEMO_CONFIG, model=base, steps=steps, seed=seed, output_dir=where, eval_every=0, save_every=0)
        summary = train_rl(cfg, **data)
        summary.update(samples=steps * PROMPTS * GROUP, models_in_memory=1 + (cfg.beta != 0),  # policy (+ reference)
                       eval_accuracy=summary["eval"][-1][1])
    elif method == "rft":
        from ponder.ladder.rft import RFTConfig, train_rft

        rounds = min(RFT_ROUNDS, steps)
        summary = train_rft(RFTConfig(**common, output_dir=where, rounds=rounds,
                                      prompts_per_round=samples // (rounds * GROUP),
                                      lr=3e-4, epochs=2.0, batch_size=64, keep_per_prompt=4), **data)
    elif method in ("dpo", "dpo-online"):
        from ponder.ladder.dpo import DPOConfig, train_dpo

        refresh = 0 if method == "dpo" else -(-steps // DPO_REFRESHES)  # ceil: at most DPO_REFRESHES rounds
        rounds = 1 if method == "dpo" else -(-steps // refresh)
        summary = train_dpo(DPOConfig(**common, output_dir=where, steps=steps, refresh_every=refresh,
                                      prompts_per_round=samples // (rounds * GROUP), pairs_per_step=64, beta=0.1,
                                      lr=1e-4), **data)
    else:
        from ponder.ladder.ppo import PPOConfig, train_ppo

        reward_model = None
        if method == "ppo-rm":
            from ponder.ladder.common import ScalarModel
            from ponder.ladder.reward_model import RewardModelConfig, train_reward_model

            rm = train_reward_model(RewardModelConfig(**common, output_dir=where + "-reward-model",
                                                      prompts_per_round=PROMPTS,
                                                      rounds=max(1, steps // 2), lr=1e-4, epochs=2.0),
                                    tokenizer=tokenizer, problems=problems, progress=False)
            reward_model = ScalarModel.load(rm["model_dir"])
            extra = {"reward_model_accuracy": rm["pair_accuracy"], "reward_model_samples": rm["samples"]}
        summary = train_ppo(PPOConfig(**common, output_dir=where, steps=steps, prompts_per_round=PROMPTS,
                                      minibatch_size=PROMPTS * GROUP, lr=DEMO_CONFIG.lr, value_lr=1e-3,
                                      reward="model" if reward_model is not None else "verifier",
                                      reward_model=rm["model_dir"] if reward_model is not None else None),
                            reward_model=reward_model, **data)
        if reward_model is not None:
            extra.update(reward_gap_first=summary["reward_gap_first"], reward_gap=summary["reward_gap_last"])
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # ru_maxrss is in KiB on Linux: the whole process, Python and torch included
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"method": method, "accuracy": summary["eval_accuracy"], "seconds": round(time.perf_counter() - start, 1),
            "peak_memory_gb": round(peak, 3), "models_in_memory": summary["models_in_memory"],
            "samples": summary["samples"], **extra}


def base_accuracy(held_out: int) -> float:
    from ponder.demo import DEMO_CONFIG, base_model_dir, problem_sets
    from ponder.engine import Engine
    from ponder.models import from_pretrained
    from ponder.evaluate.heldout import evaluate_greedy
    from ponder.tokenizer import Tokenizer

    base = base_model_dir()
    tokenizer = Tokenizer.from_pretrained(base)
    eval_problems = problem_sets()[2][:held_out]
    engine = Engine(from_pretrained(base).eval(), tokenizer)
    return evaluate_greedy(engine, tokenizer, eval_problems, max_new_tokens=DEMO_CONFIG.max_new_tokens)["eval/accuracy"]


def run(methods=METHODS, samples: int = 50 * PROMPTS * GROUP, seed: int = 0, out: str = "out/ladder",
        held_out: int = 200, progress: bool = True) -> dict:
    """Every rung in `methods`, one fresh process each, in order; returns {"rungs": [...], "base_accuracy"}."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)} (known: {', '.join(METHODS)})")
    if samples < PROMPTS * GROUP:
        raise ValueError(f"--samples must be at least one demo step, {PROMPTS * GROUP}")
    result = {"rungs": [], "base_accuracy": base_accuracy(held_out), "seed": seed, "held_out": held_out,
              "budget_samples": samples}
    spawn = multiprocessing.get_context("spawn")  # a fresh process: its peak memory is the rung's alone
    for method in methods:
        if progress:
            print(f"ladder: {method} ...", flush=True)
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            result["rungs"].append(pool.submit(rung, method, samples, seed, out, held_out).result())
        if progress:
            print(f"ladder: {method}: held-out accuracy {result['rungs'][-1]['accuracy']:.3f}", flush=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "ladder.json").write_text(json.dumps(result, indent=1))
    (Path(out) / "ladder.md").write_text(table(result) + "\n")
    plot(result, Path(out) / "ladder.png")
    return result


def table(result: dict) -> str:
    lines = ["| rung | held-out greedy accuracy | samples | models in memory | wall time | peak memory | "
             "reward model held-out pair accuracy | reward gap (model - verifier), first -> last step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| base model (no training) | {100 * result['base_accuracy']:.1f}% | 0 | 1 | | | | |"]
    for r in result["rungs"]:
        rm = f"{100 * r['reward_model_accuracy']:.1f}%" if r.get("reward_model_accuracy") is not None else ""
        gap = f"{r['reward_gap_first']:+.3f} -> {r['reward_gap']:+.3f}" if r.get("reward_gap") is not None else ""
        samples = f"{r['samples']}" + (f" (+{r['reward_model_samples']} for the reward model)"
                                       if r.get("reward_model_samples") else "")
        lines.append(f"| {r['method']}: {DESCRIPTIONS[r['method']]} | {100 * r['accuracy']:.1f}% | {samples} | "
                     f"{r['models_in_memory']} | {r['seconds']:.0f} s | {r['peak_memory_gb']:.2f} GiB | {rm} | {gap} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["method"] for r in result["rungs"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5))
    left.bar(names, [100 * r["accuracy"] for r in result["rungs"]], color="tab:blue")
    left.axhline(100 * result["base_accuracy"], color="gray", linestyle="--", label="base model")
    left.set_ylabel("held-out greedy accuracy (%)")
    left.legend()
    right.bar(names, [r["seconds"] for r in result["rungs"]], color="tab:orange")
    right.set_ylabel("wall time (s)")
    for ax in (left, right):
        ax.tick_params(axis="x", rotation=30)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(f"the ladder at {result['budget_samples']} training samples per rung, seed {result['seed']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(args) -> int:
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        result = run(methods, args.samples, args.seed, args.out, args.held_out, progress=not args.json)
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
        print(f"\ntable, plot and JSON in {args.out}")
    return 0
