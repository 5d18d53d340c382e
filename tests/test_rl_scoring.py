"""Scoring a step's completions: both reward forms (ponder's per sample, TRL's batched), rewards
named by file path or module, bad reward values, NaN/inf, and parallel scoring equal to serial."""

import logging
import math
import sys
import threading
from types import SimpleNamespace

import pytest
import torch

from ponder.rl.scoring import RewardError, is_batched, resolve_reward, score
from ponder.tasks import Problem

ADD_TEST = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n"


def problems(n=4):
    return [Problem(id=f"p{i}", prompt=f"Q{i}", answer=str(i), kind="math",
                    meta={"tolerance": 0.5 * i, "difficulty": "easy" if i % 2 else "hard"}) for i in range(n)]


def length_reward(prompt, completion, problem):
    return float(len(completion))


# ----------------------------------------------------------------------------- TRL's batched form

def test_batched_reward_gets_the_problems_fields_one_list_per_field():
    seen = {}

    def trl_style(prompts, completions, **kwargs):
        seen.update(kwargs, prompts=prompts, completions=completions)
        return [float(c == a) for c, a in zip(completions, kwargs["answer"])]

    ps = problems()
    texts = ["0", "x", "2", "y"]
    out = score([trl_style, length_reward], [p.prompt for p in ps], texts, ps)
    assert seen == {"prompts": ["Q0", "Q1", "Q2", "Q3"], "completions": texts, "answer": ["0", "1", "2", "3"],
                    "tolerance": [0.0, 0.5, 1.0, 1.5], "difficulty": ["hard", "easy", "hard", "easy"]}
    assert out[:, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert out[:, 1].tolist() == [1.0, 1.0, 1.0, 1.0]


def test_batched_reward_without_kwargs_gets_only_what_it_names_and_missing_fields_are_none():
    def named(completions, tolerance):
        return [t for t in tolerance]

    ps = problems(2) + [Problem(id="bare", prompt="Q", answer="9", kind="math")]
    out = score([named], ["a", "b", "c"], ["x", "y", "z"], ps)
    assert out[:2, 0].tolist() == [0.0, 0.5] and math.isnan(out[2, 0])  # None: not applicable


def test_the_form_is_told_by_signature_or_declared():
    def trl(prompts, completions, **kw):
        return [0.0] * len(completions)

    class Declared:  # a callable taking everything as keywords: its signature cannot tell
        batched = True

        def __call__(self, **kw):
            return [float(len(kw["completions"][0]))] * len(kw["completions"])
    declared = Declared()

    def per_sample_declared(prompts, completions, problem):
        return 1.0
    per_sample_declared.batched = False

    assert [is_batched(f) for f in (trl, declared, per_sample_declared, length_reward)] == [True, True, False, False]
    out = score([declared, per_sample_declared], ["p"], ["c"], problems(1))
    assert out.tolist() == [[1.0, 1.0]]


# ----------------------------------------------------------------------------- naming rewards

def test_a_reward_named_by_file_path_or_by_module_in_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "helpers_for_reward.py").write_text("BONUS = 2.0\n")
    folder = tmp_path / "my rewards"
    folder.mkdir()
    (folder / "task_rewards.py").write_text(
        "import sys\nsys.path.append(%r)\nfrom helpers_for_reward import BONUS\n"
        "def bonus(prompt, completion, problem):\n    return BONUS\n"
        "def batched(prompts, completions, **kw):\n    return [BONUS] * len(completions)\n" % str(tmp_path))
    fn = resolve_reward(f"{folder}/task_rewards.py:bonus")
    assert fn("p", "c", None) == 2.0
    assert resolve_reward(f"{folder}/task_rewards.py:batched").__module__ == fn.__module__  # loaded once
    (tmp_path / "local_reward_mod.py").write_text("def local(prompt, completion, problem):\n    return 3.0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert resolve_reward("local_reward_mod:local")("p", "c", None) == 3.0
    monkeypatch.chdir(folder)
    assert resolve_reward("task_rewards.py:bonus")("p", "c", None) == 2.0  # relative to the current folder
    with pytest.raises(ValueError, match="no file .*nowhere.py"):
        resolve_reward("nowhere.py:fn")
    with pytest.raises(ValueError, match="not found"):
        resolve_reward("task_rewards.py:missing")
    (folder / "broken.py").write_text("def f(:\n")
    with pytest.raises(ValueError, match="cannot load .*broken.py: SyntaxError"):
        resolve_reward("broken.py:f")


# ----------------------------------------------------------------------------- bad rewards

def test_a_reward_returning_a_string_or_a_wrong_length_list_is_an_error_naming_it():
    ps = problems(3)

    def says_yes(prompt, completion, problem):
        return "1.0" if problem.id == "p1" else 1.0

    def too_short(prompts, completions, **kw):
        return [1.0] * (len(completions) - 1)

    def text_list(prompts, completions, **kw):
        return "1.0, 0.0, 1.0"

    def boom(prompt, completion, problem):
        if problem.id == "p2":
            raise KeyError("tests")
        return 0.0

    with pytest.raises(RewardError, match=r"reward 'says_yes' returned str '1.0' for sample 1 \(problem p1\)"):
        score([says_yes], ["a"] * 3, ["x"] * 3, ps)
    with pytest.raises(RewardError, match=r"reward 'too_short' returned 2 values for 3 completions"):
        score([too_short], ["a"] * 3, ["x"] * 3, ps)
    with pytest.raises(RewardError, match=r"reward 'text_list' returned str, expected a list of 3"):
        score([text_list], ["a"] * 3, ["x"] * 3, ps)
    with pytest.raises(RewardError, match=r"reward 'boom' raised on sample 2 \(problem p2\): KeyError"):
        score([boom], ["a"] * 3, ["x"] * 3, ps, workers=2)


def test_nan_and_inf_are_reported_loudly_and_counted(caplog):
    def shaky(prompt, completion, problem):
        return {"p0": float("nan"), "p1": None, "p2": float("inf")}.get(problem.id, 0.5)

    counts = {}
    with caplog.at_level(logging.WARNING, logger="ponder.rl.scoring"):
        out = score([shaky, length_reward], ["a"] * 4, ["x"] * 4, problems(), nonfinite=counts)
    assert counts == {"shaky": 2, "length_reward": 0}  # None is "not applicable", not a bad value
    assert [m for m in caplog.messages if "'shaky'" in m and "2 of 4" in m and "NaN or inf" in m]
    assert torch.isnan(out[:3, 0]).all() and out[3, 0] == 0.5


# ----------------------------------------------------------------------------- parallel

def test_per_sample_rewards_run_concurrently():
    # serial calls would leave each waiting at the barrier until it breaks
    barrier = threading.Barrier(4, timeout=120)

    def meets_the_others(prompt, completion, problem):
        barrier.wait()
        return 1.0

    out = score([meets_the_others], ["a"] * 4, ["x"] * 4, problems(), workers=4)
    assert out.sum() == 4


def test_parallel_and_serial_code_scoring_agree():
    from ponder.rewards.code import code_accuracy

    bodies = ["    return a + b\n", "    return a - b\n", "    return a +\n", "    while True:\n        pass\n",
              "```python\ndef add(a, b):\n    return b + a\n```", "    import os\n    os._exit(0)\n"]
    header = 'def add(a, b):\n    """Add two numbers."""\n'
    ps = [SimpleNamespace(id=f"c{i}", prompt=header, kind="code", answer="",
                          meta={"test": ADD_TEST, "entry_point": "add"}) for i in range(len(bodies))]
    prompts = [header] * len(bodies)

    def quick_code(prompt, completion, problem):  # the loop ends on a short clock
        from ponder.rewards.code import run_program
        from ponder.rewards.sandbox import Limits
        if "while True" in completion:
            return float(run_program(header + completion, test=ADD_TEST, entry_point="add",
                                     limits=Limits(wall_s=2)).correct)
        return code_accuracy(prompt, completion, problem)

    serial = score([quick_code], prompts, bodies, ps, workers=1)
    parallel = score([quick_code], prompts, bodies, ps, workers=4)
    assert serial[:, 0].tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert torch.equal(serial, parallel)


# ----------------------------------------------------------------------------- in the loops

TRL_REWARDS = '''
def sevens(prompts, completions, a, **kwargs):
    """TRL's form: the multiply problems' operand `a` arrives as one list per field."""
    assert len(a) == len(completions) == len(prompts) and all(isinstance(x, int) for x in a)
    return [c.count("7") / max(len(c), 1) for c in completions]
'''


def test_rl_trains_with_a_batched_reward_named_by_its_file(tmp_path):
    import json

    from ponder.models import Decoder, ModelConfig
    from ponder.rl import RLConfig, train_rl
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(multiply.ALPHABET)
    torch.manual_seed(0)
    Decoder(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, head_dim=8)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "trl_rewards.py").write_text(TRL_REWARDS)
    cfg = RLConfig(model=str(tmp_path / "base"), task="multiply:train", task_limit=16,
                   rewards=[f"{tmp_path / 'trl_rewards.py'}:sevens"], prompts_per_step=2, group_size=4,
                   max_new_tokens=8, steps=2, eval_every=0, save_every=0, output_dir=str(tmp_path / "run"))
    train_rl(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    values = [r["reward/sevens/mean"] for r in rows if "reward/sevens/mean" in r]
    assert len(values) == 2 and all(0.0 <= v <= 1.0 for v in values)


def test_eval_grades_code_side_by_side_in_order():
    from ponder.engine import Completion
    from ponder.evaluate.harness import evaluate

    header = 'def add(a, b):\n    """Add two numbers."""\n'
    bodies = ["    return a + b\n", "    return a - b\n", "    return b + a\n", "    return a +\n"] * 3
    ps = [Problem(id=f"c{i}", prompt=header, answer="", kind="code", meta={"test": ADD_TEST, "entry_point": "add"})
          for i in range(len(bodies))]

    class Scripted:  # the i-th prompt of a batch gets the i-th body
        def __init__(self):
            self.given = 0

        def generate(self, prompts, n, params):
            out = [[Completion([1], [0.0], "stop", bodies[self.given + j])] for j in range(len(prompts))]
            self.given += len(prompts)
            return out

    result = evaluate(None, None, ps, n=0, k_values=(), engine=Scripted(), batch_size=8, progress=False)
    assert [r["greedy"]["correct"] for r in result.records] == [True, False, True, False] * 3
    assert [r["id"] for r in result.records] == [p.id for p in ps]
