"""Arithmetic asked in words, for pretrained instruct models: two-digit additions ("What is 23 +
48?") and short word problems (one or two operations on small numbers). Problems are of kind
"math", so they are asked (chat template, instruction) and graded (ponder.rewards.math) as every
math problem is, in `ponder eval` and in training alike.

    load_task("addition:train", limit=600)     load_task("wordproblems:test", limit=100)

The split is a hash of the problem's numbers and template, so a held-out problem is never a
training problem (tested), whatever the limits.
"""

from __future__ import annotations

import hashlib
import random

from ponder.tasks.problem import Problem

TEST_SHARE = 5  # one problem in five is held out

NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jamal", "Kim", "Leo"]
THINGS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cards", "shells"]


def _words(rng: random.Random) -> tuple[str, str]:
    return rng.choice(NAMES), rng.choice(THINGS)


def _word_problem(rng: random.Random) -> tuple[str, int, tuple]:
    """(question, answer, key): key names the numbers and template, for the split."""
    name, things = _words(rng)
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        return f"{name} has {a} {things} and gets {b} more. How many {things} does {name} have now?", a + b, (kind, a, b)
    if kind == 1:
        a = rng.randint(20, 99)
        b = rng.randint(5, a - 1)
        return f"{name} had {a} {things} and gave {b} of them away. How many {things} are left?", a - b, (kind, a, b)
    if kind == 2:
        a, b = rng.randint(11, 49), rng.randint(2, 9)
        return f"A box holds {a} {things}. How many {things} are in {b} boxes?", a * b, (kind, a, b)
    if kind == 3:
        a, b, c = rng.randint(5, 30), rng.randint(2, 9), rng.randint(5, 40)
        return (f"{name} reads {a} pages a day for {b} days, then {c} more pages. How many pages does "
                f"{name} read in total?"), a * b + c, (kind, a, b, c)
    b, q = rng.randint(2, 9), rng.randint(3, 25)
    return (f"{b * q} {things} are shared equally among {b} children. How many {things} does each "
            f"child get?"), q, (kind, b * q, b)


def _addition(rng: random.Random) -> tuple[str, int, tuple]:
    a, b = rng.randint(10, 99), rng.randint(10, 99)
    return f"What is {a} + {b}?", a + b, (a, b)


GENERATORS = {"addition": _addition, "wordproblems": _word_problem}


def held_out(name: str, key: tuple) -> bool:
    digest = hashlib.sha256(f"{name}:{key}".encode()).digest()
    return digest[0] % TEST_SHARE == 0


def generate(name: str, split: str, n: int, seed: int = 0) -> list[Problem]:
    """`n` distinct problems of task `name` from `split` ("train" or "test")."""
    if split not in ("train", "test"):
        raise ValueError(f"task {name!r}: split must be 'train' or 'test', not {split!r}")
    make = GENERATORS[name]
    rng = random.Random(f"{name}:{split}:{seed}")
    seen: set[tuple] = set()
    problems: list[Problem] = []
    for _ in range(200 * n + 1000):  # the splits hold thousands: far more tries than needed
        if len(problems) == n:
            return problems
        question, answer, key = make(rng)
        if key in seen or held_out(name, key) != (split == "test"):
            continue
        seen.add(key)
        problems.append(Problem(id=f"{name}-{split}-{len(problems)}", prompt=question, answer=str(answer),
                                kind="math", meta={"key": list(key)}))
    raise ValueError(f"task {name}:{split}: only {len(problems)} distinct problems, {n} asked")
