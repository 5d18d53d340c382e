"""ponder.models: logits parity with transformers both ways, the KV-cache contract, strict loading."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ponder.models import CheckpointError, Decoder, KVCache, ModelConfig, RopeScaling, from_pretrained

from hf_peer import hf_model, import_transformers, randomize  # tests/ is on sys.path under pytest

# Six-plus shapes: head_dim != hidden/heads and non-power-of-two, GQA ratios 1/2/4, tied and
# untied, all three families, biases on and off, different RoPE bases.
CONFIGS = {
    "qwen3-gqa2-hd24-tied": ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                                        tie_word_embeddings=True, rope_theta=1_000_000.0),
    "qwen3-gqa4-hd20-bias": ModelConfig(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=1, head_dim=20,
                                        attention_bias=True, rms_norm_eps=1e-5),
    "qwen3-mha-hd32": ModelConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=2),
    "qwen2-gqa2-tied": ModelConfig(vocab_size=90, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, model_type="qwen2",
                                   tie_word_embeddings=True),
    "qwen2-gqa4-hd12": ModelConfig(vocab_size=77, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=8, num_key_value_heads=2, head_dim=12, model_type="qwen2",
                                   rope_theta=500_000.0),
    "llama-mha": ModelConfig(vocab_size=80, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=4, model_type="llama"),
    "llama-gqa4-hd10-bias-tied": ModelConfig(vocab_size=70, hidden_size=40, intermediate_size=72,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                             head_dim=10, model_type="llama", attention_bias=True, mlp_bias=True,
                                             tie_word_embeddings=True),
    # Long-context RoPE, with a pretraining context short enough that every regime of each formula
    # (kept, scaled, blended or ramped dimensions) falls inside a 16-wide head.
    "llama-llama3-rope": ModelConfig(vocab_size=75, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, model_type="llama",
                                     rope_theta=500_000.0, rope_scaling=RopeScaling(
                                         "llama3", 8.0, 64, low_freq_factor=1.0, high_freq_factor=4.0)),
    "qwen3-yarn-rope": ModelConfig(vocab_size=83, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   rope_scaling=RopeScaling("yarn", 4.0, 64)),
    "qwen2-linear-rope": ModelConfig(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=2, num_key_value_heads=1, model_type="qwen2",
                                     rope_scaling=RopeScaling("linear", 2.5)),
}


def random_ids(cfg: ModelConfig, shape, seed=0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def ours(cfg: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(cfg)
    randomize(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    """A transformers-written Qwen3 checkpoint shared by the loading tests (read-only)."""
    cfg = CONFIGS["qwen3-gqa2-hd24-tied"]
    path = tmp_path_factory.mktemp("qwen3")
    hf_model(cfg, seed=1).save_pretrained(path)
    return path


@pytest.mark.parametrize("name", CONFIGS)
def test_loads_transformers_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    peer = hf_model(cfg, seed=3)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert model.config == cfg
    ids = random_ids(cfg, (2, 11))
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got, hf_logits(peer, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_loads_our_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    model = ours(cfg, seed=4)
    model.save_pretrained(tmp_path)
    transformers = import_transformers()
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(peer).__name__ == cfg.architecture
    assert sum(p.numel() for p in peer.parameters()) == model.num_parameters()
    ids = random_ids(cfg, (3, 9), seed=1)
    with torch.no_grad():
        want = model(ids)
    torch.testing.assert_close(hf_logits(peer, ids), want, atol=1e-4, rtol=0)


def test_gradients_match_transformers(tmp_path):
    """The RL trainer backpropagates through the uncached forward: gradients must match too."""
    cfg = CONFIGS["qwen3-gqa4-hd20-bias"]
    peer = hf_model(cfg, seed=9)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path).train()
    ids = random_ids(cfg, (2, 7), seed=6)

    def loss(logits):
        return torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum()

    loss(model(ids)).backward()
    loss(peer(input_ids=ids).logits).backward()
    theirs = dict(peer.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_tied_checkpoint_has_no_lm_head_and_round_trips(tmp_path):
    from safetensors import safe_open

    cfg = CONFIGS["qwen2-gqa2-tied"]
    model = ours(cfg)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "lm_head.weight" not in f.keys()
    again = from_pretrained(tmp_path)
    ids = random_ids(cfg, (2, 5))
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_save_keeps_config_keys_it_does_not_use(qwen3_dir, tmp_path):
    raw = json.loads((qwen3_dir / "config.json").read_text())
    raw["ponder_unused_note"] = {"kept": [1, 2]}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "config.json").write_text(json.dumps(raw))
    (tmp_path / "in" / "model.safetensors").write_bytes((qwen3_dir / "model.safetensors").read_bytes())
    from_pretrained(tmp_path / "in").save_pretrained(tmp_path / "out")
    out = json.loads((tmp_path / "out" / "config.json").read_text())
    assert out["ponder_unused_note"] == {"kept": [1, 2]}
    assert out["eos_token_id"] == raw["eos_token_id"]
    assert out["rope_parameters"]["rope_theta"] == 1_000_000.0


def test_legacy_top_level_rope_theta_is_read():
    d = CONFIGS["llama-mha"].to_hf_dict()
    del d["rope_parameters"]
    d["rope_theta"] = 123_456.0
    assert ModelConfig.from_hf_dict(d).rope_theta == 123_456.0
    d["rope_parameters"] = {"rope_type": "default", "rope_theta": 2.5e5}
    assert ModelConfig.from_hf_dict(d).rope_theta == 2.5e5  # transformers 5 gives this one priority


def test_sharded_checkpoint_loads(tmp_path):
    cfg = CONFIGS["qwen2-gqa4-hd12"]
    peer = hf_model(cfg, seed=5)
    peer.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ids = random_ids(cfg, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(tmp_path)(ids), hf_logits(peer, ids), atol=1e-4, rtol=0)


def test_bfloat16_load_matches_fp32_closely(qwen3_dir):
    model = from_pretrained(qwen3_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    ref = from_pretrained(qwen3_dir)
    ids = random_ids(ref.config, (2, 8))
    cache = KVCache(model.config, 2, 16, dtype=torch.bfloat16)
    with torch.no_grad():
        got = torch.cat([model(ids[:, :5], cache), model(ids[:, 5:], cache)], dim=1).float()
        want = ref(ids)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    # bf16 keeps ~3 significant digits; the error must be small against the logits' spread.
    assert (got - want).abs().max() < 0.05 * want.abs().max()


# ---------------------------------------------------------------- the KV-cache contract

@pytest.mark.parametrize("name", ["qwen3-gqa2-hd24-tied", "qwen2-gqa4-hd12", "llama-mha"])
def test_cached_decode_of_ragged_rows_equals_full_forward(name):
    """Padded prefill, lengths set per row, then token-by-token and chunked steps: each row's logits
    equal a plain causal forward over that row's own tokens."""
    cfg = CONFIGS[name]
    model = ours(cfg, seed=6)
    lens = [3, 6, 1]
    seqs = random_ids(cfg, (3, 12), seed=2)
    cache = KVCache(cfg, batch=3, max_len=16)
    got = [[] for _ in lens]
    with torch.no_grad():
        out = model(seqs[:, :max(lens)], cache)  # right-padded prefill
        cache.lengths = torch.tensor(lens)  # the padding slots are overwritten later
        for b, n in enumerate(lens):
            got[b].append(out[b, :n])
        pos = torch.tensor(lens)
        for T in (1, 1, 3, 1):  # rows stay ragged: the scatter-write path
            step_ids = torch.stack([seqs[b, pos[b]:pos[b] + T] for b in range(3)])
            out = model(step_ids, cache)
            for b in range(3):
                got[b].append(out[b])
            pos += T
        assert cache.lengths.tolist() == pos.tolist()
        for b in range(3):
            want = model(seqs[b:b + 1, :pos[b]])[0]
            torch.testing.assert_close(torch.cat(got[b]), want, atol=1e-5, rtol=0)


def test_uniform_prefill_then_one_token_steps_equal_full_forward():
    cfg = CONFIGS["qwen3-gqa4-hd20-bias"]
    model = ours(cfg, seed=7)
    ids = random_ids(cfg, (2, 10), seed=3)
    cache = KVCache(cfg, batch=2, max_len=10)
    with torch.no_grad():
        parts = [model(ids[:, :4], cache)] + [model(ids[:, t:t + 1], cache) for t in range(4, 10)]
        torch.testing.assert_close(torch.cat(parts, dim=1), model(ids), atol=1e-5, rtol=0)
    assert cache.lengths.tolist() == [10, 10]


def test_prefill_into_an_empty_cache_builds_no_mask(monkeypatch):
    """Grouped-query attention prefills with SDPA's causal kernel: the [B, 1, T, T] mask (134 MB
    for 8 prompts of 4,096 tokens) is never built; uniform one-token steps need none either."""
    from ponder.models.cache import CacheStep

    def no_mask(step):
        if not step.all_visible:
            raise AssertionError("mask built")

    cfg = CONFIGS["qwen3-gqa2-hd24-tied"]
    model = ours(cfg, seed=2)
    ids = random_ids(cfg, (3, 12), seed=4)
    with torch.no_grad():
        want = model(ids)
        cache = KVCache(cfg, batch=3, max_len=12)
        monkeypatch.setattr(CacheStep, "mask", property(no_mask))
        got = torch.cat([model(ids[:, :9], cache)] + [model(ids[:, t:t + 1], cache) for t in range(9, 12)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_select_repeats_and_reorders_rows():
    """One prompt's cache copied into several sample rows, each continuing differently."""
    cfg = CONFIGS["qwen2-gqa2-tied"]
    model = ours(cfg, seed=8)
    prompts = random_ids(cfg, (2, 5), seed=4)
    cont = random_ids(cfg, (4, 3), seed=5)
    rows = torch.tensor([1, 0, 1, 1])
    cache = KVCache(cfg, batch=2, max_len=8)
    with torch.no_grad():
        model(prompts, cache)
        cache.lengths = torch.tensor([5, 4])  # ragged: prompt 1 is one token shorter
        cache.select(rows)
        assert cache.batch == 4 and cache.lengths.tolist() == [4, 5, 4, 4]
        out = torch.cat([model(cont[:, t:t + 1], cache) for t in range(3)], dim=1)
        for r, src in enumerate(rows.tolist()):
            n = 5 if src == 0 else 4
            full = model(torch.cat([prompts[src, :n], cont[r]])[None])[0, n:]
            torch.testing.assert_close(out[r], full, atol=1e-5, rtol=0)


def test_cache_overflow_is_an_error():
    cfg = CONFIGS["llama-mha"]
    model = ours(cfg)
    cache = KVCache(cfg, batch=1, max_len=4)
    with pytest.raises(ValueError, match="max_len"):
        model(random_ids(cfg, (1, 5)), cache)


def test_right_padding_does_not_change_real_tokens_without_cache():
    cfg = CONFIGS["qwen3-mha-hd32"]
    model = ours(cfg)
    ids = random_ids(cfg, (1, 7))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(model(padded)[:, :7], model(ids), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- strict loading errors

def copy_checkpoint(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def edit_config(folder, **changes):
    d = json.loads((folder / "config.json").read_text())
    d.update(changes)
    (folder / "config.json").write_text(json.dumps(d))


def rewrite_weights(folder, edit):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(folder / "model.safetensors"))
    edit(tensors)
    save_file(tensors, str(folder / "model.safetensors"))


def load_error(folder) -> str:
    with pytest.raises(CheckpointError) as e:
        from_pretrained(folder)
    return str(e.value)


def test_unknown_architecture_names_config_and_field(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    edit_config(d, model_type="mixtral", architectures=["MixtralForCausalLM"])
    msg = load_error(d)
    assert "config.json" in msg and "model_type" in msg and "mixtral" in msg


def test_unsupported_rope_type_names_the_field(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    edit_config(d, rope_parameters={"rope_type": "longrope", "rope_theta": 1e6, "factor": 4.0})
    msg = load_error(d)
    assert "config.json" in msg and "rope_parameters.rope_type" in msg and "longrope" in msg


def test_missing_rope_scaling_field_is_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    edit_config(d, rope_parameters={"rope_type": "llama3", "rope_theta": 1e6, "factor": 8.0, "low_freq_factor": 1.0})
    msg = load_error(d)
    assert "config.json" in msg and "rope_parameters.high_freq_factor" in msg and "missing" in msg


def test_legacy_rope_scaling_spelling_is_read():
    """transformers 4.x files: a top-level rope_theta and `rope_scaling` with `type` (DeepSeek-V3's)."""
    d = CONFIGS["qwen3-yarn-rope"].to_hf_dict()
    del d["rope_parameters"]
    d["rope_scaling"] = {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0,
                         "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096}
    scaling = ModelConfig.from_hf_dict(d).rope_scaling
    assert scaling == RopeScaling("yarn", 40.0, 4096, mscale=1.0, mscale_all_dim=1.0)


def test_missing_config_field_is_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    raw = json.loads((d / "config.json").read_text())
    del raw["hidden_size"]
    (d / "config.json").write_text(json.dumps(raw))
    msg = load_error(d)
    assert "config.json" in msg and "hidden_size" in msg


def test_missing_files_are_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    (d / "model.safetensors").unlink()
    assert "model.safetensors" in load_error(d)
    (d / "config.json").unlink()
    assert "config.json" in load_error(d)
    assert "no such checkpoint folder" in load_error(tmp_path / "nowhere")


def test_truncated_weights_file_is_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) - 100])
    assert "model.safetensors" in load_error(d)
    (d / "model.safetensors").write_bytes(data[:30])  # inside the header
    assert "model.safetensors" in load_error(d)


def test_missing_tensor_is_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    rewrite_weights(d, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
    msg = load_error(d)
    assert "model.safetensors" in msg and "model.layers.1.self_attn.k_norm.weight" in msg


def test_unexpected_tensor_is_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    rewrite_weights(d, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": torch.zeros(96, 64)}))
    msg = load_error(d)
    assert "model.safetensors" in msg and "model.layers.2.mlp.up_proj.weight" in msg


def test_shape_mismatch_names_tensor_and_both_shapes(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    edit_config(d, intermediate_size=100)
    msg = load_error(d)
    assert "model.safetensors" in msg and "model.layers.0.mlp.gate_proj.weight" in msg
    assert "(96, 64)" in msg and "(100, 64)" in msg


def test_untied_config_with_tied_file_reports_missing_lm_head(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    edit_config(d, tie_word_embeddings=False)
    assert "lm_head.weight" in load_error(d)


def test_sharded_index_pointing_at_missing_shard_or_tensor(tmp_path):
    cfg = CONFIGS["llama-mha"]
    hf_model(cfg).save_pretrained(tmp_path, max_shard_size="40KB")
    index = tmp_path / "model.safetensors.index.json"
    d = json.loads(index.read_text())
    d["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors"
    index.write_text(json.dumps(d))
    msg = load_error(tmp_path)
    assert "model-00099-of-00099.safetensors" in msg
    first = sorted(tmp_path.glob("model-*.safetensors"))[0].name
    d["weight_map"]["model.norm.weight"] = first  # listed in the wrong shard
    index.write_text(json.dumps(d))
    msg = load_error(tmp_path)
    assert first in msg and "model.norm.weight" in msg


def test_tied_head_stored_anyway_must_equal_the_embedding(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    rewrite_weights(d, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    from_pretrained(d)  # loads: the stored head is the embedding
    rewrite_weights(d, lambda t: t["lm_head.weight"].add_(1.0))
    msg = load_error(d)
    assert "model.safetensors" in msg and "lm_head.weight" in msg


def test_invalid_config_json_is_named(qwen3_dir, tmp_path):
    d = copy_checkpoint(qwen3_dir, tmp_path / "c")
    (d / "config.json").write_text('{"model_type": "qwen3",')
    assert "config.json" in load_error(d)
    edit_config(copy_checkpoint(qwen3_dir, tmp_path / "e"), num_key_value_heads=3)
    msg = load_error(tmp_path / "e")
    assert "config.json" in msg and "num_key_value_heads" in msg


def test_decoder_config_validation():
    with pytest.raises(ValueError, match="num_key_value_heads"):
        replace(CONFIGS["llama-mha"], num_key_value_heads=3)
    with pytest.raises(ValueError, match="head_dim"):
        replace(CONFIGS["llama-mha"], head_dim=15)
