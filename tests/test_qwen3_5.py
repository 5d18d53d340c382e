"""Qwen3.5's text decoder (qwen3_5_text: Gated DeltaNet beside gated full attention) against
transformers on random weights: logits both ways (fp32 and bf16), gradients, the chunked delta
rule against the recurrent one, the fixed-size cache against the uncached forward, the engine
against transformers' generate, config.json round trips, and training (GRPO at the real
vocabulary through the chunked head, activation checkpointing, LoRA, SFT)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ponder.models import ConfigError, Decoder, KVCache, ModelConfig, from_pretrained
from ponder.models.config import LinearAttentionConfig, MoEConfig
from ponder.models.linear_attention import chunked_delta_rule, l2norm, recurrent_delta_rule

from hf_peer import hf_config, import_transformers, randomize  # tests/ is on sys.path under pytest

L, F = "linear_attention", "full_attention"


def qwen3_5(linear: LinearAttentionConfig | None = None, **fields) -> ModelConfig:
    base = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, model_type="qwen3_5_text", layer_types=(L, L, L, F),
                rope_theta=10_000.0)
    linear = linear or LinearAttentionConfig(conv_kernel_dim=4, key_head_dim=8, value_head_dim=12,
                                             num_key_heads=2, num_value_heads=4)
    return ModelConfig(**{**base, **fields}, linear=linear)


# Layer patterns (3:1 as released, full first, all linear, all full), head counts (GQA, MHA, MQA;
# one key head for three value heads), conv kernels 2 to 4, rotated fractions 1/4 to 1, tied heads.
CONFIGS = {
    "3to1-gqa-k4": qwen3_5(),
    "full-first-mha-k2-half-rope-tied": qwen3_5(
        num_hidden_layers=3, layer_types=(F, L, L), num_attention_heads=2, num_key_value_heads=2, head_dim=32,
        partial_rotary_factor=0.5, tie_word_embeddings=True,
        linear=LinearAttentionConfig(conv_kernel_dim=2, key_head_dim=16, value_head_dim=16, num_key_heads=2,
                                     num_value_heads=2)),
    "all-linear-k3-1key-3values": qwen3_5(
        num_hidden_layers=2, layer_types=(L, L), rms_norm_eps=1e-5,
        linear=LinearAttentionConfig(conv_kernel_dim=3, key_head_dim=16, value_head_dim=8, num_key_heads=1,
                                     num_value_heads=3)),
    "all-full-mqa-whole-rope": qwen3_5(num_hidden_layers=2, layer_types=(F, F), num_attention_heads=4,
                                       num_key_value_heads=1, head_dim=8, partial_rotary_factor=1.0),
    # Qwen3.5-MoE: every MLP routed (ponder's SparseMoE) plus one sigmoid-gated shared expert
    "moe-4experts-top2-shared": qwen3_5(
        model_type="qwen3_5_moe_text", intermediate_size=48,
        moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True,
                      shared_expert_intermediate_size=48)),
}


@torch.no_grad()
def randomize_qwen3_5(model: torch.nn.Module, seed: int) -> None:
    """hf_peer.randomize, with the 1 + weight norms drawn around the identity (0); the gated norm
    of the linear layers scales by its weight itself, so it stays around 1."""
    randomize(model, seed)
    for name, p in model.named_parameters():
        if "norm" in name and "linear_attn.norm" not in name:
            p.sub_(1.0)


def hf_model(cfg: ModelConfig, seed: int = 0):
    transformers = import_transformers()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(hf_config(cfg), attn_implementation="eager")
    randomize_qwen3_5(model, seed)
    return model.float().eval()


def ours(cfg: ModelConfig, seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    model = Decoder(cfg)
    randomize_qwen3_5(model, seed)
    return model.eval()


def random_ids(cfg, shape, seed=0):
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        out = model(ids) if isinstance(model, Decoder) else model(input_ids=ids, use_cache=False).logits
    return out.float()


@pytest.mark.parametrize("name", CONFIGS)
def test_loads_transformers_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    peer = hf_model(cfg, seed=3)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path)
    assert model.config == cfg
    ids = random_ids(cfg, (2, 70))  # more than one 64-token chunk of the delta rule
    torch.testing.assert_close(logits(model, ids), logits(peer, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["3to1-gqa-k4", "full-first-mha-k2-half-rope-tied", "moe-4experts-top2-shared"])
def test_transformers_loads_our_checkpoint_with_same_logits(name, tmp_path):
    cfg = CONFIGS[name]
    model = ours(cfg, seed=4)
    model.save_pretrained(tmp_path)
    transformers = import_transformers()
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(peer).__name__ == cfg.architecture
    assert list(peer.config.layer_types) == list(cfg.layer_types)
    assert sum(p.numel() for p in peer.parameters()) == model.num_parameters()
    ids = random_ids(cfg, (3, 19), seed=1)
    torch.testing.assert_close(logits(peer, ids), logits(model, ids), atol=1e-4, rtol=0)
    peer.save_pretrained(tmp_path / "again")
    assert from_pretrained(tmp_path / "again").config == cfg


@pytest.mark.parametrize("name", ["3to1-gqa-k4", "all-linear-k3-1key-3values"])
def test_bfloat16_logits_match_transformers_bfloat16(name):
    """Both in bf16: ponder's bf16 logits are as close to the fp32 ones as transformers' are."""
    cfg = CONFIGS[name]
    model, peer = ours(cfg, seed=5), hf_model(cfg, seed=5)
    peer.load_state_dict(model.state_dict(), strict=False)
    ids = random_ids(cfg, (2, 70), seed=2)
    want = logits(model, ids)
    torch.testing.assert_close(logits(peer, ids), want, atol=1e-4, rtol=0)  # the same weights
    got, theirs = logits(model.to(torch.bfloat16), ids), logits(peer.to(torch.bfloat16), ids)
    spread = want.abs().max()
    assert (got - theirs).abs().max() < 0.03 * spread
    assert (got - want).abs().max() <= 1.5 * (theirs - want).abs().max() + 1e-3 * spread
    assert (got - want).abs().max() > 0  # bf16 did change something


@pytest.mark.parametrize("name", ["3to1-gqa-k4", "full-first-mha-k2-half-rope-tied", "moe-4experts-top2-shared"])
def test_gradients_match_transformers(name, tmp_path):
    """The RL trainer backpropagates through the uncached forward (the chunked rule): gradients
    of every weight, A_log, dt_bias and the convolution included, must match too."""
    cfg = CONFIGS[name]
    peer = hf_model(cfg, seed=9)
    peer.save_pretrained(tmp_path)
    model = from_pretrained(tmp_path).train()
    ids = random_ids(cfg, (2, 11), seed=6)

    def loss(out):
        return torch.log_softmax(out[:, :-1], -1).gather(-1, ids[:, 1:, None]).sum()

    loss(model(ids)).backward()
    loss(peer(input_ids=ids, use_cache=False).logits).backward()
    theirs = dict(peer.named_parameters())
    for pname, p in model.named_parameters():
        assert p.grad.abs().max() > 0, pname
        torch.testing.assert_close(p.grad, theirs[pname].grad, atol=1e-4, rtol=1e-4, msg=pname)


@pytest.mark.parametrize("T, chunk", [(1, 64), (5, 4), (64, 64), (150, 64), (37, 16)])
def test_chunked_delta_rule_equals_the_recurrent_one(T, chunk):
    """From a nonzero state, across chunk boundaries and partial chunks: same outputs, same final state."""
    g = torch.Generator().manual_seed(T)
    B, H, Dk, Dv = 2, 3, 8, 5
    q = l2norm(torch.randn(B, H, T, Dk, generator=g)) * Dk ** -0.5
    k = l2norm(torch.randn(B, H, T, Dk, generator=g))
    v = torch.randn(B, H, T, Dv, generator=g)
    decay = -torch.rand(B, H, T, generator=g) * 2  # log decays in (-2, 0]
    beta = torch.rand(B, H, T, generator=g)
    state = torch.randn(B, H, Dk, Dv, generator=g)
    want, want_state = recurrent_delta_rule(q, k, v, decay, beta, state)
    got, got_state = chunked_delta_rule(q, k, v, decay, beta, state, chunk=chunk)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_state, want_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["3to1-gqa-k4", "all-linear-k3-1key-3values"])
def test_ragged_prefill_then_decode_equals_the_uncached_forward(name):
    """Right-padded prompts of different lengths (the padding must move neither the conv inputs
    nor the recurrent state), then token by token with one token per row, after copying the
    rows as the engine does: every step's logits equal those of one uncached forward."""
    cfg = CONFIGS[name]
    model = ours(cfg, seed=7)
    lengths = torch.tensor([3, 9, 1])
    full = random_ids(cfg, (3, 9 + 6), seed=3)
    cache = KVCache(cfg, 3, 32)
    batch = full[:, :9].clone()
    for b, n in enumerate(lengths.tolist()):
        batch[b, n:] = 0  # padding whose values must not matter
    with torch.no_grad():
        hidden = model.hidden(batch, cache, lengths)
        cache.select([0, 1, 1, 2])  # two samples of the second prompt
        rows = torch.tensor([0, 1, 1, 2])
        got = [model.logits(hidden[rows, lengths[rows] - 1])]
        for t in range(6):
            token = full[rows, lengths[rows] + t]
            got.append(model(token[:, None], cache)[:, -1])
        for r, b in enumerate(rows.tolist()):
            n = int(lengths[b])
            want = model(full[b:b + 1, : n + 6])[0, n - 1:]
            torch.testing.assert_close(torch.stack([x[r] for x in got]), want, atol=1e-4, rtol=1e-4)
    assert cache.lengths.tolist() == [9, 15, 15, 7]


def test_linear_layers_cache_a_fixed_size_state():
    cfg = CONFIGS["3to1-gqa-k4"]
    lin = cfg.linear
    cache = KVCache(cfg, 2, 100)
    assert cache.k[0].numel() == 0 and cache.k[3].shape == (2, 2, 100, 16)
    assert cache.conv[0].shape == (2, lin.conv_dim, 3) and cache.state[0].shape == (2, 4, 8, 12)
    assert cache.state[0].dtype == torch.float32 and cache.conv[3] is None
    state = 3 * (lin.conv_dim * 3 * 4 + 4 * 8 * 12 * 4)  # three linear layers: conv inputs + state
    per_token = 2 * 2 * 16 * 4  # the full layer's K and V
    for n in (1, 1000, 32_000):
        assert KVCache.bytes_for(cfg, n) == state + per_token * n
    assert cache.nbytes == 2 * (state + per_token * 100)
    bf16 = KVCache(cfg, 1, 10, dtype=torch.bfloat16)
    assert bf16.state[0].dtype == torch.float32 and bf16.conv[0].dtype == torch.bfloat16


def test_engine_greedy_tokens_equal_transformers_generate():
    """Ragged prompts, two samples per prompt, on the fused decode step and on Decoder.forward:
    the same tokens as transformers' generate, one prompt at a time."""
    from ponder.engine import Engine, SamplingParams
    from ponder.models.decode import decode_path

    cfg = CONFIGS["3to1-gqa-k4"]
    model, peer = ours(cfg, seed=1), hf_model(cfg, seed=1)
    peer.load_state_dict(model.state_dict(), strict=False)
    peer.generation_config.eos_token_id = None
    assert decode_path(model) != "plain"
    prompts = [random_ids(cfg, (n,), seed=n).tolist() for n in (3, 8, 14)]
    params = SamplingParams(max_new_tokens=12, temperature=0.0, stop_token_ids=())
    outs = Engine(model, max_rows=6).generate(prompts, n=2, params=params)
    with pytest.MonkeyPatch.context() as mp:  # Decoder.forward gives the same
        mp.setenv("PONDER_DECODE", "plain")
        plain = Engine(model, max_rows=6).generate(prompts, n=2, params=params)
    assert [[c.token_ids for c in group] for group in plain] == [[c.token_ids for c in group] for group in outs]
    for prompt, (first, second) in zip(prompts, outs):
        with torch.no_grad():
            want = peer.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):]
        assert first.token_ids == second.token_ids == want.tolist()
    assert len({tuple(o[0].token_ids) for o in outs}) == 3


def test_config_round_trips_reads_the_multimodal_config_and_takes_defaults():
    for cfg in CONFIGS.values():
        assert ModelConfig.from_hf_dict(json.loads(json.dumps(cfg.to_hf_dict()))) == cfg
    # as Qwen/Qwen3.5's config.json has it: the text decoder inside a multimodal config, RoPE with
    # mrope settings (text positions are the same on all three axes: plain RoPE)
    text = dict(vocab_size=248320, hidden_size=1024, intermediate_size=3584, num_hidden_layers=8,
                num_attention_heads=8, num_key_value_heads=2, head_dim=256, linear_conv_kernel_dim=4,
                linear_key_head_dim=128, linear_value_head_dim=128, linear_num_key_heads=16,
                linear_num_value_heads=16, full_attention_interval=4, rms_norm_eps=1e-6, hidden_act="silu",
                rope_parameters={"rope_type": "default", "rope_theta": 10_000_000, "partial_rotary_factor": 0.25,
                                 "mrope_section": [11, 11, 10], "mrope_interleaved": True},
                model_type="qwen3_5_text", eos_token_id=248044)
    multi = dict(model_type="qwen3_5", architectures=["Qwen3_5ForConditionalGeneration"], text_config=text,
                 vision_config={"model_type": "qwen3_5", "depth": 2}, tie_word_embeddings=True)
    cfg = ModelConfig.from_hf_dict(multi)
    assert cfg.model_type == "qwen3_5_text" and cfg.tie_word_embeddings and cfg.eos_token_id == 248044
    assert cfg.layer_types == (L, L, L, F) * 2 and cfg.rope_dim == 64 and cfg.rope_theta == 1e7
    assert cfg.linear == LinearAttentionConfig(4, 128, 128, 16, 16)
    # a bare config takes transformers' Qwen3_5TextConfig defaults, as a file read back does
    bare = ModelConfig(vocab_size=32, hidden_size=16, intermediate_size=16, num_hidden_layers=4,
                       num_attention_heads=2, model_type="qwen3_5_text", head_dim=16)
    assert bare.layer_types == (L, L, L, F) and bare.partial_rotary_factor == 0.25
    assert bare.linear == LinearAttentionConfig() and ModelConfig.from_hf_dict(bare.to_hf_dict()) == bare
    assert list(hf_config(bare).layer_types) == list(bare.layer_types)
    # the sparse family: no dense intermediate_size in its file, every layer routed
    moe_text = {k: v for k, v in text.items() if k != "intermediate_size"}
    moe_text.update(model_type="qwen3_5_moe_text", num_experts=8, num_experts_per_tok=2, moe_intermediate_size=64,
                    shared_expert_intermediate_size=96)
    sparse = ModelConfig.from_hf_dict(dict(model_type="qwen3_5_moe", text_config=moe_text))
    assert sparse.model_type == "qwen3_5_moe_text" and sparse.architecture == "Qwen3_5MoeForCausalLM"
    assert sparse.moe.shared_expert_intermediate_size == 96 and sparse.moe.norm_topk_prob
    assert all(sparse.is_sparse_layer(i) for i in range(8))


def test_bad_qwen3_5_configs_name_the_field():
    d = CONFIGS["3to1-gqa-k4"].to_hf_dict()
    with pytest.raises(ConfigError, match="layer_types"):
        ModelConfig.from_hf_dict({**d, "layer_types": [L, "sliding_attention", L, F]})
    with pytest.raises(ConfigError, match="linear_num_value_heads"):
        ModelConfig.from_hf_dict({**d, "linear_num_value_heads": 3})
    with pytest.raises(ConfigError, match="partial_rotary_factor"):
        ModelConfig.from_hf_dict({**d, "rope_parameters": {**d["rope_parameters"], "partial_rotary_factor": 0.0}})
    with pytest.raises(ConfigError, match="linear"):  # linear attention is Qwen3.5's only
        replace(CONFIGS["3to1-gqa-k4"], model_type="qwen3", layer_types=None)


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = CONFIGS["3to1-gqa-k4"]
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


def test_a_multimodal_checkpoint_loads_its_text_decoder_and_skips_the_vision_tower(tmp_path):
    """As Qwen/Qwen3.5-* ship: config.json of model_type qwen3_5 with a text_config, the decoder's
    tensors under model.language_model., the vision tower under model.visual., an mtp head."""
    from safetensors.torch import load_file, save_file

    cfg = CONFIGS["3to1-gqa-k4"]
    model = ours(cfg, seed=11)
    model.save_pretrained(tmp_path / "text")
    tensors = load_file(tmp_path / "text" / "model.safetensors")
    multi = {("model.language_model." + k[len("model."):] if k.startswith("model.") else k): v
             for k, v in tensors.items()}
    multi["model.visual.blocks.0.attn.qkv.weight"] = torch.zeros(4, 4)
    multi["mtp.fc.weight"] = torch.zeros(4, 4)
    (tmp_path / "multi").mkdir()
    save_file(multi, tmp_path / "multi" / "model.safetensors")
    text = {k: v for k, v in cfg.to_hf_dict().items() if k != "architectures"}
    (tmp_path / "multi" / "config.json").write_text(json.dumps(dict(
        model_type="qwen3_5", architectures=["Qwen3_5ForConditionalGeneration"], text_config=text,
        vision_config={"model_type": "qwen3_5_vision", "depth": 1})))
    with pytest.warns(UserWarning, match="vision tower"):
        loaded = from_pretrained(tmp_path / "multi")
    assert loaded.config == cfg
    ids = random_ids(cfg, (1, 9))
    torch.testing.assert_close(logits(loaded, ids), logits(model, ids), atol=0, rtol=0)


def test_one_grpo_step_at_the_real_vocabulary_through_the_chunked_loss_head(tmp_path, monkeypatch):
    """Qwen3.5's 248,320-entry vocabulary (narrow layers so it runs in seconds), activation
    checkpointing on: one GRPO step samples (the engine on Decoder.forward), scores through the loss
    head in chunks of 16 positions (never [B, T, vocab]), and moves the linear layers' weights too."""
    from ponder.models import logprobs as head
    from ponder.rl import RLConfig, train_rl
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    vocab = 248_320
    extra = vocab - 4 - len(multiply.ALPHABET)  # four special tokens
    tok = build_char_tokenizer(multiply.ALPHABET + "".join(chr(0x10000 + i) for i in range(extra)))
    cfg = qwen3_5(vocab_size=vocab, hidden_size=32, intermediate_size=32, num_hidden_layers=2, layer_types=(L, F),
                  num_attention_heads=2, num_key_value_heads=1, head_dim=16)
    torch.manual_seed(0)
    model = Decoder(cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    chunks = []
    real_logits = head._logits  # each chunk's logits in the forward pass
    monkeypatch.setattr(head, "_logits", lambda h, *rest: (chunks.append(h.shape[0]), real_logits(h, *rest))[1])

    def high_chars(prompt, completion, problem):  # random weights: any reward with variance will do
        return sum(ord(c) >= 0x28000 for c in completion) / max(len(completion), 1)

    rl = RLConfig(model="", output_dir=str(tmp_path), prompts_per_step=2, group_size=4, max_new_tokens=6, steps=1,
                  lr=1e-2, micro_batch_size=8, eval_every=0, save_every=0, rollback=False, seed=0,
                  gradient_checkpointing=True, loss_chunk_mb=16 * 4 * vocab / 2**20)
    summary = train_rl(rl, model=model, tokenizer=tok, problems=multiply.generate("train", 2, seed=0),
                       rewards=[high_chars], progress=False)
    assert summary["steps"] == 1
    assert chunks and max(chunks) == 16 and len(chunks) > 2
    moved = {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}
    for name in ("model.embed_tokens.weight", "model.layers.0.linear_attn.in_proj_qkv.weight",
                 "model.layers.0.linear_attn.conv1d.weight", "model.layers.0.linear_attn.A_log",
                 "model.layers.1.self_attn.q_proj.weight"):
        assert name in moved, name


@pytest.fixture(scope="module")
def sft_base(tmp_path_factory):
    """A Qwen3.5-shaped checkpoint with a character tokenizer, and prompt/completion records."""
    from ponder.tasks import multiply
    from ponder.tokenizer import build_char_tokenizer

    root = tmp_path_factory.mktemp("qwen3_5_sft")
    tok = build_char_tokenizer(multiply.ALPHABET)
    ours(qwen3_5(vocab_size=tok.vocab_size, num_hidden_layers=2, layer_types=(L, F)), seed=0).save_pretrained(root / "init")
    tok.save_pretrained(root / "init")
    with open(root / "pc.jsonl", "w") as f:
        for p in multiply.generate("train", 8, seed=0):
            f.write(json.dumps({"prompt": p.prompt, "completion": multiply.sft_text(p, scratchpad=False)}) + "\n")
    return root


@pytest.mark.parametrize("lora_targets", [None, "default", "with-linear-attention"])
def test_sft_trains_a_qwen3_5_model_fully_or_through_lora(sft_base, tmp_path, lora_targets):
    """SFT lowers the loss; LoRA's default targets (attention and MLP projections by their names)
    adapt the full-attention layers and every MLP but not the Gated DeltaNet projections, which
    are adapted when named (in_proj_qkv, in_proj_z, out_proj)."""
    from ponder.runtime.lora import LoRAConfig
    from ponder.sft import SFTConfig, train_sft

    lora = None
    if lora_targets == "default":
        lora = LoRAConfig(r=4)
    elif lora_targets == "with-linear-attention":
        lora = LoRAConfig(r=4, target_modules=LoRAConfig().target_modules + ["in_proj_qkv", "in_proj_z", "out_proj"])
    cfg = SFTConfig(model=str(sft_base / "init"), data=str(sft_base / "pc.jsonl"), batch_size=4, micro_batch_size=2,
                    steps=6, lr=1e-2, save_every=0, output_dir=str(tmp_path), lora=lora, gradient_checkpointing=True,
                    device="cpu")
    summary = train_sft(cfg, progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert summary["steps"] == 6 and losses[-1] < losses[0]
    if lora is not None:
        from safetensors.torch import load_file

        names = list(load_file(tmp_path / "model" / "adapter" / "adapter_model.safetensors"))
        assert any("layers.1.self_attn.q_proj" in n for n in names) and any("layers.0.mlp.up_proj" in n for n in names)
        assert any("linear_attn.in_proj_qkv" in n for n in names) == (lora_targets == "with-linear-attention")


def test_bench_generate_runs_the_hybrid_against_transformers(capsys):
    """`ponder bench generate --arch qwen3_5` on a tiny shape (three linear layers, one full): both
    rates, and the cache of a sequence: the full layer's K/V plus the linear layers' fixed state."""
    from ponder.cli import main

    assert main(["bench", "generate", "--arch", "qwen3_5", "--hidden", "32", "--layers", "4", "--heads", "2",
                 "--kv-heads", "1", "--vocab", "64", "--batch", "2", "--prompt-len", "4",
                 "--new-tokens", "3", "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["shape"]["arch"] == "qwen3_5_text" and result["decode_path"] != "plain"
    assert result["ponder_tok_s"] > 0 and result["transformers_tok_s"] > 0
    assert result["cache_bytes_per_token"] == 1 * 2 * 16 * 4  # one full layer, one KV head of 16, fp32
    # per linear layer: conv inputs [q | k | v] = 16 + 16 + 2 x 16 channels x 3, and 2 value heads x 16 x 16 of state
    fixed = 3 * ((16 + 16 + 2 * 16) * 3 * 4 + 2 * 16 * 16 * 4)
    assert result["cache_bytes_per_sequence"] == fixed + 7 * result["cache_bytes_per_token"]


@pytest.mark.parametrize("name", ["3to1-gqa-k4", "full-first-mha-k2-half-rope-tied", "moe-4experts-top2-shared"])
@pytest.mark.parametrize("path", ["unpacked", "torch-ops", "packed"])
def test_decode_step_equals_the_model(name, path):
    """The engine's fused decode step on the hybrid (the mixers as the model's modules, the
    1 + weight norms fused, the MLP's folded into its packed matmul): ragged rows, then a row copy;
    the same logits and the same conv and recurrent states as Decoder.forward."""
    from ponder.models.decode import DecodeStep, _packings

    cfg = CONFIGS[name]
    model = ours(cfg, seed=12)
    packed = sorted(_packings(model.device))
    if path == "packed" and not packed:
        pytest.skip("no weight packing on this machine")
    step = DecodeStep(model, packed[0] if path == "packed" else "unpacked")
    if path == "torch-ops":
        step.kernels = None
    lens = torch.tensor([2, 7, 4])
    prompt = random_ids(cfg, (3, 7), seed=4)
    caches = [KVCache(cfg, 3, 20) for _ in range(2)]
    with torch.no_grad():
        for cache in caches:
            model.hidden(prompt, cache, lens)
        for t in range(8):
            if t == 5:
                for cache in caches:
                    cache.select([1, 1, 0])
            tokens = random_ids(cfg, (3,), seed=30 + t)
            want = model(tokens[:, None], caches[0])[:, -1]
            torch.testing.assert_close(step(tokens, caches[1]), want, atol=1e-5, rtol=0)
    for want, got in zip(caches[0].state + caches[0].conv + caches[0].k, caches[1].state + caches[1].conv + caches[1].k):
        if want is not None:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_bf16_decode_step_stays_close_to_the_model():
    from ponder.models.decode import DecodeStep

    cfg = CONFIGS["3to1-gqa-k4"]
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


def test_the_state_after_a_ragged_prefill_is_each_prompts_own():
    """A long prompt (more than one 64-token chunk) batched with a short one, right-padded: each
    row's conv inputs and recurrent state equal those of the prompt prefilled alone, and those of
    the same prompt prefilled in two pieces."""
    cfg = CONFIGS["3to1-gqa-k4"]
    model = ours(cfg, seed=21)
    ids = random_ids(cfg, (2, 75), seed=9)
    lengths = torch.tensor([75, 5])
    batched = KVCache(cfg, 2, 80)
    with torch.no_grad():
        model.hidden(ids, batched, lengths)
        for row, n in enumerate(lengths.tolist()):
            alone, pieces = KVCache(cfg, 1, 80), KVCache(cfg, 1, 80)
            model(ids[row:row + 1, :n], alone)
            model(ids[row:row + 1, :n // 2], pieces)
            model(ids[row:row + 1, n // 2:n], pieces)
            for layer in range(cfg.num_hidden_layers):
                if cfg.is_linear_layer(layer):
                    for other in (alone, pieces):
                        torch.testing.assert_close(batched.conv[layer][row], other.conv[layer][0], atol=1e-5, rtol=0)
                        torch.testing.assert_close(batched.state[layer][row], other.state[layer][0],
                                                   atol=1e-5, rtol=1e-5)
    assert batched.state[0][1].abs().max() > 0 and not torch.equal(batched.state[0][0], batched.state[0][1])
