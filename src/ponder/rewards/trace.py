"""Trace verifier: grade a completion's final answer (exact) and its execution trace, frame by frame.

The gold trace is the problem's ``meta["trace"]`` (text in ponder.tasks.tracer's format: frames
joined by ``;``, each canonical, so equal frames are equal strings). The predicted trace is the
completion's ``<think>...</think>`` content. Frames are compared by position: frame i is right
when it equals gold frame i. The score is the share of right frames over the longer of the two
traces (a trace with extra frames loses as much as one with missing frames), and the first wrong
frame is the first position where they differ (a missing or extra frame counts), None when the
whole trace is right. Positional, not aligned: after a skipped frame everything later is wrong,
which is what a scratchpad's reader (the model computing its answer from it) suffers too.

    from ponder.rewards.trace import verify, trace_reward
    verdict = verify(completion, problem)   # TraceVerdict(answer_correct, trace=TraceScore | None)
    rewards = [Reward("trace", trace_reward, 0.5)]   # usable as an RL reward
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ponder.rewards.math import extract_answer

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEPARATOR = ";"


@dataclass(frozen=True)
class TraceScore:
    frames_right: float  # share of positions where the predicted frame equals the gold one
    first_wrong: int | None  # 0-based index of the first differing frame; None: the trace is exact
    predicted: int  # frames in the prediction
    gold: int  # frames in the gold trace

    @property
    def exact(self) -> bool:
        return self.first_wrong is None


@dataclass(frozen=True)
class TraceVerdict:
    answer_correct: bool  # the last \boxed{} after the think block is the gold integer
    trace: TraceScore | None  # None: the completion wrote no (or an empty) scratchpad


def frames(text: str) -> list[str]:
    return [f.strip() for f in text.split(SEPARATOR)] if text.strip() else []


def score_trace(predicted: str, gold: str) -> TraceScore:
    """Frame-by-frame comparison of two traces in text form."""
    p, g = frames(predicted), frames(gold)
    longest = max(len(p), len(g))
    right = sum(a == b for a, b in zip(p, g))
    first_wrong = next((i for i in range(longest) if i >= len(p) or i >= len(g) or p[i] != g[i]), None)
    return TraceScore(right / longest if longest else 1.0, first_wrong, len(p), len(g))


def scratchpad(completion: str) -> str | None:
    """Content of the completion's first closed think block, or None when there is none."""
    start = completion.find(THINK_OPEN)
    end = completion.find(THINK_CLOSE, start + len(THINK_OPEN)) if start >= 0 else -1
    return completion[start + len(THINK_OPEN):end] if end >= 0 else None


def answer_correct(completion: str, gold: str) -> bool:
    pred = extract_answer(completion, mode="strict")
    return pred is not None and re.fullmatch(r"[+-]?\d+", pred) is not None and int(pred) == int(gold)


def verify(completion: str, problem) -> TraceVerdict:
    """Final answer (exact) and, when the completion traced, its trace against meta["trace"]."""
    pad = scratchpad(completion)
    gold = problem.meta.get("trace")
    score = score_trace(pad, gold) if pad and isinstance(gold, str) else None
    return TraceVerdict(answer_correct(completion, problem.answer), score)


def trace_reward(prompt: str, completion: str, problem) -> float | None:
    """Reward: share of the scratchpad's frames that are right (0.0 without a scratchpad);
    None for a problem that carries no gold trace text."""
    gold = problem.meta.get("trace")
    if not isinstance(gold, str):
        return None
    pad = scratchpad(completion)
    return score_trace(pad, gold).frames_right if pad else 0.0
