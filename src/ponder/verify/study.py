"""`ponder verify-study`: process rewards, a learned verifier and a meta-verifier on the demo task,
every claim measured against the step checker.

Order of work (one command, resumable only as a whole; each part writes under --out):
  1. generator arms (a) outcome and (b) process: GRPO from the demo's base model, equal samples
     (steps x prompts x group) per arm, per seed;
  2. labels: the base model and arm (a)'s seed-0 checkpoint sampled at several temperatures on
     training problems, graded by the step checker; held-out solutions: arm (b)'s seed-0
     checkpoint on test problems (a checkpoint and problems the verifier never saw);
  3. verifier (solve first, then compare; ponder.verify.protocol): SFT from the base model on
     right solutions of training problems, then GRPO on its own work (format x
     (1 - |s' - s|) of the analysis it gives each labelled solution); meta-verifier: a second
     solver, SFT the same way apart (another seed: another order), that must quote the same issue; the
     meta variant of the verifier: GRPO with the meta-verifier's score multiplied in; each
     measured on held-out solutions (score right, share of reported issues that are real, its
     own work right);
  4. generator arms (c) verifier score alone and (d) verifier x meta-verifier (no ground truth
     in the loop), with the learned reward and the true accuracy of the same samples per step;
  5. test time with arm (a)'s seed-0 generator on held-out problems: best-of-N by the verifier
     against majority and the oracle, N = 1..16; refinement against resampling, 8 rounds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ponder.rewards.process import check_steps, prefix_credit, true_score
from ponder.rewards.trace import answer_correct
from ponder.tasks import multiply
from ponder.verify.config import StudyConfig
from ponder.verify.data import balance, check_separate, describe, sample, work_records
from ponder.verify.judge import MetaVerifier, Verifier, grpo_verifier, sft
from ponder.verify.protocol import issue_is_real, parse_analysis
from ponder.verify.testtime import refine_all, selection_curve

log = logging.getLogger("ponder.verify")
ARMS = ("outcome", "process", "verifier", "verifier_meta")


def measure(model, tokenizer, problems, seed: int = 0, max_new_tokens: int = 48) -> dict:
    """Held-out figures by the step checker: greedy accuracy, fully right (right answer through
    right steps), right answer with a wrong step, mean process reward, scratchpad share; sampled
    pass@1 over 4 samples beside them."""
    from ponder.engine import Engine, SamplingParams

    model.eval()
    engine = Engine(model, tokenizer)
    prompts = [p.prompt for p in problems]
    greedy = [g[0].text for g in engine.generate(prompts, 1, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))]
    sampled = engine.generate(prompts, 4, SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=seed))
    verdicts = [check_steps(t, p) for t, p in zip(greedy, problems)]
    n = len(problems)
    return {"accuracy": sum(v.answer_correct for v in verdicts) / n,
            "fully_right": sum(v.answer_correct and v.steps_right for v in verdicts) / n,
            "right_answer_wrong_step": sum(v.answer_correct and not v.steps_right for v in verdicts) / n,
            "process": sum(map(prefix_credit, verdicts)) / n,
            "scratchpad_share": sum(not t.startswith("<think></think>") for t in greedy) / n,
            "sampled_pass@1": sum(answer_correct(c.text, p.answer) for g, p in zip(sampled, problems) for c in g) / (4 * n)}


class TrackedReward:
    """A generator reward that also records, per call (one per RL step), the true figures of the
    same samples: the hacking curve (learned reward against true accuracy, step by step)."""

    batched = True

    def __init__(self, name: str, outcome: bool = False, verifier: Verifier | None = None,
                 meta: MetaVerifier | None = None):
        self.__name__ = name
        self.outcome, self.verifier, self.meta = outcome, verifier, meta
        self.history: list[dict] = []

    def __call__(self, prompts, completions, a, b, **_) -> list[float]:
        problems = [multiply.make(x, y) for x, y in zip(a, b)]
        verdicts = [check_steps(c, p) for c, p in zip(completions, problems)]
        if self.verifier is not None:
            values = self.learned([p.prompt for p in problems], list(completions))
        elif self.outcome:
            values = [float(v.answer_correct) for v in verdicts]
        else:
            values = [prefix_credit(v) for v in verdicts]
        n = len(completions)
        self.history.append({"reward": sum(values) / n,
                             "accuracy": sum(v.answer_correct for v in verdicts) / n,
                             "fully_right": sum(v.answer_correct and v.steps_right for v in verdicts) / n,
                             "right_answer_wrong_step": sum(v.answer_correct and not v.steps_right for v in verdicts) / n,
                             "true_score": sum(map(true_score, verdicts)) / n})
        return values

    def learned(self, problem_prompts: list[str], solutions: list[str]) -> list[float]:
        """The verifier's score (0 when malformed), times the meta-verifier's score of its analysis."""
        texts = self.verifier.verify(problem_prompts, solutions)
        scores = [a.score if a is not None else 0.0 for a in map(parse_analysis, texts)]
        if self.meta is not None:
            scores = [s * m for s, m in zip(scores, self.meta.scores(problem_prompts, solutions, texts))]
        return scores


def train_generator(cfg: StudyConfig, arm: str, seed: int, rl_problems, verifier=None, meta=None) -> tuple[str, list]:
    from ponder.demo import DEMO_CONFIG, base_model_dir
    from ponder.rl import train_rl
    from ponder.tokenizer import Tokenizer

    base = base_model_dir()
    reward = TrackedReward(arm, outcome=arm == "outcome", verifier=verifier, meta=meta)
    rl = replace(DEMO_CONFIG, model=str(base), steps=cfg.steps, seed=seed, prompts_per_step=cfg.prompts_per_step,
                 group_size=cfg.group_size, eval_task=None, eval_every=0, save_every=0, device="cpu",
                 output_dir=str(Path(cfg.out) / "generator" / f"{arm}-seed{seed}"), rollback=False)
    summary = train_rl(rl, tokenizer=Tokenizer.from_pretrained(base), problems=rl_problems, rewards=[reward],
                       progress=False)
    return summary["model_dir"], reward.history


def judge_verifier(verifier: Verifier, meta: MetaVerifier | None, held) -> dict:
    """A verifier on held-out solutions: format, score right, the share of reported issues (a
    non-empty quote) that are real by the step checker (and by the meta-verifier), and its own
    work right (answer and every step, by the step checker) on the held-out problems."""
    prompts, solutions = [x.problem.prompt for x in held], [x.solution for x in held]
    texts = verifier.verify(prompts, solutions)
    analyses = [parse_analysis(t) for t in texts]
    n = len(held)
    reported = [(a, x) for a, x in zip(analyses, held) if a is not None and a.issue]
    out = {"solutions": n, "format": sum(a is not None for a in analyses) / n,
           "score_right": sum(a is not None and a.score == x.score for a, x in zip(analyses, held)) / n,
           "reported_issues": len(reported),
           "reported_real": sum(issue_is_real(a, x.verdict) for a, x in reported) / max(len(reported), 1)}
    problems = list({x.problem.prompt: x.problem for x in held}.values())
    works = verifier.works([p.prompt for p in problems])
    out["own_work_right"] = sum(true_score(check_steps(works[p.prompt], p)) == 1.0 for p in problems) / len(problems)
    if meta is not None:
        m = meta.scores(prompts, solutions, texts)
        truth = [a is not None and issue_is_real(a, x.verdict) for a, x in zip(analyses, held)]
        out["meta_agrees_with_checker"] = sum((mi == 1.0) == t for mi, t in zip(m, truth)) / n
    return out


def test_time(cfg: StudyConfig, generator_dir: str, verifier: Verifier, problems) -> dict:
    from ponder.engine import Engine, SamplingParams
    from ponder.models import from_pretrained
    from ponder.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_pretrained(generator_dir)
    engine = Engine(from_pretrained(generator_dir).eval(), tokenizer)
    prompts = [p.prompt for p in problems]
    texts, right, answers = selection_draw(engine, problems, cfg.best_of, cfg.max_new_tokens)
    flat_scores = [a.score if a else 0.0 for a in map(parse_analysis, verifier.verify(
        [p for p, g in zip(prompts, texts) for _ in g], [t for g in texts for t in g]))]
    scores = [flat_scores[i * cfg.best_of:(i + 1) * cfg.best_of] for i in range(len(problems))]
    curve = selection_curve(scores, right, answers, selection_sizes(cfg.best_of))

    def generate(batch: list[str], r: int) -> list[tuple[str, int]]:
        outs = engine.generate(batch, 1, SamplingParams(temperature=1.0, max_new_tokens=cfg.max_new_tokens, seed=100 + r))
        return [(g[0].text, g[0].num_tokens) for g in outs]

    def judge(ps: list[str], sols: list[str]):
        return [parse_analysis(t) for t in verifier.verify(ps, sols)]

    refinement = {}
    for name, resample in (("refine", False), ("resample", True)):
        results = refine_all(prompts, generate, judge, rounds=cfg.refine_rounds, resample=resample)
        refinement[name] = {"accuracy": sum(answer_correct(r["solution"], p.answer) for r, p in zip(results, problems)) / len(problems),
                            "fully_right": sum(check_steps(r["solution"], p).steps_right and answer_correct(r["solution"], p.answer)
                                               for r, p in zip(results, problems)) / len(problems),
                            "mean_rounds": sum(r["rounds"] for r in results) / len(results),
                            "mean_tokens": sum(r["tokens"] for r in results) / len(results),
                            "stopped_at_1": sum(r["score"] == 1.0 for r in results) / len(results)}
    return {"best_of_n": {str(n): v for n, v in curve.items()}, "refinement": refinement}


def labels(cfg: StudyConfig, tokenizer, outcome_dir: str, process_dir: str, held_out) -> tuple[list, list]:
    """(balanced training labels, held-out solutions): the base model and arm (a)'s checkpoint
    sampled on training problems; arm (b)'s checkpoint on the held-out problems, walled apart."""
    from ponder.demo import base_model_dir
    from ponder.models import from_pretrained

    label_problems = multiply.generate("train", cfg.label_problems, seed=5)
    items = []
    for source, path in (("base", str(base_model_dir())), ("outcome", outcome_dir)):
        items += sample(from_pretrained(path), tokenizer, label_problems, source, cfg.label_temperatures,
                        seed=len(items), max_new_tokens=cfg.max_new_tokens)
    held = sample(from_pretrained(process_dir), tokenizer, held_out, "process", cfg.label_temperatures, seed=99,
                  max_new_tokens=cfg.max_new_tokens)
    check_separate(items, held)
    return balance(items), held


def selection_draw(engine, problems, samples: int, max_new_tokens: int) -> tuple[list, list, list]:
    """The test-time draw: `samples` completions per problem at temperature 1 (seed 7), with
    each one's rightness and strict answer, for best-of-N against majority and the oracle."""
    from ponder.engine import SamplingParams
    from ponder.rewards.math import extract_answer

    groups = engine.generate([p.prompt for p in problems], samples,
                             SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens, seed=7))
    texts = [[c.text for c in g] for g in groups]
    right = [[answer_correct(t, p.answer) for t in g] for g, p in zip(texts, problems)]
    answers = [[extract_answer(t, mode="strict") for t in g] for g in texts]
    return texts, right, answers


def selection_sizes(samples: int) -> list[int]:
    return [n for n in (1, 2, 4, 8, 16) if n <= samples]


def run(cfg: StudyConfig, progress: bool = True) -> dict:
    from ponder.demo import base_model_dir
    from ponder.models import from_pretrained
    from ponder.tokenizer import Tokenizer

    torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    base = base_model_dir()
    tokenizer = Tokenizer.from_pretrained(base)
    rl_problems = multiply.generate("train", len(multiply.space("train")), seed=1)
    held_out = multiply.generate("test", cfg.held_out, seed=0)
    say = (lambda msg: print(f"[{time.perf_counter() - start:6.0f}s] {msg}", flush=True)) if progress else (lambda msg: None)
    result: dict = {"config": asdict(cfg), "arms": {}, "curves": {}}

    def arm(name: str, verifier=None, meta=None):
        runs = []
        for seed in cfg.seeds:
            model_dir, history = train_generator(cfg, name, seed, rl_problems, verifier, meta)
            runs.append({"seed": seed, "model_dir": model_dir, "history": history,
                         **measure(from_pretrained(model_dir), tokenizer, held_out, seed, cfg.max_new_tokens)})
            say(f"arm {name} seed {seed}: held-out accuracy {runs[-1]['accuracy']:.3f}")
        result["arms"][name] = runs

    result["base"] = measure(from_pretrained(base), tokenizer, held_out, 0, cfg.max_new_tokens)
    arm("outcome")
    arm("process")

    items, held = labels(cfg, tokenizer, result["arms"]["outcome"][0]["model_dir"],
                         result["arms"]["process"][0]["model_dir"], held_out)
    result["labels"] = {"train": describe(items), "held_out": describe(held)}
    say(f"labels: {len(items)} training solutions, {len(held)} held-out")

    vdir = out / "verifier"
    sft_dir = sft(work_records(rl_problems), base, vdir / "sft", cfg.verifier_sft_steps, batch_size=64)
    # a second solver trained apart: the same records, drawn in another order (seed 1)
    meta = MetaVerifier(Verifier.load(sft(work_records(rl_problems), base, out / "meta" / "sft", cfg.meta_sft_steps,
                                          seed=1, batch_size=64)))
    sizes = dict(steps=cfg.verifier_rl_steps, prompts_per_step=cfg.prompts_per_step, group_size=cfg.group_size)
    plain_dir, plain_hist = grpo_verifier(items, sft_dir, vdir / "grpo", **sizes)
    meta_v_dir, meta_hist = grpo_verifier(items, sft_dir, vdir / "grpo-meta", meta=meta, **sizes)
    verifiers = {name: Verifier.load(path) for name, path in (("sft", sft_dir), ("grpo", plain_dir), ("grpo_meta", meta_v_dir))}
    result["verifier"] = {name: judge_verifier(v, meta, held) for name, v in verifiers.items()}
    result["verifier"]["grpo_history"] = {"plain": plain_hist, "meta": meta_hist}
    say(f"verifier held-out score right: {json.dumps({k: round(v['score_right'], 3) for k, v in result['verifier'].items() if 'score_right' in v})}")

    arm("verifier", verifiers["grpo"])
    arm("verifier_meta", verifiers["grpo_meta"], meta)
    result["test_time"] = test_time(cfg, result["arms"]["outcome"][0]["model_dir"], verifiers["grpo"],
                                    held_out[:cfg.test_problems])
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / "result.json").write_text(json.dumps(result, indent=1))
    return result


KEYS = ("accuracy", "fully_right", "right_answer_wrong_step", "process", "scratchpad_share", "sampled_pass@1")


def summary(result: dict) -> dict:
    """Per arm, the mean of each held-out figure over its seeds (and each seed's accuracy)."""
    out = {}
    for name, runs in result["arms"].items():
        out[name] = {k: sum(r[k] for r in runs) / len(runs) for k in KEYS}
        out[name]["accuracy_by_seed"] = [r["accuracy"] for r in runs]
    return out


def table(result: dict) -> str:
    lines = ["| generator | held-out accuracy | fully right | right answer, wrong step | process | scratchpad | sampled pass@1 |",
             "|---|---|---|---|---|---|---|"]
    rows = {"base (no RL)": result["base"], **{f"({'abcd'[ARMS.index(k)]}) {k}": v for k, v in summary(result).items()}}
    for name, m in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * m[k]:.1f}%" for k in KEYS) + " |")
    lines += ["", "| verifier (held-out solutions of an unseen checkpoint) | format | score right | reported issues real "
              "| own work right |", "|---|---|---|---|---|"]
    for name in ("sft", "grpo", "grpo_meta"):
        v = result["verifier"][name]
        lines.append(f"| {name} | {100 * v['format']:.1f}% | {100 * v['score_right']:.1f}% | "
                     f"{100 * v['reported_real']:.1f}% of {v['reported_issues']} | {100 * v['own_work_right']:.1f}% |")
    lines += ["", "| N | best-of-N by verifier | majority@N | oracle |", "|---|---|---|---|"]
    for n, v in result["test_time"]["best_of_n"].items():
        lines.append(f"| {n} | {100 * v['verifier']:.1f}% | {100 * v['majority']:.1f}% | {100 * v['oracle']:.1f}% |")
    lines += ["", "| up to 8 rounds, stop at score 1 | accuracy | fully right | rounds | tokens |", "|---|---|---|---|---|"]
    for name, v in result["test_time"]["refinement"].items():
        lines.append(f"| {name} | {100 * v['accuracy']:.1f}% | {100 * v['fully_right']:.1f}% | "
                     f"{v['mean_rounds']:.2f} | {v['mean_tokens']:.1f} |")
    return "\n".join(lines)


def hacking_curve(result: dict) -> str:
    """Per step, for arms (c) and (d): learned reward against the true score of the same samples."""
    lines = ["| step | (c) learned reward | (c) true accuracy | (d) learned reward | (d) true accuracy |", "|---|---|---|---|---|"]
    c, d = (result["arms"][k][0]["history"] for k in ("verifier", "verifier_meta"))
    for i, (x, y) in enumerate(zip(c, d), 1):
        lines.append(f"| {i} | {x['reward']:.3f} | {x['accuracy']:.3f} | {y['reward']:.3f} | {y['accuracy']:.3f} |")
    return "\n".join(lines)


def main(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fields = {k: getattr(args, k) for k in StudyConfig.__dataclass_fields__ if hasattr(args, k)}
    fields["seeds"], fields["label_temperatures"] = tuple(fields["seeds"]), tuple(fields["label_temperatures"])
    result = run(StudyConfig(**fields), progress=not args.json)
    if args.json:
        print(json.dumps({**result, "summary": summary(result)}))
        return 0
    print(table(result))
    print("\nhacking curve (seed 0, the training samples of each step):")
    print(hacking_curve(result))
    print(f"\n{result['seconds']:.0f} s; everything in {args.out}")
    return 0
