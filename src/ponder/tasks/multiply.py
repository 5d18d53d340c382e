"""Synthetic family "multiply": 2-digit x 2-digit multiplication, the demo's default task.

Prompt ``47*86=``. A solution comes in two styles:
  scratchpad  ``<think>47*80=3760,47*6=282,3760+282=4042</think>\\boxed{4042}``
  direct      ``<think></think>\\boxed{4042}``
A tiny model can learn the partial products reliably but not the direct product, which is what
makes "learn to use the scratchpad" something RL can unlock.

The canonical content of a problem is its unordered operand pair, so 47*86 and 86*47 are always
in the same split.
"""

from __future__ import annotations

import random

from ponder.tasks import synthetic
from ponder.tasks.problem import Problem

NAME = "multiply"
ALPHABET = "".join(sorted(set("0123456789*+=,") | set(synthetic.FRAME_ALPHABET)))
LOW, HIGH = 10, 99  # operand range, inclusive


def prompt(a: int, b: int) -> str:
    return f"{a}*{b}="


def _canonical(a: int, b: int) -> str:
    return f"{min(a, b)}*{max(a, b)}"


def make(a: int, b: int) -> Problem:
    """The problem a*b, with its split recorded in meta."""
    split = synthetic.split_of(NAME, _canonical(a, b))
    return Problem(id=f"{NAME}-{a}*{b}", prompt=prompt(a, b), answer=str(a * b), kind=NAME,
                   meta={"a": a, "b": b, "split": split})


def space(split: str) -> list[tuple[int, int]]:
    """Every ordered operand pair of a split, in a fixed order."""
    synthetic.check_split(split)
    return [(a, b) for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1)
            if synthetic.split_of(NAME, _canonical(a, b)) == split]


def generate(split: str, n: int, seed: int = 0) -> list[Problem]:
    """n distinct problems of a split, drawn with a seeded RNG (same arguments, same list)."""
    pairs = space(split)
    if n > len(pairs):
        raise ValueError(f"{NAME} {split} split has only {len(pairs)} distinct problems, asked for {n}")
    return [make(a, b) for a, b in random.Random(seed).sample(pairs, n)]


def scratch_text(problem: Problem) -> str:
    """Partial products by the tens and units of the second operand, then their sum."""
    a, b = problem.meta["a"], problem.meta["b"]
    tens, units = b - b % 10, b % 10
    return f"{a}*{tens}={a * tens},{a}*{units}={a * units},{a * tens}+{a * units}={a * b}"


def sft_text(problem: Problem, scratchpad: bool) -> str:
    return synthetic.completion(scratch_text(problem) if scratchpad else "", problem.answer)


def check(completion: str, problem: Problem) -> bool:
    return synthetic.check(completion, problem.answer)
