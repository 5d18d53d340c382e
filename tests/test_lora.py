"""LoRA (ponder.runtime.lora): config keys, base frozen and unchanged at step 0, the adapter-disabled
reference, the engine sampling from base + adapter, PEFT's files loaded by peft onto transformers,
the merged checkpoint, and what MoE / MLA models can target."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ponder.config import ConfigError, from_dict, load_config
from ponder.engine import Engine, SamplingParams
from ponder.models import Decoder, MLAConfig, ModelConfig, MoEConfig, from_pretrained
from ponder.models.decode import DecodeStep
from ponder.runtime.lora import (LoRAConfig, adapter_disabled, apply_lora, load_adapter, merged_state_dict,
                                 save_adapter, save_merged)

from hf_peer import import_transformers, randomize  # tests/ is on sys.path under pytest

peft = pytest.importorskip("peft")

QWEN3 = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=8)
QWEN3_TIED = ModelConfig(vocab_size=53, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, attention_bias=True,
                         tie_word_embeddings=True)
# MLA with query compression, a dense first layer, then routed + shared experts.
DEEPSEEK = ModelConfig(vocab_size=71, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                       model_type="deepseek_v3", head_dim=4,
                       moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                     norm_topk_prob=True, n_shared_experts=1, routed_scaling_factor=2.5, n_group=2,
                                     topk_group=1, first_k_dense_replace=1),
                       mla=MLAConfig(kv_lora_rank=12, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=6,
                                     q_lora_rank=10))
MLA_TARGETS = ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "o_proj"]


def model_of(cfg: ModelConfig, seed: int = 0) -> Decoder:
    model = Decoder(cfg)
    randomize(model, seed)  # norms and biases away from 1 and 0 too
    return model.eval()


@torch.no_grad()
def randomize_adapter(model, seed: int) -> None:
    """B starts at zero, which would make every comparison with the base trivially pass."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters()):
        if ".lora_" in name:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def ids_of(cfg: ModelConfig, shape=(2, 9), seed=0) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, shape, generator=torch.Generator().manual_seed(seed))


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".lora_" not in n}


# ---- config ---------------------------------------------------------------------------------

@dataclass
class Run:
    lora: LoRAConfig | None = None  # as RL and SFT configs hold it


def test_config_maps_the_lora_key_and_rejects_bad_values(tmp_path):
    file = tmp_path / "run.yaml"
    file.write_text("lora: {r: 8}\n")
    run = load_config(Run, file, ["lora.alpha=4"])
    assert run.lora == LoRAConfig(r=8, alpha=4.0)
    assert run.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert load_config(Run, None).lora is None
    for bad, field in [({"r": 0}, "r must be >= 1"), ({"dropout": 1.0}, "dropout"), ({"target_modules": []},
                       "target_modules"), ({"rank": 4}, "unknown key 'lora.rank'")]:
        with pytest.raises(ConfigError, match=field):
            from_dict(Run, {"lora": bad}, "run.yaml")


def test_unknown_or_non_linear_targets_are_errors_naming_them():
    model = model_of(QWEN3)
    with pytest.raises(ValueError, match=r"\['qq_proj'\] match no nn.Linear.*q_proj"):
        apply_lora(model, LoRAConfig(target_modules=["q_proj", "qq_proj"]))
    with pytest.raises(ValueError, match="'mlp' names model.layers.0.mlp, a SwiGLU, not an nn.Linear"):
        apply_lora(model, LoRAConfig(target_modules=["mlp"]))
    with pytest.raises(ValueError, match="Embedding"):
        apply_lora(model, LoRAConfig(target_modules=["embed_tokens"]))
    assert not any(".lora_" in n for n, _ in model.named_parameters())  # nothing injected on error


# ---- injection ------------------------------------------------------------------------------

def test_only_adapters_train_and_the_output_is_the_base_at_init():
    model = model_of(QWEN3)
    ids = ids_of(QWEN3)
    before = logits(model, ids)
    rng = torch.random.get_rng_state()
    apply_lora(model, LoRAConfig(r=4), seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng)  # the run's other random draws do not move
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    # 7 projections x 2 layers, an A and a B each
    assert len(trainable) == 28 and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert all(p.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_A." in n)
    assert torch.equal(logits(model, ids), before)  # B = 0
    with pytest.raises(ValueError, match="already holds LoRA"):
        apply_lora(model, LoRAConfig())

    def adapter(seed):
        m = apply_lora(model_of(QWEN3), LoRAConfig(r=4), seed=seed)
        return {n: p for n, p in m.named_parameters() if p.requires_grad}

    first, again, other = adapter(7), adapter(7), adapter(8)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not all(torch.equal(first[n], other[n]) for n in first)


def test_adapter_disabled_computes_the_base_after_training():
    model = model_of(QWEN3)
    ids = ids_of(QWEN3)
    base = logits(model, ids)
    apply_lora(model, LoRAConfig(r=4))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        loss = -torch.log_softmax(model(ids), -1)[..., 5].mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    trained = logits(model, ids)
    assert (trained - base).abs().max() > 0.1  # the adapter moved away from zero
    with adapter_disabled(model):
        assert torch.equal(logits(model, ids), base)
    assert torch.equal(logits(model, ids), trained)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [
        n for n, _ in model.named_parameters() if ".lora_" in n]
    with pytest.raises(ValueError, match="no LoRA adapters"):
        with adapter_disabled(model_of(QWEN3)):
            pass


# ---- generation -----------------------------------------------------------------------------

def test_engine_samples_from_the_current_adapter():
    cfg = ModelConfig(vocab_size=64, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, initializer_range=0.3)
    torch.manual_seed(0)
    model = apply_lora(Decoder(cfg).eval(), LoRAConfig(r=4))
    assert DecodeStep.supports(model)  # decoded on the fused step, the adapter merged into its copies
    engine = Engine(model)
    prompts = [[5, 9, 12], [7, 3, 3, 30, 2]]
    greedy = SamplingParams(max_new_tokens=12, temperature=0, stop_token_ids=())
    before = [c[0].token_ids for c in engine.generate(prompts, params=greedy)]
    frozen = base_weights(model)

    # one optimizer step, which moves only the adapter, towards token 11 everywhere
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model.train()
    loss = -torch.log_softmax(model(torch.tensor(prompts[1])[None]), -1)[..., 11].mean()
    loss.backward()
    optimizer.step()
    model.eval()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)

    after = [c[0].token_ids for c in engine.generate(prompts, params=greedy)]
    assert after != before
    params = SamplingParams(max_new_tokens=12, temperature=1.0, stop_token_ids=(), seed=3)
    for prompt, samples in zip(prompts, engine.generate(prompts, n=2, params=params)):
        for c in samples:
            full = logits(model, torch.tensor([prompt + c.token_ids]))[0, len(prompt) - 1:-1]
            want = torch.log_softmax(full, -1)[torch.arange(len(c.token_ids)), c.token_ids]
            torch.testing.assert_close(torch.tensor(c.logprobs), want, atol=1e-5, rtol=0)


# ---- output ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg,targets", [(QWEN3, None), (QWEN3, ["q_proj", "v_proj", "lm_head"]),
                                         (QWEN3_TIED, None), (DEEPSEEK, MLA_TARGETS)],
                         ids=["qwen3", "qwen3-lm_head", "qwen3-tied-bias", "deepseek-mla"])
def test_peft_loads_the_adapter_onto_transformers_with_the_same_logits(cfg, targets, tmp_path):
    transformers = import_transformers()
    model = model_of(cfg, seed=1)
    model.save_pretrained(tmp_path / "base")
    lora = LoRAConfig(r=4, alpha=8) if targets is None else LoRAConfig(r=4, alpha=8, target_modules=targets)
    apply_lora(model, lora)
    randomize_adapter(model, seed=2)
    save_adapter(model, tmp_path / "adapter")

    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager")
    ids = ids_of(cfg)
    base = peer(input_ids=ids).logits.detach()
    peer = peft.PeftModel.from_pretrained(peer, tmp_path / "adapter").eval()
    got = peer(input_ids=ids).logits.detach()
    ours = logits(model, ids)
    assert (ours - base).abs().max() > 0.05  # the adapter changes the output
    torch.testing.assert_close(got, ours, atol=1e-5, rtol=0)


def test_load_adapter_restores_it_exactly_in_place(tmp_path):
    model = apply_lora(model_of(QWEN3), LoRAConfig(r=4))
    randomize_adapter(model, seed=3)
    save_adapter(model, tmp_path)
    other = apply_lora(model_of(QWEN3), LoRAConfig(r=4), seed=1)
    params = {n: p for n, p in other.named_parameters() if p.requires_grad}
    load_adapter(other, tmp_path)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.equal(params[n], p) and params[n] is dict(other.named_parameters())[n]
    with pytest.raises(ValueError, match="adapter_config.json: r is 4"):
        load_adapter(apply_lora(model_of(QWEN3), LoRAConfig(r=8)), tmp_path)


@pytest.mark.parametrize("cfg,targets", [(QWEN3, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj", "lm_head"]),
                                         (DEEPSEEK, MLA_TARGETS)], ids=["qwen3", "deepseek-mla"])
def test_merged_checkpoint_computes_the_adapted_model_and_leaves_it_alone(cfg, targets, tmp_path):
    model = model_of(cfg, seed=4)
    ids = ids_of(cfg)
    base = logits(model, ids)
    apply_lora(model, LoRAConfig(r=4, alpha=8, target_modules=targets))
    randomize_adapter(model, seed=5)
    adapted = logits(model, ids)
    assert (adapted - base).abs().max() > 0.05
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    state = merged_state_dict(model)
    assert not any("lora_" in n or "base_layer" in n for n in state)
    save_merged(model, tmp_path)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # bit-identical

    merged = from_pretrained(tmp_path)
    torch.testing.assert_close(logits(merged, ids), adapted, atol=1e-5, rtol=0)
    transformers = import_transformers()
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    torch.testing.assert_close(peer(input_ids=ids).logits.detach(), adapted, atol=1e-4, rtol=0)


def test_save_pretrained_refuses_a_model_with_adapters(tmp_path):
    model = apply_lora(model_of(QWEN3), LoRAConfig(r=2))
    with pytest.raises(ValueError, match="save_merged"):
        model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("cfg", [DEEPSEEK, ModelConfig(
    vocab_size=67, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, head_dim=8, model_type="qwen3_moe",
    moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, mlp_only_layers=(0,)))],
    ids=["deepseek", "qwen3-moe"])
def test_moe_models_adapt_attention_only(cfg):
    # peft would turn the MLP names into LoRA on the fused experts, and skip the dense and shared MLPs
    with pytest.raises(ValueError, match=r"\['gate_proj', 'up_proj', 'down_proj'\] on a mixture-of-experts model"):
        apply_lora(model_of(cfg), LoRAConfig())
    with pytest.raises(ValueError, match="shared_experts.gate_proj'. on a mixture-of-experts"):
        apply_lora(model_of(cfg), LoRAConfig(target_modules=["o_proj", "shared_experts.gate_proj"]))
    if cfg.mla:  # its weight is used without calling the layer: an adapter there would never run
        with pytest.raises(ValueError, match="model.layers.0.self_attn.kv_b_proj, whose weight"):
            apply_lora(model_of(cfg), LoRAConfig(target_modules=["q_a_proj", "kv_b_proj"]))
    targets = MLA_TARGETS if cfg.mla else ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = apply_lora(model_of(cfg), LoRAConfig(target_modules=targets))
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert adapted == {f"model.layers.{i}.self_attn.{t}" for i in range(cfg.num_hidden_layers) for t in targets}
