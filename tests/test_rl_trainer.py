"""The RL loop on a tiny model: learning, exact resume after kill -9, rollback, dynamic sampling,
overlong handling, the CLI. Each run is a few steps of a ~3k-parameter Decoder on CPU."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ponder.rl import RLConfig, train_rl
from ponder.rl import losses as rl_losses
from ponder.rl.trainer import TIMING_KEYS
from ponder.runtime.lora import LoRAConfig
from ponder.runtime.training import ProblemStream, TrainingRun, lr_at
from rl_setup import rl_config as config  # tests/ is on sys.path under pytest

REPO = Path(__file__).resolve().parents[1]

def records(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in rows]


def test_rl_raises_the_reward(base, tmp_path):
    summary = train_rl(config(base, tmp_path / "run", steps=12, save_every=0), progress=False)
    rows = [r for r in records(tmp_path / "run") if "event" not in r]
    early = sum(r["reward/sevens/mean"] for r in rows[:3]) / 3
    late = sum(r["reward/sevens/mean"] for r in rows[-3:]) / 3
    assert late > early + 0.1, (early, late)
    assert summary["steps"] == 12
    # The final model loads back in HF layout, and the plots exist.
    from ponder.models import from_pretrained
    assert from_pretrained(summary["model_dir"]).num_parameters() > 0
    assert (tmp_path / "run" / "reward.png").stat().st_size > 0
    for key in ("reward/sevens/std", "accuracy", "zero_variance_frac", "truncated_frac", "completion_len",
                "entropy", "kl", "clip_low", "clip_high", "grad_norm", "lr", "tokens_per_s", "time/generate",
                "time/score", "time/train"):
        assert key in rows[-1], key


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}], ids=["full", "lora"])
def test_resume_after_kill_equals_uninterrupted_run(base, tmp_path, lora):
    steps = 6
    full = train_rl(config(base, tmp_path / "full", steps=steps, lora=LoRAConfig(**lora) if lora else None),
                    progress=False)

    out = tmp_path / "killed"
    cfg_path = tmp_path / "run.yaml"
    cfg_path.write_text(f"model: {base / 'base'}\ntask: multiply:train\ntask_limit: 40\n"
                        f"rewards: [rl_test_rewards:sevens]\nprompts_per_step: 4\ngroup_size: 4\n"
                        f"max_new_tokens: 10\nlr: 3.0e-2\neval_every: 0\nsave_every: 2\nmicro_batch_size: 8\n"
                        f"seed: 1\nsteps: {steps}\n" + (f"lora: {json.dumps(lora)}\n" if lora else ""))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(base), str(REPO / "src")])}
    cmd = [sys.executable, "-m", "ponder.cli", "train", "rl", str(cfg_path), f"output_dir={out}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = out / "checkpoints" / "LATEST"
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        # Any checkpoint before the last will do (a loaded machine may poll past step 2's).
        if pointer.exists() and pointer.read_text().strip() in ("step-000002", "step-000004"):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (out / "model").exists()

    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ours = load_file(out / "model" / "model.safetensors")
    theirs = load_file(Path(full["model_dir"]) / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name
    assert comparable(records(out)) == comparable(records(tmp_path / "full"))
    assert [r["step"] for r in records(out)] == list(range(1, steps + 1))
    if lora:  # the adapter trained (the merged model moved) and came out in PEFT's layout too
        base_weights = load_file(base / "base" / "model.safetensors")
        assert any(not torch.equal(ours[n], base_weights[n]) for n in ours)
        ours = load_file(out / "model" / "adapter" / "adapter_model.safetensors")
        theirs = load_file(Path(full["model_dir"]) / "adapter" / "adapter_model.safetensors")
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[n], theirs[n]) for n in ours)
        # the checkpoint holds what trains (the adapter and its optimizer state), not the frozen base
        from torch.distributed.checkpoint import FileSystemReader

        saved = FileSystemReader(str(out / "checkpoints" / "step-000006" / "weights")).read_metadata()
        weights = [k for k in saved.state_dict_metadata if k.startswith("model.")]
        assert weights and all("lora_" in k for k in weights), weights[:3]


def test_nan_loss_rolls_back_with_lower_lr(base, tmp_path, monkeypatch, caplog):
    real = rl_losses.policy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:  # step 3's first micro-batch (2 micro-batches per step)
            loss = loss * float("nan")
        return loss, stats

    monkeypatch.setattr(rl_losses, "policy_loss", poisoned)
    with caplog.at_level(logging.WARNING, logger="ponder.rl"):
        summary = train_rl(config(base, tmp_path / "run", steps=5), progress=False)
    rows = records(tmp_path / "run")
    events = [r for r in rows if r.get("event") == "rollback"]
    assert len(events) == 1 and events[0]["step"] == 3 and events[0]["to_step"] == 2
    assert "non-finite loss" in events[0]["reason"] and "rolled back" in caplog.text
    steps = [r for r in rows if "event" not in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5]
    assert steps[1]["lr"] == pytest.approx(3e-2) and steps[2]["lr"] == pytest.approx(1.5e-2)
    assert summary["rollbacks"] == 1
    from ponder.models import from_pretrained
    assert all(torch.isfinite(p).all() for p in from_pretrained(summary["model_dir"]).parameters())


def test_entropy_blowup_rolls_back(base, tmp_path, monkeypatch):
    real = TrainingRun.logprobs
    calls = {"n": 0}

    def hot(*args, **kwargs):
        logp, ent = real(*args, **kwargs)
        if ent is not None:
            calls["n"] += 1
            if calls["n"] in (9, 10):  # step 5's two micro-batches: entropy x10
                ent = ent * 10
        return logp, ent

    monkeypatch.setattr(TrainingRun, "logprobs", hot)
    summary = train_rl(config(base, tmp_path / "run", steps=5, save_every=4), progress=False)
    events = [r for r in records(tmp_path / "run") if r.get("event") == "rollback"]
    assert [(e["step"], e["to_step"]) for e in events] == [(5, 4)] and "entropy" in events[0]["reason"]
    assert summary["steps"] == 5 and summary["rollbacks"] == 1


def test_collapse_without_rollback_is_an_error(base, tmp_path, monkeypatch):
    real = rl_losses.policy_loss
    monkeypatch.setattr(rl_losses, "policy_loss", lambda *a, **k: (real(*a, **k)[0] * float("nan"), {}))
    with pytest.raises(RuntimeError, match="collapsed at step 1"):
        train_rl(config(base, tmp_path / "run", rollback=False), progress=False)


def test_dynamic_sampling_drops_flat_groups(base, tmp_path):
    cfg = config(base, tmp_path / "run", steps=2, rewards=["rl_test_rewards:flat_for_odd"], dynamic_sampling=True,
                 max_sampling_tries=4)
    train_rl(cfg, progress=False)
    rows = records(tmp_path / "run")
    assert all(0 < r["zero_variance_frac"] < 1 for r in rows)
    assert any(r["sampling_tries"] > 1 for r in rows)
    assert all(r["groups"] <= 4 for r in rows)
    # Without it the flat groups stay in the batch, and the fraction is still logged.
    train_rl(config(base, tmp_path / "plain", steps=2, rewards=["rl_test_rewards:flat_for_odd"]), progress=False)
    plain = records(tmp_path / "plain")
    assert all(r["groups"] == 4 and r["sampling_tries"] == 1 for r in plain)
    assert all(r["zero_variance_frac"] > 0 for r in plain)


def test_truncated_completions_masked_and_warned(base, tmp_path, caplog):
    # Two new tokens: a random model almost never ends that early, so nearly all are truncated.
    with caplog.at_level(logging.WARNING, logger="ponder.rl"):
        train_rl(config(base, tmp_path / "run", steps=1, max_new_tokens=2, overlong="mask"), progress=False)
    row = records(tmp_path / "run")[0]
    assert row["truncated_frac"] > 0.5 and "hit max_new_tokens=2" in caplog.text
    finished = round((1 - row["truncated_frac"]) * 16)
    assert row["loss_tokens"] <= 2 * finished  # only completions that stopped carry loss tokens


def test_every_option_family_runs(base, tmp_path):
    """mu=2, GSPO ratios, KL to the reference, batch std, GDPO over two rewards, soft overlong,
    grpo aggregation, bf16 autocast, cosine schedule with warm-up: one short run, sane metrics."""
    cfg = config(base, tmp_path / "run", steps=2, mu=2, importance_sampling="sequence", beta=0.05,
                 advantage="batch", reward_aggregation="gdpo", rewards=["rl_test_rewards:sevens", "correct"],
                 reward_weights=[1.0, 2.0], overlong="soft", overlong_buffer=4, loss_type="grpo",
                 dtype="bfloat16", schedule="cosine", warmup_steps=1)
    train_rl(cfg, progress=False)
    rows = records(tmp_path / "run")
    assert rows[-1]["kl"] > 0  # the policy moved away from the reference after step 1
    assert {"reward/overlong/mean", "reward/correct/mean"} <= set(rows[0])
    assert rows[0]["lr"] == pytest.approx(3e-2) and rows[1]["lr"] < 3e-2


def test_lr_schedule_and_data_stream():
    cfg = RLConfig(lr=1.0, steps=10, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1)
    assert [round(lr_at(cfg, s, cfg.steps), 4) for s in (1, 2, 6, 10)] == [0.5, 1.0, 0.55, 0.1]
    assert lr_at(cfg, 10, cfg.steps, scale=0.5) == pytest.approx(0.05)
    stream = ProblemStream(5, seed=3)
    first = stream.take(7)
    assert sorted(first[:5]) == list(range(5))  # each epoch visits every problem once
    again = ProblemStream(5, seed=3)
    again.take(4)
    resumed = ProblemStream(**again.state())
    assert resumed.take(3) == first[4:]


def test_cli_reports_bad_config(tmp_path, capsys):
    from ponder.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("model: m\nlearning_rate: 1\n")
    assert main(["train", "rl", str(path)]) == 2
    assert f"{path}: unknown key 'learning_rate'" in capsys.readouterr().err
    assert main(["train", "rl", str(path), "learning_rate=3"]) == 2


def test_the_decode_steps_copy_of_the_weights_is_freed_before_each_update(base, tmp_path, monkeypatch):
    """The engine's fast decode step holds a second copy of the weights. The update changes the
    weights, so that copy is stale from then on: it is freed before the update, where memory
    peaks, not kept beside it (it was built for sampling, and is again for the next step)."""
    import gc

    from ponder.models.decode import DecodeStep
    from ponder.rl import trainer

    def copies() -> int:
        gc.collect()
        return sum(isinstance(o, DecodeStep) for o in gc.get_objects())

    sampled, updated = [], []
    real_collect, real_update = trainer.collect, trainer.update

    def collect(*args, **kwargs):
        out = real_collect(*args, **kwargs)
        sampled.append(copies())
        return out

    def update(*args, **kwargs):
        updated.append(copies())
        return real_update(*args, **kwargs)

    monkeypatch.setattr(trainer, "collect", collect)
    monkeypatch.setattr(trainer, "update", update)
    train_rl(config(base, tmp_path / "run", steps=2, save_every=0), progress=False)
    assert sampled == [1, 1]  # sampling used the fast step (so freeing it is something)
    assert updated == [0, 0]
