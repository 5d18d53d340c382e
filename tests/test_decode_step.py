"""DecodeStep (the engine's fused decode step) computes what Decoder.forward computes, for every
dense family, ragged rows included, packed and unpacked, with its C kernels and with their
torch-op fallback; the engine picks its decode path deterministically (PONDER_DECODE overrides)
and rebuilds the step when the weights change."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from ponder.engine import Engine, SamplingParams
from ponder.models import Decoder, KVCache, MLAConfig, ModelConfig, MoEConfig
from ponder.models.cpu_kernels import kernels
from ponder.models import decode
from ponder.models.decode import DecodeStep, decode_path

from test_models import CONFIGS, ours, random_ids  # tests/ is on sys.path under pytest

# Qwen3-MoE with every other layer sparse: its experts run as their own module inside the step
QWEN3_MOE = ModelConfig(vocab_size=67, hidden_size=32, intermediate_size=40, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=8, model_type="qwen3_moe",
                        attention_bias=True, moe=MoEConfig(num_experts=8, num_experts_per_tok=3,
                                                           moe_intermediate_size=12, decoder_sparse_step=2))
STEP_CONFIGS = {**CONFIGS, "qwen3-moe-step2": QWEN3_MOE}


def two_caches(cfg, model, lens):
    """The same ragged cache twice: a right-padded prefill, then per-row lengths."""
    prompt = random_ids(cfg, (len(lens), max(lens)), seed=4)
    caches = []
    for _ in range(2):
        cache = KVCache(cfg, batch=len(lens), max_len=max(lens) + 5, dtype=model.dtype)
        with torch.no_grad():
            model(prompt, cache)
        cache.lengths = torch.tensor(lens)
        caches.append(cache)
    return caches


def test_the_c_kernels_compile_where_there_is_a_compiler():
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler: DecodeStep runs its torch ops")
    assert kernels() is not None


@pytest.mark.parametrize("name", STEP_CONFIGS)
@pytest.mark.parametrize("with_kernels", [True, False], ids=["c-kernels", "torch-ops"])
@pytest.mark.parametrize("path", ["mkl", "onednn", "unpacked"])
def test_decode_step_equals_the_model_on_ragged_rows(name, with_kernels, path):
    """Three ragged rows for three steps, then two of them (reordered, as after the engine drops a
    finished row: the weights are re-packed for the new row count) for two more."""
    cfg = STEP_CONFIGS[name]
    model = ours(cfg, seed=11)  # norm weights and biases randomized: folding them is exercised
    step = DecodeStep(model, path)
    if step.path != path:
        pytest.skip(f"no {path} packing here")
    if with_kernels and step.kernels is None:
        pytest.skip("the C kernels did not compile here")
    if not with_kernels:
        step.kernels = None
    want_cache, got_cache = two_caches(cfg, model, [4, 1, 6])
    for t in range(5):
        if t == 3:
            want_cache.select([2, 0])
            got_cache.select([2, 0])
        tokens = random_ids(cfg, (got_cache.batch,), seed=20 + t)
        with torch.no_grad():
            want = model(tokens[:, None], want_cache)[:, -1]
        got = step(tokens, got_cache)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert got_cache.lengths.tolist() == want_cache.lengths.tolist() == [11, 9]
    for layer in range(cfg.num_hidden_layers):  # the cache holds the same keys and values
        torch.testing.assert_close(got_cache.k[layer], want_cache.k[layer], atol=1e-5, rtol=0)
        torch.testing.assert_close(got_cache.v[layer], want_cache.v[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["qwen3-gqa2-hd24-tied", "qwen3-moe-step2"])
@pytest.mark.parametrize("path", ["onednn", "unpacked"])
def test_decode_step_in_bf16_is_as_close_to_fp32_as_the_models_own_bf16_forward(name, path):
    """In bf16 the step folds the norm weights into bf16 matmul weights, so it rounds differently
    from Decoder.forward: it must stay as close to the fp32 computation as the bf16 forward is."""
    cfg = STEP_CONFIGS[name]
    reference = ours(cfg, seed=11)
    model = ours(cfg, seed=11).to(torch.bfloat16)
    step = DecodeStep(model, path)
    if step.path != path:
        pytest.skip(f"no bf16 {path} packing here")
    assert step.kernels is None  # the C kernels are fp32: bf16 runs the torch ops
    caches = {"fp32": two_caches(cfg, reference, [4, 1, 6])[0]}
    caches["forward"], caches["step"] = two_caches(cfg, model, [4, 1, 6])
    for t in range(4):
        tokens = random_ids(cfg, (3,), seed=20 + t)
        with torch.no_grad():
            want = reference(tokens[:, None], caches["fp32"])[:, -1]
            plain = model(tokens[:, None], caches["forward"])[:, -1].float()
        got = step(tokens, caches["step"]).float()
        assert got.dtype == plain.dtype and torch.isfinite(got).all()
        plain_error, step_error = (plain - want).norm(), (got - want).norm()
        assert plain_error > 0  # bf16 really rounded
        assert step_error <= 2 * plain_error, (t, step_error.item(), plain_error.item())
        assert (got - plain).norm() <= 0.02 * want.norm()


def test_decode_step_is_only_used_where_it_mirrors_the_model():
    dense = CONFIGS["qwen3-gqa2-hd24-tied"]
    assert DecodeStep.supports(ours(dense))
    assert DecodeStep.supports(ours(QWEN3_MOE))
    assert DecodeStep.supports(ours(dense).to(torch.bfloat16))
    assert not DecodeStep.supports(ours(dense).to(torch.float16))

    class Edited(Decoder):  # a subclass may change the forward DecodeStep mirrors
        pass

    assert not DecodeStep.supports(Edited(dense))
    latent = Decoder(ModelConfig(  # DeepSeek-V3: multi-head latent attention
        vocab_size=71, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        head_dim=4, model_type="deepseek_v3",
        moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8, n_shared_experts=1),
        mla=MLAConfig(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=8)))
    assert not DecodeStep.supports(latent)
    with pytest.raises(ValueError, match="not MLA"):
        DecodeStep(latent)


def test_engine_samples_from_the_current_weights_after_an_update():
    """RL updates the policy in place between rollouts: the next generate must see the new weights."""
    cfg = CONFIGS["qwen3-mha-hd32"]
    model = ours(cfg, seed=12)
    engine = Engine(model)
    params = SamplingParams(max_new_tokens=10, temperature=0, stop_token_ids=())
    prompts = [[1, 2, 3], [4, 5]]
    before = engine.generate(prompts, params=params)
    with torch.no_grad():
        for p in model.parameters():  # an in-place optimizer-like step
            p.add_(0.3 * torch.randn_like(p))
    after = engine.generate(prompts, params=params)
    fresh = Engine(model).generate(prompts, params=params)
    assert [c[0].token_ids for c in after] == [c[0].token_ids for c in fresh]
    assert [c[0].token_ids for c in after] != [c[0].token_ids for c in before]


def test_a_failing_compiler_means_a_warning_and_the_torch_ops(monkeypatch, tmp_path):
    """No working C compiler must not break decoding: kernels() warns and returns None."""
    from ponder.models import cpu_kernels

    broken = tmp_path / "cc"
    broken.write_text("#!/bin/sh\necho 'cc: simulated failure' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    cpu_kernels.kernels.cache_clear()
    try:
        with pytest.warns(UserWarning, match="simulated failure"):
            assert cpu_kernels.kernels() is None
        model = ours(CONFIGS["qwen3-mha-hd32"], seed=2)
        assert DecodeStep(model).kernels is None
    finally:
        cpu_kernels.kernels.cache_clear()


def test_engine_samples_from_a_model_built_under_inference_mode():
    """Such weights keep no version counter; the engine then rebuilds DecodeStep every call."""
    cfg = CONFIGS["qwen3-mha-hd32"]
    with torch.inference_mode():
        model = ours(cfg, seed=12)
    params = SamplingParams(max_new_tokens=8, temperature=0, stop_token_ids=())
    got = Engine(model).generate([[1, 2, 3]], params=params)[0][0].token_ids
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3]])
        for _ in range(8):
            ids = torch.cat([ids, model(ids)[:, -1:].argmax(-1)], dim=1)
    assert got == ids[0, 3:].tolist()


def test_without_memory_for_the_copy_the_engine_decodes_with_the_model(monkeypatch):
    """DecodeStep holds a second copy of the weights; where it would not fit, the engine warns and
    samples the same tokens through Decoder.forward."""
    from ponder.models import decode

    model = ours(CONFIGS["qwen3-gqa2-hd24-tied"], seed=3)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=4, stop_token_ids=())
    prompts = [[1, 2, 3], [4, 5]]
    monkeypatch.setattr(decode, "free_memory", lambda device: 2 * weights)  # just enough
    engine = Engine(model)
    fast = engine.generate(prompts, n=2, params=params)
    assert engine._decode_step is not None
    monkeypatch.setattr(decode, "free_memory", lambda device: 2 * weights - 1)
    engine = Engine(model)
    with pytest.warns(UserWarning, match="no memory for the fast decode step"):
        slow = engine.generate(prompts, n=2, params=params)
    assert engine._decode_step is None
    assert [[c.token_ids for c in group] for group in slow] == [[c.token_ids for c in group] for group in fast]
    for a, b in zip([c for g in slow for c in g], [c for g in fast for c in g]):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


def test_free_memory_reads_the_machine():
    from ponder.models.decode import free_memory

    free = free_memory(torch.device("cpu"))
    if os.path.exists("/proc/meminfo"):
        assert free is not None and 0 < free < os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        assert free is None


def test_the_decode_path_is_chosen_by_cpu_features_not_by_timing(monkeypatch):
    """Same machine, same path: MKL packing where the CPU has AMX, oneDNN packing on other CPUs,
    plain where DecodeStep does not mirror the model; asked twice, the same answer."""
    monkeypatch.delenv("PONDER_DECODE", raising=False)
    model = ours(CONFIGS["qwen3-gqa2-hd24-tied"], seed=3)
    assert decode_path(model) == decode_path(model)
    monkeypatch.setattr(decode, "cpu_has_amx", lambda: False)
    assert decode_path(model) == ("onednn" if decode._HAS_ONEDNN_PACK else "unpacked")
    assert DecodeStep(model).path == decode_path(model)
    monkeypatch.setattr(decode, "cpu_has_amx", lambda: True)
    assert decode_path(model) == ("mkl" if decode._HAS_MKL_PACK else "unpacked")
    assert DecodeStep(model).path == decode_path(model)
    bf16 = ours(CONFIGS["qwen3-gqa2-hd24-tied"], seed=3).to(torch.bfloat16)
    assert decode_path(bf16) == ("onednn" if "onednn" in decode._packings(bf16.device, torch.bfloat16) else "unpacked")
    assert decode_path(bf16.to(torch.float16)) == "plain"


def test_ponder_decode_overrides_the_choice(monkeypatch):
    model = ours(CONFIGS["qwen3-gqa2-hd24-tied"], seed=3)
    packings = decode._packings(model.device)
    for path in decode.DECODE_PATHS:
        monkeypatch.setenv("PONDER_DECODE", path)
        assert decode_path(model) == (path if path in packings | {"unpacked", "plain"} else "unpacked")
    monkeypatch.setenv("PONDER_DECODE", "mkl")
    assert decode_path(ours(CONFIGS["qwen3-gqa2-hd24-tied"]).to(torch.bfloat16)) == "unpacked"  # MKL packs fp32 only
    assert decode_path(model.to(torch.float16)) == "plain"  # DecodeStep cannot run it
    monkeypatch.setenv("PONDER_DECODE", "fast")
    with pytest.raises(ValueError, match="PONDER_DECODE='fast'"):
        decode_path(model)


def test_every_decode_path_samples_the_same_tokens(monkeypatch):
    """Sampling at temperature 1 (so a changed logit would change tokens), two samples per prompt,
    rows finishing at different steps (re-packing for fewer rows): every path agrees with plain
    `Decoder.forward`, and each really ran."""
    model = ours(CONFIGS["qwen3-gqa2-hd24-tied"], seed=3)
    params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=4, stop_token_ids=(0, 62, 91))
    prompts = [[1, 2, 3], [4, 5], [6]]
    paths = ["plain", "unpacked", *sorted(decode._packings(model.device))]
    results = {}
    for path in paths:
        monkeypatch.setenv("PONDER_DECODE", path)
        engine = Engine(model)
        results[path] = [c for group in engine.generate(prompts, n=2, params=params) for c in group]
        assert (engine._decode_step is None) if path == "plain" else (engine._decode_step.path == path)
    want = results["plain"]
    assert len({len(c.token_ids) for c in want}) > 1, "no row stopped early: dropping rows is not exercised"
    for path in paths[1:]:
        assert [c.token_ids for c in results[path]] == [c.token_ids for c in want], path
        for a, b in zip(results[path], want):
            torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", ["onednn", "unpacked"])
def test_a_lora_policy_decodes_on_the_fused_step_with_its_adapter_merged(path):
    """LoRA on every projection: the step's packed copies carry W + B A (the adapter moved the
    logits, so equality is not the base's), and the engine picks the step, not Decoder.forward."""
    from ponder.runtime.lora import LoRAConfig, apply_lora

    cfg = CONFIGS["qwen3-gqa2-hd24-tied"]
    base = ours(cfg, seed=11)
    model = apply_lora(ours(cfg, seed=11), LoRAConfig(r=4, alpha=8)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: draw it, so the adapter changes the output
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))))
    assert DecodeStep.supports(model)
    step = DecodeStep(model, path)
    if step.path != path:
        pytest.skip(f"no {path} packing here")
    want_cache, got_cache = two_caches(cfg, model, [4, 1, 6])
    base_cache = two_caches(cfg, base, [4, 1, 6])[0]
    for t in range(3):
        tokens = random_ids(cfg, (3,), seed=20 + t)
        with torch.no_grad():
            want = model(tokens[:, None], want_cache)[:, -1]
            plain = base(tokens[:, None], base_cache)[:, -1]
        got = step(tokens, got_cache)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        assert (want - plain).abs().max() > 1e-2  # the adapter is in the logits
    engine = Engine(model)
    engine.generate([[1, 2, 3]], params=SamplingParams(max_new_tokens=2, temperature=0))
    assert isinstance(engine._decode_step, DecodeStep)
