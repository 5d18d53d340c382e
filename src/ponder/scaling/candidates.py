"""Candidates: the sampled completions a strategy chooses among, each graded by the evaluation
harness's grader, with its token cost and the model's own length-normalised log-likelihood.

Log-likelihood: `loglik` is the mean log-prob per *sampled* token (forced tokens, which the
engine inserted, are left out) under the model itself at temperature 1 -- the model's own
belief in the completion. `Completion.logprobs` are under the distribution the token was drawn
from (temperature, top-k, top-p applied), which is the model's only when sampling at
temperature 1 without filtering, or greedily (the engine then records the model's
distribution). In every other case `fill_logliks` recomputes them with one forward pass over
prompt + completion, and counts those tokens as scored (not generated).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from ponder.engine import SamplingParams
from ponder.evaluate.harness import grade
from ponder.models import token_logprobs
from ponder.tasks import Problem

# Positions whose logits are materialised at once when recomputing log-probs: keeps a 150k
# vocabulary's logits to a few hundred MB.
_SCORE_BATCH = 16  # sequences per forward pass when recomputing log-probs


@dataclass
class Candidate:
    """One completion of a problem, graded."""

    text: str
    pred: str | None  # the extracted answer (None: nothing extracted, truncated, or code)
    correct: bool  # the harness's grade; a truncated completion is wrong
    committed: bool  # finished with an answer (code: always; the tests decide)
    tokens: int  # tokens generated for it, forced ones included (each cost a decode step)
    finish_reason: str
    token_ids: list[int] = field(default_factory=list, repr=False)
    forced: list[bool] = field(default_factory=list, repr=False)
    loglik: float | None = None  # mean log-prob per sampled token under the model at T=1


def logprobs_are_the_models(params: SamplingParams) -> bool:
    """Are the engine's recorded log-probs those of the model at temperature 1?"""
    return params.temperature == 0 or (params.temperature == 1 and params.top_k == 0 and params.top_p == 1)


def _mean_sampled(logprobs: Sequence[float], forced: Sequence[bool]) -> float:
    kept = [lp for lp, f in zip(logprobs, forced or [False] * len(logprobs)) if not f]
    return sum(kept) / len(kept) if kept else -math.inf


def to_candidate(problem: Problem, prompt: str, completion, params: SamplingParams) -> Candidate:
    truncated = completion.finish_reason == "length"
    g = grade(problem, prompt, completion.text, truncated=truncated)
    committed = problem.kind == "code" or (not truncated and g.pred is not None)
    forced = list(getattr(completion, "forced", None) or [False] * len(completion.token_ids))
    loglik = _mean_sampled(completion.logprobs, forced) if logprobs_are_the_models(params) else None
    return Candidate(completion.text, g.pred, g.correct, committed, len(completion.token_ids),
                     completion.finish_reason, list(completion.token_ids), forced, loglik)


def generate_candidates(engine, problems: Sequence[Problem], prompts: Sequence[str], n: int,
                        params: SamplingParams) -> list[list[Candidate]]:
    """n graded candidates per problem, from one engine call."""
    outputs = engine.generate(list(prompts), n, params)
    return [[to_candidate(p, prompt, c, params) for c in out] for p, prompt, out in zip(problems, prompts, outputs)]


@torch.inference_mode()
def fill_logliks(model, tokenizer, prompts: Sequence[str], candidates: Sequence[Sequence[Candidate]]) -> list[int]:
    """Compute `loglik` for every candidate that lacks it (one forward pass over prompt +
    completion, temperature 1). Returns the tokens scored per problem (0 where nothing lacked it)."""
    jobs = [(i, tokenizer.encode(prompts[i]), c) for i, cs in enumerate(candidates) for c in cs if c.loglik is None]
    scored = [0] * len(candidates)
    if not jobs:
        return scored
    device = next(model.parameters()).device
    for start in range(0, len(jobs), _SCORE_BATCH):
        batch = jobs[start:start + _SCORE_BATCH]
        rows = [p + c.token_ids for _, p, c in batch]
        # right padding: causal attention keeps every real token blind to the padding after it
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long, device=device)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
        starts = torch.tensor([len(p) for _, p, _ in batch], device=device)
        length = max(len(c.token_ids) for _, _, c in batch)
        logp, _ = token_logprobs(model, ids, starts, max(length, 1))
        for r, (problem_index, _, cand) in enumerate(batch):
            if not cand.token_ids:
                cand.loglik = -math.inf
                continue
            cand.loglik = _mean_sampled(logp[r, :len(cand.token_ids)].tolist(), cand.forced)
            scored[problem_index] += len(cand.token_ids)
    return scored
