"""The demo: the embedded base model loads and is imperfect at its held-out task, and
`ponder demo --json` runs the whole loop (evaluate, GRPO, evaluate) and reports it."""

import json

from ponder.cli import main
from ponder.demo import base_model_dir
from ponder.engine import Engine, SamplingParams
from ponder.models import from_pretrained
from ponder.tasks import family
from ponder.tokenizer import Tokenizer


def test_embedded_base_model_has_the_skill_but_mostly_answers_directly():
    base = base_model_dir()
    model, tokenizer = from_pretrained(base), Tokenizer.from_pretrained(base)
    task = family("multiply")
    problems = task.generate("test", 64, seed=1)
    greedy = Engine(model, tokenizer).generate([p.prompt for p in problems],
                                               params=SamplingParams(max_new_tokens=48, temperature=0))
    texts = [c[0].text for c in greedy]
    accuracy = sum(task.check(t, p) for t, p in zip(texts, problems)) / len(problems)
    direct = sum(t.startswith("<think></think>") for t in texts) / len(texts)
    assert accuracy < 0.5 and direct > 0.5  # imperfect: RL has something to unlock
    # ...but the scratchpad, when used, is mostly right: force it and check
    forced = Engine(model, tokenizer).generate([p.prompt + "<think>" + str(p.meta["a"]) for p in problems],
                                               params=SamplingParams(max_new_tokens=48, temperature=0))
    scratch_ok = sum(task.check(c[0].text, p) for c, p in zip(forced, problems)) / len(problems)
    assert scratch_ok > accuracy + 0.2


def test_demo_json_reports_before_after_steps_seconds(tmp_path, capsys):
    assert main(["demo", "--steps", "1", "--json", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"before", "after", "steps", "seconds"} <= result.keys() and result["steps"] == 1
    for side in ("before", "after"):
        assert 0 <= result[side]["greedy_accuracy"] <= 1 and 0 <= result[side]["sampled_pass@1"] <= 1
    run = tmp_path / "seed-0"
    assert (run / "metrics.jsonl").exists() and (run / "model" / "model.safetensors").exists()
    assert (run / "reward.png").exists()


def test_ponder_generate_prints_completions_from_a_checkpoint(capsys):
    assert main(["generate", "--model", str(base_model_dir()), "--prompt", "12*34=", "--prompt", "57*85=",
                 "--max-new-tokens", "48", "--n", "2", "--temperature", "1.0", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- prompt: '12*34='") == 2 and out.count("--- prompt: '57*85='") == 2
    assert out.count("\\boxed{") == 4 and out.count("tokens, stop]") == 4  # the model ends with eos
    # With the Python tool on, a model that writes no code block prints the same completions.
    assert main(["generate", "--model", str(base_model_dir()), "--prompt", "12*34=", "--prompt", "57*85=",
                 "--max-new-tokens", "48", "--n", "2", "--temperature", "1.0", "--seed", "3", "--python-tool"]) == 0
    assert capsys.readouterr().out == out
