"""Data-parallel training through torchrun on CPU (gloo, 2 ranks): DDP and FSDP2 give the weights
one process gives on the same global batch, uneven ranks do not hang, a killed job resumes
exactly, and a run resumes on another number of ranks (2 -> 1, 1 -> 2).

Each run is `torchrun --nproc_per_node 2 -m ponder train rl|sft CONFIG.yaml`, as a user types it,
on a ~3k-parameter model. The one-process reference runs the same command without torchrun.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ponder.models import Decoder, MLAConfig, ModelConfig, MoEConfig
from ponder.models.config import LinearAttentionConfig
from ponder.tasks import multiply
from ponder.tokenizer import build_char_tokenizer

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")

REWARDS = '''
import torch.distributed as dist

def sevens(prompt, completion, problem):
    """Share of 7s in the completion: a tiny random model has variance here from step 1."""
    return completion.count("7") / max(len(completion), 1)

def flat_on_rank0(prompt, completion, problem):
    """Equal rewards for every group rank 0 generates, so dynamic sampling leaves it nothing."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return 0.0 if rank == 0 else float(len(completion))
'''
TIMEOUT = 240


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Tiny tied (Qwen3-0.6B-style) and MoE policies with the multiply tokenizer, an importable
    reward module, and SFT data."""
    root = tmp_path_factory.mktemp("dist")
    tok = build_char_tokenizer(multiply.ALPHABET)
    shapes = {"dense": ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                   head_dim=8, tie_word_embeddings=True),
              "moe": ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                 model_type="qwen3_moe", moe=MoEConfig(num_experts=4, num_experts_per_tok=2,
                                                                       moe_intermediate_size=8)),
              # DeepSeek-V3 routing: the expert-load counts move a routing bias (routing_bias_gamma)
              "deepseek": ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=2, num_attention_heads=2, head_dim=4,
                                      tie_word_embeddings=True, model_type="deepseek_v3",
                                      moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                                    n_shared_experts=1, n_group=2, topk_group=1,
                                                    first_k_dense_replace=1),
                                      mla=MLAConfig(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4,
                                                    v_head_dim=4)),
              # Qwen3.5: a Gated DeltaNet layer beside a gated full-attention one
              "qwen3_5": ModelConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32,
                                     num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                     model_type="qwen3_5_text", layer_types=("linear_attention", "full_attention"),
                                     linear=LinearAttentionConfig(conv_kernel_dim=4, key_head_dim=4, value_head_dim=4,
                                                                  num_key_heads=1, num_value_heads=2))}
    for name, shape in shapes.items():
        torch.manual_seed(0)
        Decoder(shape).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "dist_rewards.py").write_text(REWARDS)
    rows = [{"prompt": f"{a}*{b}=", "completion": f"{a * b}"} for a in range(10, 30) for b in range(3, 6)]
    (root / "sft.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def rl_settings(root, out, **kw):
    return {"model": str(root / "dense"), "task": "multiply:train", "task_limit": 40,
            "rewards": ["dist_rewards:sevens"], "prompts_per_step": 4, "group_size": 4, "max_new_tokens": 8,
            "steps": 3, "lr": 3e-2, "eval_every": 0, "save_every": 1, "micro_batch_size": 3,
            "output_dir": str(out), "seed": 1, **kw}


def kl_rl_settings(root, out, **kw):
    """The dense RL runs compared with `rl_reference`: with a KL term, so its reference (a second,
    frozen model, sharded like the policy under FSDP2) is part of every comparison."""
    return rl_settings(root, out, beta=0.1, **kw)


def sft_settings(root, out, **kw):
    return {"model": str(root / "moe"), "data": str(root / "sft.jsonl"), "steps": 3, "batch_size": 8,
            "micro_batch_size": 3, "lr": 1e-2, "save_every": 1, "output_dir": str(out), "seed": 0, **kw}


def command(kind: str, config: Path, ranks: int) -> list[str]:
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)]
                if ranks > 1 else [sys.executable])
    return launcher + ["-m", "ponder", "train", kind, str(config)]


def env(root) -> dict[str, str]:
    path = [str(root), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p), "OMP_NUM_THREADS": "1"}


def failure(stderr: str) -> str:
    """What a failed job said: every line that names an error (a rank that aborts first is the
    cause, and its lines would scroll out of a tail full of the others' teardown), then the tail."""
    errors = [line for line in stderr.splitlines() if "Error" in line or "terminate" in line or "Abort" in line]
    return "\n".join(errors[:40]) + "\n--- tail ---\n" + stderr[-2000:]


def train(root, kind: str, settings: dict, ranks: int) -> Path:
    """Run `[torchrun --nproc_per_node N] -m ponder train KIND CONFIG.yaml` to the end."""
    out = Path(settings["output_dir"])
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    job = subprocess.Popen(command(kind, config, ranks), env=env(root), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = job.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)  # torchrun and every rank it started
        job.communicate()
        raise
    assert job.returncode == 0, failure(stderr)
    return out


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model" / "model.safetensors"))


def assert_same_weights(a: dict, b: dict, initial: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=0), name
    # ... and training moved them, so the equality says something
    assert max((a[n] - initial[n]).abs().max().item() for n in a) > 1e-3


def initial(root, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(root / name / "model.safetensors"))


@pytest.fixture(scope="module")
def rl_reference(root):
    """The one-process run every RL comparison is against (every checkpoint kept)."""
    return train(root, "rl", kl_rl_settings(root, root / "rl-one", save_total_limit=0), ranks=1)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_rl_with_a_chunked_loss_head_on_two_ranks_equals_one_process(root, rl_reference, parallel):
    """Two ranks end with one process's weights and metrics, with the loss head in chunks of 3
    positions on the ranks (its written-out backward, the tied weight's gradient in one buffer,
    through DDP's hooks or FSDP2's unsharded parameter) against the one process's head in one
    piece (this vocabulary fits one chunk at the default size). The one-piece head on two ranks
    is every other test here."""
    chunk_mb = 3 * 4 * build_char_tokenizer(multiply.ALPHABET).vocab_size / 2**20  # 3 positions of fp32 logits
    settings = kl_rl_settings(root, root / f"rl-{parallel}", parallel=parallel, loss_chunk_mb=chunk_mb)
    out = train(root, "rl", settings, ranks=2)
    assert_same_weights(weights(out), weights(rl_reference), initial(root, "dense"))
    assert_same_records(out, rl_reference, ("reward/total/mean", "completion_len", "loss_tokens", "loss", "grad_norm",
                                            "kl"))


QWEN3_5_RL = dict(steps=2)


@pytest.fixture(scope="module")
def qwen3_5_reference(root):
    return train(root, "rl", rl_settings(root, root / "qwen3_5-one", model=str(root / "qwen3_5"), **QWEN3_5_RL),
                 ranks=1)


def test_rl_of_a_qwen3_5_model_on_two_fsdp_ranks_equals_one_process(root, qwen3_5_reference):
    """The linear-attention hybrid (its conv and recurrent state in generation, the chunked delta
    rule in training) on two FSDP2 ranks (each layer sharded; DDP wraps any model the same way):
    the weights and metrics of one process."""
    parallel = "fsdp"
    one = qwen3_5_reference
    out = train(root, "rl", rl_settings(root, root / f"qwen3_5-{parallel}", model=str(root / "qwen3_5"),
                                        parallel=parallel, **QWEN3_5_RL), ranks=2)
    assert_same_weights(weights(out), weights(one), initial(root, "qwen3_5"))
    assert_same_records(out, one, ("reward/total/mean", "completion_len", "loss_tokens", "loss", "grad_norm"))


def assert_same_records(out: Path, reference: Path, keys, rel: float = 1e-5) -> None:
    """The same metrics step by step. Rewards and lengths show the same completions were drawn;
    the gradient norm shows the ranks' gradients were averaged, not summed: Adam's step barely
    changes when every gradient doubles, so equal weights alone would not show it."""
    ours = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    theirs = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in ours] == [r["step"] for r in theirs]
    for a, b in zip(ours, theirs):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-7), (key, a["step"])


@pytest.fixture(scope="module")
def sft_reference(root):
    return train(root, "sft", sft_settings(root, root / "sft-one"), ranks=1)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_sft_of_a_moe_model_on_two_ranks_equals_one_process(root, sft_reference, parallel):
    one = sft_reference
    two = train(root, "sft", sft_settings(root, root / f"sft-{parallel}", parallel=parallel), ranks=2)
    assert_same_weights(weights(two), weights(one), initial(root, "moe"))
    assert_same_records(two, one, ("loss", "grad_norm"))


def test_a_rank_whose_groups_are_all_filtered_does_not_hang(root):
    settings = rl_settings(root, root / "rl-uneven", rewards=["dist_rewards:flat_on_rank0"], dynamic_sampling=True,
                           max_sampling_tries=1, steps=2, parallel="ddp")
    out = train(root, "rl", settings, ranks=2)  # a hang would hit the timeout
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps] == [1, 2]
    # rank 0 kept none of its two groups each step; rank 1 kept its groups with signal, so the
    # ranks ran different numbers of micro-batches
    assert all(r["zero_variance_frac"] >= 0.5 and r["groups"] <= 2 for r in steps)
    assert sum(r["groups"] for r in steps) >= 1
    assert max((weights(out)[n] - initial(root, "dense")[n]).abs().max().item() for n in weights(out)) > 0


def kill_after_checkpoint(root, settings: dict, ranks: int, step: int) -> Path:
    """Start the job and kill -9 every process of it once checkpoint `step` is complete."""
    out = Path(settings["output_dir"])
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    job = subprocess.Popen(command("rl", config, ranks), env=env(root), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    pointer = out / "checkpoints" / "LATEST"
    deadline = time.time() + TIMEOUT
    while not (pointer.exists() and pointer.read_text().strip() == f"step-{step:06d}"):
        assert job.poll() is None and time.time() < deadline, "the job ended before the checkpoint"
        time.sleep(0.02)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    return out


def test_kill_9_of_the_whole_job_then_rerun_ends_as_if_uninterrupted(root, rl_reference):
    settings = kl_rl_settings(root, root / "rl-killed", parallel="ddp")
    kill_after_checkpoint(root, settings, ranks=2, step=1)
    assert not (root / "rl-killed" / "model").exists()
    out = train(root, "rl", settings, ranks=2)  # the same command again
    assert_same_weights(weights(out), weights(rl_reference), initial(root, "dense"))


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_ranks_continues_the_run(root, rl_reference, before, after):
    """A run checkpointed at step 2 on `before` ranks finishes step 3 on `after` ranks."""
    if before == 2:
        saved = train(root, "rl", kl_rl_settings(root, root / "rl-two-of-3", steps=2, parallel="fsdp",
                                              save_total_limit=0), ranks=2)
    else:
        saved = rl_reference
    out = root / f"rl-{before}-to-{after}"
    shutil.copytree(saved / "checkpoints" / "step-000002", out / "checkpoints" / "step-000002")
    (out / "checkpoints" / "LATEST").write_text("step-000002")
    shutil.copy(saved / "config.yaml", out / "config.yaml")
    settings = kl_rl_settings(root, out, parallel="fsdp", save_total_limit=0)
    if before == 2:  # the saved run was told to stop at 2 steps: it continues to 3 by choice
        settings["allow_config_change"] = True
    train(root, "rl", settings, ranks=after)
    assert_same_weights(weights(out), weights(rl_reference), initial(root, "dense"))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in history] == [1, 2, 3]  # the record of steps 1-2 came along


@pytest.fixture(scope="module")
def lora_reference(root):
    return train(root, "rl", lora_settings(root, root / "lora-one"), ranks=1)


def lora_settings(root, out, **kw):
    """LoRA on two projections, with a KL term whose reference is the model with its adapter off."""
    return rl_settings(root, out, lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}, beta=0.1, **kw)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_lora_on_two_ranks_equals_one_process(root, lora_reference, parallel):
    out = train(root, "rl", lora_settings(root, root / f"lora-{parallel}", parallel=parallel), ranks=2)
    assert_same_weights(weights(out), weights(lora_reference), initial(root, "dense"))
    assert_same_records(out, lora_reference, ("reward/total/mean", "loss", "grad_norm", "kl"))
    adapter = out / "model" / "adapter" / "adapter_model.safetensors"
    theirs = load_file(str(lora_reference / "model" / "adapter" / "adapter_model.safetensors"))
    ours = load_file(str(adapter))
    assert ours.keys() == theirs.keys() and all(torch.allclose(ours[n], theirs[n], atol=1e-5) for n in ours)


def test_kl_reference_is_sharded_under_fsdp_and_gives_the_kl_of_one_process(root, rl_reference):
    """Without LoRA the KL term's reference is a second model: under FSDP2 each rank holds a shard
    of it (as of the policy), not the whole model; the KL values are one process's (compared in
    the FSDP2 run above, with the rest of its records), and they are not all zero."""
    assert any(json.loads(line).get("kl", 0) > 0 for line in (rl_reference / "metrics.jsonl").read_text().splitlines())
    check = root / "check_reference.py"
    check.write_text(REFERENCE_SHARDS.format(model=root / "dense", out=root / "kl-shards"))
    job = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(check)], env=env(root), capture_output=True, text=True, timeout=TIMEOUT)
    assert job.returncode == 0, failure(job.stderr)
    held = [json.loads(path.read_text()) for path in sorted(root.glob("kl-shards-rank-*.json"))]
    assert len(held) == 2 and all(0 < h["local"] < h["whole"] for h in held), held


REFERENCE_SHARDS = """
import json, os
from ponder.models import from_pretrained
from ponder.rl.config import RLConfig
from ponder.runtime.training import TrainingRun

cfg = RLConfig(model="{model}", parallel="fsdp", output_dir="{out}", beta=0.1)
run = TrainingRun(cfg, data_size=1, what="problems")
reference = run.frozen(from_pretrained("{model}"))
local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in reference.parameters())
whole = sum(p.numel() for p in from_pretrained("{model}").parameters())
with open("{out}-rank-" + os.environ["RANK"] + ".json", "w") as f:
    json.dump({{"local": local, "whole": whole}}, f)
"""


def moe_settings(root, out, **kw):
    """A DeepSeek-V3 MoE policy whose routing bias moves with the expert load, evaluated on
    held-out problems every step (forwards that must not count)."""
    return rl_settings(root, out, model=str(root / "deepseek"), routing_bias_gamma=0.001, seed=0, eval_task="multiply:test",
                       eval_limit=4, eval_every=1, steps=2, **kw)


def test_moe_routing_bias_on_two_fsdp_ranks_and_after_a_resume_equals_one_process(root):
    """The expert load that moves the routing bias counts the policy's training forwards only:
    not FSDP's set-up forward, not generation or held-out evaluation. So two FSDP ranks end
    with one process's bias and weights, and so does a run resumed from its step-1 checkpoint
    (whose evaluation after step 1 is not redone)."""
    one = train(root, "rl", moe_settings(root, root / "moe-one", save_total_limit=0), ranks=1)
    start = initial(root, "deepseek")
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert (weights(one)[bias] - start[bias]).abs().max() > 0  # the bias moved
    two = train(root, "rl", moe_settings(root, root / "moe-fsdp", parallel="fsdp"), ranks=2)
    assert_same_weights(weights(two), weights(one), start)
    assert_same_steps(two, one, ("router/cv_mean", "router/max_share", "loss", "eval/accuracy"))
    resumed = root / "moe-resumed"
    shutil.copytree(one / "checkpoints" / "step-000001", resumed / "checkpoints" / "step-000001")
    (resumed / "checkpoints" / "LATEST").write_text("step-000001")
    train(root, "rl", moe_settings(root, resumed, save_total_limit=0), ranks=1)
    assert_same_weights(weights(resumed), weights(one), start)
    assert_same_steps(resumed, one, ("router/cv_mean", "router/max_share", "loss", "eval/accuracy"))


def assert_same_steps(out: Path, reference: Path, keys) -> None:
    """The training steps' records (not the step-0 evaluation) agree on `keys`."""
    ours, theirs = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
                    for d in (out, reference))
    ours, theirs = ([r for r in records if "loss" in r] for records in (ours, theirs))
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] == [1, 2]
    for a, b in zip(ours, theirs):
        for key in keys:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (key, a["step"])


# --- the ladder's methods on the same runtime ------------------------------------------------------

def ladder_settings(method: str, out: Path, **kw) -> dict:
    """DPO (online: its reference is a frozen copy) or PPO (a value model beside the policy, a KL
    reference) on the demo's base model, which gets some multiplications right: pairs and
    rewards to learn from."""
    from ponder.demo import base_model_dir

    settings = {"model": str(base_model_dir()), "task": "multiply:train", "task_limit": 40, "prompts_per_round": 6,
                "group_size": 4, "max_new_tokens": 24, "micro_batch_size": 3, "eval_every": 0, "save_every": 1,
                "output_dir": str(out), "seed": 0, "lr": 1e-3}
    if method == "dpo":
        settings.update(steps=2, pairs_per_step=8, refresh_every=1)
    else:
        settings.update(steps=2, minibatch_size=12, kl_coef=0.05, value_lr=1e-3)
    return {**settings, **kw}


@pytest.fixture(scope="module")
def ladder_reference(root):
    """One-process runs of each method, the runs on two ranks are compared with."""
    return {method: train(root, method, ladder_settings(method, root / f"{method}-one"), ranks=1)
            for method in ("dpo", "ppo")}


@pytest.mark.parametrize("method,parallel", [("dpo", "ddp"), ("ppo", "fsdp")])
def test_ladder_method_on_two_ranks_equals_one_process(root, ladder_reference, method, parallel):
    """DPO on DDP and PPO on FSDP2 here; the test below runs DPO on FSDP2 (with LoRA) and PPO on
    DDP (with activation checkpointing), so each method runs under both."""
    from ponder.demo import base_model_dir

    out = train(root, method, ladder_settings(method, root / f"{method}-{parallel}", parallel=parallel), ranks=2)
    one = ladder_reference[method]
    assert_same_weights(weights(out), weights(one), load_file(str(base_model_dir() / "model.safetensors")))
    keys = ("loss", "grad_norm", "accuracy", "new_pairs") if method == "dpo" else ("policy_loss", "value_loss", "grad_norm",
                                                                            "kl", "accuracy")
    # The demo's model is ~0.8M parameters: summation order moves a second step's losses by ~1e-5.
    assert_same_records(out, one, keys, rel=1e-4)


def test_ladder_with_lora_and_activation_checkpointing_on_two_ranks(root, ladder_reference):
    """DPO training LoRA adapters (its reference: the model with the adapter off) on two FSDP2
    ranks ends as in one process; PPO with activation checkpointing on two DDP ranks ends as
    the one-process run without it (recomputing activations changes nothing)."""
    from ponder.demo import base_model_dir

    start = load_file(str(base_model_dir() / "model.safetensors"))
    lora = {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    one = train(root, "dpo", ladder_settings("dpo", root / "dpo-lora-one", lora=lora), ranks=1)
    two = train(root, "dpo", ladder_settings("dpo", root / "dpo-lora-fsdp", lora=lora, parallel="fsdp"), ranks=2)
    assert_same_weights(weights(two), weights(one), start)
    assert_same_records(two, one, ("loss", "grad_norm", "accuracy"), rel=1e-4)
    assert (two / "model" / "adapter" / "adapter_model.safetensors").exists()
    ppo = train(root, "ppo", ladder_settings("ppo", root / "ppo-ckpt-ddp", gradient_checkpointing=True,
                                             parallel="ddp"), ranks=2)
    assert_same_weights(weights(ppo), weights(ladder_reference["ppo"]), start)
    assert_same_records(ppo, ladder_reference["ppo"], ("policy_loss", "value_loss", "grad_norm"), rel=1e-4)
