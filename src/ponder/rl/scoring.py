"""Scoring rollouts: which reward functions a config names, the task verifier, overlong shaping.

A reward function is fn(prompt, completion, problem) -> float | None (ponder.rewards' API).
Config names resolve as: "correct" (the task's own verifier, below), a function in
ponder.rewards, or "package.module:function".
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence

import torch

from ponder.tasks import FAMILIES, family

RewardFn = Callable[[str, str, object], "float | None"]


def correct(prompt: str, completion: str, problem) -> float | None:
    """1.0 when the completion solves the problem by the task's verifier, else 0.0.

    Synthetic families use their exact check; math uses ponder.rewards.math in strict mode;
    other kinds use ponder.rewards.accuracy when that exists.
    """
    if problem.kind in FAMILIES:
        return float(family(problem.kind).check(completion, problem))
    if problem.kind == "math":
        from ponder.rewards.math import grade

        return float(grade(problem.answer, completion, extract="strict").correct)
    import ponder.rewards

    accuracy = getattr(ponder.rewards, "accuracy", None)
    if accuracy is None:
        raise ValueError(f"no verifier for problem kind {problem.kind!r} (problem {problem.id})")
    return accuracy(prompt, completion, problem)


def resolve_reward(name: str) -> RewardFn:
    """The reward function a config entry names (see the module docstring)."""
    if name == "correct":
        return correct
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"reward {name!r}: cannot import {module_name}: {exc}") from exc
        fn = getattr(module, attr, None)
    else:
        import ponder.rewards

        fn = getattr(ponder.rewards, name, None)
    if not callable(fn):
        raise ValueError(f"reward {name!r} not found (use 'correct', a ponder.rewards function, or module:function)")
    return fn


def reward_name(fn: RewardFn) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def score(fns: Sequence[RewardFn], prompts: Sequence[str], texts: Sequence[str], problems: Sequence) -> torch.Tensor:
    """[N, K] float64 rewards, NaN where a function returned None (or a non-finite value)."""
    out = torch.full((len(texts), len(fns)), float("nan"), dtype=torch.float64)
    for i, (prompt, text, problem) in enumerate(zip(prompts, texts, problems)):
        for k, fn in enumerate(fns):
            value = fn(prompt, text, problem)
            if value is not None and math.isfinite(float(value)):
                out[i, k] = float(value)
    return out


def overlong_penalty(lengths: torch.Tensor, max_new_tokens: int, buffer: int, penalty: float) -> torch.Tensor:
    """DAPO's soft overlong punishment: 0 up to max - buffer tokens, then a linear ramp to -penalty."""
    excess = (lengths.double() - (max_new_tokens - buffer)).clamp(min=0)
    return -penalty * (excess / buffer).clamp(max=1.0)
