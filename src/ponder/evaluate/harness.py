"""The evaluation harness: the prompt for each problem, generation through the engine, grading,
and the metrics of one run (greedy accuracy, pass@k, maj@k, lengths, truncation, breakdowns;
where the task has a step checker, the right-answer-wrong-step rate and mean process credit).

How problems are asked and answers read (the same as in training): ponder.evaluate.prompts.
Recorded with every result (`settings["prompt"]`, `grader_info`):
  * a truncated completion (finish_reason "length") is wrong for math and synthetic tasks: it
    committed to no answer, and it casts no maj@k vote;
  * code: ponder.rewards.code.code_accuracy (the tests in a sandbox); no maj@k for code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ponder import __version__
from ponder.engine import Engine, SamplingParams
from ponder.evaluate import metrics as M
from ponder.rewards.process import step_rates, step_sums
from ponder.rewards.worker_pool import thread_map
from ponder.progress import ProgressBar
from ponder.tasks import FAMILIES, Problem
from ponder.evaluate.prompts import MATH_INSTRUCTION, Grade, build_prompt, grade, uses_chat

# Completion budget when the caller sets none: synthetic answers are tens of characters.
DEFAULT_MAX_NEW_TOKENS = {"synthetic": 64, "math": 1024, "code": 512}


def _group(kind: str) -> str:
    return "synthetic" if kind in FAMILIES else kind


def _int_equal(a: str, b: str) -> bool:
    try:
        return int(a) == int(b)
    except ValueError:
        return a.strip() == b.strip()


def equivalence_for(kind: str) -> Callable[[str, str], bool] | None:
    """How answers of a kind are clustered for maj@k (None: no voting, e.g. code)."""
    if kind in FAMILIES:
        return _int_equal  # the answers are integers; the same relation as math equivalence there
    if kind == "code":
        return None
    from ponder.rewards.math import equivalent

    return equivalent


def grader_info(problems: Sequence[Problem], extract: str = "lenient") -> dict:
    """What graded this run: the grader is part of the metric, so it goes with every result."""
    info: dict = {"ponder": __version__}
    kinds = {_group(p.kind) for p in problems}
    if "synthetic" in kinds:
        info["synthetic"] = "family exact check: last \\boxed{} equals the gold integer; truncated is wrong"
    if "math" in kinds:
        from importlib.metadata import PackageNotFoundError, version

        from ponder.rewards.math import describe

        try:
            mv = version("math-verify")
        except PackageNotFoundError:
            mv = None
        info["math"] = {"grader": describe(), "extraction": f"{extract} (ponder.rewards.math.extract_answer)",
                        "truncated": "wrong (no committed answer)", "math_verify": mv}
    if "code" in kinds:
        info["code"] = "ponder.rewards.code.code_accuracy (all tests pass in the sandbox)"
    return info


@dataclass
class EvalResult:
    settings: dict
    grader: dict
    metrics: dict
    records: list[dict] = field(default_factory=list)


def _graded(problem: Problem, prompt: str, completion, extract: str) -> dict:
    g = grade(problem, prompt, completion.text, truncated=completion.finish_reason == "length", extract=extract)
    return {"text": completion.text, "pred": g.pred, "correct": g.correct, "reason": g.reason,
            "tokens": len(completion.token_ids), "finish_reason": completion.finish_reason}


def _length_stats(samples: list[dict]) -> dict:
    return {"mean_tokens": M.mean([s["tokens"] for s in samples]),
            "truncation_rate": M.mean([float(s["finish_reason"] == "length") for s in samples])}


def _breakdown(records: list[dict], key: str) -> dict:
    groups: dict[str, list[dict]] = {}
    for r in records:
        if r.get(key) is not None:
            groups.setdefault(str(r[key]), []).append(r)
    out = {}
    for name in sorted(groups, key=lambda s: (len(s), s)):  # "2" before "10"
        rs = groups[name]
        row: dict = {"count": len(rs)}
        if rs[0].get("greedy"):
            row["greedy"] = M.mean([float(r["greedy"]["correct"]) for r in rs])
        if rs[0].get("pass@k"):
            row["pass@1"] = M.mean([r["pass@k"]["1"] for r in rs])
        out[name] = row
    return out


def evaluate(model, tokenizer, problems: Sequence[Problem], n: int = 1, k_values: Sequence[int] = (1,),
             temperature: float = 1.0, max_new_tokens: int | None = None, seed: int = 0, greedy: bool = True,
             top_p: float = 1.0, top_k: int = 0, batch_size: int = 32, progress: bool = True,
             engine=None, tool=None, chat: bool | None = None, instruction: str | None = None,
             enable_thinking: bool = True, extract: str = "lenient") -> EvalResult:
    """Evaluate `model` on `problems`.

    greedy: one temperature-0 completion per problem -> greedy accuracy.
    n: samples per problem at `temperature` (0 skips sampling) -> pass@k and maj@k for each k
       in k_values (pass@1 always), each needing k <= n.
    max_new_tokens: completion budget; None takes DEFAULT_MAX_NEW_TOKENS for the problems' kind.
    engine: anything with Engine's generate(prompts, n, params); default Engine(model, tokenizer).
    tool: a ponder.tools tool (PythonTool, Calculator) to run the model's calls during generation (None: off).
    chat, instruction, enable_thinking, extract: how problems are asked and answers read
    (ponder.evaluate.prompts; the defaults are what training uses too).
    """
    if not problems:
        raise ValueError("no problems to evaluate")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    ks = sorted(set(k_values) | ({1} if n else set()))
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise ValueError(f"k={bad} needs at least that many samples per problem, but n={n}: raise --n")
    if not greedy and not n:
        raise ValueError("nothing to do: greedy=False and n=0")
    if max_new_tokens is None:
        max_new_tokens = max(DEFAULT_MAX_NEW_TOKENS[_group(p.kind)] for p in problems)
    if engine is None:
        model.eval()
        engine = Engine(model, tokenizer)
    common = dict(max_new_tokens=max_new_tokens, top_p=top_p, top_k=top_k, tool=tool)

    records: list[dict] = []
    with ProgressBar(total=len(problems), desc="eval", unit="problem", enabled=progress) as bar:
        for start in range(0, len(problems), batch_size):
            batch = problems[start:start + batch_size]
            prompts = [build_prompt(p, tokenizer, chat=chat, instruction=instruction,
                                    enable_thinking=enable_thinking) for p in batch]
            greedy_out = (engine.generate(prompts, 1, SamplingParams(temperature=0.0, seed=seed, **common))
                          if greedy else [None] * len(batch))
            sampled_out = (engine.generate(prompts, n, SamplingParams(temperature=temperature, seed=seed + start,
                                                                      **common))
                           if n else [None] * len(batch))
            # graded side by side: code waits on its sandbox, math on the grader's worker processes
            records += thread_map(lambda job: _problem_record(*job, ks, extract),
                                  list(zip(batch, prompts, greedy_out, sampled_out)))
            bar.update(len(batch))

    settings = {"n": n, "k": ks, "greedy": greedy, "temperature": temperature if n else None,
                "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new_tokens, "seed": seed,
                "tool": getattr(tool, "name", None),
                "prompt": {"math": MATH_INSTRUCTION if instruction is None else instruction,
                           "chat_template": uses_chat(tokenizer, chat), "enable_thinking": enable_thinking,
                           "extract": extract}}
    metrics = _metrics(records, ks, greedy, n, temperature)
    for key, figures in _step_figures(records, problems).items():
        metrics[key].update(figures)
    return EvalResult(settings=settings, grader=grader_info(problems, extract), metrics=metrics, records=records)


def _step_figures(records: list[dict], problems: Sequence[Problem]) -> dict[str, dict]:
    """Where the problems have a step checker (ponder.rewards.process): right_answer_wrong_step, the
    share of graded-right answers reached through a wrong or skipped step (outcome reward paying
    for bad reasoning), and process, the mean credit up to the first wrong step; greedy and
    sampled apart, over the checked problems. {} for kinds without a checker."""
    out: dict[str, dict] = {}
    for key, pick in (("greedy", lambda r: [r["greedy"]] if r.get("greedy") else []),
                      ("sampled", lambda r: r.get("samples", []))):
        answers = [(a, p) for r, p in zip(records, problems) for a in pick(r)]
        if not answers:
            continue
        rates = step_rates(step_sums([a["text"] for a, _ in answers], [p for _, p in answers],
                                     [a["correct"] for a, _ in answers]))
        if rates:
            out[key] = {"right_answer_wrong_step": rates["right_answer_wrong_step"], "process": rates["process"]}
    return out


def _problem_record(problem: Problem, prompt: str, g_out, s_out, ks: Sequence[int], extract: str) -> dict:
    record: dict = {"id": problem.id, "kind": problem.kind, "gold": problem.answer, "prompt": prompt}
    for key in ("subject", "level"):
        if key in problem.meta:
            record[key] = problem.meta[key]
    if g_out is not None:
        record["greedy"] = _graded(problem, prompt, g_out[0], extract)
    if s_out is not None:
        samples = [_graded(problem, prompt, c, extract) for c in s_out]
        correct = [s["correct"] for s in samples]
        record["samples"] = samples
        record["num_correct"] = sum(correct)
        record["pass@k"] = {str(k): M.pass_at_k(len(samples), sum(correct), k) for k in ks}
        equivalent = equivalence_for(problem.kind)
        if equivalent is not None:
            clusters = M.cluster([s["pred"] for s in samples], equivalent)
            record["maj@k"] = {str(k): M.maj_at_k(clusters, correct, k) for k in ks}
            winner = M.majority(clusters)
            record["majority"] = None if winner is None else samples[clusters.index(winner)]["pred"]
    return record


def _metrics(records: list[dict], ks: Sequence[int], greedy: bool, n: int, temperature: float) -> dict:
    count = len(records)
    out: dict = {"problems": count}
    if greedy:
        acc = M.mean([float(r["greedy"]["correct"]) for r in records])
        out["greedy"] = {"accuracy": acc, "stderr": M.stderr(acc, count),
                         **_length_stats([r["greedy"] for r in records])}
    if n:
        sampled: dict = {"n": n, "temperature": temperature}
        for k in ks:
            sampled[f"pass@{k}"] = M.mean([r["pass@k"][str(k)] for r in records])
        voted = [r for r in records if "maj@k" in r]
        if voted:
            for k in ks:
                sampled[f"maj@{k}"] = M.mean([r["maj@k"][str(k)] for r in voted])
        sampled["pass@1_stderr"] = M.stderr(sampled["pass@1"], count)
        sampled.update(_length_stats([s for r in records for s in r["samples"]]))
        out["sampled"] = sampled
    for key in ("subject", "level"):
        table = _breakdown(records, key)
        if table:
            out[f"by_{key}"] = table
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def markdown(result: EvalResult, title: str = "") -> str:
    """The result as Markdown tables: headline metrics, then breakdowns by subject and level."""
    m = result.metrics
    lines = [f"## {title}", ""] if title else []
    lines += ["| metric | value |", "|---|---|", f"| problems | {m['problems']} |"]
    if "greedy" in m:
        g = m["greedy"]
        lines.append(f"| greedy accuracy | {_pct(g['accuracy'])} ± {_pct(g['stderr'])} |")
        lines.append(f"| greedy mean tokens / truncated | {g['mean_tokens']:.1f} / {_pct(g['truncation_rate'])} |")
        if "right_answer_wrong_step" in g:
            lines.append(f"| greedy right answer, wrong step / process | {_pct(g['right_answer_wrong_step'])} / "
                         f"{g['process']:.3f} |")
    if "sampled" in m:
        s = m["sampled"]
        at = f"n={s['n']}, T={s['temperature']}"
        for key, value in s.items():
            if key.startswith(("pass@", "maj@")) and not key.endswith("stderr"):
                lines.append(f"| {key} ({at}) | {_pct(value)} |")
        lines.append(f"| sampled mean tokens / truncated | {s['mean_tokens']:.1f} / {_pct(s['truncation_rate'])} |")
        if "right_answer_wrong_step" in s:
            lines.append(f"| sampled right answer, wrong step / process ({at}) | "
                         f"{_pct(s['right_answer_wrong_step'])} / {s['process']:.3f} |")
    for key in ("subject", "level"):
        table = m.get(f"by_{key}")
        if not table:
            continue
        cols = [c for c in ("greedy", "pass@1") if c in next(iter(table.values()))]
        lines += ["", f"| {key} | count | {' | '.join(cols)} |", "|---|---|" + "---|" * len(cols)]
        for name, row in table.items():
            lines.append(f"| {name} | {row['count']} | {' | '.join(_pct(row[c]) for c in cols)} |")
    return "\n".join(lines) + "\n"
