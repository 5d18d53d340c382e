"""The tools demo: the "products" task (easy and hard multiplications, a calculator call as its
scratchpad), the embedded base model that knows the calculator's format but rarely calls it,
and `ponder demo --task tools --json`, whose last line has the shape the README's table uses."""

import json

import pytest

from ponder.cli import main
from ponder.demo_tools import base_model_dir
from ponder.engine import Engine, SamplingParams
from ponder.models import from_pretrained
from ponder.rewards.tools import tool_calls
from ponder.tasks import family, load_task
from ponder.tokenizer import Tokenizer
from ponder.tools import Calculator

TASK = family("products")


def test_products_mix_easy_and_hard_and_keep_the_held_out_split_apart():
    train, test = TASK.generate("train", 400, seed=3), TASK.generate("test", 200, seed=3)
    assert [p.meta["level"] for p in train[:4]] == ["easy", "hard", "easy", "hard"]
    assert TASK.generate("train", 400, seed=3) == train  # seeded
    pair = lambda p: (min(p.meta["a"], p.meta["b"]), max(p.meta["a"], p.meta["b"]))  # noqa: E731
    assert not {pair(p) for p in train} & {pair(p) for p in test}
    assert len({p.prompt for p in train}) == 400
    for p in train:
        a, b = p.meta["a"], p.meta["b"]
        assert p.answer == str(a * b) and p.prompt == f"{a}*{b}="
        easy = {a, b} & {1, 10, 100}
        assert bool(easy) == (p.meta["level"] == "easy") and (min(a, b) > 100) == (p.meta["level"] == "hard")
    assert {p.meta["level"] for p in TASK.generate("test", 20, level="hard")} == {"hard"}
    assert [p.meta["level"] for p in load_task("products", limit=2)] == ["easy", "hard"]
    with pytest.raises(ValueError, match="distinct easy problems"):
        TASK.generate("test", 2000, level="easy")


def test_the_sft_call_is_what_the_calculator_computes():
    for p in TASK.generate("train", 20, seed=1):
        call, direct = TASK.sft_text(p, True), TASK.sft_text(p, False)
        assert TASK.check(call, p) and TASK.check(direct, p)
        assert direct == f"<think></think>\\boxed{{{p.answer}}}" and tool_calls(direct) == 0
        tool = Calculator()
        code = tool.code_to_run(call[:call.index(tool.close) + len(tool.close)])
        assert code == f"{p.meta['a']}*{p.meta['b']}" and tool.result(tool.run(code).output) in call
        assert tool_calls(call) == 1  # the cost reward sees the same format


def test_embedded_base_knows_the_calculator_but_rarely_calls_it():
    base = base_model_dir()
    model, tokenizer = from_pretrained(base), Tokenizer.from_pretrained(base)
    assert sum(p.numel() for p in model.parameters()) < 1_500_000  # tiny: a CPU demo
    engine = Engine(model, tokenizer)
    hard = TASK.generate("test", 48, seed=5, level="hard")
    easy = TASK.generate("test", 48, seed=5, level="easy")

    def greedy(problems):
        params = SamplingParams(max_new_tokens=40, temperature=0, tool=Calculator())
        return [o[0] for o in engine.generate([p.prompt for p in problems], params=params)]

    def accuracy(completions, problems):
        return sum(TASK.check(c.text, p) for c, p in zip(completions, problems)) / max(1, len(problems))

    plain_hard, plain_easy = greedy(hard), greedy(easy)
    assert not any(c.tool_calls for c in plain_hard + plain_easy)  # greedy, it answers in its head
    assert accuracy(plain_easy, easy) > 0.9 and accuracy(plain_hard, hard) < 0.1  # fine on easy, not on hard
    # ...but sampling, it sometimes calls of its own accord (RL has something to reinforce), and
    # it knows the format: its calls run, and copying operands in and the value out mostly works
    sampled = engine.generate([p.prompt for p in hard], n=8,
                              params=SamplingParams(max_new_tokens=40, temperature=1.0, tool=Calculator(), seed=0))
    pairs = [(c, p) for group, p in zip(sampled, hard) for c in group]
    called = [(c, p) for c, p in pairs if c.tool_calls]
    assert 0.1 < len(called) / len(pairs) < 0.5
    assert all(call.ok for c, _ in called for call in c.tool_calls)
    assert accuracy(*zip(*called)) > 0.6 and accuracy(*zip(*[x for x in pairs if not x[0].tool_calls])) < 0.1


def test_tools_demo_json_has_the_issue_shape(tmp_path, capsys):
    assert main(["demo", "--task", "tools", "--steps", "1", "--json", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"before", "after", "steps", "seconds", "seed"} and result["steps"] == 1
    for side in ("before", "after"):
        assert set(result[side]) == {"easy", "hard"}
        for kind in ("easy", "hard"):
            m = result[side][kind]
            assert set(m) == {"accuracy", "tool_rate", "tokens"}
            assert 0 <= m["accuracy"] <= 1 and 0 <= m["tool_rate"] <= 1 and m["tokens"] > 0
    run = tmp_path / "tools-seed-0"  # beside the plain demo's seed-S folders
    assert (run / "model" / "model.safetensors").exists()
    assert (run / "tool_call_rate.png").exists() and (run / "accuracy_by_kind.png").exists()
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"tools/hard/call_share", "tools/easy/accuracy", "tools/call_success", "reward/tool_cost/mean"} <= set(record)
