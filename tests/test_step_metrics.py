"""Right answer with a wrong step, reported where a step checker exists: each RL step's metrics,
held-out evaluation during training and `ponder eval`, on hand-built completions (a right answer
through right steps, a right answer through a wrong partial product, a wrong answer); a task
without a step checker gets no such key, not a 0."""

from __future__ import annotations

import pytest
import torch

from ponder.engine import Completion
from ponder.evaluate import evaluate, markdown
from ponder.evaluate.heldout import evaluate_greedy
from ponder.rl import RLConfig
from ponder.rl.trainer import step_metrics
from ponder.tasks import load_task, multiply

P = multiply.make(47, 86)  # 4042
RIGHT = multiply.sft_text(P, scratchpad=True)  # 47*80=3760,47*6=282,3760+282=4042
RIGHT_WRONG_STEP = "<think>47*80=3760,47*6=292,3760+282=4042</think>\\boxed{4042}"  # credit 1/4
WRONG = "<think></think>\\boxed{1}"  # every step skipped: credit 0
TEXTS = [RIGHT, RIGHT_WRONG_STEP, WRONG]


def completion(text: str, finish: str = "stop") -> Completion:
    return Completion(list(range(len(text))), [0.0] * len(text), finish, text)


def rl_metrics(texts, problems) -> dict:
    """One RL step's metrics over these completions, rewarded by `correct` (one group)."""
    cfg = RLConfig(group_size=len(texts))
    correct = [float(multiply.check(t, p)) if p.kind == "multiply" else 0.0 for t, p in zip(texts, problems)]
    rewards = torch.tensor(correct, dtype=torch.float64).unsqueeze(1)
    lengths = torch.tensor([len(t) for t in texts])
    return step_metrics(cfg, ["correct"], torch.ones(1, dtype=torch.float64), [rewards], [], [lengths],
                        [False] * len(texts), 1, 0, 1, 0, 0.0, 0.0, {}, [completion(t) for t in texts], problems)


def test_rl_step_reports_right_answer_wrong_step_for_multiply():
    m = rl_metrics(TEXTS, [P] * 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["right_answer_wrong_step"] == pytest.approx(1 / 3)
    assert m["process"] == pytest.approx((1 + 1 / 4 + 0) / 3)


def test_rl_step_without_a_step_checker_has_no_such_key():
    addition = load_task("addition:train", limit=3)
    m = rl_metrics([f"\\boxed{{{p.answer}}}" for p in addition], addition)
    assert "right_answer_wrong_step" not in m and "process" not in m


class ScriptedEngine:
    """Engine stand-in: each prompt's greedy completion and samples, as given."""

    def __init__(self, script):
        self.script = script

    def generate(self, prompts, n=1, params=None):
        out = []
        for prompt in prompts:
            greedy, sampled = self.script[prompt if isinstance(prompt, str) else bytes(prompt).decode()]
            texts = [greedy] if params.temperature == 0 else sampled[:n]
            out.append([t if isinstance(t, Completion) else completion(t) for t in texts])
        return out


class ByteTokenizer:
    def encode(self, text: str) -> list[int]:
        return list(text.encode())


def three_problems():
    """Three multiply problems whose greedy answers are right-right, right-wrong-step and wrong."""
    a, b, c = multiply.make(47, 86), multiply.make(12, 34), multiply.make(21, 43)
    script = {a.prompt: (RIGHT, [RIGHT, WRONG]),
              b.prompt: ("<think>12*30=360,12*4=46,360+48=408</think>\\boxed{408}", [WRONG, WRONG]),
              c.prompt: (WRONG, [multiply.sft_text(c, scratchpad=False), multiply.sft_text(c, scratchpad=True)])}
    return [a, b, c], script


def test_ponder_eval_reports_it_for_greedy_and_sampled_answers():
    problems, script = three_problems()
    result = evaluate(None, None, problems, n=2, k_values=(1,), max_new_tokens=64, engine=ScriptedEngine(script),
                      progress=False)
    g, s = result.metrics["greedy"], result.metrics["sampled"]
    assert g["accuracy"] == pytest.approx(2 / 3) and g["right_answer_wrong_step"] == pytest.approx(1 / 3)
    assert g["process"] == pytest.approx((1 + 1 / 4 + 0) / 3)
    # samples: right-right, wrong, wrong, wrong, right answered directly (steps skipped), right-right
    assert s["right_answer_wrong_step"] == pytest.approx(1 / 6) and s["process"] == pytest.approx(2 / 6)
    table = markdown(result)
    assert "| greedy right answer, wrong step / process | 33.3% / 0.417 |" in table
    assert "| sampled right answer, wrong step / process (n=2, T=1.0) | 16.7% / 0.333 |" in table


def test_a_truncated_right_answer_is_not_counted_right():
    """Evaluation grades a truncated completion wrong; so does its step figure."""
    p = multiply.make(47, 86)
    script = {p.prompt: (completion(RIGHT_WRONG_STEP, "length"), [])}
    result = evaluate(None, None, [p], n=0, k_values=(), max_new_tokens=64, engine=ScriptedEngine(script),
                      progress=False)
    assert result.metrics["greedy"]["accuracy"] == 0 and result.metrics["greedy"]["right_answer_wrong_step"] == 0


def test_ponder_eval_without_a_step_checker_has_no_such_key():
    addition = load_task("addition:test", limit=2)
    prompts = {p.prompt: p for p in addition}
    script = {prompt: (f"\\boxed{{{p.answer}}}", [f"\\boxed{{{p.answer}}}"]) for prompt, p in prompts.items()}
    result = evaluate(None, None, addition, n=1, k_values=(1,), max_new_tokens=16, engine=ScriptedEngine(script),
                      progress=False, chat=False, instruction="")
    assert result.metrics["greedy"]["accuracy"] == 1.0
    for key in ("greedy", "sampled"):
        assert "right_answer_wrong_step" not in result.metrics[key] and "process" not in result.metrics[key]
    assert "wrong step" not in markdown(result)


def test_heldout_evaluation_reports_it_where_a_checker_exists():
    problems, script = three_problems()
    m = evaluate_greedy(ScriptedEngine(script), ByteTokenizer(), problems, max_new_tokens=64)
    assert m["eval/accuracy"] == pytest.approx(2 / 3)
    assert m["eval/right_answer_wrong_step"] == pytest.approx(1 / 3)
    assert m["eval/process"] == pytest.approx((1 + 1 / 4 + 0) / 3)
    addition = load_task("addition:test", limit=2)
    plain = {p.prompt: (f"\\boxed{{{p.answer}}}", []) for p in addition}
    m = evaluate_greedy(ScriptedEngine(plain), ByteTokenizer(), addition, max_new_tokens=16, instruction="")
    assert m["eval/accuracy"] == 1.0 and "eval/right_answer_wrong_step" not in m and "eval/process" not in m
