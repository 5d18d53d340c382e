"""Gemma 3's text decoder (gemma3_text) against transformers on random weights: logits both ways
(fp32 and bf16), gradients, sequences longer than the sliding window, and config.json round trips."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ponder.models import ConfigError, Decoder, ModelConfig, RopeScaling, from_pretrained

from hf_peer import hf_config, import_transformers, randomize  # tests/ is on sys.path under pytest

S, F = "sliding_attention", "full_attention"


def gemma(**fields) -> ModelConfig:
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, model_type="gemma3_text", hidden_act="gelu_pytorch_tanh",
                layer_types=(S, S, F), sliding_window=4, rope_theta=1_000_000.0, rope_local_theta=10_000.0,
                query_pre_attn_scalar=16.0, tie_word_embeddings=True)
    return ModelConfig(**{**base, **fields})


# Layer patterns (5:1 as released, all sliding, full first), head counts (MQA as in the 270M, GQA,
# MHA), windows from 2 to 7 (every test sequence is longer), query_pre_attn_scalar != head_dim,
# final soft-capping on and off, tied and untied heads, linear RoPE scaling on the full layers
# (as the 4B+ checkpoints have it).
CONFIGS = {
    "270m-like-mqa-5to1": gemma(num_hidden_layers=6, layer_types=(S, S, S, S, S, F), num_attention_heads=4,
                                num_key_value_heads=1, head_dim=32, sliding_window=5, query_pre_attn_scalar=32.0),
    "gqa2-softcap-untied": gemma(final_logit_softcapping=3.0, attn_logit_softcapping=50.0, tie_word_embeddings=False,
                                 query_pre_attn_scalar=24.0, sliding_window=3),
    "mha-all-sliding-hd24": gemma(num_attention_heads=2, num_key_value_heads=2, head_dim=24, layer_types=(S, S, S),
                                  sliding_window=2, rms_norm_eps=1e-5, final_logit_softcapping=30.0),
    "full-first-linear-rope": gemma(num_hidden_layers=4, layer_types=(F, S, S, F), num_attention_heads=8,
                                    num_key_value_heads=2, head_dim=8, sliding_window=7,
                                    rope_scaling=RopeScaling("linear", 8.0), rope_local_theta=5_000.0),
}


@torch.no_grad()
def randomize_gemma(model: torch.nn.Module, seed: int) -> None:
    """hf_peer.randomize, with the norms' weights drawn around Gemma's identity (0, as it scales by
    1 + weight): norms that double every activation would make bf16 noise swamp the comparison."""
    randomize(model, seed)
    for name, p in model.named_parameters():
        if "norm" in name:
            p.sub_(1.0)


def hf_model(cfg: ModelConfig, seed: int = 0):
    transformers = import_transformers()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="eager")
    randomize_gemma(model, seed)
    return model.float().eval()


def ours(cfg: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(cfg)
    randomize_gemma(model, seed)
    return model.eval()


def random_ids(cfg, shape, seed=0):
    # from 1: transformers' Gemma embedding treats id 0 (<pad>) as padding_idx, whose gradient it drops
    return torch.randint(1, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        out = model(ids) if isinstance(model, Decoder) else model(input_ids=ids).logits
    return out.float()


@pytest.mark.parametrize("name", CONFIGS)
def test_loads_transformers_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    peer = hf_model(cfg, seed=3)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert model.config == cfg
    ids = random_ids(cfg, (2, 4 * cfg.sliding_window + 3))
    torch.testing.assert_close(logits(model, ids), logits(peer, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", CONFIGS)
def test_transformers_loads_our_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    model = ours(cfg, seed=4)
    model.save_pretrained(tmp_path)
    transformers = import_transformers()
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(peer).__name__ == "Gemma3ForCausalLM"
    assert list(peer.config.layer_types) == list(cfg.layer_types)
    assert sum(p.numel() for p in peer.parameters()) == model.num_parameters()
    ids = random_ids(cfg, (3, 3 * cfg.sliding_window + 2), seed=1)
    torch.testing.assert_close(logits(peer, ids), logits(model, ids), atol=1e-4, rtol=0)
    # and back: ponder reads what transformers writes of it
    peer.save_pretrained(tmp_path / "again")
    assert from_pretrained(tmp_path / "again").config == cfg


@pytest.mark.parametrize("name", ["270m-like-mqa-5to1", "gqa2-softcap-untied"])
def test_bfloat16_logits_match_transformers_bfloat16(name):
    """Both in bf16 (the embedding scale, the norms' fp32 math and casts in transformers' order):
    ponder's bf16 logits are as close to the fp32 ones as transformers' bf16 logits are."""
    cfg = CONFIGS[name]
    model, peer = ours(cfg, seed=5), hf_model(cfg, seed=5)
    peer.load_state_dict(model.state_dict(), strict=False)  # untied: lm_head too; tied: shares the embedding
    ids = random_ids(cfg, (2, 3 * cfg.sliding_window + 1), seed=2)
    want = logits(model, ids)
    torch.testing.assert_close(logits(peer, ids), want, atol=1e-4, rtol=0)  # the same weights
    got, theirs = logits(model.to(torch.bfloat16), ids), logits(peer.to(torch.bfloat16), ids)
    spread = want.abs().max()
    assert (got - theirs).abs().max() < 0.03 * spread
    assert (got - want).abs().max() <= 1.5 * (theirs - want).abs().max() + 1e-3 * spread
    assert (got - want).abs().max() > 0  # bf16 did change something


def test_gradients_match_transformers(tmp_path):
    """The RL trainer backpropagates through the uncached forward: gradients must match too."""
    cfg = CONFIGS["gqa2-softcap-untied"]
    peer = hf_model(cfg, seed=9)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path).train()
    ids = random_ids(cfg, (2, 11), seed=6)

    def loss(out):
        return torch.log_softmax(out[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum()

    loss(model(ids)).backward()
    loss(peer(input_ids=ids).logits).backward()
    theirs = dict(peer.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad, theirs[name].grad, atol=1e-4, rtol=1e-4, msg=name)


def test_the_window_limits_what_a_sliding_layer_sees():
    """With every layer sliding, token 0 can reach position p only through layers * (window - 1)
    steps back: changing it moves the early logits and leaves the later ones exactly alone."""
    cfg = CONFIGS["mha-all-sliding-hd24"]  # 3 layers, window 2: reach 3
    model = ours(cfg, seed=1)
    ids = random_ids(cfg, (1, 9), seed=3)
    other = ids.clone()
    other[0, 0] = (ids[0, 0] % (cfg.vocab_size - 1)) + 1
    a, b = logits(model, ids), logits(model, other)
    assert (a[0, :4] - b[0, :4]).abs().amax(-1).min() > 1e-4
    assert torch.equal(a[0, 4:], b[0, 4:])
    full = replace(cfg, layer_types=(S, S, F))  # one full layer: the first token reaches everything
    a, b = logits(ours(full, seed=1), ids), logits(ours(full, seed=1), other)
    assert (a[0, 4:] - b[0, 4:]).abs().amax(-1).min() > 1e-4


def test_gemma_norms_start_at_identity_and_embedding_is_scaled():
    model = Decoder(CONFIGS["gqa2-softcap-untied"])
    layer = model.model.layers[0]
    for norm in (layer.input_layernorm, layer.post_attention_layernorm, layer.pre_feedforward_layernorm,
                 layer.post_feedforward_layernorm, layer.self_attn.q_norm, model.model.norm):
        assert norm.offset and torch.equal(norm.weight, torch.zeros_like(norm.weight))
    x = torch.randn(2, 64)
    torch.testing.assert_close(layer.input_layernorm(x), x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


# ---------------------------------------------------------------- config.json

def test_config_round_trips_and_reads_legacy_keys():
    for cfg in CONFIGS.values():
        assert ModelConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg
    # a transformers 4.x file (as google/gemma-3-270m's): top-level bases and a pattern, not layer_types
    legacy = dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=262144, hidden_size=640,
                  intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
                  head_dim=256, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=256,
                  rope_theta=1000000.0, rope_local_base_freq=10000.0, rope_scaling=None, sliding_window=512,
                  _sliding_window_pattern=6, attn_logit_softcapping=None, final_logit_softcapping=None,
                  max_position_embeddings=32768, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    cfg = ModelConfig.from_hf_dict(legacy)
    assert cfg.layer_types == ((S,) * 5 + (F,)) * 3
    assert (cfg.rope_theta, cfg.rope_local_theta, cfg.sliding_window) == (1e6, 1e4, 512)
    assert cfg.tie_word_embeddings and cfg.attention_scale == 256 ** -0.5 and cfg.bos_token_id == 2
    # the multimodal config: its text_config is the decoder
    multi = dict(model_type="gemma3", architectures=["Gemma3ForConditionalGeneration"],
                 text_config={k: v for k, v in legacy.items() if k not in ("architectures", "model_type")},
                 vision_config={"model_type": "siglip_vision_model"})
    assert ModelConfig.from_hf_dict(multi) == cfg


def test_transformers_reads_rope_bases_per_layer_type():
    cfg = CONFIGS["full-first-linear-rope"]
    rope = hf_config(cfg).rope_parameters
    assert rope["sliding_attention"]["rope_theta"] == 5_000.0 and rope["full_attention"]["rope_theta"] == 1e6
    assert rope["full_attention"]["rope_type"] == "linear" and rope["full_attention"]["factor"] == 8.0


def test_bad_gemma_configs_name_the_field():
    d = CONFIGS["270m-like-mqa-5to1"].to_hf_dict()
    with pytest.raises(ConfigError, match="hidden_activation"):
        ModelConfig.from_hf_dict({**d, "hidden_activation": "relu"})
    with pytest.raises(ConfigError, match="layer_types"):
        ModelConfig.from_hf_dict({**d, "layer_types": [S, F]})
    with pytest.raises(ConfigError, match="use_bidirectional_attention"):
        ModelConfig.from_hf_dict({**d, "use_bidirectional_attention": True})
    rope = {**d["rope_parameters"], S: {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}}
    with pytest.raises(ConfigError, match="sliding_attention"):
        ModelConfig.from_hf_dict({**d, "rope_parameters": rope})
    with pytest.raises(ConfigError, match="sliding_window"):  # a window is Gemma's only
        replace(CONFIGS["270m-like-mqa-5to1"], model_type="qwen3")


def test_soft_capped_attention_matches_transformers_eager():
    """layers.sdpa's soft-capped path (Gemma 2's attention; transformers' Gemma 3 never applies
    attn_logit_softcapping, and neither does ponder's) against transformers' eager attention."""
    import_transformers()
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    from ponder.models.layers import sdpa, window_causal_mask

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 9, 8, generator=g) * 3 for h in (4, 2, 2))
    mask = window_causal_mask(9, 4, q.device)
    module = torch.nn.Module()
    module.num_key_value_groups, module.training = 2, False
    want, _ = eager_attention_forward(module, q, k, v, torch.zeros(9, 9).masked_fill(~mask, float("-inf")),
                                      scaling=0.3, softcap=2.0)
    got = sdpa(q, k, v, mask=mask, scale=0.3, softcap=2.0)
    torch.testing.assert_close(got.transpose(1, 2), want, atol=1e-5, rtol=0)
    assert (sdpa(q, k, v, mask=mask, scale=0.3) - got).abs().max() > 0.1  # the cap did something


# ---------------------------------------------------------------- the real vocabulary

def real_size_tokenizer():
    """The multiply task's characters and one more character per id up to Gemma 3's 262,144, so
    every sampled id decodes to text a reward can read."""
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    extra = 262_144 - 4 - len(multiply.ALPHABET)  # four special tokens
    tok = build_char_tokenizer(multiply.ALPHABET + "".join(chr(0x10000 + i) for i in range(extra)))
    assert tok.vocab_size == 262_144
    return tok


def test_one_grpo_step_at_the_real_vocabulary_through_the_chunked_loss_head(tmp_path, monkeypatch):
    """Gemma 3's 262,144-entry vocabulary (narrow layers so it runs in seconds): one GRPO step
    samples, scores through the loss head in chunks of 16 positions (never [B, T, vocab]), and
    moves the weights, final soft-capping included."""
    from ponder.models import logprobs as head
    from ponder.rl import RLConfig, train_rl
    from ponder.tasks import multiply

    vocab = 262_144
    tok = real_size_tokenizer()
    cfg = gemma(vocab_size=vocab, hidden_size=32, intermediate_size=32, num_hidden_layers=2, layer_types=(S, F),
                num_attention_heads=2, num_key_value_heads=1, head_dim=16, final_logit_softcapping=30.0)
    model = Decoder(cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    chunks = []
    real_logits = head._logits  # each chunk's logits in the forward pass
    monkeypatch.setattr(head, "_logits", lambda h, *rest: (chunks.append(h.shape[0]), real_logits(h, *rest))[1])

    def high_chars(prompt, completion, problem):  # random weights: any reward with variance will do
        return sum(ord(c) >= 0x28000 for c in completion) / max(len(completion), 1)

    rl = RLConfig(model="", output_dir=str(tmp_path), prompts_per_step=2, group_size=4, max_new_tokens=6, steps=1,
                  lr=1e-2, micro_batch_size=8, eval_every=0, save_every=0, rollback=False, seed=0,
                  loss_chunk_mb=16 * 4 * vocab / 2**20)  # 16 positions of fp32 logits per chunk
    summary = train_rl(rl, model=model, tokenizer=tok, problems=multiply.generate("train", 2, seed=0),
                       rewards=[high_chars], progress=False)
    assert summary["steps"] == 1
    assert chunks and max(chunks) == 16 and len(chunks) > 2
    moved = [name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])]
    assert "model.embed_tokens.weight" in moved and "model.layers.0.post_feedforward_layernorm.weight" in moved


def test_activation_checkpointing_gives_the_same_gradients():
    """The recomputed blocks include Gemma's norms after attention and after the MLP."""
    cfg = CONFIGS["270m-like-mqa-5to1"]
    ids = random_ids(cfg, (2, 13), seed=8)
    grads = []
    for checkpointing in (False, True):
        model = ours(cfg, seed=2).train()
        model.set_gradient_checkpointing(checkpointing)
        model(ids).logsumexp(-1).sum().backward()
        grads.append({name: p.grad for name, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert g.abs().max() > 0, name
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_bench_memory_runs_on_a_gemma_checkpoint(tmp_path, capsys, monkeypatch):
    """`ponder bench memory --model DIR` on a Gemma 3 folder (a small vocabulary: the real one is
    the GRPO test's): the step runs in its own process and reports a row (no figure is checked:
    that is the bench's job)."""
    import argparse

    from ponder.bench import memory
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(multiply.ALPHABET)
    cfg = gemma(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=32, num_hidden_layers=2, layer_types=(S, F),
                num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    Decoder(cfg).save_pretrained(tmp_path / "gemma")
    tok.save_pretrained(tmp_path / "gemma")
    args = argparse.Namespace(child=False, model=str(tmp_path / "gemma"), layers=2, prompts=1, group=2,
                              max_new_tokens=4, steps=1, variants="chunked", head=False, device="cpu", json=True)

    def in_process(root, args, variant, extra):  # the child the bench would spawn, without the process start
        child = argparse.Namespace(**{**vars(args), "child": True, "root": str(root), "variant": variant})
        assert memory.child(child) == 0
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(memory, "spawn", in_process)
    assert memory.main(args) == 0
    [row] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert row["variant"] == "chunked" and "error" not in row and row["peak_gib"] > 0


def test_a_bare_gemma_config_takes_transformers_defaults(tmp_path):
    """ModelConfig(model_type="gemma3_text") with the Gemma fields left out is what transformers'
    Gemma3TextConfig makes of the same fields: GeGLU, every sixth layer full, window 4096, local
    base 10,000, query_pre_attn_scalar 256; and it survives a save and load unchanged."""
    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=7, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, model_type="gemma3_text", rope_theta=1e6)
    assert cfg.hidden_act == "gelu_pytorch_tanh" and cfg.layer_types == (S,) * 5 + (F, S)
    assert (cfg.sliding_window, cfg.rope_local_theta, cfg.attention_scale) == (4096, 10_000.0, 256 ** -0.5)
    transformers = import_transformers()
    peer = transformers.Gemma3TextConfig(vocab_size=64, hidden_size=32, intermediate_size=32, num_hidden_layers=7,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    assert list(peer.layer_types) == list(cfg.layer_types) and peer.sliding_window == cfg.sliding_window
    assert peer.rope_parameters[S]["rope_theta"] == cfg.rope_local_theta
    assert peer.query_pre_attn_scalar == cfg.query_pre_attn_scalar and peer.hidden_activation == cfg.hidden_act
    ours(cfg).save_pretrained(tmp_path)
    assert from_pretrained(tmp_path).config == cfg
