"""Synthetic family "products": multiplications of two kinds, for learning *when* to call a tool.

  easy  one factor is 1, 10 or 100, the other 2-999: ``347*10=``, ``100*56=``; the answer is the
        other factor and some zeros, which a tiny model learns to write in its head;
  hard  both factors have three digits (101-999): ``347*862=``; a tiny model cannot, a
        calculator can.
The two kinds look alike (``347*100=`` beside ``347*862=``), so deciding when to call means
reading the second factor, not counting the prompt's characters.

A solution comes in two styles:
  scratchpad (a calculator call)  ``<think><calc>347*862</calc><output>299114</output></think>\\boxed{299114}``
  direct                          ``<think></think>\\boxed{299114}``
In the call, ``<output>...</output>`` is what ponder.tools.Calculator writes back; with the tool
on, the engine forces it, so the model only has to copy operands in and the value out.

Each problem's meta has "level" ("easy" or "hard"), which the eval harness and the RL tool
metrics break results down by. The canonical content of a problem is its unordered operand pair.
"""

from __future__ import annotations

import random

from ponder.tasks import synthetic
from ponder.tasks.problem import Problem

NAME = "products"
LEVELS = ("easy", "hard")
# The calculator's format (ponder.tools.Calculator runs it, ponder.rewards.tools counts its calls;
# spelt here too because tasks sit on the same floor as rewards and import no other part).
CALCULATOR_CALL, OUTPUT = ("<calc>", "</calc>"), ("<output>", "</output>")
# Call and output tags are single tokens in the family's tokenizer (SPECIAL_TOKENS); their
# characters, and those of the calculator's error messages, are in the alphabet all the same.
SPECIAL_TOKENS = (*CALCULATOR_CALL, *OUTPUT)
ALPHABET = "".join(sorted(set("0123456789*+-/%()=.,: abcdefghijklmnopqrstuvwxyz<>")
                          | set(synthetic.FRAME_ALPHABET)))
EASY_FACTORS, EASY_OTHER, HARD = (1, 10, 100), (2, 999), (101, 999)  # operands; ranges inclusive


def prompt(a: int, b: int) -> str:
    return f"{a}*{b}="


def level_of(a: int, b: int) -> str:
    return "easy" if a in EASY_FACTORS or b in EASY_FACTORS else "hard"


def make(a: int, b: int) -> Problem:
    """The problem a*b, with its level and split recorded in meta."""
    split = synthetic.split_of(NAME, f"{min(a, b)}*{max(a, b)}")
    return Problem(id=f"{NAME}-{a}*{b}", prompt=prompt(a, b), answer=str(a * b), kind=NAME,
                   meta={"a": a, "b": b, "level": level_of(a, b), "split": split})


def _easy_pairs(split: str) -> list[tuple[int, int]]:
    pairs = {(f, x) for f in EASY_FACTORS for x in range(EASY_OTHER[0], EASY_OTHER[1] + 1)}
    pairs |= {(x, d) for d, x in pairs}
    return sorted(p for p in pairs if make(*p).meta["split"] == split)


def generate(split: str, n: int, seed: int = 0, level: str | None = None) -> list[Problem]:
    """n distinct problems of a split, drawn with a seeded RNG (same arguments, same list): all of
    one `level`, or (None) easy and hard taking turns."""
    synthetic.check_split(split)
    if level is not None and level not in LEVELS:
        raise ValueError(f"{NAME}: level must be one of {LEVELS}, got {level!r}")
    rng = random.Random(seed)
    easy = _easy_pairs(split)
    rng.shuffle(easy)
    levels = [level] * n if level else [LEVELS[i % 2] for i in range(n)]
    if levels.count("easy") > len(easy):
        raise ValueError(f"{NAME} {split} split has only {len(easy)} distinct easy problems, "
                         f"asked for {levels.count('easy')}")
    out: list[Problem] = []
    seen: set[tuple[int, int]] = set()
    for kind in levels:
        if kind == "easy":
            out.append(make(*easy.pop()))
            continue
        while True:  # the hard space (~800,000 pairs) is never exhausted by a sensible n
            a, b = rng.randint(*HARD), rng.randint(*HARD)
            if (a, b) not in seen and make(a, b).meta["split"] == split:
                seen.add((a, b))
                out.append(make(a, b))
                break
    return out


def scratch_text(problem: Problem) -> str:
    """The calculator call and the value it writes back."""
    a, b = problem.meta["a"], problem.meta["b"]
    return f"{CALCULATOR_CALL[0]}{a}*{b}{CALCULATOR_CALL[1]}{OUTPUT[0]}{a * b}{OUTPUT[1]}"


def sft_text(problem: Problem, scratchpad: bool) -> str:
    return synthetic.completion(scratch_text(problem) if scratchpad else "", problem.answer)


def check(completion: str, problem: Problem) -> bool:
    return synthetic.check(completion, problem.answer)
