"""The training runtime as every trainer now shares it (RL, SFT and the ladder's methods): one
behaviour on a non-finite gradient norm, and one optimizer setting."""

import json

import pytest
import torch

from ponder.runtime.training import NonFiniteGradient, TrainConfig, TrainingRun
from rl_setup import make_base, rl_config


class InfiniteGradient(torch.autograd.Function):
    """The identity forward, an infinite gradient backward: a finite loss whose gradient norm is not."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_base(tmp_path_factory.mktemp("runtime"))


def test_a_non_finite_gradient_norm_is_an_error_and_applies_nothing(base, tmp_path):
    run = TrainingRun(TrainConfig(model=str(base / "base"), output_dir=str(tmp_path)), data_size=1, what="rows")
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    ids = torch.tensor([[1, 2, 3, 4]])
    logp, _ = run.logprobs(ids, torch.tensor([1]), 3)
    InfiniteGradient.apply(logp.sum()).backward()
    with pytest.raises(NonFiniteGradient, match="non-finite gradient norm"):
        run.step()
    after = run.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not run.optimizer.state  # AdamW never stepped: no moments moved either
    assert all(p.grad is None for p in run.params)  # and the next step starts from clean gradients


def test_sft_stops_on_a_non_finite_gradient_norm_instead_of_logging_nan(base, tmp_path, monkeypatch):
    import ponder.sft as sft

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{a}*3=", "completion": f"{3 * a}"}) + "\n" for a in range(10, 20)))
    real = sft.batch_loss
    monkeypatch.setattr(sft, "batch_loss", lambda *a, **k: InfiniteGradient.apply(real(*a, **k)))
    with pytest.raises(NonFiniteGradient):
        sft.train_sft(sft.SFTConfig(model=str(base / "base"), data=str(data), steps=2, batch_size=4, micro_batch_size=4,
                                    output_dir=str(tmp_path / "out")), progress=False)
    assert not (tmp_path / "out" / "metrics.jsonl").exists() or "NaN" not in (tmp_path / "out" / "metrics.jsonl").read_text()


def test_rl_treats_a_non_finite_gradient_norm_as_a_collapse(base, tmp_path, monkeypatch):
    """RL's answer to the same error is a rollback (here off, so the run stops and says why)."""
    from ponder.rl import losses
    from ponder.rl.trainer import train_rl

    real = losses.policy_loss

    def infinite(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return InfiniteGradient.apply(loss), stats

    monkeypatch.setattr(losses, "policy_loss", infinite)
    monkeypatch.syspath_prepend(str(base))
    with pytest.raises(RuntimeError, match="collapsed at step 1: non-finite gradient norm") as info:
        train_rl(rl_config(base, tmp_path / "rl", steps=1, rollback=False), progress=False)
    assert isinstance(info.value.__cause__.__cause__, NonFiniteGradient)


def test_a_ladder_method_stops_on_a_non_finite_gradient_norm(tmp_path, monkeypatch):
    import ponder.ladder.rft as rft
    from ponder.demo import base_model_dir, problem_sets

    real = rft.batch_loss
    monkeypatch.setattr(rft, "batch_loss", lambda *a, **k: InfiniteGradient.apply(real(*a, **k)))
    _, problems, _ = problem_sets()
    with pytest.raises(NonFiniteGradient):
        rft.train_rft(rft.RFTConfig(model=str(base_model_dir()), output_dir=str(tmp_path), rounds=1, prompts_per_round=6,
                                    group_size=4, eval_every=0), problems=problems[:50], progress=False)


def test_every_ladder_method_trains_with_the_runs_optimizer_settings(tmp_path, monkeypatch):
    """AdamW's weight decay and betas come from the config for the policy and for models trained
    beside it (PPO's value model), as for RL and SFT: no rung falls back to AdamW's own 0.01."""
    from ponder.demo import base_model_dir, problem_sets
    from ponder.ladder.ppo import PPOConfig, train_ppo

    _, problems, _ = problem_sets()
    seen = []
    real = TrainingRun.adamw

    def recording(self, params, lr=None):
        optimizer = real(self, params, lr)
        seen.append(optimizer.param_groups[0])
        return optimizer

    cfg = PPOConfig(model=str(base_model_dir()), output_dir=str(tmp_path), steps=1, prompts_per_round=2, group_size=2,
                    eval_every=0, weight_decay=0.05, adam_beta2=0.95, value_lr=3e-4)
    monkeypatch.setattr(TrainingRun, "adamw", recording)
    train_ppo(cfg, problems=problems[:20], progress=False)
    assert len(seen) == 2  # the policy's and the value model's
    assert all(g["weight_decay"] == 0.05 and g["betas"] == (0.9, 0.95) for g in seen)
    assert PPOConfig().weight_decay == 0.0  # the default is RL's and SFT's
