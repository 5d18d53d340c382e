"""What every synthetic task family shares: the split rule, the completion format, the exact check.

A family module (``multiply``, ``program``) exposes:
  NAME, ALPHABET (every character its prompts and completions use),
  generate(split, n, seed) -> list[Problem], prompt(...), scratch_text(problem),
  sft_text(problem, scratchpad: bool), check(completion, problem) -> bool.

Splits: a problem belongs to "train" or "test" (held out) by a hash of its canonical content,
so the same problem can never be in both, whatever the seed or n.

Completion format: ``<think>SCRATCH</think>\\boxed{N}``; the direct style has an empty think.
The end-of-sequence token is the tokenizer's business and is not part of the text.
"""

from __future__ import annotations

import hashlib
import re
from typing import Callable

SPLITS = ("train", "test")
HELDOUT_FRACTION = 0.2  # share of each family's problem space that only the test split sees

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
# Characters of the completion frame, in every family's alphabet.
FRAME_ALPHABET = "".join(sorted(set(THINK_OPEN + THINK_CLOSE + "\\boxed{}")))


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def distinct(family: str, split: str, n: int, draw: Callable, tries: int):
    """n problems of `split` with distinct prompts, from `draw(kept)` (`kept`: how many are kept so
    far; it returns a Problem, or None for a draw it rejects), in at most `tries` draws: the
    generator of families whose problem space is drawn rather than listed."""
    seen: set[str] = set()
    out = []
    for _ in range(tries):  # the space is large; the bound only guards against a bug
        if len(out) == n:
            break
        problem = draw(len(out))
        if problem is None or problem.prompt in seen or problem.meta["split"] != split:
            continue
        seen.add(problem.prompt)
        out.append(problem)
    if len(out) < n:
        raise ValueError(f"{family}: found only {len(out)} distinct {split} problems, asked for {n}")
    return out


def split_of(family: str, canonical: str) -> str:
    """"train" or "test" for a problem, decided by a hash of its canonical content only."""
    digest = hashlib.sha256(f"{family}:{canonical}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") / 2**64 < HELDOUT_FRACTION else "train"


def completion(scratch: str, answer: str) -> str:
    """The completion an SFT example uses: think block (maybe empty), then the boxed answer."""
    return f"{THINK_OPEN}{scratch}{THINK_CLOSE}\\boxed{{{answer}}}"


_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


def boxed_answer(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (no nested braces: synthetic answers are integers)."""
    found = _BOXED.findall(text)
    return found[-1].strip() if found else None


def check(completion_text: str, gold: str) -> bool:
    """Cheap exact check: the last boxed answer is the gold integer (leading '+'/zeros allowed)."""
    pred = boxed_answer(completion_text)
    if pred is None or not re.fullmatch(r"[+-]?\d+", pred):
        return False
    return int(pred) == int(gold)
