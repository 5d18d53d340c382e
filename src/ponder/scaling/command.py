"""`ponder eval --strategy ...`: run one inference-time strategy over a task and write
result.json and result.md (accuracy, its standard error, and tokens per problem).

    ponder eval --model DIR --task multiply --strategy majority --n 8
    ponder eval --model DIR --task math500 --strategy best-of-n --n 4 --scorer judge
    ponder eval --model DIR --task math500 --strategy refine --rounds 2 --thinking-budget 512
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

from ponder.evaluate import metrics as M
from ponder.scaling.strategies import STRATEGIES, Choice

SCORERS = ("oracle", "loglik", "judge", "verifier")
SAMPLED_TEMPERATURE = 1.0  # strategies that sample, when --temperature is not given
JUDGE_MAX_NEW_TOKENS = 32


def summary(strategy: str, choices: list[Choice], scorer=None) -> dict:
    """Accuracy, its binomial standard error, and mean tokens per problem."""
    accuracy = M.mean([c.correct for c in choices])
    label = scorer.label if strategy == "best-of-n" else strategy
    return {"problems": len(choices), "strategy": strategy, "label": label,
            "upper_bound": bool(strategy == "best-of-n" and scorer.upper_bound),
            "accuracy": accuracy, "stderr": M.stderr(accuracy, len(choices)),
            "generated_tokens_per_problem": M.mean([c.generated_tokens for c in choices]),
            "scored_tokens_per_problem": M.mean([c.scored_tokens for c in choices])}


def markdown(metrics: dict, settings: dict, title: str = "") -> str:
    lines = [f"## {title}", ""] if title else []
    bound = " — UPPER BOUND (oracle verifier), not a deployable strategy" if metrics["upper_bound"] else ""
    lines += ["| metric | value |", "|---|---|",
              f"| strategy | {metrics['label']}{bound} |",
              f"| settings | n={settings['n']}, rounds={settings['rounds']}, T={settings['temperature']}, "
              f"max_new_tokens={settings['max_new_tokens']} |",
              f"| problems | {metrics['problems']} |",
              f"| accuracy | {100 * metrics['accuracy']:.1f}% ± {100 * metrics['stderr']:.1f} |",
              f"| generated tokens / problem | {metrics['generated_tokens_per_problem']:.1f} |"]
    if metrics["scored_tokens_per_problem"]:
        lines.append(f"| scored (not generated) tokens / problem | {metrics['scored_tokens_per_problem']:.1f} |")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    """Entry point of `ponder eval` when --strategy is given (ponder.cli dispatches)."""
    strategy, scorer_name = args.strategy, getattr(args, "scorer", "loglik")
    if getattr(args, "tool", "none") != "none":
        raise ValueError("--tool/--python-tool works without --strategy")
    changed = [f"--{name}" for name, default in (("chat", None), ("instruction", None), ("extract", "lenient"))
               if getattr(args, name, default) != default]
    if changed:  # the strategies ask and read the default way (ponder.evaluate.prompts) for now
        raise ValueError(f"{', '.join(changed)} works without --strategy")
    if strategy not in STRATEGIES:
        raise ValueError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
    if scorer_name not in SCORERS:
        raise ValueError(f"--scorer must be one of {', '.join(SCORERS)}, not {scorer_name!r}")
    from ponder.engine import Engine, SamplingParams
    from ponder.evaluate.harness import DEFAULT_MAX_NEW_TOKENS, grader_info
    from ponder.evaluate.loading import load_model, load_problems
    from ponder.scaling.scorers import JudgeScorer, LoglikScorer, OracleScorer
    from ponder.scaling.strategies import run_strategy
    from ponder.tasks import FAMILIES

    started = time.time()
    device = getattr(args, "device", "auto")
    problems = load_problems(args)
    model, tokenizer = load_model(args.model, device)
    temperature = args.temperature
    if temperature is None:
        temperature = 0.0 if strategy in ("greedy", "refine") else SAMPLED_TEMPERATURE
    max_new_tokens = args.max_new_tokens or max(
        DEFAULT_MAX_NEW_TOKENS["synthetic" if p.kind in FAMILIES else p.kind] for p in problems)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=args.seed,
                            thinking_budget=getattr(args, "thinking_budget", None),
                            extend_thinking=getattr(args, "extend_thinking", 0) or 0)
    engine = Engine(model, tokenizer)
    scorer = None
    if strategy == "best-of-n":
        if scorer_name == "oracle":
            scorer = OracleScorer()
        elif scorer_name == "loglik":
            scorer = LoglikScorer(model, tokenizer)
        elif scorer_name == "verifier":
            if not getattr(args, "judge_model", None):
                raise ValueError("--scorer verifier needs --judge-model DIR, a verifier `ponder verify-study` trained")
            from ponder.verify.judge import Verifier, VerifierScorer  # a trained verifier (floor 4), chosen here at the command

            scorer = VerifierScorer(Verifier.load(args.judge_model))
        else:
            judge_dir = getattr(args, "judge_model", None)
            judge_model, judge_tok = load_model(judge_dir, device) if judge_dir else (model, tokenizer)
            scorer = JudgeScorer(Engine(judge_model, judge_tok), judge_tok, JUDGE_MAX_NEW_TOKENS)
    choices = run_strategy(strategy, model, tokenizer, problems, n=args.n, rounds=args.rounds,
                           scorer=scorer, params=params, engine=engine)

    n = 1 if strategy in ("greedy", "refine") else args.n
    settings = {"strategy": strategy, "n": n, "rounds": args.rounds if strategy == "refine" else None,
                "scorer": scorer_name if strategy == "best-of-n" else None, "temperature": temperature,
                "max_new_tokens": max_new_tokens, "seed": args.seed, "thinking_budget": params.thinking_budget,
                "extend_thinking": params.extend_thinking}
    metrics = summary(strategy, choices, scorer)
    records = [{"id": p.id, "gold": p.answer, "pred": c.pred, "correct": c.correct,
                "generated_tokens": c.generated_tokens, "scored_tokens": c.scored_tokens, **c.detail}
               for p, c in zip(problems, choices)]
    payload = {"model": str(args.model), "task": args.task, "data": None if args.data is None else str(args.data),
               "split": getattr(args, "split", None),
               "limit": args.limit, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "seconds": round(time.time() - started, 2), "settings": settings, "grader": grader_info(problems),
               "metrics": metrics, "records": records}
    out = Path(args.out) if args.out else Path("out") / "eval" / f"{args.task.replace(':', '-')}-{strategy}"
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "result.json", out / "result.md"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
    tmp.replace(json_path)
    md_path.write_text(markdown(metrics, settings, f"{args.task} · {args.model}"))
    print(md_path.read_text(), end="")
    print(f"wrote {json_path} and {md_path}")
    return 0
