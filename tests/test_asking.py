"""One way to ask and one way to read answers across generate, eval and training
(ponder.evaluate.prompts), and the first-contact faults a user met bringing a real instruct model:
the held-out accuracy a run logs is what `ponder eval` gives; the chat template by default;
rewards named or passed in; prompts over the context named when the data loads; the output
folder carries the base's generation config and the adapter names its base."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import pytest
import torch

from ponder.evaluate import evaluate
from ponder.evaluate.prompts import MATH_INSTRUCTION, build_prompt, grade
from ponder.models import from_pretrained
from ponder.rl import RLConfig, train_rl
from ponder.rl.scoring import resolve_reward, verifier
from ponder.runtime.lora import LoRAConfig
from ponder.tasks import Problem, load_task
from ponder.tokenizer import Tokenizer

DEMO_BASE = Path(str(files("ponder") / "assets" / "demo-base"))


def test_heldout_accuracy_during_training_equals_ponder_eval(tmp_path):
    """Step 0's eval/accuracy is `ponder eval`'s greedy accuracy on the base, and the last one is
    its accuracy on the trained model: the same prompts, the same reading of answers."""
    held_out = load_task("multiply:test", limit=40)
    cfg = RLConfig(model=str(DEMO_BASE), task="multiply:train", task_limit=32, eval_task="multiply:test",
                   eval_limit=40, steps=2, prompts_per_step=8, group_size=4, max_new_tokens=64, lr=3e-3,
                   eval_every=2, save_every=0, output_dir=str(tmp_path / "run"))
    summary = train_rl(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in records if "eval/accuracy" in r}
    for step, folder in ((0, DEMO_BASE), (2, summary["model_dir"])):
        model, tok = from_pretrained(folder), Tokenizer.from_pretrained(folder)
        result = evaluate(model, tok, held_out, n=0, k_values=(), max_new_tokens=64, progress=False)
        for key in ("accuracy", "right_answer_wrong_step", "process"):  # multiply has a step checker
            assert evals[step][f"eval/{key}"] == pytest.approx(result.metrics["greedy"][key])
    assert all("right_answer_wrong_step" in r for r in records if r["step"] > 0)
    evals = {step: r["eval/accuracy"] for step, r in evals.items()}
    assert 0 < evals[0] < 1  # a figure that could differ, not 0 = 0


def test_the_correct_reward_reads_answers_as_eval_does():
    problem = Problem("p", "What is 29 + 29?", "58", "math")
    for text in ("So, the answer is 58.", "29 + 29 = 58", "The answer is 29 + 29 = 58.",
                 "The answer is within \\boxed{}. 29 + 29 = 58"):
        assert verifier()("", text, problem) == float(grade(problem, "", text).correct) == 1.0, text
    # strict is the switch for a reward that must see a committed answer, not the last number
    assert verifier("strict")("", "29 + 29 = 58", problem) == 0.0
    with pytest.raises(ValueError, match="extract"):
        verifier("loose")


def test_math_problems_are_asked_in_training_as_in_eval():
    """RL, SFT-style prompts and eval share build_prompt: the instruction is appended to math
    problems, and the chat template wraps them when the checkpoint ships one."""

    class Chat:
        chat_template = "x"

        def apply_chat_template(self, messages, add_generation_prompt=True, enable_thinking=True):
            return f"<user>{messages[0]['content']}</user><assistant>"

    problem = Problem("p", "What is 2 + 2?", "4", "math")
    assert build_prompt(problem, Chat()) == f"<user>What is 2 + 2?\n\n{MATH_INSTRUCTION}</user><assistant>"
    assert build_prompt(problem, Chat(), chat=False, instruction="") == "What is 2 + 2?"
    assert build_prompt(problem, Chat(), instruction="Answer with a number.") == \
        "<user>What is 2 + 2?\n\nAnswer with a number.</user><assistant>"


def test_generate_uses_the_checkpoint_template_by_default(tiny_checkpoint, tmp_path, monkeypatch):
    import shutil

    from ponder.cli import main
    from ponder.engine import Engine

    folder = tmp_path / "with-template"
    shutil.copytree(tiny_checkpoint, folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ messages[0]['content'] }}="
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    seen = []
    monkeypatch.setattr(Engine, "generate", lambda self, prompts, n=1, params=None: seen.append(prompts) or
                        [[] for _ in prompts])
    assert main(["generate", "--model", str(folder), "--prompt", "12*3"]) == 0
    assert main(["generate", "--model", str(folder), "--prompt", "12*3", "--no-chat"]) == 0
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "12*3"]) == 0  # no template: as given
    assert seen == [["12*3="], ["12*3"], ["12*3"]]


def test_reward_names_and_functions_mix_and_anything_else_is_refused_before_work(tmp_path):
    def mine(prompt, completion, problem):
        return 1.0

    assert [f.__name__ for f in (resolve_reward(r) for r in (mine, "correct"))] == ["mine", "correct"]
    cfg = RLConfig(model=str(tmp_path / "no-such-model"), output_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError, match="reward 42"):  # before the (missing) model is looked for
        train_rl(cfg, rewards=[mine, 42], progress=False)


def test_a_prompt_over_the_context_is_named_when_the_data_loads(tmp_path):
    from ponder.models import Decoder, ModelConfig
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(multiply.ALPHABET)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64))
    problems = load_task("multiply:train", limit=8)
    problems[5] = Problem("long-one", "1*2=" * 40, "2", "multiply", {"a": 1, "b": 2})
    cfg = RLConfig(model="unused", output_dir=str(tmp_path / "run"), steps=1)
    with pytest.raises(ValueError, match="training problem long-one .*160 tokens.*context of 64"):
        train_rl(cfg, model=model, tokenizer=tok, problems=problems, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any step


def test_output_folder_carries_the_generation_config_and_the_adapter_names_its_base(tmp_path):
    import shutil

    base = tmp_path / "base"
    shutil.copytree(DEMO_BASE, base)
    (base / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "temperature": 0.7}))
    cfg = RLConfig(model=str(base), task="multiply:train", task_limit=8, steps=1, prompts_per_step=2, group_size=2,
                   max_new_tokens=8, save_every=0, lora=LoRAConfig(r=4), output_dir=str(tmp_path / "run"))
    summary = train_rl(cfg, progress=False)
    out = Path(summary["model_dir"])
    assert json.loads((out / "generation_config.json").read_text())["temperature"] == 0.7
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)


def test_eval_strategies_refuse_the_asking_switches_they_do_not_follow(tiny_checkpoint, capsys):
    from ponder.cli import main

    assert main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--strategy", "majority",
                 "--no-chat"]) == 2
    assert "--chat works without --strategy" in capsys.readouterr().err
