"""Supervised fine-tuning: completion-only loss, learning, resume, HF-layout output, data errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from ponder import sft
from ponder.models import Decoder, ModelConfig, from_pretrained
from ponder.runtime.training import TrainingRun
from ponder.sft import Example, SFTConfig, batch_loss, read_examples, train_sft
from ponder.tasks import multiply
from ponder.tokenizer import Tokenizer, build_char_tokenizer


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder with config.json and tokenizer.json only: SFT builds the model from scratch."""
    root = tmp_path_factory.mktemp("sft")
    tok = build_char_tokenizer(multiply.ALPHABET)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, hidden_size=24, intermediate_size=48,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                head_dim=12, tie_word_embeddings=True))
    model.save_pretrained(root / "init")
    (root / "init" / "model.safetensors").unlink()
    tok.save_pretrained(root / "init")
    problems = multiply.generate("train", 8, seed=0)
    with open(root / "pc.jsonl", "w") as f:
        for p in problems:
            f.write(json.dumps({"prompt": p.prompt, "completion": multiply.sft_text(p, scratchpad=False)}) + "\n")
    with open(root / "text.jsonl", "w") as f:
        for p in problems:
            f.write(json.dumps({"text": p.prompt + multiply.sft_text(p, scratchpad=True)}) + "\n")
    return root


def config(base, out, **kw):
    settings = dict(model=str(base / "init"), init_from_config=True, data=str(base / "pc.jsonl"), batch_size=4,
                    micro_batch_size=2, steps=40, lr=1e-2, warmup_steps=2, save_every=3, output_dir=str(out))
    settings.update(kw)
    return SFTConfig(**settings)


def test_loss_is_on_completion_tokens_only(tmp_path):
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=12, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                num_attention_heads=2, head_dim=4))
    examples = [Example([1, 2, 3], [4, 5]), Example([6], [7, 8, 9])]
    run = TrainingRun(SFTConfig(output_dir=str(tmp_path), device="cpu"), data_size=2, what="examples", model=model,
                      tokenizer=build_char_tokenizer("0123456789"))
    loss = batch_loss(run, examples, total_tokens=5)
    nll = 0.0
    for e in examples:
        ids = torch.tensor([e.prompt + e.target])
        logp = torch.log_softmax(model(ids)[0], -1)
        nll -= sum(logp[len(e.prompt) + j - 1, t] for j, t in enumerate(e.target))
    assert torch.allclose(loss, nll / 5, atol=1e-6)


def test_sft_learns_and_saves_hf_model_with_tokenizer(base, tmp_path):
    summary = train_sft(config(base, tmp_path / "run", data=str(base / "text.jsonl"), save_every=0), progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert summary["steps"] == 40 and len(rows) == 40
    assert rows[-1]["loss"] < 0.6 * rows[0]["loss"]
    model = from_pretrained(summary["model_dir"])
    tok = Tokenizer.from_pretrained(summary["model_dir"])
    assert tok.encode("12*34=") == build_char_tokenizer(multiply.ALPHABET).encode("12*34=")
    assert model.num_parameters() > 0 and (tmp_path / "run" / "loss.png").exists()


def test_resume_equals_uninterrupted(base, tmp_path, monkeypatch):
    cfg = dict(steps=7, data=str(base / "pc.jsonl"))
    full = train_sft(config(base, tmp_path / "full", **cfg), progress=False)

    real, calls = sft.batch_loss, {"n": 0}

    def dies_at_step_5(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:  # two micro-batches per step: the first of step 5
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sft, "batch_loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train_sft(config(base, tmp_path / "cut", **cfg), progress=False)
    monkeypatch.setattr(sft, "batch_loss", real)
    resumed = train_sft(config(base, tmp_path / "cut", **cfg), progress=False)

    a = load_file(f"{full['model_dir']}/model.safetensors")
    b = load_file(f"{resumed['model_dir']}/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    def losses(run):
        return [json.loads(x)["loss"] for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]

    assert losses("cut") == losses("full") and len(losses("full")) == 7


def test_bad_records_are_reported_by_file_and_line_and_the_rest_are_used(base, tmp_path, caplog):
    tok = build_char_tokenizer(multiply.ALPHABET)
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "12*3"}\n{"prompt": "1*2="}\nnot json\n{"prompt": "2*2=", "completion": "4"}\n')
    with caplog.at_level("WARNING", logger="ponder.sft"):
        examples = read_examples(path, tok, 64)
    assert [tok.decode(e.prompt + e.target[:-1]) for e in examples] == ["12*3", "2*2=4"]
    assert "bad.jsonl:2: expected a string field 'text', 'prompt' and 'completion', or 'messages'" in caplog.text
    assert "bad.jsonl:3: not valid JSON" in caplog.text
    path.write_text('{"prompt": "1*2="}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: no usable example \(2 malformed, first: .*bad.jsonl:2"):
        read_examples(path, tok, 64)
    examples = read_examples(base / "pc.jsonl", tok, 64)
    assert examples[0].target[-1] == tok.eos_token_id
    assert examples[0].prompt == tok.encode(multiply.generate("train", 8, seed=0)[0].prompt)


def test_cli_runs_sft(base, tmp_path, capsys):
    from ponder.cli import main

    cfg = tmp_path / "sft.yaml"
    cfg.write_text(f"model: {base / 'init'}\ninit_from_config: true\ndata: {base / 'pc.jsonl'}\nsteps: 2\n"
                   f"batch_size: 4\n")
    assert main(["train", "sft", str(cfg), f"output_dir={tmp_path / 'out'}", "lr=1e-3"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert main(["train", "sft", str(cfg), "data=/nonexistent.jsonl", f"output_dir={tmp_path / 'bad'}"]) == 2
    assert "nonexistent.jsonl" in capsys.readouterr().err
