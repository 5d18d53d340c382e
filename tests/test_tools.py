"""Tool calls in the engine: a closed ```python block is run in the sandbox and its output is
forced into the completion (flagged, log-prob 0), rows call independently, limits hold."""

from __future__ import annotations

import pytest
import torch

from ponder.engine import Engine, SamplingParams
from ponder.models import ModelConfig
from ponder.tokenizer import build_char_tokenizer
from ponder.tools import PythonTool

TOK = build_char_tokenizer("0123456789+-*/=:()_,.'~^\\ abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ`\n")
CALL = "```python\nprint(6*7)\n```"
RESULT = "\n```output\n42\n```\n"


class Scripted(torch.nn.Module):
    """A stand-in for a policy that has learnt to call the tool: greedy, it writes its prompt's
    script one character per step, counting every token it is fed (forced ones included), so
    after a forced output of the scripted length it carries on with the rest of the script.

    Its state lives in the KV cache (which script: key slot 0; how far: the row's length), so it
    follows the engine's row copies and compaction as a real model's cache does."""

    def __init__(self, scripts: dict[int, str]):
        super().__init__()
        self.config = ModelConfig(vocab_size=TOK.vocab_size + 3, hidden_size=8, intermediate_size=8,
                                  num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, head_dim=2)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the engine reads device and dtype from here
        self.scripts = {first: TOK.encode(text) + [TOK.eos_token_id] for first, text in scripts.items()}
        self.cache = None

    def hidden(self, batch, cache):  # the prefill of one-token prompts: the token picks the script
        self.cache = cache
        cache.k[0][:, 0, 0, 1] = batch[:, 0].float()
        cache.lengths += batch.shape[1]
        return torch.zeros(batch.shape[0], batch.shape[1], 1)

    def logits(self, hidden):
        cache = self.cache
        logits = torch.full((cache.batch, self.config.vocab_size), -30.0)
        for row in range(cache.batch):
            script = self.scripts[int(cache.k[0][row, 0, 0, 1])]
            logits[row, script[min(int(cache.lengths[row]) - 1, len(script) - 1)]] = 0.0
        return logits

    def forward(self, input_ids, cache):
        cache.lengths += 1
        return self.logits(None)[:, None]


def generate(scripts, tool, prompts=((1,), (2,)), max_new_tokens=80):
    engine = Engine(Scripted(scripts), TOK)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, tool=tool)
    return [group[0] for group in engine.generate([list(p) for p in prompts], params=params)]


def test_the_output_of_a_closed_block_is_forced_and_the_model_goes_on():
    # Unaided, the model would write a wrong output block ("99"); the tool writes the real one.
    script = CALL + RESULT.replace("42", "99") + "so 42."
    plain, with_tool = generate({1: script, 2: "no code."}, None), generate({1: script, 2: "no code."}, PythonTool())
    assert plain[0].text == script and not any(plain[0].forced)
    c = with_tool[0]
    assert c.text == CALL + RESULT + "so 42." and c.finish_reason == "stop"
    start = len(CALL)
    assert c.forced == [False] * start + [True] * len(RESULT) + [False] * (len("so 42.") + 1)
    assert all(lp == 0.0 for lp, f in zip(c.logprobs, c.forced) if f)
    assert with_tool[1].text == "no code." and not any(with_tool[1].forced)  # the other row is untouched


def test_errors_and_timeouts_come_back_as_text():
    error = "```python\nprint(1/0)\n```"
    slow = "```python\nwhile True: pass\n```"
    tool = PythonTool(timeout_s=1.0)
    out = generate({1: error + " " * 80, 2: slow + " " * 40}, tool, max_new_tokens=120)
    assert "ZeroDivisionError: division by zero" in out[0].text
    assert "(timed out after 1 s)" in out[1].text


def test_calls_per_completion_are_capped():
    script = (CALL + RESULT) * 3 + "end"
    out = generate({1: script, 2: "x"}, PythonTool(max_calls=2), max_new_tokens=len(script) + 1)
    c = out[0]
    assert c.text.count("```output") == 3  # two forced, the third written by the model itself
    assert sum(c.forced) == 2 * len(RESULT)


def test_a_tool_needs_a_tokenizer():
    engine = Engine(Scripted({1: "x"}))
    with pytest.raises(ValueError, match="needs a tokenizer"):
        engine.generate([[1]], params=SamplingParams(max_new_tokens=4, tool=PythonTool()))


@pytest.mark.parametrize("text, code", [
    ("Let me compute.\n```python\nx = 2\nprint(x)\n```", "x = 2\nprint(x)"),
    ("```python\nprint(1)\n```\n```output\n1\n```", None),  # an output block closing is no call
    ("```python\nprint(1)\n``", None),  # not closed yet
    ("no block\n```", None),
    ("```python\n```", None),  # no code between the fences
])
def test_code_to_run(text, code):
    assert PythonTool().code_to_run(text) == code


def test_long_output_keeps_both_ends():
    text = PythonTool(max_output_chars=20).run("print('a' * 50 + 'b' * 50)")
    assert text.startswith("a" * 10) and text.endswith("b" * 10) and "80 characters cut" in text


def test_a_stop_string_in_the_forced_output_does_not_end_the_completion():
    script = "```python\nprint('a\\n\\nb')\n```" + "\n```output\nx\n\nx\n```\n" + "done.\n\nafter"
    engine = Engine(Scripted({1: script}), TOK)
    params = SamplingParams(max_new_tokens=80, temperature=0, tool=PythonTool(), stop_strings=("\n\n",))
    c = engine.generate([[1]], params=params)[0][0]
    assert c.text == "```python\nprint('a\\n\\nb')\n```\n```output\na\n\nb\n```\ndone." and c.finish_reason == "stop"


def test_rl_trains_on_the_policy_tokens_only(tmp_path):
    """Forced tool output is masked from the loss: it counts as no loss token, and what its
    recorded log-probs say changes nothing."""
    from ponder.engine import Completion
    from ponder.models import Decoder
    from ponder.rl import RLConfig
    from ponder.rl.trainer import Rollout, loss_masks, sampling_tool, update
    from ponder.runtime.training import TrainingRun

    assert sampling_tool(RLConfig(python_tool=True)) == PythonTool() and sampling_tool(RLConfig()) is None
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=TOK.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, num_key_value_heads=1))
    ids = TOK.encode(CALL + RESULT + "so 42.")
    forced = [False] * len(CALL) + [True] * len(RESULT) + [False] * len("so 42.")

    cfg = RLConfig(output_dir=str(tmp_path), device="cpu")
    run = TrainingRun(cfg, data_size=1, what="problems", model=model, tokenizer=TOK)
    run.set_lr(0.0)  # the two calls below must see the same weights

    def loss(forced_logprob: float) -> dict:
        logprobs = [forced_logprob if f else -1.0 for f in forced]
        completions = [Completion(ids, logprobs, "stop", forced=forced)] * 2
        rollout = Rollout([[1], [1]], completions, torch.tensor([1.0, -0.5]), sequences=2,
                          tokens=int(sum(map(sum, loss_masks(cfg, completions)))))
        return update(cfg, run, None, rollout, None)

    a, b = loss(0.0), loss(-5.0)
    assert a["loss_tokens"] == 2 * (len(CALL) + len("so 42."))
    assert a["loss"] == b["loss"]
