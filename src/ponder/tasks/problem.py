"""The problem record every part of ponder passes around."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One problem with a verifiable answer.

    id: stable identifier (the dataset's own where it has one).
    prompt: the problem text as the dataset states it (no instruction or chat template added).
    answer: gold answer; "" when tests decide (code).
    kind: "math", "code", or a synthetic family name ("multiply", "program", "trace").
    meta: everything else: subject, level, solution, test, entry_point, family operands, split.
    """

    id: str
    prompt: str
    answer: str
    kind: str
    meta: dict = field(default_factory=dict)
