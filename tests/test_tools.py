"""Tool calls in the engine: a closed ```python block is run in the sandbox, a <calc> block by
the in-process calculator, and the output is forced into the completion (flagged, log-prob 0);
rows call independently, limits hold, completions record their calls; the calculator's results,
refusals and bounds; the cost reward and the per-step tool metrics of RL."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ponder.engine import Engine, SamplingParams
from ponder.models import ModelConfig
from ponder.tokenizer import build_char_tokenizer
from ponder.rewards.tools import tool_calls, tool_cost
from ponder.tools import Calculator, PythonTool, ToolCall, make_tool, tool_metrics

TOK = build_char_tokenizer("0123456789+-*/=:()_,.'~^\\ abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ`\n<>{}%?",
                           ("<calc>", "</calc>", "<output>", "</output>"))
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

    def hidden(self, batch, cache, lengths=None):  # the prefill of one-token prompts: the token picks the script
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
    call = PythonTool(max_output_chars=20).run("print('a' * 50 + 'b' * 50)")
    text = call.output
    assert call.ok and text.startswith("a" * 10) and text.endswith("b" * 10) and "80 characters cut" in text


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

    assert sampling_tool(RLConfig(tool="python")) == PythonTool() and sampling_tool(RLConfig()) is None
    assert sampling_tool(RLConfig(tool="calculator")) == Calculator()
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


# ---- the calculator -------------------------------------------------------------------------
CALC = "<calc>347*862</calc>"
CALC_RESULT = "<output>299114</output>"


@pytest.mark.parametrize("expression, output", [
    ("347*862", "299114"),
    ("7/2", "3.5"),
    ("1/3", "0.333333333333"),
    ("(2+3)*-4", "-20"),
    ("2**10 - 1", "1023"),
    ("7//2 + 7%2", "4"),
    ("0.1+0.2", "0.3"),  # exact: a decimal is read as the number it names
    ("2**-2", "0.25"),
    ("10**99 // 10**98", "10"),
])
def test_calculator_results(expression, output):
    call = Calculator().run(expression)
    assert (call.code, call.output, call.ok) == (expression, output, True)


@pytest.mark.parametrize("expression, why", [
    ("9**9**9", "exceed 100 digits"),  # refused before computing, not computed
    ("10**100", "exceed 100 digits"),
    ("2**0.5", "whole exponents"),
    ("10**60 * 10**60", "exceeds 100 digits"),
    ("1/0", "division by zero"),
    ("5 % 0", "division by zero"),
    ("x+1", "names are not allowed"),
    ("__import__('os').system('true')", "unsupported expression"),
    ("[1, 2]", "unsupported expression"),
    ("1 +", "not an arithmetic expression"),
    ("(" * 150 + "1" + ")" * 150, "longer than 200 characters"),
])
def test_calculator_refuses_what_it_must_not_compute(expression, why):
    call = Calculator().run(expression)
    assert not call.ok and call.output.startswith("error: ") and why in call.output


def test_the_calculator_shares_the_engine_interface_and_records_its_calls():
    """Same forcing as the Python tool: the call's value is forced (log-prob 0), the model goes
    on; the completion records each call; a failing call is recorded as failed."""
    # The scripted model writes outputs of the real ones' length, wrong: the tool overwrites them.
    script = CALC + "<output>000000</output></think>\\boxed{299114}"
    bad = "<calc>1/0</calc>" + "<output>" + "?" * len("error: division by zero") + "</output> then <calc>2*3</calc><output>?</output>."
    plain, with_tool = generate({1: script, 2: bad}, None), generate({1: script, 2: bad}, Calculator())
    assert plain[0].text == script and plain[0].tool_calls == []
    c = with_tool[0]
    assert c.text == CALC + CALC_RESULT + "</think>\\boxed{299114}" and c.finish_reason == "stop"
    n = [len(TOK.encode(t)) for t in (CALC, CALC_RESULT, "</think>\\boxed{299114}")]
    assert c.forced == [False] * n[0] + [True] * n[1] + [False] * (n[2] + 1)
    assert all(lp == 0.0 for lp, f in zip(c.logprobs, c.forced) if f)
    assert [(call.code, call.output, call.ok) for call in c.tool_calls] == [("347*862", "299114", True)]
    calls = with_tool[1].tool_calls
    assert [(call.code, call.ok) for call in calls] == [("1/0", False), ("2*3", True)]
    assert "<output>error: division by zero</output>" in with_tool[1].text and "<output>6</output>" in with_tool[1].text


def test_python_calls_are_recorded_with_their_success():
    error = "```python\nprint(1/0)\n```"
    out = generate({1: CALL + RESULT + "x", 2: error + " " * 60}, PythonTool(), max_new_tokens=100)
    assert [(c.code, c.output, c.ok) for c in out[0].tool_calls] == [("print(6*7)", "42", True)]
    assert [c.ok for c in out[1].tool_calls] == [False]


def test_make_tool_names_the_tools():
    assert make_tool("calculator") == Calculator() and make_tool("python") == PythonTool()
    assert make_tool("none") is None
    with pytest.raises(ValueError, match="calculator, python or none"):
        make_tool("search")


# ---- rewards and metrics that see tool use ----------------------------------------------------
@pytest.mark.parametrize("text, calls", [
    ("<think></think>\\boxed{6}", 0),
    (CALC + CALC_RESULT + "\\boxed{299114}", 1),
    ("<calc>1+1</calc><output>2</output><calc>2*2</calc><output>4</output>", 2),
    (CALL + RESULT + "so 42.", 1),
    ("<calc>347*86", 0),  # cut off mid-call: no call
    ("<calc></calc>", 0),  # empty: the tools do not run it either
    ("```output\n42\n```", 0),  # an output block is no call
])
def test_tool_calls_are_counted_from_the_text(text, calls):
    assert tool_calls(text) == calls
    assert tool_cost("", text) == -calls


def test_tool_cost_is_a_reward_a_config_can_name():
    from ponder.rl.scoring import resolve_reward

    assert resolve_reward("tool_cost") is tool_cost


def test_tool_metrics_per_step_and_per_level():
    from ponder.engine import Completion
    from ponder.tasks import family

    ok, failed = ToolCall("1+1", "2", True), ToolCall("1/0", "error: division by zero", False)

    def completion(*calls):
        return Completion([1], [0.0], "stop", tool_calls=list(calls))

    easy, hard = family("products").generate("train", 2)
    assert (easy.meta["level"], hard.meta["level"]) == ("easy", "hard")
    comps = [completion(), completion(), completion(ok), completion(ok, failed)]
    right = [1.0, 0.0, 1.0, 0.0]
    m = tool_metrics(comps, right, [easy, easy, hard, hard])
    assert m["tools/calls_per_completion"] == 3 / 4 and m["tools/call_share"] == 2 / 4
    assert m["tools/call_success"] == 2 / 3
    assert m["tools/accuracy_with_call"] == 1 / 2 and m["tools/accuracy_without_call"] == 1 / 2
    assert m["tools/easy/call_share"] == 0.0 and m["tools/hard/call_share"] == 1.0
    assert m["tools/easy/accuracy"] == 0.5 and m["tools/hard/accuracy_with_call"] == 0.5
    assert math.isnan(m["tools/easy/call_success"])  # no easy call: no rate, not a made-up 0
    with pytest.raises(ValueError, match="4 completions but 3"):
        tool_metrics(comps, right[:3])


def test_rl_step_with_the_calculator_masks_its_output_charges_its_calls_and_logs_tool_metrics():
    """One `collect` with a policy that calls the calculator on the hard problem only: the call's
    output is forced (masked from the loss), the reward is right-answer minus the call's cost,
    and the step's metrics say who called and how it went."""
    from ponder.rl import RLConfig
    from ponder.rl.scoring import resolve_reward
    from ponder.rl.trainer import collect
    from ponder.runtime.training import ProblemStream
    from ponder.tasks.products import make

    # one-token prompts, which is what the scripted policy reads its script from
    easy, hard = replace(make(7, 10), prompt="e"), replace(make(347, 862), prompt="h")
    scripts = {TOK.encode("e")[0]: "<think></think>\\boxed{70}",
               TOK.encode("h")[0]: "<think>" + CALC + "<output>000000</output></think>\\boxed{299114}"}
    engine = Engine(Scripted(scripts), TOK)
    cfg = RLConfig(tool="calculator", rewards=["correct", "tool_cost"], reward_weights=[1.0, 0.25],
                   prompts_per_step=2, group_size=2, max_new_tokens=60, temperature=1.0)
    rollout, metrics = collect(cfg, engine, TOK, [easy, hard], ProblemStream(2, seed=0),
                               [resolve_reward(n) for n in cfg.rewards], step=1, rollbacks=0)
    by_prompt = {TOK.decode(p): c for p, c in zip(rollout.prompt_ids, rollout.completions)}
    called = by_prompt[hard.prompt]
    assert called.text.endswith("<output>299114</output></think>\\boxed{299114}")
    output_at = len(TOK.encode("<think>" + CALC))
    assert called.forced[output_at:output_at + len(TOK.encode(CALC_RESULT))] == [True] * len(TOK.encode(CALC_RESULT))
    assert sum(called.forced) == len(TOK.encode(CALC_RESULT))
    assert metrics["reward/correct/mean"] == 1.0 and metrics["reward/tool_cost/mean"] == -0.5
    assert metrics["reward/total/mean"] == pytest.approx(1 - 0.25 / 2)
    assert metrics["tools/call_share"] == 0.5 and metrics["tools/call_success"] == 1.0
    assert metrics["tools/hard/call_share"] == 1.0 and metrics["tools/easy/call_share"] == 0.0
    assert metrics["tools/easy/accuracy"] == 1.0 and metrics["tools/hard/accuracy_with_call"] == 1.0
    assert metrics["tools/accuracy_with_call"] == 1.0 and metrics["tools/accuracy_without_call"] == 1.0
