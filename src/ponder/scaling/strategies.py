"""Inference-time strategies over the engine: each turns a problem into one chosen answer and
says how many tokens it generated for it.

  greedy             one temperature-0 completion.
  sample             one sampled completion; with n > 1 its accuracy is the mean over the n
                     (an estimate of pass@1) and its tokens the mean per sample.
  majority           self-consistency: n samples, answers extracted (the harness's grader:
                     lenient for math), clustered by mathematical equivalence
                     (ponder.evaluate.metrics.cluster), the largest cluster wins.
  weighted-majority  the same clusters, each vote weighted by exp(mean token log-prob) of its
                     sample under the model at temperature 1 (the geometric-mean probability
                     per token, in (0, 1]); the heaviest cluster wins.
  best-of-n          n samples, the one a scorer (ponder.scaling.scorers) rates highest.
  refine             answer, then ask the model to check and revise, up to `rounds` times;
                     stops as soon as a revision's answer is unchanged (by equivalence).

Rules that are a choice:
  * Empty votes: a sample that commits to no answer (truncated, or nothing extracted) does not
    vote and is never picked by best-of-N while another sample committed.
  * Ties (majority and weighted majority): among the clusters with the most votes (weight), the
    one whose first member was generated first wins -- the rule of metrics.majority and
    metrics.maj_at_k. Best-of-N ties: the earliest sample among the best scores.
  * The chosen answer is the winning cluster's first member; it is correct when that sample is.
  * Refinement's answer is the latest one the model committed to: a revision that commits to
    none (truncated, or nothing extracted) leaves the answer unchanged, and so ends the rounds.
Thinking-length control is a dial on every strategy, not a strategy of its own: set
SamplingParams.thinking_budget (force `</think>` after B thinking tokens) or extend_thinking
(budget forcing: replace an early `</think>` by "Wait" up to W times); `ponder eval` exposes them
as --thinking-budget and --extend-thinking.
Tokens: `generated_tokens` counts every token generated for the problem -- all n samples,
judge verdicts, every refinement round; `scored_tokens` counts tokens only run through a
model to score them (log-likelihood recomputation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from ponder.engine import Engine, SamplingParams
from ponder.evaluate import metrics as M
from ponder.evaluate.harness import equivalence_for
from ponder.evaluate.prompts import MATH_INSTRUCTION, build_prompt
from ponder.progress import ProgressBar
from ponder.scaling.candidates import Candidate, fill_logliks, generate_candidates, to_candidate
from ponder.tasks import Problem

STRATEGIES = ("greedy", "sample", "majority", "weighted-majority", "best-of-n", "refine")
REFINE_INSTRUCTION = ("Check the solution above step by step. If it has a mistake, correct it. "
                      "Either way, put the final answer within \\boxed{}.")


@dataclass
class Choice:
    """What a strategy answered for one problem, and what it cost."""

    pred: str | None  # the chosen answer (None: nothing committed)
    correct: float  # 1.0 or 0.0 ("sample" with n > 1: the fraction of samples correct)
    generated_tokens: float  # every token generated for this problem ("sample": per sample)
    scored_tokens: int = 0
    detail: dict = field(default_factory=dict)


# ---------------------------------------------------------------- voting and selection

def answer_equivalence(problem: Problem) -> Callable[[str, str], bool]:
    """How the answers of `problem` are compared for voting (the harness's equivalence_for)."""
    equivalent = equivalence_for(problem.kind)
    if equivalent is None:
        raise ValueError(f"voting compares answers, and {problem.kind!r} tasks have none to compare "
                         "(use best-of-n or refine)")
    return equivalent


def vote_weight(candidate: Candidate) -> float:
    """exp(mean token log-prob under the model): a probability-like weight in (0, 1]."""
    if candidate.loglik is None:
        raise ValueError("weighted voting needs each candidate's log-likelihood (fill_logliks)")
    return math.exp(candidate.loglik)


def weighted_winner(clusters: Sequence[int | None], weights: Sequence[float]) -> int | None:
    """The cluster label with the largest total weight (ties: the lowest label, i.e. the first
    to appear), or None when nobody voted."""
    totals: dict[int, float] = {}
    for label, weight in zip(clusters, weights):
        if label is not None:
            totals[label] = totals.get(label, 0.0) + weight
    if not totals:
        return None
    return min(totals, key=lambda label: (-totals[label], label))


def majority_vote(candidates: Sequence[Candidate], equivalent: Callable[[str, str], bool],
                  weighted: bool = False) -> int | None:
    """Index of the chosen candidate (the first member of the winning cluster), or None when no
    candidate committed to an answer. weighted: votes weigh `vote_weight` instead of 1."""
    clusters = M.cluster([c.pred if c.committed else None for c in candidates], equivalent)
    if weighted:
        winner = weighted_winner(clusters, [vote_weight(c) if c.committed else 0.0 for c in candidates])
    else:
        winner = M.majority(clusters)
    return None if winner is None else clusters.index(winner)


def best_of_n(candidates: Sequence[Candidate], scores: Sequence[float]) -> int | None:
    """Index of the committed candidate with the highest score (ties: the earliest), or None
    when none committed."""
    eligible = [i for i, c in enumerate(candidates) if c.committed]
    if not eligible:
        return None
    return min(eligible, key=lambda i: (-scores[i], i))


# ---------------------------------------------------------------- refinement

def refine_prompt(problem: Problem, prompt: str, previous: str, tokenizer) -> str:
    """The prompt asking the model to check `previous` (its last response) and revise it: a new
    user turn when the tokenizer has a chat template, else the transcript plus the request."""
    if getattr(tokenizer, "chat_template", None) and problem.kind not in ("code",):
        messages = [{"role": "user", "content": f"{problem.prompt}\n\n{MATH_INSTRUCTION}"},
                    {"role": "assistant", "content": previous},
                    {"role": "user", "content": REFINE_INSTRUCTION}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, enable_thinking=True)
    return f"{prompt}{previous}\n\n{REFINE_INSTRUCTION}\n"


def _same_answer(problem: Problem, a: Candidate, b: Candidate) -> bool:
    if problem.kind == "code":
        return a.text.strip() == b.text.strip()
    if a.pred is None or b.pred is None:
        return a.pred is None and b.pred is None
    return bool(answer_equivalence(problem)(a.pred, b.pred))


def _revise(problem: Problem, current: Candidate, revised: Candidate) -> tuple[Candidate, bool]:
    """The answer after a revision, and whether it changed (see the module's rules)."""
    if not revised.committed:
        return (current if current.committed else revised), False
    return revised, not _same_answer(problem, current, revised)


def refine(engine, tokenizer, problems: Sequence[Problem], prompts: Sequence[str], rounds: int,
           params: SamplingParams) -> list[Choice]:
    """Self-refinement: one answer, then up to `rounds` check-and-revise turns per problem; a
    problem stops as soon as a revision leaves the answer unchanged (an equivalent answer, or
    none). Each response is graded against the problem (the original prompt), not against the
    refinement prompt; the model is shown its last committed response."""
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    current = [cs[0] for cs in generate_candidates(engine, problems, prompts, 1, params)]
    tokens = [c.tokens for c in current]
    answers = [[c.pred] for c in current]
    active = list(range(len(problems)))
    for _ in range(rounds):
        if not active:
            break
        asks = [refine_prompt(problems[i], prompts[i], current[i].text, tokenizer) for i in active]
        outputs = engine.generate(asks, 1, params)
        still = []
        for i, out in zip(active, outputs):
            revised = to_candidate(problems[i], prompts[i], out[0], params)
            tokens[i] += revised.tokens
            answers[i].append(revised.pred)
            current[i], changed = _revise(problems[i], current[i], revised)
            if changed:
                still.append(i)
        active = still
    return [Choice(c.pred, float(c.correct), t, detail={"answers": a, "rounds": len(a) - 1})
            for c, t, a in zip(current, tokens, answers)]


# ---------------------------------------------------------------- running a strategy

def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def _chosen(candidates: Sequence[Candidate], index: int | None, extra_generated: int = 0,
            scored: int = 0, detail: dict | None = None) -> Choice:
    generated = sum(c.tokens for c in candidates) + extra_generated
    detail = {"chosen": index, "answers": [c.pred for c in candidates], **(detail or {})}
    if index is None:
        return Choice(None, 0.0, generated, scored, detail)
    return Choice(candidates[index].pred, float(candidates[index].correct), generated, scored, detail)


def run_strategy(strategy: str, model, tokenizer, problems: Sequence[Problem], *, n: int = 1,
                 rounds: int = 2, scorer=None, params: SamplingParams | None = None, engine=None,
                 batch_size: int = 32, progress: bool = True) -> list[Choice]:
    """Run `strategy` (one of STRATEGIES) on every problem; one Choice per problem, in order.

    params: sampling for the strategy's own completions (greedy forces temperature 0); the
    thinking controls in it apply to every completion. Default: greedy for greedy and refine,
    temperature 1 for the rest. scorer: best-of-n's (see scorers).
    engine: anything with Engine's generate(prompts, n, params); default Engine(model, tokenizer).
    Batch b samples with seed params.seed + b's first index, as the evaluation harness does.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if strategy == "best-of-n" and scorer is None:
        raise ValueError("best-of-n needs a scorer (oracle, loglik or judge)")
    if strategy in ("majority", "weighted-majority"):
        for p in problems:
            answer_equivalence(p)  # fail before generating anything
    if params is None:
        params = SamplingParams(temperature=0.0 if strategy in ("greedy", "refine") else 1.0)
    if engine is None:
        model.eval()
        engine = Engine(model, tokenizer)
    choices: list[Choice] = []
    with ProgressBar(total=len(problems), desc=strategy, unit="problem", enabled=progress) as bar:
        for start in range(0, len(problems), batch_size):
            batch = list(problems[start:start + batch_size])
            prompts = [build_prompt(p, tokenizer) for p in batch]
            batch_params = replace(params, seed=params.seed + start)
            if strategy == "greedy":
                batch_params = replace(batch_params, temperature=0.0)
            if strategy == "refine":
                choices += refine(engine, tokenizer, batch, prompts, rounds, batch_params)
                bar.update(len(batch))
                continue
            cands = generate_candidates(engine, batch, prompts, 1 if strategy == "greedy" else n, batch_params)
            if strategy in ("greedy", "sample"):
                for cs in cands:
                    choices.append(Choice(cs[0].pred if len(cs) == 1 else None, M.mean([float(c.correct) for c in cs]),
                                          M.mean([c.tokens for c in cs]), detail={"answers": [c.pred for c in cs]}))
            elif strategy in ("majority", "weighted-majority"):
                weighted = strategy == "weighted-majority"
                scored = fill_logliks(model, tokenizer, prompts, cands) if weighted else [0] * len(cands)
                for problem, cs, s in zip(batch, cands, scored):
                    index = majority_vote(cs, answer_equivalence(problem), weighted=weighted)
                    extra = {"weights": [_finite(math.exp(c.loglik)) for c in cs]} if weighted else {}
                    choices.append(_chosen(cs, index, scored=s, detail=extra))
            else:  # best-of-n
                for cs, scores in zip(cands, scorer.score(batch, prompts, cands)):
                    index = best_of_n(cs, scores.values)
                    choices.append(_chosen(cs, index, scores.generated_tokens, scores.scored_tokens,
                                           {"scores": [_finite(v) for v in scores.values], **scores.detail}))
            bar.update(len(batch))
    return choices
