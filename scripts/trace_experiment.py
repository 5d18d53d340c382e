"""World-model training on execution traces, then SFT and GRPO: does predicting traces first help?

    nice -n 10 .venv/bin/python scripts/trace_experiment.py [--out out/trace-exp] [--seeds 0 1 2] [--threads 1]

Two bases of the same size and initialisation, on the `trace` task (ponder.tasks.trace):
  A  SFT on answers, a SCRATCH share of them with the execution trace as the scratchpad (the
     demo's recipe), then GRPO with the exact-answer reward;
  B  first SFT on trace prediction ("given the program, predict its trace") for a disjoint set
     of train programs, then the same answer SFT and the same GRPO.
After each stage, on held-out programs (the test split, never trained on): greedy accuracy, the
share of greedy answers that trace, and, when the model is made to trace (its completion is
started with ``<think>1``, the first frame's line, which every trace shares), the accuracy of its
answer, the share of frames right and the share of traces exactly right; the share of traces
exactly right when asked for the trace itself (the trace-prediction prompt, also started with
``<think>1``); by program kind and by trace length.
Prints markdown tables and writes results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ponder.demo import DEMO_CONFIG
from ponder.engine import Engine, SamplingParams
from ponder.models import Decoder, ModelConfig, from_pretrained
from ponder.rewards.trace import verify
from ponder.rl import train_rl
from ponder.sft import SFTConfig, train_sft
from ponder.tasks import trace
from ponder.tokenizer import Tokenizer, build_char_tokenizer

HIDDEN = 96  # model width: 4 layers, 32-wide heads, SwiGLU at 3 x hidden (about 0.5M parameters)
ANSWER_PROBLEMS = 3000  # train programs of the answer SFT (and the prompts GRPO samples)
TRACE_PROBLEMS = 3000  # other train programs, for base B's trace-prediction stage
HELD_OUT = 200  # test-split programs evaluated after every stage
SCRATCH = 0.4  # share of answer-SFT examples that show the trace
MAX_NEW = 96  # completion budget: the longest trace (trace.MAX_TRACE_CHARS) plus the answer
FORCED = "<think>1"  # every trace starts with line 1: starting there makes a model trace, leaking nothing
LENGTHS = (("3-4", 3, 4), ("5-7", 5, 7), ("8-16", 8, 16))  # trace-length buckets (frames)

SFT = dict(max_length=160, batch_size=32, micro_batch_size=32, lr=3e-3, warmup_steps=30,
           schedule="cosine", min_lr_ratio=0.05)
# The demo's GRPO recipe (Dr. GRPO advantages, DAPO loss, lr 3e-4), fewer and smaller steps.
RL = replace(DEMO_CONFIG, task="trace:train", eval_task=None, prompts_per_step=32, group_size=8,
             max_new_tokens=MAX_NEW, micro_batch_size=64, eval_every=0)


def problem_sets(seed: int, held_out: int = HELD_OUT) -> tuple[list, list, list]:
    """(answer programs, trace programs, held-out): the first two disjoint train programs."""
    pool = trace.generate("train", ANSWER_PROBLEMS + TRACE_PROBLEMS, seed=seed)
    return pool[:ANSWER_PROBLEMS], pool[ANSWER_PROBLEMS:], trace.generate("test", held_out, seed=1000)


def init_model(work: Path, seed: int) -> Path:
    init = work / "init"
    init.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer(trace.ALPHABET)
    tokenizer.save_pretrained(init)
    config = ModelConfig.from_hf_dict({
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": tokenizer.vocab_size,
        "max_position_embeddings": 256, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True, "eos_token_id": tokenizer.eos_token_id,
        "hidden_size": HIDDEN, "intermediate_size": 3 * HIDDEN, "num_hidden_layers": 4,
        "num_attention_heads": HIDDEN // 32, "num_key_value_heads": 1, "head_dim": 32})
    torch.manual_seed(seed)
    Decoder(config).save_pretrained(init)
    return init


def sft(model: Path, records: list[dict], out: Path, steps: int, seed: int) -> Path:
    data = out.with_suffix(".jsonl")
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    cfg = SFTConfig(model=str(model), data=str(data), output_dir=str(out), steps=steps, seed=seed,
                    save_every=steps, **SFT)
    return Path(train_sft(cfg, progress=False)["model_dir"])


def grpo(model: Path, problems: list, out: Path, steps: int, seed: int) -> Path:
    cfg = replace(RL, model=str(model), steps=steps, seed=seed, save_every=steps, output_dir=str(out))
    return Path(train_rl(cfg, problems=problems, progress=False)["model_dir"])


def _bucket(steps: int) -> str:
    return next(name for name, low, high in LENGTHS if low <= steps <= high)


def measure(model_dir: Path, held_out: list) -> dict:
    """Greedy accuracy, scratchpad share, forced-trace correctness; overall, by kind, by length."""
    model, tok = from_pretrained(model_dir), Tokenizer.from_pretrained(model_dir)
    model.eval()
    engine, params = Engine(model, tok), SamplingParams(max_new_tokens=MAX_NEW, temperature=0)
    greedy = [c[0].text for c in engine.generate([p.prompt for p in held_out], 1, params)]
    forced = [FORCED + c[0].text for c in engine.generate([p.prompt + FORCED for p in held_out], 1, params)]
    asked = [FORCED + c[0].text for c in engine.generate(
        [trace.trace_example(p)["prompt"] + FORCED for p in held_out], 1, params)]
    rows = []
    for p, g, f, a in zip(held_out, greedy, forced, asked):
        said, made, world = verify(g, p), verify(f, p), verify(a, p).trace
        rows.append({"kind": p.meta["kind"], "length": _bucket(p.meta["steps"]), "correct": said.answer_correct,
                     "traced": said.trace is not None, "forced_correct": made.answer_correct,
                     "frames": made.trace.frames_right if made.trace else 0.0,
                     "exact": bool(made.trace and made.trace.exact), "asked_exact": bool(world and world.exact),
                     "greedy": g, "forced": f, "asked": a})

    def summary(rs: list[dict]) -> dict:
        n = len(rs)
        share = {key: sum(r[col] for r in rs) / n for key, col in
                 (("accuracy", "correct"), ("scratchpad", "traced"), ("forced_accuracy", "forced_correct"),
                  ("trace_frames", "frames"), ("trace_exact", "exact"), ("asked_exact", "asked_exact"))}
        return {"n": n, **share}

    return {"all": summary(rows),
            "kind": {k: summary([r for r in rows if r["kind"] == k]) for k in trace.KINDS},
            "length": {name: summary([r for r in rows if r["length"] == name]) for name, _, _ in LENGTHS},
            "examples": rows[:8]}


def run_seed(seed: int, out: Path, steps: dict, held_out_n: int) -> dict:
    work = out / f"seed-{seed}"
    shutil.rmtree(work, ignore_errors=True)
    answer, traces, held_out = problem_sets(seed, held_out_n)
    rng = random.Random(seed)
    answer_data = [{"prompt": p.prompt, "completion": trace.sft_text(p, rng.random() < SCRATCH)} for p in answer]
    trace_data = [trace.trace_example(p) for p in traces]
    init = init_model(work, seed)
    stages: dict[str, dict] = {}

    def stage(name: str, model_dir: Path) -> Path:
        stages[name] = measure(model_dir, held_out)
        (work / "stages.json").write_text(json.dumps(stages, indent=1))  # kept if a later stage fails
        return model_dir

    a_sft = stage("A: answer SFT", sft(init, answer_data, work / "a-sft", steps["sft"], seed))
    stage("A: answer SFT + GRPO", grpo(a_sft, answer, work / "a-grpo", steps["grpo"], seed))
    b_wm = stage("B: trace SFT", sft(init, trace_data, work / "b-trace", steps["trace"], seed))
    b_sft = stage("B: trace SFT + answer SFT", sft(b_wm, answer_data, work / "b-sft", steps["sft"], seed))
    stage("B: trace SFT + answer SFT + GRPO", grpo(b_sft, answer, work / "b-grpo", steps["grpo"], seed))
    params = sum(p.numel() for p in from_pretrained(init).parameters())
    return {"seed": seed, "parameters": params, "stages": stages}


def pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def tables(results: list[dict]) -> str:
    """Markdown: the stages (mean over seeds; greedy accuracy per seed in brackets), then accuracy
    and exact traces by kind and length."""
    names = list(results[0]["stages"])

    def mean(stage: str, group: str, key: str, sub: str | None = None) -> float:
        vals = [r["stages"][stage][group] if sub is None else r["stages"][stage][group][sub] for r in results]
        return sum(v[key] for v in vals) / len(vals)

    lines = ["| stage | greedy accuracy | greedy answers that trace | made to trace: accuracy "
             "| made to trace: frames right | made to trace: traces exact | asked `trace?`: traces exact |",
             "|---|---|---|---|---|---|---|"]
    for s in names:
        seeds = "" if len(results) == 1 else \
            " (" + ", ".join(f"{100 * r['stages'][s]['all']['accuracy']:.1f}" for r in results) + ")"
        lines.append(f"| {s} | {pct(mean(s, 'all', 'accuracy'))}{seeds} | " + " | ".join(pct(mean(s, "all", k)) for k in (
            "scratchpad", "forced_accuracy", "trace_frames", "trace_exact", "asked_exact")) + " |")
    groups = [("kind", k) for k in trace.KINDS] + [("length", name) for name, _, _ in LENGTHS]
    lines += ["", "Greedy accuracy / traces exact, by program kind and by trace length (frames):", "",
              "| stage | " + " | ".join(sub for _, sub in groups) + " |", "|---|" + "---|" * len(groups)]
    for s in names:
        lines.append(f"| {s} | " + " | ".join(f"{pct(mean(s, g, 'accuracy', sub))} / {pct(mean(s, g, 'trace_exact', sub))}"
                                              for g, sub in groups) + " |")
    counts = results[0]["stages"][names[0]]
    lines += ["", "Held-out programs per group: " + ", ".join(f"{sub} {counts[g][sub]['n']}" for g, sub in groups)]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/trace-exp")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sft-steps", type=int, default=600, help="answer-SFT steps (batch 32), both bases")
    ap.add_argument("--trace-steps", type=int, default=600, help="base B's trace-prediction steps (batch 32)")
    ap.add_argument("--grpo-steps", type=int, default=30, help="GRPO steps (32 prompts x 8 completions)")
    ap.add_argument("--held-out", type=int, default=HELD_OUT, help="held-out programs evaluated per stage")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: torch's own); 1 is much faster on a busy machine")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = {"sft": args.sft_steps, "trace": args.trace_steps, "grpo": args.grpo_steps}
    start = time.perf_counter()
    results = [run_seed(seed, out, steps, args.held_out) for seed in args.seeds]
    (out / "results.json").write_text(json.dumps({"steps": steps, "results": results,
                                                  "seconds": time.perf_counter() - start}, indent=1))
    print(f"{results[0]['parameters']} parameters, seeds {args.seeds}, steps {steps}\n")
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
