"""Arithmetic asked in words (ponder.tasks.arithmetic): the tasks of the real-model recipe."""

import pytest

from ponder.evaluate.prompts import grade
from ponder.tasks import load_task


@pytest.mark.parametrize("name", ["addition", "wordproblems"])
def test_held_out_problems_are_never_training_problems(name):
    train = load_task(f"{name}:train", limit=3000)
    test = load_task(f"{name}:test", limit=500)
    assert len({p.prompt for p in train}) == 3000 and len({p.prompt for p in test}) == 500
    assert not {tuple(p.meta["key"]) for p in train} & {tuple(p.meta["key"]) for p in test}
    assert not {p.prompt for p in train} & {p.prompt for p in test}


@pytest.mark.parametrize("name", ["addition", "wordproblems"])
def test_answers_are_right_and_read_as_math(name):
    for p in load_task(f"{name}:test", limit=50):
        assert p.kind == "math"
        assert grade(p, p.prompt, f"The answer is {p.answer}.").correct
        assert not grade(p, p.prompt, f"The answer is {int(p.answer) + 1}.").correct


def test_word_problems_add_subtract_multiply_and_divide():
    problems = load_task("wordproblems:train", limit=200)
    assert {p.meta["key"][0] for p in problems} == {0, 1, 2, 3, 4}
    for p in problems:
        kind, *numbers = p.meta["key"]
        expected = [lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
                    lambda a, b, c: a * b + c, lambda a, b: a // b][kind](*numbers)
        assert int(p.answer) == expected and expected >= 0


def test_same_seed_same_problems_and_limits_nest():
    assert load_task("addition:train", limit=100) == load_task("addition:train", limit=100)
    assert load_task("addition:train", limit=50) == load_task("addition:train", limit=100)[:50]
