"""The CUDA path: the same engine, loss head and training step on a GPU as on the CPU.

Skipped where torch sees no GPU (`make test` never needs one); `scripts/gpu_check.sh` runs it
on a machine that has one. Each test compares the GPU with the CPU reference or with the plain
computation on the GPU, so a device-specific mistake (a tensor left on the CPU, a kernel path
that only the CPU takes) shows as a failure rather than a crash-free wrong number.
"""

from __future__ import annotations

import json

import pytest
import torch

from ponder.engine import Engine, SamplingParams
from ponder.models import from_pretrained, token_logprobs
from ponder.tokenizer import Tokenizer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def demo_base():
    from ponder.demo import base_model_dir

    return base_model_dir()


def test_greedy_decoding_on_the_gpu_equals_the_cpu(demo_base):
    tok = Tokenizer.from_pretrained(demo_base)
    prompts = [f"{a}*{b}=" for a, b in ((12, 34), (7, 89), (123, 4), (56, 78), (9, 9), (345, 67))]
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    out = {}
    for device in ("cpu", "cuda"):
        engine = Engine(from_pretrained(demo_base, device=device), tok)
        out[device] = [c[0] for c in engine.generate(prompts, 1, params)]
    assert [c.token_ids for c in out["cuda"]] == [c.token_ids for c in out["cpu"]]
    for gpu, cpu in zip(out["cuda"], out["cpu"]):
        assert torch.allclose(torch.tensor(gpu.logprobs), torch.tensor(cpu.logprobs), atol=1e-3)
    assert len({tuple(c.token_ids) for c in out["cuda"]}) > 1  # the prompts really produced different text


def test_sampled_logprobs_on_the_gpu_are_the_models_own(demo_base):
    """What the engine reports for sampled tokens equals a teacher-forced forward on the GPU."""
    tok = Tokenizer.from_pretrained(demo_base)
    model = from_pretrained(demo_base, device="cuda")
    prompt = tok.encode("23*45=")
    samples = Engine(model, tok).generate([prompt], 6, SamplingParams(max_new_tokens=16, temperature=1.0, seed=3))[0]
    assert len({tuple(c.token_ids) for c in samples}) > 1
    for c in samples:
        ids = torch.tensor([prompt + list(c.token_ids)], device="cuda")
        with torch.no_grad():
            lp, _ = token_logprobs(model, ids, torch.tensor([len(prompt)], device="cuda"), len(c.token_ids))
        assert torch.allclose(lp[0].cpu(), torch.tensor(c.logprobs), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_head_on_the_gpu_equals_one_chunk(demo_base, dtype):
    model = from_pretrained(demo_base, device="cuda")
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (4, 40), device="cuda")
    starts = torch.tensor([5, 9, 3, 12], device="cuda")
    results = []
    for chunk in (0, 7):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            lp, ent = token_logprobs(model, ids, starts, 24, 0.8, with_entropy=True, chunk_tokens=chunk)
        (lp.sum() + 0.1 * ent.sum()).backward()
        results.append((lp.detach(), [p.grad.clone() for p in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (lp0, g0), (lp1, g1) = results
    # bf16 matmuls of other shapes round differently: compare by relative norm at bf16's precision.
    tolerance = 1e-5 if dtype == torch.float32 else 1e-2
    assert lp0.dtype == torch.float32 and lp0.abs().sum() > 0
    assert (lp0 - lp1).norm() <= tolerance * lp1.norm()
    for a, b in zip(g0, g1):
        assert a.abs().sum() > 0 and (a - b).norm() <= tolerance * b.norm()


@pytest.mark.parametrize("options", [dict(dtype="bfloat16", gradient_checkpointing=True), dict(lora_r=4)],
                         ids=["bf16_checkpointing", "lora"])
def test_rl_training_runs_and_resumes_on_the_gpu(base, tmp_path, options):
    from rl_setup import rl_config

    from ponder.rl import train_rl
    from ponder.runtime.lora import LoRAConfig

    lora = LoRAConfig(r=options.pop("lora_r"), target_modules=["q_proj", "v_proj"]) if "lora_r" in options else None
    cfg = rl_config(base, tmp_path / "run", device="cuda", lora=lora, **options)
    train_rl(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "event" not in r]
    assert len(steps) == cfg.steps and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    assert any(r["grad_norm"] > 0 for r in steps)
    # A second run with more steps continues from the last checkpoint, on the GPU.
    train_rl(rl_config(base, tmp_path / "run", device="cuda", lora=lora, steps=cfg.steps + 2,
                       allow_config_change=True, **options))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "event" not in r][-2:] == [cfg.steps + 1, cfg.steps + 2]


def rl_step(base, out, device: str, rollout_of):
    """One RL update (rl.trainer.update) on `device` of the batch `rollout_of(run)` returns:
    its metrics and the weights after the step, on the CPU."""
    from rl_setup import rl_config

    from ponder.rl.trainer import update
    from ponder.runtime.training import TrainingRun

    cfg = rl_config(base, out, device=device, lr=1e-2)
    run = TrainingRun(cfg, data_size=1, what="problems")
    metrics = update(cfg, run, None, rollout_of(run), None)
    return metrics, {k: v.detach().cpu() for k, v in run.model.state_dict().items()}


def test_an_rl_step_on_the_gpu_equals_the_cpu_step_on_the_same_batch(base, tmp_path, device="cuda"):
    """The same completions and advantages, one optimizer step on each device: the same loss,
    entropy, gradient norm and weights after the step (not merely a finite loss)."""
    from ponder.rl.trainer import Rollout

    batch = {}

    def rollout_of(run):
        if not batch:  # sampled once, on the CPU run, then given to both
            tok = run.tokenizer
            prompts = [tok.encode(f"{a}*{b}=") for a, b in ((12, 34), (7, 89), (56, 78), (9, 9))]
            engine = Engine(run.model, tok)
            with run.generation(engine):
                groups = engine.generate(prompts, 4, SamplingParams(max_new_tokens=8, temperature=1.0, seed=1))
            batch["prompts"] = [p for p in prompts for _ in range(4)]
            batch["completions"] = [c for g in groups for c in g]
        comps = batch["completions"]
        return Rollout(batch["prompts"], comps, torch.linspace(-1, 1, len(comps)), sequences=len(comps),
                       tokens=sum(len(c.token_ids) for c in comps))

    cpu, cpu_weights = rl_step(base, tmp_path / "cpu", "cpu", rollout_of)
    gpu, gpu_weights = rl_step(base, tmp_path / device, device, rollout_of)
    assert cpu["grad_norm"] > 0 and cpu["loss_tokens"] == gpu["loss_tokens"]
    for key in ("loss", "entropy", "grad_norm"):
        assert gpu[key] == pytest.approx(cpu[key], rel=1e-4, abs=1e-6), key
    start = from_pretrained(base / "base").state_dict()
    assert any(not torch.equal(cpu_weights[k], start[k]) for k in start)  # the step moved the weights
    for k in cpu_weights:
        assert torch.allclose(gpu_weights[k], cpu_weights[k], atol=1e-5, rtol=1e-4), k
