"""Verifiers and reward functions: pure functions of (prompt, completion, problem record).

A reward function is fn(prompt, completion, problem) -> float | None (None = not applicable).
The problem is duck-typed (.answer, .kind, .meta); this package never imports ponder.tasks.

    from ponder.rewards import Reward, math_accuracy, format_reward, score, weighted_sum
    rewards = [Reward("accuracy", math_accuracy, 1.0), Reward("format", format_reward, 0.2)]
    values = score(rewards, prompt, completion, problem, truncated=finish_reason == "length")
    total = weighted_sum(values, rewards)

`tool_cost` charges a completion for each tool call it made (ponder.rewards.tools).
`accuracy` dispatches on problem.kind (code -> ponder.rewards.code, else math).
Math grading lives in ponder.rewards.math (extract_answer, equivalent, grade, grade_many).
`trace_reward` scores a scratchpad's execution trace frame by frame (ponder.rewards.trace).
"""

from ponder.rewards.format import (OverlongReward, Reward, format_reward, overlong_penalty, score,
                                   weighted_sum)
from ponder.rewards.math import (GraderSettings, describe, equivalent, extract_answer, grade,
                                 grade_many, math_accuracy)
from ponder.rewards.tools import tool_calls, tool_cost
from ponder.rewards.trace import trace_reward



def accuracy(prompt: str, completion: str, problem, *, truncated: bool = False) -> float | None:
    """Accuracy by the problem's kind: a code problem runs its tests (ponder.rewards.code), any
    other problem with a gold answer is graded as math (strict extraction); None otherwise."""
    if getattr(problem, "kind", None) == "code":
        if truncated:
            return 0.0
        from ponder.rewards.code import code_accuracy
        return code_accuracy(prompt, completion, problem)
    return math_accuracy(prompt, completion, problem, truncated=truncated)


__all__ = ["GraderSettings", "OverlongReward", "Reward", "accuracy", "describe", "equivalent",
           "extract_answer", "format_reward", "grade", "grade_many", "math_accuracy",
           "overlong_penalty", "score", "tool_calls", "tool_cost", "trace_reward", "weighted_sum"]
