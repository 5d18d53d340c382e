"""The training runtime shared by RL and SFT: the traps of re-running an output_dir, degenerate
runs, a full disk during a checkpoint, checkpoint retention, Ctrl-C, and the memory options
(activation checkpointing, LoRA) taken through the configs."""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponder.config import ConfigError, load_config
from ponder.rl import RLConfig, train_rl
from ponder.runtime import checkpoint
from ponder.runtime.lora import LoRAConfig
from ponder.sft import SFTConfig, train_sft
from rl_setup import rl_config  # tests/ is on sys.path under pytest


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model" / "model.safetensors"))


def test_a_rerun_with_other_settings_is_refused_and_the_record_kept(base, tmp_path):
    out = tmp_path / "run"
    train_rl(rl_config(base, out, steps=2), progress=False)
    before = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError) as err:
        train_rl(rl_config(base, out, steps=2, lr=1e-2, max_new_tokens=6), progress=False)
    message = str(err.value)
    assert "lr: 0.03 -> 0.01" in message and "max_new_tokens: 10 -> 6" in message
    assert "output_dir" in message and "allow_config_change=true" in message
    assert (out / "config.yaml").read_text() == before  # what the checkpoint was trained with

    # the same settings resume as before; with the flag the run goes on and the change is recorded
    assert train_rl(rl_config(base, out, steps=2), progress=False)["steps"] == 2
    summary = train_rl(rl_config(base, out, steps=3, lr=1e-2, allow_config_change=True), progress=False)
    assert summary["steps"] == 3
    change = json.loads((out / "config-changes.jsonl").read_text().splitlines()[-1])
    assert change["step"] == 2 and change["changed"]["lr"] == {"from": 0.03, "to": 0.01}
    assert (out / "config.yaml").read_text() == before


def test_a_group_of_one_is_refused():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        RLConfig(group_size=1)


def test_every_group_flat_for_several_steps_is_a_loud_warning(base, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ponder.rl"):
        train_rl(rl_config(base, tmp_path / "run", rewards=["rl_test_rewards:constant"], steps=3, save_every=0),
                 progress=False)
    flat = [r.getMessage() for r in caplog.records if "all equal" in r.getMessage()]
    assert len(flat) == 1 and "steps 1-3" in flat[0] and "ignores the completion" in flat[0]


def test_signal_in_the_rewards_gives_no_flat_warning(base, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ponder.rl"):
        train_rl(rl_config(base, tmp_path / "run", steps=3, save_every=0), progress=False)
    assert not [r for r in caplog.records if "all equal" in r.getMessage()]


def test_a_full_disk_says_so_removes_the_partial_checkpoint_and_keeps_the_last(base, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train_rl(rl_config(base, out, steps=2, save_every=1), progress=False)
    real = checkpoint.dcp.save

    def full_disk(*args, **kwargs):
        real(*args, **kwargs)  # some files written, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint.dcp, "save", full_disk)
    with pytest.raises(OSError, match="no space left on device") as err:
        train_rl(rl_config(base, out, steps=3, save_every=1, allow_config_change=True), progress=False)
    assert "step-000003" in str(err.value)
    roots = out / "checkpoints"
    assert not list(roots.glob(".tmp-*"))  # the partial folder is gone
    assert checkpoint.latest(roots).name == "step-000002"
    monkeypatch.setattr(checkpoint.dcp, "save", real)
    assert train_rl(rl_config(base, out, steps=3, save_every=1, allow_config_change=True),
                    progress=False)["steps"] == 3


def test_retention_keeps_the_newest_and_the_best(base, tmp_path):
    out = tmp_path / "run"
    summary = train_rl(rl_config(base, out, steps=6, save_every=1, save_total_limit=2, keep_best=True,
                                 eval_task="multiply:test", eval_limit=8, eval_every=2), progress=False)
    kept = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    best = (out / "checkpoints" / "BEST").read_text().strip()
    assert kept[-2:] == ["step-000005", "step-000006"] and best in kept and len(kept) <= 3
    evals = dict(summary["eval"])
    best_step = int(best.removeprefix("step-"))
    assert evals[best_step] == max(evals.values())
    assert (out / "best-model" / "model.safetensors").exists()


def test_ctrl_c_says_where_the_run_resumes(base, tmp_path, monkeypatch, caplog):
    from ponder.rl import trainer

    real, calls = trainer.update, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "update", interrupted)
    with caplog.at_level(logging.WARNING, logger="ponder.runtime"), pytest.raises(KeyboardInterrupt):
        train_rl(rl_config(base, tmp_path / "run", steps=4, save_every=2), progress=False)
    said = [r.getMessage() for r in caplog.records if "interrupted" in r.getMessage()]
    assert said and "step-000002" in said[0]


def test_gradient_checkpointing_trains_the_same_weights(base, tmp_path):
    plain = train_rl(rl_config(base, tmp_path / "plain", steps=2, save_every=0), progress=False)
    saved = train_rl(rl_config(base, tmp_path / "ckpt", steps=2, save_every=0, gradient_checkpointing=True),
                     progress=False)
    a, b = weights(Path(plain["output_dir"])), weights(Path(saved["output_dir"]))
    start = load_file(str(base / "base" / "model.safetensors"))
    assert all(torch.allclose(a[n], b[n], atol=1e-6) for n in a)
    assert any(not torch.equal(a[n], start[n]) for n in a)


def test_lora_from_a_yaml_config_trains_only_the_adapter_with_a_kl_to_the_base(base, tmp_path):
    config = tmp_path / "rl.yaml"
    config.write_text(f"model: {base / 'base'}\nrewards: [rl_test_rewards:sevens]\ntask_limit: 40\n"
                      "prompts_per_step: 4\ngroup_size: 4\nmax_new_tokens: 10\nsteps: 2\nlr: 0.05\neval_every: 0\n"
                      f"beta: 0.1\noutput_dir: {tmp_path / 'run'}\nlora: {{r: 4, target_modules: [q_proj, v_proj]}}\n")
    cfg = load_config(RLConfig, config)
    assert cfg.lora == LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])
    summary = train_rl(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["kl"] > 0  # the reference (adapter off) differs from the policy after a step
    merged, start = weights(Path(summary["output_dir"])), load_file(str(base / "base" / "model.safetensors"))
    moved = {n for n in merged if not torch.equal(merged[n], start[n])}
    assert moved and all("q_proj" in n or "v_proj" in n for n in moved)
    assert not (tmp_path / "run" / "reference").exists()  # no second copy of the weights


def test_sft_accepts_the_memory_options(base, tmp_path):
    data = tmp_path / "pc.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}*3=", "completion": f"{3 * a}"}) + "\n" for a in range(10, 30)))
    cfg = SFTConfig(model=str(base / "base"), data=str(data), steps=2, batch_size=4, micro_batch_size=2,
                    output_dir=str(tmp_path / "sft"), gradient_checkpointing=True, loss_chunk_mb=0.001,
                    lora=LoRAConfig(r=2, target_modules=["o_proj"]))
    summary = train_sft(cfg, progress=False)
    assert summary["steps"] == 2 and (tmp_path / "sft" / "model" / "adapter" / "adapter_config.json").exists()


def test_a_checkpoint_of_a_fresh_optimizer_leaves_the_first_step_a_first_step(tmp_path):
    """Saving before any update (the RL trainer's step-0 checkpoint) builds the optimizer's state
    through DCP; the first real update must still be AdamW's first (lr x sign(grad))."""
    from ponder.runtime.training import adamw

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = adamw(model.parameters(), 0.1, weight_decay=0.0)
    checkpoint.save(tmp_path, 0, model, optimizer, {})
    before = model.weight.detach().clone()
    model(torch.randn(5, 4)).pow(2).sum().backward()
    optimizer.step()
    assert torch.allclose(model.weight - before, -0.1 * model.weight.grad.sign(), atol=1e-6)


def test_the_engine_samples_from_the_weights_an_optimizer_step_wrote():
    """The fused AdamW kernel writes weights in place without bumping their versions; the engine
    must not keep sampling from its copies of the old ones."""
    from ponder.engine import Engine, SamplingParams
    from ponder.models import Decoder, ModelConfig
    from ponder.runtime.training import adamw
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(multiply.ALPHABET)
    torch.manual_seed(0)
    model = Decoder(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8))
    engine = Engine(model, tok)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    prompt = tok.encode("12*34=")
    first = engine.generate([prompt], 1, params)[0][0]
    optimizer = adamw(model.parameters(), 0.05)
    model(torch.tensor([prompt + first.token_ids])).logsumexp(-1).sum().backward()  # any loss: every weight moves
    optimizer.step()
    after = engine.generate([prompt], 1, params)[0][0]
    with torch.no_grad():  # the new weights' own log-probs of what was decoded
        logprobs = torch.log_softmax(model(torch.tensor([prompt + after.token_ids]))[0, len(prompt) - 1:-1], -1)
    expected = logprobs.gather(1, torch.tensor(after.token_ids)[:, None]).squeeze(1)
    assert torch.allclose(torch.tensor(after.logprobs), expected, atol=1e-5)
    assert after.logprobs != first.logprobs
