"""Qwen3-MoE and DeepSeek-V3 (MLA + DeepSeekMoE): parity with transformers both ways, the same
experts chosen, the latent KV cache under the engine's cache contract, both expert weight layouts,
router metrics and bias balancing, and `ponder generate` on tiny checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from ponder.models import (CheckpointError, Decoder, KVCache, MLAConfig, ModelConfig, MoEConfig, RopeScaling,
                           from_pretrained, router_stats, update_routing_bias)

transformers = pytest.importorskip("transformers")
from hf_peer import randomize  # noqa: E402  (tests/ is on sys.path under pytest)


def qwen3_moe(**kw) -> ModelConfig:
    moe = MoEConfig(**kw.pop("moe"))
    base = dict(vocab_size=67, hidden_size=32, intermediate_size=40, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, model_type="qwen3_moe")
    return ModelConfig(**{**base, **kw}, moe=moe)


def deepseek_v3(**kw) -> ModelConfig:
    moe, mla = MoEConfig(**kw.pop("moe")), MLAConfig(**kw.pop("mla"))
    base = dict(vocab_size=71, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                model_type="deepseek_v3")
    return ModelConfig(**{**base, **kw}, head_dim=mla.qk_rope_head_dim, moe=moe, mla=mla)


# Routing options each on and off across the set: renormalised or not, k = 1..3, dense layers
# chosen by mlp_only_layers / decoder_sparse_step / first_k_dense_replace, group limits that bind,
# shared experts 0-2, query compression on and off, interleaved and half-split RoPE, biases, tying.
CONFIGS = {
    "qmoe-e6k2-norm-dense1-tied": qwen3_moe(
        tie_word_embeddings=True,
        moe=dict(num_experts=6, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                 mlp_only_layers=(1,))),
    "qmoe-e8k3-step2-bias": qwen3_moe(
        num_hidden_layers=4, num_key_value_heads=1, attention_bias=True, rms_norm_eps=1e-5,
        moe=dict(num_experts=8, num_experts_per_tok=3, moe_intermediate_size=12, decoder_sparse_step=2)),
    "qmoe-e4k1-mha": qwen3_moe(
        num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, head_dim=12, rope_theta=1e6,
        moe=dict(num_experts=4, num_experts_per_tok=1, moe_intermediate_size=20)),
    "ds-qlora-g4t2-interleave": deepseek_v3(
        rms_norm_eps=1e-5,
        moe=dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=16, norm_topk_prob=True,
                 n_shared_experts=1, routed_scaling_factor=2.5, n_group=4, topk_group=2, first_k_dense_replace=1),
        mla=dict(kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6, q_lora_rank=10)),
    "ds-noqlora-halfsplit-bias": deepseek_v3(
        attention_bias=True, num_hidden_layers=2,
        moe=dict(num_experts=6, num_experts_per_tok=3, moe_intermediate_size=8, norm_topk_prob=False,
                 n_shared_experts=2, routed_scaling_factor=1.0, n_group=1, topk_group=1, first_k_dense_replace=0),
        mla=dict(kv_lora_rank=16, qk_nope_head_dim=6, qk_rope_head_dim=6, v_head_dim=10, q_lora_rank=None,
                 rope_interleave=False)),
    "ds-g2t1-noshared-tied": deepseek_v3(
        tie_word_embeddings=True, num_attention_heads=2, rope_theta=5e5,
        moe=dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=12, norm_topk_prob=True,
                 n_shared_experts=0, routed_scaling_factor=1.5, n_group=2, topk_group=1, first_k_dense_replace=2),
        mla=dict(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=8, v_head_dim=8, q_lora_rank=6)),
    # DeepSeek-V3's YaRN: ramped frequencies, and the softmax scaled by mscale(factor, mscale_all_dim)**2
    "ds-yarn": deepseek_v3(
        rope_scaling=RopeScaling("yarn", 40.0, 32, mscale=1.0, mscale_all_dim=0.8),
        moe=dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=8, norm_topk_prob=True,
                 n_shared_experts=1, routed_scaling_factor=2.5, n_group=4, topk_group=2, first_k_dense_replace=1),
        mla=dict(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=8, v_head_dim=8, q_lora_rank=None)),
}


def hf_twin(cfg: ModelConfig, seed: int):
    """transformers' model for cfg (built from our config.json dict), every weight and routing bias random."""
    d = cfg.to_hf_dict()
    conf = transformers.AutoConfig.for_model(d.pop("model_type"), **{k: v for k, v in d.items() if k != "architectures"})
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(conf, attn_implementation="eager")
    randomize(model, seed)
    randomize_routing_bias(model, seed)
    return model.float().eval()


@torch.no_grad()
def randomize_routing_bias(model, seed: int) -> None:
    """The bias is a buffer, left at 0 by `randomize`; at the sigmoid scores' scale it changes choices."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.2 * torch.randn(b.shape, generator=g))


def ours(cfg: ModelConfig, seed: int = 0) -> Decoder:
    model = Decoder(cfg)
    randomize(model, seed)
    randomize_routing_bias(model, seed)
    return model.eval()


def random_ids(cfg, shape, seed=0):
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", CONFIGS)
def test_loads_transformers_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    peer = hf_twin(cfg, seed=3)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert model.config == cfg
    ids = random_ids(cfg, (2, 13))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), peer(input_ids=ids).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_loads_our_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    model = ours(cfg, seed=4)
    model.save_pretrained(tmp_path)
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(peer).__name__ == cfg.architecture
    assert sum(p.numel() for p in peer.parameters()) == model.num_parameters()
    ids = random_ids(cfg, (3, 9), seed=1)
    with torch.no_grad():
        torch.testing.assert_close(peer(input_ids=ids).logits, model(ids), atol=1e-4, rtol=0)


def record_routing(gates, pick):
    """Forward hooks on each router that store (indices, weights) sorted by expert index."""
    seen = {}

    def hook(i):
        def store(module, inputs, output):
            idx, w = pick(output)
            order = idx.argsort(dim=-1)
            seen[i] = (idx.gather(-1, order), w.float().gather(-1, order), inputs[0].detach())
        return store

    handles = [gate.register_forward_hook(hook(i)) for i, gate in gates.items()]
    return seen, handles


@pytest.mark.parametrize("name", CONFIGS)
def test_same_experts_and_weights_as_transformers(name):
    cfg = CONFIGS[name]
    peer = hf_twin(cfg, seed=5)
    model = Decoder(cfg).eval()
    # (a tied peer's state dict also lists lm_head.weight, the embedding under a second name)
    assert not model.load_state_dict(peer.state_dict(), strict=False).missing_keys
    sparse = [i for i in range(cfg.num_hidden_layers) if cfg.is_sparse_layer(i)]
    assert sparse, "every config has a sparse layer"
    theirs, h1 = record_routing({i: peer.model.layers[i].mlp.gate for i in sparse}, lambda o: (o[2], o[1]))
    mine, h2 = record_routing({i: model.model.layers[i].mlp.gate for i in sparse}, lambda o: (o[0], o[1]))
    ids = random_ids(cfg, (4, 16), seed=2)
    with torch.no_grad():
        peer(input_ids=ids)
        model(ids)
    for h in h1 + h2:
        h.remove()
    for i in sparse:
        assert torch.equal(mine[i][0], theirs[i][0]), f"layer {i}: different experts chosen"
        torch.testing.assert_close(mine[i][1], theirs[i][1], atol=1e-5, rtol=0)
        # Routing is exercised: tokens do not all go to the same experts.
        assert len({tuple(r) for r in mine[i][0].tolist()}) > 1
    if cfg.model_type == "deepseek_v3":
        # The bias and the group limit must change some choices here, or matching would not show
        # that they are applied as transformers applies them.
        gate = model.model.layers[sparse[-1]].mlp.gate
        x = mine[sparse[-1]][2]
        scores = torch.sigmoid(x @ gate.weight.T)
        unbiased = scores.topk(cfg.moe.num_experts_per_tok, dim=-1).indices.sort(-1).values
        ungrouped = (scores + gate.e_score_correction_bias).topk(cfg.moe.num_experts_per_tok).indices.sort(-1).values
        assert not torch.equal(unbiased, mine[sparse[-1]][0])
        if cfg.moe.topk_group < cfg.moe.n_group:
            assert not torch.equal(ungrouped, mine[sparse[-1]][0])


# ---------------------------------------------------------------- the cache contract, the latent cache

@pytest.mark.parametrize("name", ["qmoe-e6k2-norm-dense1-tied", "ds-qlora-g4t2-interleave", "ds-noqlora-halfsplit-bias"])
def test_cached_ragged_decode_and_select_equal_full_forward(name):
    """Right-padded prefill, per-row lengths, single and multi-token steps, then rows repeated and
    reordered by select: each row's logits equal a plain causal forward over its own tokens."""
    cfg = CONFIGS[name]
    model = ours(cfg, seed=6)
    lens = [3, 6, 1]
    seqs = random_ids(cfg, (4, 14), seed=2)
    cache = KVCache(cfg, batch=3, max_len=16)
    got = [[] for _ in lens]
    with torch.no_grad():
        out = model(seqs[:3, :max(lens)], cache)
        cache.lengths = torch.tensor(lens)
        for b, n in enumerate(lens):
            got[b].append(out[b, :n])
        pos = torch.tensor(lens)
        for T in (1, 3, 1):
            out = model(torch.stack([seqs[b, pos[b]:pos[b] + T] for b in range(3)]), cache)
            for b in range(3):
                got[b].append(out[b])
            pos += T
        for b in range(3):
            torch.testing.assert_close(torch.cat(got[b]), model(seqs[b:b + 1, :pos[b]])[0], atol=1e-5, rtol=0)
        rows = [2, 0, 0]
        cache.select(torch.tensor(rows))
        nxt = seqs[3, :2]
        out = torch.cat([model(nxt[None, t:t + 1].expand(3, 1), cache) for t in range(2)], dim=1)
        for r, src in enumerate(rows):
            full = model(torch.cat([seqs[src, :pos[src]], nxt])[None])[0, -2:]
            torch.testing.assert_close(out[r], full, atol=1e-5, rtol=0)


def test_mla_cache_holds_the_latent_not_per_head_keys_and_values():
    cfg = CONFIGS["ds-qlora-g4t2-interleave"]
    m = cfg.mla
    cache = KVCache(cfg, batch=2, max_len=5)
    assert [tuple(k.shape) for k in cache.k] == [(2, 1, 5, m.kv_lora_rank + m.qk_rope_head_dim)] * 3
    assert all(v.numel() == 0 for v in cache.v)
    per_token = cfg.num_hidden_layers * (m.kv_lora_rank + m.qk_rope_head_dim) * 2
    assert KVCache.bytes_per_token(cfg, torch.bfloat16) == per_token
    # The engine sizes its batches by probing a one-token cache; it must see the same bytes.
    probe = KVCache(cfg, 1, 1, dtype=torch.bfloat16, device="meta")
    assert sum(t.numel() * t.element_size() for t in probe.k + probe.v) == per_token
    gqa = CONFIGS["qmoe-e6k2-norm-dense1-tied"]
    assert KVCache.bytes_per_token(gqa) == gqa.num_hidden_layers * 2 * gqa.num_key_value_heads * gqa.head_dim * 4


# ---------------------------------------------------------------- expert weight layouts

def write_per_expert_checkpoint(peer, folder):
    """transformers 4.x layout: one gate/up/down module per expert, split from the fused tensors."""
    from safetensors.torch import save_file

    peer.save_pretrained(folder)
    state = {}
    for name, t in peer.state_dict().items():
        if name.endswith("experts.gate_up_proj"):
            prefix, inner = name.removesuffix("gate_up_proj"), t.shape[1] // 2
            for e in range(t.shape[0]):
                state[f"{prefix}{e}.gate_proj.weight"] = t[e, :inner].clone()
                state[f"{prefix}{e}.up_proj.weight"] = t[e, inner:].clone()
        elif name.endswith("experts.down_proj"):
            prefix = name.removesuffix("down_proj")
            for e in range(t.shape[0]):
                state[f"{prefix}{e}.down_proj.weight"] = t[e].clone()
        elif name != "lm_head.weight" or not peer.config.tie_word_embeddings:
            state[name] = t.contiguous()
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return state


@pytest.mark.parametrize("name", ["qmoe-e8k3-step2-bias", "ds-qlora-g4t2-interleave"])
def test_both_expert_layouts_load_and_save_matches_transformers_files(name, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    cfg = CONFIGS[name]
    peer = hf_twin(cfg, seed=7)
    state = write_per_expert_checkpoint(peer, tmp_path / "v4")
    assert "model.layers.1.mlp.experts.0.up_proj.weight" in state
    (tmp_path / "v5").mkdir()
    (tmp_path / "v5" / "config.json").write_text((tmp_path / "v4" / "config.json").read_text())
    fused = {n: t.contiguous() for n, t in peer.state_dict().items()}
    assert fused["model.layers.1.mlp.experts.gate_up_proj"].shape == (cfg.moe.num_experts, 2 * cfg.moe.moe_intermediate_size, 32)
    save_file(fused, str(tmp_path / "v5" / "model.safetensors"), metadata={"format": "pt"})
    ids = random_ids(cfg, (2, 10), seed=3)
    with torch.no_grad():
        want = peer(input_ids=ids).logits
        torch.testing.assert_close(from_pretrained(tmp_path / "v4")(ids), want, atol=1e-4, rtol=0)
        model = from_pretrained(tmp_path / "v5")
        torch.testing.assert_close(model(ids), want, atol=1e-4, rtol=0)
        # transformers reads the per-expert file the same way (its 4.x -> 5.x conversion).
        old = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "v4", attn_implementation="eager")
        torch.testing.assert_close(old(input_ids=ids).logits, want, atol=1e-4, rtol=0)

    # Our save writes exactly the tensors (names, shapes) transformers' own save_pretrained writes.
    model.save_pretrained(tmp_path / "ours")
    peer.save_pretrained(tmp_path / "theirs")

    def layout(folder):
        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            return {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}

    assert layout(tmp_path / "ours") == layout(tmp_path / "theirs")


def test_per_expert_checkpoint_with_a_missing_or_misshapen_expert_is_named(tmp_path):
    from safetensors.torch import save_file

    cfg = CONFIGS["qmoe-e6k2-norm-dense1-tied"]
    state = write_per_expert_checkpoint(hf_twin(cfg, seed=8), tmp_path)
    missing = dict(state)
    del missing["model.layers.2.mlp.experts.4.up_proj.weight"]
    save_file(missing, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(tmp_path)
    assert "model.safetensors" in str(e.value) and "model.layers.2.mlp.experts.4.up_proj.weight" in str(e.value)
    bad = dict(state)
    bad["model.layers.0.mlp.experts.1.down_proj.weight"] = torch.zeros(32, 15)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(tmp_path)
    assert "model.layers.0.mlp.experts.1.down_proj.weight" in str(e.value) and "(32, 15)" in str(e.value)
    extra = dict(state)
    extra["model.layers.0.mlp.experts.6.down_proj.weight"] = torch.zeros(32, 16)  # a 7th of 6 experts
    save_file(extra, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as e:
        from_pretrained(tmp_path)
    assert "model.layers.0.mlp.experts.6.down_proj.weight" in str(e.value)


# ---------------------------------------------------------------- config.json

def test_config_json_round_trips_and_names_bad_fields():
    for cfg in CONFIGS.values():
        assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
    d = CONFIGS["ds-qlora-g4t2-interleave"].to_hf_dict()
    with pytest.raises(ValueError, match=r"config.json.*n_group"):
        ModelConfig.from_hf_dict({**d, "n_group": 3})
    with pytest.raises(ValueError, match=r"config.json.*rope_parameters.factor.*positive"):
        ModelConfig.from_hf_dict({**d, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": -4.0,
                                                          "original_max_position_embeddings": 512}})
    with pytest.raises(ValueError, match=r"config.json.*kv_lora_rank.*missing"):
        ModelConfig.from_hf_dict({k: v for k, v in d.items() if k != "kv_lora_rank"})
    q = CONFIGS["qmoe-e8k3-step2-bias"].to_hf_dict()
    with pytest.raises(ValueError, match=r"config.json.*num_experts_per_tok"):
        ModelConfig.from_hf_dict({**q, "num_experts_per_tok": 9})
    # transformers 5 writes the expert count as num_local_experts.
    q5 = {k: v for k, v in q.items() if k != "num_experts"} | {"num_local_experts": 8}
    assert ModelConfig.from_hf_dict(q5).moe.num_experts == 8


# ---------------------------------------------------------------- training hooks

def test_gradients_reach_router_and_the_experts_used():
    cfg = CONFIGS["ds-qlora-g4t2-interleave"]
    model = ours(cfg, seed=9).train()
    ids = random_ids(cfg, (2, 8), seed=4)
    model(ids).logsumexp(-1).mean().backward()
    block = model.model.layers[1].mlp
    assert block.gate.weight.grad.abs().sum() > 0
    used = block.load > 0
    per_expert = block.experts.gate_up_proj.grad.abs().sum(dim=(1, 2))
    assert (per_expert[used] > 0).all() and (per_expert[~used] == 0).all()
    assert block.gate.e_score_correction_bias.grad is None


def test_router_stats_count_every_assignment_and_reset():
    cfg = CONFIGS["qmoe-e8k3-step2-bias"]
    model = ours(cfg, seed=10)
    with torch.no_grad():
        model(random_ids(cfg, (2, 5)))
        model(random_ids(cfg, (1, 7)))
    stats = router_stats(model)
    assert sorted(stats["load"]) == [1, 3]  # decoder_sparse_step=2: layers 1 and 3
    for i, load in stats["load"].items():
        assert sum(load) == (2 * 5 + 7) * 3 and len(load) == 8
        t = torch.tensor(load, dtype=torch.float64)
        assert stats["cv"][i] == pytest.approx((t.std(unbiased=False) / t.mean()).item())
    assert stats["cv_max"] == max(stats["cv"].values())
    assert router_stats(model)["load"][1] == [0] * 8  # reset by the first call
    dense = Decoder(ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                num_attention_heads=2))
    assert router_stats(dense) == {}


def test_bias_update_balances_a_skewed_router():
    """Aux-loss-free balancing: repeated bias updates on a fixed batch shrink the load's spread,
    while the routing weights (and so the logits of a fixed choice) ignore the bias."""
    cfg = CONFIGS["ds-noqlora-halfsplit-bias"]
    model = ours(cfg, seed=11)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate.e_score_correction_bias.zero_()
            layer.mlp.gate.weight[0] += 0.5  # expert 0 wins for most tokens
    ids = random_ids(cfg, (4, 16), seed=5)
    with torch.no_grad():
        model(ids)
    before = router_stats(model, reset=False)["cv_mean"]
    for _ in range(40):
        update_routing_bias(model, gamma=0.01)
        router_stats(model)
        with torch.no_grad():
            model(ids)
    after = router_stats(model)["cv_mean"]
    assert after < 0.5 * before
    with pytest.raises(ValueError, match="e_score_correction_bias"):
        update_routing_bias(ours(CONFIGS["qmoe-e4k1-mha"]), 0.01)


def test_routing_bias_stays_fp32_in_a_bf16_model(tmp_path):
    cfg = CONFIGS["ds-g2t1-noshared-tied"]
    model = ours(cfg, seed=12)
    bias = model.model.layers[2].mlp.gate.e_score_correction_bias.clone()
    model.to(torch.bfloat16)
    assert model.model.layers[2].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert torch.equal(model.model.layers[2].mlp.gate.e_score_correction_bias, bias)
    model.float().save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.layers[2].mlp.gate.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.model.layers[2].mlp.gate.e_score_correction_bias, bias)


# ---------------------------------------------------------------- the CLI

@pytest.mark.parametrize("name", ["qmoe-e6k2-norm-dense1-tied", "ds-qlora-g4t2-interleave"])
def test_ponder_generate_on_a_tiny_random_checkpoint(name, tmp_path, capsys):
    from ponder.cli import main
    from ponder.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer("abcdefghij0123456789 +=")
    cfg = CONFIGS[name]
    cfg = ModelConfig.from_hf_dict({**cfg.to_hf_dict(), "vocab_size": tok.vocab_size})
    ours(cfg, seed=13).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert main(["generate", "--model", str(tmp_path), "--prompt", "12+3=", "--prompt", "ab",
                 "--max-new-tokens", "6", "--n", "2", "--temperature", "1.0"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- prompt: '12+3='") == 2 and out.count("--- prompt: 'ab'") == 2
    assert out.count("tokens, ") == 4


# ---------------------------------------------------------------- RL on a sparse policy

def sevens(prompt, completion, problem):
    """Share of 7s in the completion: a reward a random tiny policy already varies on."""
    return completion.count("7") / max(len(completion), 1)


@pytest.mark.parametrize("arch", ["qwen3_moe", "deepseek_v3"])
def test_rl_trains_a_tiny_sparse_policy_end_to_end(arch, tmp_path):
    """`ponder train rl`'s loop on a tiny MoE / MLA policy with sequence-level ratios (GSPO, the
    setting recommended for MoE): it runs, updates the experts, and saves a loadable checkpoint."""
    from ponder.cli import main
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(multiply.ALPHABET)
    shared = dict(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                  num_attention_heads=2, tie_word_embeddings=True)
    if arch == "qwen3_moe":
        cfg = ModelConfig(**shared, num_key_value_heads=1, head_dim=8, model_type=arch,
                          moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8))
    else:
        cfg = ModelConfig(**shared, head_dim=4, model_type=arch,
                          moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=8,
                                        n_shared_experts=1, n_group=2, topk_group=1, first_k_dense_replace=1),
                          mla=MLAConfig(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=4))
    torch.manual_seed(0)
    Decoder(cfg).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    (tmp_path / "rl.yaml").write_text(
        f"model: {tmp_path / 'base'}\ntask: multiply:train\ntask_limit: 16\nprompts_per_step: 2\n"
        "group_size: 4\nmax_new_tokens: 8\nsteps: 3\nlr: 0.03\neval_every: 0\nsave_every: 0\n"
        f"micro_batch_size: 8\noutput_dir: {tmp_path / 'run'}\nseed: 0\nrewards: [test_moe_mla:sevens]\n"
        "importance_sampling: sequence\n"
        + ("routing_bias_gamma: 0.01\n" if arch == "deepseek_v3" else ""))
    assert main(["train", "rl", str(tmp_path / "rl.yaml")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    assert len(steps) == 3 and all(0 <= r["router/cv_mean"] and 0.25 <= r["router/max_share"] <= 1 for r in steps)
    final = tmp_path / "run" / "model"  # the trained policy, in HF layout
    before, after = from_pretrained(tmp_path / "base"), from_pretrained(final)
    assert after.config == cfg
    moved = after.model.layers[1].mlp.experts.gate_up_proj - before.model.layers[1].mlp.experts.gate_up_proj
    assert moved.abs().max() > 0
    if arch == "deepseek_v3":  # the balancing bias moved (no step of seed 0 is exactly balanced: an odd number of +-gamma steps cannot cancel)
        bias = lambda m: m.model.layers[1].mlp.gate.e_score_correction_bias
        assert (bias(after) - bias(before)).abs().max() > 0


def test_deepseek_multi_token_prediction_layers_are_skipped(tmp_path):
    """Real DeepSeek-V3 files store the MTP module as layer num_hidden_layers; it is not loaded,
    and the same tensors without num_nextn_predict_layers are still reported as unexpected."""
    from safetensors.torch import load_file, save_file

    cfg = CONFIGS["ds-yarn"]
    model = ours(cfg, seed=3)
    model.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    last = cfg.num_hidden_layers
    tensors.update({k.replace("model.layers.1.", f"model.layers.{last}."): v.clone()
                    for k, v in tensors.items() if k.startswith("model.layers.1.")})
    tensors[f"model.layers.{last}.eh_proj.weight"] = torch.zeros(cfg.hidden_size, 2 * cfg.hidden_size)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"unexpected tensor 'model.layers.{last}\."):
        from_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_nextn_predict_layers": 1}))
    loaded = from_pretrained(tmp_path)
    ids = random_ids(cfg, (1, 6))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), atol=0, rtol=0)
