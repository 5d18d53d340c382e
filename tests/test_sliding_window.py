"""Sliding-window layers in the KV cache and the engine (Gemma 3): a local layer keeps a ring of
window - 1 slots, prompts longer than the window prefill, decoding runs past it, and greedy
tokens equal transformers' `generate`."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ponder.engine import Engine, SamplingParams
from ponder.models import KVCache
from ponder.models.decode import DecodeStep, decode_path

from test_gemma3 import CONFIGS, F, hf_model, ours, random_ids  # tests/ is on sys.path under pytest

CFG = replace(CONFIGS["270m-like-mqa-5to1"], sliding_window=4)  # five sliding layers of window 4, one full


def test_ring_decode_of_ragged_rows_equals_full_forward():
    """A right-padded prefill longer than the window (real lengths given), then one-token and
    multi-token steps, some longer than the ring, then a row copy: each row's logits equal a plain
    forward over its own tokens."""
    model = ours(CFG, seed=6)
    lens = [3, 9, 1]
    seqs = random_ids(CFG, (4, 40), seed=2)
    cache = KVCache(CFG, batch=3, max_len=40)
    got = [[] for _ in lens]
    with torch.no_grad():
        out = model.logits(model.hidden(seqs[:3, :max(lens)], cache, torch.tensor(lens)))
        assert cache.lengths.tolist() == lens
        for b, n in enumerate(lens):
            got[b].append(out[b, :n])
        pos = torch.tensor(lens)
        for T in (1, 1, 5, 1, 2, 1):
            out = model(torch.stack([seqs[b, pos[b]:pos[b] + T] for b in range(3)]), cache)
            for b in range(3):
                got[b].append(out[b])
            pos += T
        for b in range(3):
            torch.testing.assert_close(torch.cat(got[b]), model(seqs[b:b + 1, :pos[b]])[0], atol=1e-5, rtol=0)
        # row 1 (past the window) copied twice, row 2 once; then uniform steps (the unmasked decode)
        cache.select([1, 1, 2])
        seqs[:3] = seqs[torch.tensor([1, 1, 2])]
        pos = pos[torch.tensor([1, 1, 2])]
        for _ in range(3):
            out = model(torch.stack([seqs[b, pos[b]:pos[b] + 1] for b in range(3)]), cache)
            pos += 1
            for b in range(3):
                torch.testing.assert_close(out[b, 0], model(seqs[b:b + 1, :pos[b]])[0, -1], atol=1e-5, rtol=0)


def test_sliding_layers_cache_at_most_the_window():
    """Memory of a local layer grows with the window, not the sequence: at 200 positions the five
    sliding layers hold 3 slots each; the full layer holds 200."""
    cache = KVCache(CFG, batch=2, max_len=200)
    slots = [k.shape[2] for k in cache.k]
    assert slots == [3, 3, 3, 3, 3, 200] and [v.shape[2] for v in cache.v] == slots
    per_slot = 2 * CFG.num_key_value_heads * CFG.head_dim * 4  # K and V, fp32
    assert cache.nbytes == 2 * per_slot * (5 * 3 + 200) == 2 * KVCache.bytes_for(CFG, 200)
    everything = replace(CFG, layer_types=(F,) * 6)
    assert KVCache(everything, 2, 200).nbytes == 2 * per_slot * 6 * 200 == 2 * KVCache.bytes_per_token(CFG) * 200
    # and it stays so while decoding far past the window
    model = ours(CFG, seed=1)
    with torch.no_grad():
        model(random_ids(CFG, (2, 50)), cache)
        for t in range(20):
            model(random_ids(CFG, (2, 1), seed=t), cache)
    assert [k.shape[2] for k in cache.k] == slots and cache.nbytes == 2 * KVCache.bytes_for(CFG, 200)
    # short caches never allocate a ring longer than themselves
    assert [k.shape[2] for k in KVCache(CFG, 1, 2).k] == [2] * 6


def test_engine_greedy_tokens_equal_transformers_generate_across_the_window():
    """Prompts shorter and longer than the window, generations that cross it (several windows
    in all), batched with ragged lengths and two samples per prompt: the same tokens as
    transformers' generate, one prompt at a time."""
    cfg = replace(CFG, sliding_window=6)
    model, peer = ours(cfg, seed=1), hf_model(cfg, seed=1)
    peer.load_state_dict(model.state_dict(), strict=False)
    peer.generation_config.eos_token_id = None
    assert decode_path(model) != "plain"  # the engine's fast decode step
    prompts = [random_ids(cfg, (n,), seed=n).tolist() for n in (3, 8, 14)]
    params = SamplingParams(max_new_tokens=20, temperature=0.0, stop_token_ids=())
    outs = Engine(model, max_rows=6).generate(prompts, n=2, params=params)
    with pytest.MonkeyPatch.context() as mp:  # Decoder.forward gives the same
        mp.setenv("PONDER_DECODE", "plain")
        plain = Engine(model, max_rows=6).generate(prompts, n=2, params=params)
    assert [[c.token_ids for c in group] for group in plain] == [[c.token_ids for c in group] for group in outs]
    for prompt, (first, second) in zip(prompts, outs):
        with torch.no_grad():
            want = peer.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False)[0, len(prompt):]
        assert first.token_ids == second.token_ids == want.tolist()
    assert len({tuple(o[0].token_ids) for o in outs}) == 3  # the prompts lead different ways...
    assert any(len(set(o[0].token_ids[cfg.sliding_window:])) > 1 for o in outs)  # ...which change past the window


def test_chunked_prefill_across_the_window_equals_one_forward():
    """A prefill from empty (which reads no ring) then a second chunk that reads it: the same
    logits as one forward, for chunks shorter and longer than the window."""
    model = ours(CFG, seed=3)
    ids = random_ids(CFG, (2, 19), seed=5)
    with torch.no_grad():
        want = model(ids)
        for split in (2, 7, 13):
            cache = KVCache(CFG, 2, 19)
            got = torch.cat([model(ids[:, :split], cache), model(ids[:, split:], cache)], dim=1)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["270m-like-mqa-5to1", "gqa2-softcap-untied"])
@pytest.mark.parametrize("with_kernels", [True, False], ids=["c-kernels", "torch-ops"])
def test_decode_step_equals_the_model_past_the_window(name, with_kernels):
    """The engine's fused decode step on Gemma (1 + weight norms folded, the norms after each block,
    GeGLU, rings, soft-capped logits): ragged rows decoding past the window, then a row copy.
    (Weight packing does not depend on the family: test_decode_step covers it.)"""
    cfg = CONFIGS[name]
    model = ours(cfg, seed=12)
    step = DecodeStep(model, "unpacked")
    if with_kernels and step.kernels is None:
        pytest.skip("the C kernels did not compile here")
    if not with_kernels:
        step.kernels = None
    lens = torch.tensor([2, 7, 4])
    prompt = random_ids(cfg, (3, 7), seed=4)
    caches = [KVCache(cfg, 3, 20) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model.hidden(prompt, cache, lens)
        for t in range(10):
            if t == 6:
                for cache in caches:
                    cache.select([1, 1, 0])
            tokens = random_ids(cfg, (3,), seed=30 + t)
            want = model(tokens[:, None], caches[0])[:, -1]
            torch.testing.assert_close(step(tokens, caches[1]), want, atol=1e-5, rtol=0)
    for k_want, k_got in zip(caches[0].k, caches[1].k):
        torch.testing.assert_close(k_got, k_want, atol=1e-5, rtol=0)


def test_bf16_decode_step_stays_close_to_the_model():
    cfg = CONFIGS["270m-like-mqa-5to1"]
    model = ours(cfg, seed=13).to(torch.bfloat16)
    step = DecodeStep(model, "unpacked")
    prompt = random_ids(cfg, (2, 6), seed=5)
    caches = [KVCache(cfg, 2, 16, dtype=torch.bfloat16) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model(prompt, cache)
        for t in range(6):
            tokens = random_ids(cfg, (2,), seed=40 + t)
            want = model(tokens[:, None], caches[0])[:, -1].float()
            got = step(tokens, caches[1]).float()
            assert (got - want).abs().max() < 0.05 * want.abs().max()
