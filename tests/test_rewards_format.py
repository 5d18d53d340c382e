"""The reward API: format reward, DAPO overlong shaping, math accuracy as a reward, and weighted
scores that keep each reward's own value."""

from types import SimpleNamespace

import pytest

from ponder.rewards import (OverlongReward, Reward, accuracy, format_reward, math_accuracy,
                            overlong_penalty, score, weighted_sum)

MATH = SimpleNamespace(answer="\\frac{1}{2}", kind="math", meta={})
CODE = SimpleNamespace(answer="", kind="code", meta={"entry_point": "f"})


@pytest.mark.parametrize("prompt,completion,problem,expected", [
    ("Q", "<think>half of one</think>\nSo \\boxed{1/2}.", MATH, 1.0),
    ("Q", "  <think>\nreason\n</think>The answer is \\boxed{\\frac{1}{2}}", MATH, 1.0),
    ("Q<|im_start|>assistant\n<think>", "reason</think> \\boxed{3}", MATH, 1.0),  # template opened it
    ("Q", "no thinking \\boxed{1/2}", MATH, 0.0),
    ("Q", "<think>reason \\boxed{1/2}</think> and nothing after", MATH, 0.0),   # box inside think
    ("Q", "<think></think> \\boxed{1/2}", MATH, 0.0),                          # empty thinking
    ("Q", "<think>a</think><think>b</think> \\boxed{1}", MATH, 0.0),            # two think blocks
    ("Q", "<think>a</think> \\boxed{1} </think>", MATH, 0.0),                   # stray closing tag
    ("Q", "<think>never closed \\boxed{1}", MATH, 0.0),
    ("Q", "<think>a</think> \\boxed{}", MATH, 0.0),                             # empty box
    ("Q", "<think>plan</think>\n```python\ndef f():\n    return 1\n```", CODE, 1.0),
    ("Q", "<think>plan</think>\ndef f(): return 1", CODE, 0.0),
])
def test_format_reward(prompt, completion, problem, expected):
    assert format_reward(prompt, completion, problem) == expected


def test_format_reward_answer_place_and_truncation():
    done = "<think>x</think> The final answer is 4"
    assert format_reward("Q", done, MATH, answer="line") == 1.0
    assert format_reward("Q", done, MATH, answer="boxed") == 0.0
    assert format_reward("Q", "<think>x</think> \\boxed{4}", MATH, truncated=True) == 0.0
    with pytest.raises(ValueError, match="answer"):
        format_reward("Q", done, MATH, answer="json")


@pytest.mark.parametrize("length,expected", [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5),
                                             (99, -0.95), (100, -1.0), (150, -1.0)])
def test_overlong_penalty_is_dapo_soft_punishment(length, expected):
    assert overlong_penalty(length, max_len=100, cache=20) == pytest.approx(expected)


def test_overlong_reward_counts_with_the_given_tokenizer_and_checks_arguments():
    words = OverlongReward(max_len=10, cache=4, count=lambda s: len(s.split()))
    assert words("Q", "a " * 6, MATH) == 0.0
    assert words("Q", "a " * 8, MATH) == pytest.approx(-0.5)
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(5, max_len=10, cache=0)


def test_math_accuracy_reward():
    assert math_accuracy("Q", "<think>.</think> \\boxed{0.5}", MATH) == 1.0
    assert math_accuracy("Q", "<think>.</think> \\boxed{0.25}", MATH) == 0.0
    assert math_accuracy("Q", "the answer is 0.5", MATH) == 0.0          # strict: no box, no final line
    assert math_accuracy("Q", "\\boxed{0.5}", MATH, truncated=True) == 0.0
    assert math_accuracy("Q", "\\boxed{0.5}", CODE) is None                 # not a math problem
    assert math_accuracy("Q", "\\boxed{0.5}", SimpleNamespace(answer="", kind="math")) is None
    assert math_accuracy("Q", "\\boxed{7}", SimpleNamespace(answer=7)) == 1.0   # duck-typed record


def test_score_keeps_each_value_and_weighted_sum_skips_none():
    rewards = [Reward("accuracy", math_accuracy, 1.0), Reward("format", format_reward, 0.5),
               Reward("length", OverlongReward(max_len=10, cache=5, count=len), 2.0)]
    good = "<think>x</think>\\boxed{1/2}"   # 27 characters: far over 10
    values = score(rewards, "Q", good, MATH)
    assert values == {"accuracy": 1.0, "format": 1.0, "length": -1.0}
    assert weighted_sum(values, rewards) == pytest.approx(1.0 + 0.5 - 2.0)
    cut = score(rewards, "Q", good, MATH, truncated=True)   # passed to the fns that take it
    assert cut["accuracy"] == 0.0 and cut["format"] == 0.0
    on_code = score(rewards[:1], "Q", good, CODE)
    assert on_code == {"accuracy": None} and weighted_sum(on_code, rewards[:1]) is None
    with pytest.raises(ValueError, match="named"):
        score([rewards[0], rewards[0]], "Q", good, MATH)


def test_accuracy_dispatches_on_kind():
    assert accuracy("Q", "\\boxed{1/2}", MATH) == 1.0
    assert accuracy("Q", "\\boxed{1/2}", MATH, truncated=True) == 0.0
    assert accuracy("Q", "```python\nprint(1)\n```", CODE, truncated=True) == 0.0
    no_tests = SimpleNamespace(answer="", kind="code", meta={})
    assert accuracy("Q", "```python\nprint(1)\n```", no_tests) is None   # nothing to run
