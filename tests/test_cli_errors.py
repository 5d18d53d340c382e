"""Input ponder cannot use is reported, not turned into garbage or a traceback: every command's bad
checkpoint is one `error:` line with exit status 2, a device this torch lacks is named, and a prompt
past the model's context is refused (or, when only the completion may run past it, warned about)."""

import argparse
import shutil
import warnings

import pytest
import torch

from ponder.cli import build_parser, main
from ponder.device import pick_device
from ponder.engine import Engine, SamplingParams
from ponder.models import Decoder, ModelConfig, RopeScaling
from ponder.tokenizer import build_char_tokenizer


def _broken(tiny_checkpoint, tmp_path, how: str):
    folder = tmp_path / how
    shutil.copytree(tiny_checkpoint, folder)
    weights = folder / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif how == "garbage":
        weights.write_bytes(b"this is not a safetensors file")
    elif how == "no-config":
        (folder / "config.json").unlink()
    return folder


@pytest.mark.parametrize("how,named", [("missing", "no such checkpoint folder"),
                                       ("truncated", "model.safetensors"), ("garbage", "model.safetensors"),
                                       ("no-config", "config.json")])
@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_bad_checkpoint_is_one_error_line_and_exit_2(tiny_checkpoint, tmp_path, capsys, how, named, command):
    folder = tmp_path / "absent" if how == "missing" else _broken(tiny_checkpoint, tmp_path, how)
    args = {"generate": ["generate", "--prompt", "12*34="],
            "eval": ["eval", "--task", "multiply", "--limit", "1", "--n", "0", "--out", str(tmp_path / "out")]}
    assert main(args[command] + ["--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ponder {command}: error: ") and named in err and "Traceback" not in err
    assert "tokenizer.json" not in err  # the checkpoint is what is wrong, not its tokenizer


def test_a_device_this_torch_lacks_is_named(tiny_checkpoint, capsys, monkeypatch):
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        pick_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    assert main(["generate", "--model", str(tiny_checkpoint), "--prompt", "1", "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ponder generate: error: device 'cuda'") and "built without CUDA" in err
    monkeypatch.setattr(torch.version, "cuda", "12.4")  # a CUDA build on a machine without a GPU
    with pytest.raises(ValueError, match="sees no GPU"):
        pick_device("cuda:0")


def _model(context: int, rope_scaling=None):
    tok = build_char_tokenizer("0123456789")
    torch.manual_seed(0)
    config = ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                         rope_scaling=rope_scaling)
    return Engine(Decoder(config).eval(), tok)


def test_a_prompt_past_the_context_is_an_error_and_a_budget_past_it_a_warning():
    engine = _model(context=16)
    with pytest.raises(ValueError, match="prompt 1 is 17 tokens, longer than the model's context of 16"):
        engine.generate(["1", "1" * 17], params=SamplingParams(max_new_tokens=1))
    with pytest.warns(UserWarning, match="can run past the model's context of 16"):
        out = engine.generate(["1" * 10], params=SamplingParams(max_new_tokens=8, temperature=0))
    assert out[0][0].num_tokens <= 8  # it still generates: the warning says the tail is unreliable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once per engine, not on every RL step
        engine.generate(["1" * 10], params=SamplingParams(max_new_tokens=8, temperature=0))
        engine.generate(["1" * 4], params=SamplingParams(max_new_tokens=8, temperature=0))  # fits: silent
        _model(context=16).generate(["1" * 4], params=SamplingParams(max_new_tokens=12, temperature=0))
    # RoPE scaling extends the window: 2 x 16 positions
    _model(16, RopeScaling("yarn", 2.0, 16)).generate(["1" * 20], params=SamplingParams(max_new_tokens=1))


def test_demo_options_are_described():
    parser = build_parser()
    demo = parser._subparsers._group_actions[0].choices["demo"]
    options = [a for a in demo._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"steps", "seed", "task", "out", "json"}
    assert all(a.help for a in options)


def test_every_commands_help_prints():
    """--help of every command and subcommand formats (a '%' in an option's help once broke one)."""
    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    every = list(parsers(build_parser()))
    assert len(every) > 20
    for parser in every:
        assert parser.format_help().startswith("usage:"), parser.prog


def test_column_options_belong_to_the_jsonl_task(tiny_checkpoint, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_checkpoint), "--task", "multiply", "--prompt-column", "q",
                 "--out", str(tmp_path)]) == 2
    assert "apply to --task jsonl" in capsys.readouterr().err
