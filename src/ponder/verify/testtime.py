"""Test-time use of the verifier: best-of-N by its score against majority vote and the oracle, and
sequential refinement (generate, verify, rewrite from the last step the verifier trusts).

Accuracy here is always the step checker's: a pick is right when its final answer is right.

    curve = selection_curve(samples, scores, right, answers, ns=(1, 2, 4, 8, 16))
    result = refine_all(problems, generate, judge, rounds=8)   # or resample=True: fresh samples

Refinement prompt: the tiny generator cannot read prose, so "the analysis in the prompt" is the
form it can use: the solution's scratchpad up to (not including) the step the verifier quoted,
from which the generator writes the rest again. When the quoted issue is not a step (a skipped
step, the answer) the rewrite starts a fresh scratchpad. It stops at a verifier score of 1 or
after `rounds` rounds; plain resampling runs the same loop from an empty prefix each round.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Callable, Sequence

from ponder.rewards.trace import scratchpad
from ponder.verify.protocol import Analysis

THINK = "<think>"


def pick_best(scores: Sequence[float]) -> int:
    """Index of the highest verifier score; the first among ties."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def pick_majority(answers: Sequence[str | None]) -> int:
    """Index of the first sample giving the commonest answer; empty answers do not vote (all
    empty: the first sample)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return 0
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)  # tie: the first one seen
    return answers.index(winner)


def selection_curve(scores: list[list[float]], right: list[list[bool]], answers: list[list[str | None]],
                    ns: Sequence[int] = (1, 2, 4, 8, 16), draws: int = 8, seed: int = 0) -> dict[int, dict]:
    """Accuracy of best-of-N by verifier score, majority@N and the oracle (pass@N), per N, each the
    mean over `draws` random N-subsets of every problem's samples."""
    rng = random.Random(seed)
    out = {}
    for n in ns:
        totals = Counter()
        for s, r, a in zip(scores, right, answers):
            for _ in range(draws):
                idx = rng.sample(range(len(s)), n)
                totals["verifier"] += r[idx[pick_best([s[i] for i in idx])]]
                totals["majority"] += r[idx[pick_majority([a[i] for i in idx])]]
                totals["oracle"] += any(r[i] for i in idx)
        count = draws * len(scores)
        out[n] = {k: totals[k] / count for k in ("verifier", "majority", "oracle")}
    return out


def trusted_prefix(solution: str, issue: str) -> str:
    """The scratchpad before the quoted step, as a prompt continuation ("<think>47*80=3760,");
    a fresh "<think>" when the quoted issue is not one of its steps."""
    steps = [s for s in (scratchpad(solution) or "").split(",") if s]
    if issue and issue in steps:
        k = steps.index(issue)
        return THINK + "".join(s + "," for s in steps[:k])
    return THINK


def refine_all(prompts: list[str], generate: Callable[[list[str], int], list[tuple[str, int]]],
               judge: Callable[[list[str], list[str]], list[Analysis | None]], rounds: int = 8,
               resample: bool = False) -> list[dict]:
    """Per problem: {solution, rounds, tokens, score}. generate(prompt texts, round) -> (text,
    tokens) per prompt; judge(problem prompts, solutions) -> the verifier's analyses. Every
    active problem advances one round at a time, so each round is one batch."""
    state = [{"solution": "", "rounds": 0, "tokens": 0, "score": None, "prefix": ""} for _ in prompts]
    active = list(range(len(prompts)))
    for r in range(rounds):
        if not active:
            break
        outs = generate([prompts[i] + state[i]["prefix"] for i in active], r)
        solutions = [state[i]["prefix"] + text for i, (text, _) in zip(active, outs)]
        analyses = judge([prompts[i] for i in active], solutions)
        still = []
        for i, (_, tokens), solution, a in zip(active, outs, solutions, analyses):
            st = state[i]
            st.update(solution=solution, rounds=r + 1, tokens=st["tokens"] + tokens,
                      score=None if a is None else a.score)
            if a is not None and a.score == 1.0:
                continue
            st["prefix"] = "" if resample or a is None else trusted_prefix(solution, a.issue)
            still.append(i)
        active = still
    return [{k: v for k, v in st.items() if k != "prefix"} for st in state]
