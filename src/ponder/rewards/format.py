"""Shaping rewards and their combination: the think/answer format reward, DAPO's soft overlong
penalty, and weighted sums that keep every reward's own value (the trainer may normalise each
reward on its own, as GDPO does, before summing).

A reward function is fn(prompt, completion, problem) -> float | None, None meaning "not
applicable" (e.g. math accuracy on a code problem). Functions that also accept a keyword
`truncated` receive the completion's finish state from `score`.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Mapping, Sequence

from ponder.rewards.math import extract_answer, last_boxed

RewardFn = Callable[..., "float | None"]

_THINK = re.compile(r"\s*<think>(.*?)</think>(.*)", re.S)
_CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n.*?```", re.S)


def format_reward(prompt: str, completion: str, problem=None, *, truncated: bool = False,
                  answer: str = "auto") -> float:
    """1.0 for `<think>` reasoning `</think>` followed by an answer in the expected place, else 0.0.

    answer: "boxed" (a \\boxed{} after the think block), "code" (a fenced code block after it),
    "line" (a final-answer line or box after it), or "auto" ("code" for problems of kind "code",
    else "boxed"). The thinking must be non-empty and closed, with one think block only; a prompt
    that already ends in "<think>" (a chat template that opens the block) counts as its opening.
    A truncated completion scores 0.0.
    """
    if truncated:
        return 0.0
    text = completion
    if prompt.rstrip().endswith("<think>") and not completion.lstrip().startswith("<think>"):
        text = "<think>" + completion
    m = _THINK.fullmatch(text)
    if not m or not m.group(1).strip() or "<think>" in m.group(1) or "think>" in m.group(2):
        return 0.0
    after = m.group(2)
    if answer == "auto":
        answer = "code" if getattr(problem, "kind", None) == "code" else "boxed"
    if answer == "boxed":
        found = last_boxed(after)
        ok = bool(found and found.strip())
    elif answer == "code":
        ok = bool(_CODE_BLOCK.search(after))
    elif answer == "line":
        ok = extract_answer(after, "strict") is not None
    else:
        raise ValueError(f"format_reward: answer must be auto, boxed, code or line, not {answer!r}")
    return 1.0 if ok else 0.0


def overlong_penalty(length: int, max_len: int, cache: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025): 0 while length <= max_len - cache, then
    linear down to -1 at max_len, and -1 beyond."""
    if not 0 < cache <= max_len:
        raise ValueError(f"overlong_penalty: need 0 < cache <= max_len, got cache={cache}, max_len={max_len}")
    start = max_len - cache
    if length <= start:
        return 0.0
    if length >= max_len:
        return -1.0
    return (start - length) / cache


@dataclass(frozen=True)
class OverlongReward:
    """The overlong penalty as a reward function; `count` measures a completion in tokens
    (e.g. lambda s: len(tokenizer.encode(s)))."""

    max_len: int                     # the generation cap, in tokens
    cache: int                       # the soft zone before the cap where the penalty ramps to -1
    count: Callable[[str], int]      # completion -> length in tokens

    def __call__(self, prompt: str, completion: str, problem=None) -> float:
        return overlong_penalty(self.count(completion), self.max_len, self.cache)


@dataclass(frozen=True)
class Reward:
    """One named reward function and its weight in the sum."""

    name: str
    fn: RewardFn
    weight: float = 1.0


@lru_cache(maxsize=256)
def _takes_truncated(fn) -> bool:
    try:
        return "truncated" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def score(rewards: Sequence[Reward], prompt: str, completion: str, problem, *,
          truncated: bool = False) -> dict[str, float | None]:
    """Every reward's own value for one completion, by name (None = not applicable)."""
    values: dict[str, float | None] = {}
    for r in rewards:
        if r.name in values:
            raise ValueError(f"score: two rewards are named {r.name!r}")
        kwargs = {"truncated": truncated} if _takes_truncated(r.fn) else {}
        value = r.fn(prompt, completion, problem, **kwargs)
        values[r.name] = None if value is None else float(value)
    return values


def weighted_sum(values: Mapping[str, float | None], rewards: Sequence[Reward]) -> float | None:
    """sum_k w_k r_k over the applicable rewards; None when none applies (the row is left out)."""
    terms = [r.weight * values[r.name] for r in rewards if values.get(r.name) is not None]
    return sum(terms) if terms else None
