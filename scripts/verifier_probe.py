"""Why a verifier that reads a solution and writes its analysis in one pass (the verify-study's
first design) scores only a third of held-out solutions right, measured; what it led to, a
verifier that solves first and compares by rule, is the study's verifier now.

Builds the study's labels (arms (a) and (b) at seed 0, the base and arm (a) sampled on training
problems, arm (b) on held-out ones; `ponder.verify.study`), then trains two verifiers from them
and scores both on the held-out solutions:

  plain        the one-pass verifier with a larger budget: SFT on every balanced label
               (problem + solution -> quoted issue + score), from the base model.
  solve-first  the verifier first works the problem with the solution hidden (problem -> its
               own steps), then reads its steps and the solution and writes the quoted issue
               and the score; from arm (a)'s checkpoint (the best multiplier at hand). Its
               verdict is read two ways: as the model writes it, and by comparing its own
               steps with the solution's (the first step that differs is the issue; the answer
               decides 0 against 1/2 or 1).
Then best-of-N by the solve-first verifier's compared verdict against majority vote and the
oracle, on the study's test-time draw (arm (a)'s generator, 16 samples at temperature 1 on the
first 100 held-out problems, seed 7).

    python scripts/verifier_probe.py --out out/verifier-probe            # about 45 minutes on 2 cores
    python scripts/verifier_probe.py --label-problems 20 --sft-steps 2   # a smoke run

Figures from it are in docs/verify.md.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import defaultdict
from pathlib import Path

import torch

from ponder.demo import base_model_dir
from ponder.models import from_pretrained
from ponder.rewards.process import first_issue
from ponder.tasks import multiply
from ponder.tokenizer import Tokenizer
from ponder.verify import study
from ponder.verify.config import StudyConfig
from ponder.verify.data import describe, training_records
from ponder.verify.judge import Judge, sft
from ponder.verify.protocol import SCORE_TEXT, analysis_text, compared_analysis, parse_analysis, verifier_prompt
from ponder.verify.testtime import selection_curve


def work_prompt(problem) -> str:
    return f"{problem.prompt}/"


def verdict_prompt(problem, work: str, solution: str) -> str:
    return f"{problem.prompt}/{work}/{solution}/"


def compared_score(work: str, solution: str) -> float:
    """The verdict read off the verifier's own steps (`work`, the bare steps this probe's solver
    writes) by the study's rule, ponder.verify.protocol.compared_analysis: 0 when the solution's
    answer is not the one its steps reach, 1 when every step is the verifier's too, else 1/2."""
    last = work.rpartition(",")[2]
    framed = f"<think>{work}</think>\\boxed{{{last.rpartition('=')[2] if '=' in last else ''}}}"
    analysis = parse_analysis(compared_analysis(framed, solution))
    return 0.0 if analysis is None else analysis.score


def by_grade(pairs) -> dict:
    """Share right per true grade and overall, from (true score, predicted score) pairs."""
    groups = defaultdict(list)
    for truth, guess in pairs:
        groups[SCORE_TEXT[truth]].append(guess == truth)
    every = [ok for g in groups.values() for ok in g]
    return {"all": sum(every) / len(every), **{k: sum(v) / len(v) for k, v in sorted(groups.items())}}


def best_of_n(generator_dir: str, solver: Judge, problems, samples: int = 16, max_new_tokens: int = 48) -> dict:
    """Best-of-N by the compared verdict (the solver works each problem once), majority@N and the
    oracle, N = 1..samples, on the study's own test-time draw."""
    from ponder.engine import Engine

    engine = Engine(from_pretrained(generator_dir).eval(), Tokenizer.from_pretrained(generator_dir))
    texts, right, answers = study.selection_draw(engine, problems, samples, max_new_tokens)
    works = [w.strip() for w in solver.read([work_prompt(p) for p in problems])]
    scores = [[compared_score(w, t) for t in g] for w, g in zip(works, texts)]
    curve = selection_curve(scores, right, answers, study.selection_sizes(samples))
    return {str(n): v for n, v in curve.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label-problems", type=int, default=6000)
    ap.add_argument("--sft-steps", type=int, default=1000)
    ap.add_argument("--out", default="out/verifier-probe")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    cfg = StudyConfig(out=str(out / "study"), label_problems=args.label_problems)
    base = base_model_dir()
    tokenizer = Tokenizer.from_pretrained(base)
    rl_problems = multiply.generate("train", len(multiply.space("train")), seed=1)
    held_out = multiply.generate("test", cfg.held_out, seed=0)
    arms = {arm: study.train_generator(cfg, arm, 0, rl_problems)[0] for arm in ("outcome", "process")}
    items, held = study.labels(cfg, tokenizer, arms["outcome"], arms["process"], held_out)
    result = {"labels": describe(items), "held_out": describe(held)}

    plain = Judge.load(sft(training_records(items), base, out / "plain", args.sft_steps, batch_size=64),
                       max_new_tokens=28)  # the longest analysis: a quoted equation, the frame and 1/2
    texts = plain.read([verifier_prompt(x.problem.prompt, x.solution) for x in held])
    result["plain"] = by_grade((x.score, a.score if a else None) for x, a in zip(held, map(parse_analysis, texts)))

    records = [{"prompt": work_prompt(p), "completion": multiply.scratch_text(p)}
               for p in {x.problem.prompt: x.problem for x in items}.values()]
    records += [{"prompt": verdict_prompt(x.problem, multiply.scratch_text(x.problem), x.solution),
                 "completion": analysis_text(first_issue(x.verdict), x.score)} for x in items]
    random.Random(0).shuffle(records)
    solver = Judge.load(sft(records, arms["outcome"], out / "solve-first", args.sft_steps, batch_size=64), max_new_tokens=40)
    works = [w.strip() for w in solver.read([work_prompt(x.problem) for x in held])]
    texts = solver.read([verdict_prompt(x.problem, w, x.solution) for w, x in zip(works, held)])
    result["solve_first"] = {
        "own_steps_right": sum(w == multiply.scratch_text(x.problem) for w, x in zip(works, held)) / len(held),
        "verdict_written": by_grade((x.score, a.score if a else None) for x, a in zip(held, map(parse_analysis, texts))),
        "verdict_compared": by_grade((x.score, compared_score(w, x.solution)) for w, x in zip(works, held))}
    result["best_of_n"] = best_of_n(arms["outcome"], solver, held_out[:cfg.test_problems], cfg.best_of)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
