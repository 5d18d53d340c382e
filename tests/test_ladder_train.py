"""The ladder's loops end to end on the embedded demo base model at a tiny budget: what each
keeps, samples and holds in memory, the `ponder train` subcommands, and `ponder ladder --json`."""

import json

import pytest
import torch

from ponder.demo import base_model_dir, problem_sets
from ponder.ladder.common import Sample, ScalarModel
from ponder.ladder.dpo import DPOConfig, train_dpo
from ponder.ladder.ppo import PPOConfig, train_ppo
from ponder.ladder.reward_model import RewardModelConfig, train_reward_model
from ponder.ladder.rft import RFTConfig, keep_verified, train_rft
from ponder.models import from_pretrained

TINY = dict(prompts_per_round=6, group_size=4, micro_batch_size=16, eval_every=0)


@pytest.fixture(scope="module")
def data():
    _, problems, held_out = problem_sets()
    return {"problems": problems[:200], "eval_problems": held_out[:6], "progress": False}


def base():
    return str(base_model_dir())


def moved(model_dir) -> bool:
    start, end = from_pretrained(base()).state_dict(), from_pretrained(model_dir).state_dict()
    return any(not torch.equal(start[k], end[k]) for k in start)


def test_keep_verified_keeps_distinct_right_completions_up_to_the_cap():
    def s(tokens, reward):
        return Sample([9], tokens, "", reward)

    groups = [[s([1], 1.0), s([1], 1.0), s([2], 0.0), s([3], 1.0), s([4], 1.0)], [s([5], 0.0)]]
    assert [e.target for e in keep_verified(groups, 0)] == [[1], [3], [4]]
    assert [e.target for e in keep_verified(groups, 2)] == [[1], [3]]
    assert all(e.prompt == [9] for e in keep_verified(groups, 0))


def test_rft_samples_keeps_and_fine_tunes(tmp_path, data):
    summary = train_rft(RFTConfig(model=base(), output_dir=str(tmp_path), rounds=2, **TINY), **data)
    assert summary["samples"] == 2 * 6 * 4
    assert len(summary["kept"]) == 2 and all(0 < k <= 6 * 4 for k in summary["kept"])
    assert summary["models_in_memory"] == 1 and summary["optimizer_steps"] >= 2
    assert [step for step, _ in summary["eval"]] == [0, 2]
    assert moved(summary["model_dir"])


def test_dpo_offline_samples_once_and_online_every_k_steps(tmp_path, data):
    offline = train_dpo(DPOConfig(model=base(), output_dir=str(tmp_path / "off"), steps=2, pairs_per_step=8, **TINY),
                        **data)
    online = train_dpo(DPOConfig(model=base(), output_dir=str(tmp_path / "on"), steps=3, refresh_every=2,
                                 pairs_per_step=8, **TINY), **data)
    assert (offline["sampling_rounds"], offline["samples"], offline["models_in_memory"]) == (1, 24, 1)
    assert (online["sampling_rounds"], online["samples"], online["models_in_memory"]) == (2, 48, 2)
    assert all(p > 0 for p in offline["pairs"] + online["pairs"])
    assert moved(offline["model_dir"]) and moved(online["model_dir"])


def test_dpo_says_why_when_no_prompt_has_a_pair(tmp_path, tiny_checkpoint, data):
    # A random model never answers a multiplication right: every group is all wrong.
    with pytest.raises(RuntimeError, match="no prompt had both a right and a wrong completion"):
        train_dpo(DPOConfig(model=str(tiny_checkpoint), output_dir=str(tmp_path), steps=1, **TINY), **data)


def test_ppo_with_the_verifier_trains_policy_and_value_model(tmp_path, data):
    summary = train_ppo(PPOConfig(model=base(), output_dir=str(tmp_path), steps=2, minibatch_size=12, kl_coef=0.05,
                                  **TINY), **data)
    assert summary["samples"] == 2 * 24 and summary["models_in_memory"] == 3  # policy, value model, reference
    assert moved(summary["model_dir"])
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["step"] > 0]
    assert all("kl" in r and "value_loss" in r for r in steps)
    assert "reward_gap" not in steps[-1]
    # The value model starts at 0 everywhere (a zero head); with gamma = lam = 1 the return of each
    # token is the completion's reward (less a small KL), so the values move toward the mean reward.
    first, last = steps[0], steps[-1]
    assert first["value_mean"] == 0.0 and 0 < last["accuracy"]
    assert 0 < last["value_mean"] < last["accuracy"]


def test_reward_model_then_ppo_with_it(tmp_path, data):
    settings = {**TINY, "prompts_per_round": 16}  # enough held-out pairs (16) for "better than chance" to mean something
    rm = train_reward_model(RewardModelConfig(model=base(), output_dir=str(tmp_path / "rm"), rounds=2,
                                              held_out=0.25, epochs=3.0, pairs_per_step=8, **settings),
                            problems=data["problems"], progress=False)
    assert rm["samples"] == 2 * 16 * 4 and rm["pairs"] > 0 and rm["held_out_pairs"] >= 10
    assert rm["train_pair_accuracy"] > 0.5  # it fits its training pairs better than a coin
    assert rm["pair_accuracy"] > 0.5  # ... and ranks chosen above rejected on prompts it never saw
    loaded = ScalarModel.load(rm["model_dir"])
    assert "threshold" in loaded.extra

    summary = train_ppo(PPOConfig(model=base(), output_dir=str(tmp_path / "ppo"), steps=1, reward="model",
                                  reward_model=rm["model_dir"], **TINY), **data)
    assert summary["models_in_memory"] == 3  # policy, value model, reward model
    record = [json.loads(x) for x in (tmp_path / "ppo" / "metrics.jsonl").read_text().splitlines()][-1]
    # The learned reward agrees with the verifier on more samples than a coin would.
    assert record["reward_agreement"] > 0.5


def test_scalar_model_reads_only_its_positions():
    """A score at position p depends on tokens up to p only (causal), and not on the padding."""
    model = ScalarModel(from_pretrained(base()))
    torch.nn.init.normal_(model.head.weight)
    ids = torch.tensor([[3, 4, 5, 6, 7], [3, 4, 5, 0, 0]])
    out = model(ids, torch.tensor([[2], [2]]))
    assert torch.allclose(out[0], out[1])


def test_ponder_train_accepts_the_new_methods(tmp_path, capsys):
    from ponder.cli import main

    config = tmp_path / "dpo.yaml"
    config.write_text(f"model: {base()}\ntask: multiply:train\ntask_limit: 40\nsteps: 1\n"
                      f"prompts_per_round: 6\ngroup_size: 4\npairs_per_step: 4\n")
    assert main(["train", "dpo", str(config), f"output_dir={tmp_path / 'out'}"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 24 and (tmp_path / "out" / "model" / "model.safetensors").exists()

    config.write_text(f"model: {base()}\nppo_epoch: 2\n")
    assert main(["train", "ppo", str(config)]) == 2
    err = capsys.readouterr().err
    assert "dpo.yaml" in err and "ppo_epoch" in err


def test_ppo_with_a_reward_model_needs_its_folder():
    with pytest.raises(ValueError, match="reward_model"):
        PPOConfig(reward="model")


def test_ladder_json_last_line(tmp_path, capsys):
    from ponder.cli import main

    assert main(["ladder", "--methods", "rft", "--samples", "512", "--held-out", "4", "--out", str(tmp_path),
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= result["base_accuracy"] <= 1.0
    (r,) = result["rungs"]
    assert r["method"] == "rft" and r["samples"] == 512 and r["models_in_memory"] == 1
    assert 0.0 <= r["accuracy"] <= 1.0 and r["seconds"] > 0 and r["peak_memory_gb"] > 0
    assert (tmp_path / "ladder.png").exists() and "rft" in (tmp_path / "ladder.md").read_text()
    assert main(["ladder", "--methods", "rft,sft", "--out", str(tmp_path)]) == 2


class Crash(Exception):
    pass


def weights_of(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next(iter(sorted(folder.glob("*.safetensors"))))))


RESUMABLE = {
    "rft": lambda out: (train_rft, RFTConfig(model=base(), output_dir=out, rounds=3, save_every=1, **TINY)),
    "dpo-online": lambda out: (train_dpo, DPOConfig(model=base(), output_dir=out, steps=4, refresh_every=3,
                                                    pairs_per_step=8, save_every=1, **TINY)),
    "ppo": lambda out: (train_ppo, PPOConfig(model=base(), output_dir=out, steps=3, minibatch_size=12, kl_coef=0.05,
                                             save_every=1, **TINY)),
    "rm": lambda out: (train_reward_model, RewardModelConfig(model=base(), output_dir=out, rounds=1, epochs=3.0,
                                                             pairs_per_step=2, save_every=1, **TINY)),
}


@pytest.mark.parametrize("method", RESUMABLE)
def test_a_crash_then_a_rerun_ends_as_the_uninterrupted_run(method, tmp_path, data, monkeypatch):
    """Killed after checkpoint 2 (for DPO: inside its first set of pairs, so they must come back
    from the checkpoint), the same command again resumes there and ends where a run without the
    crash ends: same weights, same metrics."""
    from ponder.ladder.common import Run

    def run(out):
        train, cfg = RESUMABLE[method](str(out))
        kwargs = {k: v for k, v in data.items() if method != "rm" or k != "eval_problems"}
        return train(cfg, **kwargs)

    whole = run(tmp_path / "whole")
    saved = Run.save

    def crash_after_two(self, step, *args):
        saved(self, step, *args)
        if step == 2:
            raise Crash

    monkeypatch.setattr(Run, "save", crash_after_two)
    with pytest.raises(Crash):
        run(tmp_path / "cut")
    after = []

    def counting(self, step, *args):
        after.append(step)
        saved(self, step, *args)

    monkeypatch.setattr(Run, "save", counting)
    again = run(tmp_path / "cut")
    assert after[0] == 3  # it resumed after checkpoint 2 rather than starting again

    a, b = weights_of(tmp_path / "whole" / "model"), weights_of(tmp_path / "cut" / "model")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = from_pretrained(base()).state_dict()
    assert any(not torch.equal(a[k], start[k]) for k in start if k in a)  # training moved the weights
    if method == "rm":
        assert again["pair_accuracy"] == whole["pair_accuracy"] and again["samples"] == whole["samples"]
    else:
        assert again["samples"] == whole["samples"] and again["eval"] == whole["eval"]
    lines = [(tmp_path / name / "metrics.jsonl").read_text() for name in ("whole", "cut")]
    assert lines[0] == lines[1]


def test_a_rerun_with_other_settings_is_refused(tmp_path, data):
    from ponder.config import ConfigError

    train_rft(RFTConfig(model=base(), output_dir=str(tmp_path), rounds=1, save_every=1, **TINY), **data)
    record = (tmp_path / "config.yaml").read_text()
    assert "lr: 0.0001" in record
    with pytest.raises(ConfigError, match=r"lr: 0.0001 -> 0.001"):
        train_rft(RFTConfig(model=base(), output_dir=str(tmp_path), rounds=1, save_every=1, lr=1e-3, **TINY), **data)
    # The refused settings never replace the record of what the checkpoint was trained with.
    assert (tmp_path / "config.yaml").read_text() == record
