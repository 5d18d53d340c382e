"""Fine-grained FP8 checkpoints (DeepSeek-V3's released weights, Qwen3-*-FP8): dequantized on load
to exactly what the test's own dequantizer gives, with transformers' logits, saved as plain
weights; malformed scales and undeclared formats are named errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from ponder.models import Decoder, MLAConfig, ModelConfig, MoEConfig, from_pretrained

from hf_peer import hf_model, import_transformers, randomize  # tests/ is on sys.path under pytest
from test_models import copy_checkpoint, edit_config, load_error, rewrite_weights

FP8_MAX = 448.0  # the largest float8_e4m3fn value


def quantize(w: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise FP8 as DeepSeek's weight_quant: per block, scale = amax / 448 and q = w / scale.
    Edge blocks may be partial (zero-padded for the amax)."""
    rows, cols = w.shape
    R, C = math.ceil(rows / block[0]), math.ceil(cols / block[1])
    padded = torch.zeros(R * block[0], C * block[1])
    padded[:rows, :cols] = w
    blocks = padded.view(R, block[0], C, block[1])
    scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / FP8_MAX
    q = (blocks / scale[:, None, :, None]).view_as(padded)[:rows, :cols].to(torch.float8_e4m3fn)
    return q, scale


def dequantized(q: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """The reference: every element times the scale of the block it falls in (index arithmetic)."""
    rows, cols = q.shape
    r = torch.arange(rows)[:, None] // block[0]
    c = torch.arange(cols)[None, :] // block[1]
    return q.float() * scale[r, c]


def quantize_folder(folder, block, skip=("norm", "embed", "lm_head", "mlp.gate.weight")):
    """Rewrite a plain checkpoint folder as FP8: every 2-D linear weight of the layers quantized,
    its scales beside it; returns name -> the weight the loader must produce."""
    want = {}

    def quantize_all(tensors):
        for name in list(tensors):
            if name.endswith(".weight") and tensors[name].dim() == 2 and not any(s in name for s in skip):
                q, scale = quantize(tensors[name].float(), block)
                tensors[name], tensors[name + "_scale_inv"] = q, scale
                want[name] = dequantized(q, scale, block)

    rewrite_weights(folder, quantize_all)
    edit_config(folder, quantization_config={"quant_method": "fp8", "weight_block_size": list(block),
                                             "activation_scheme": "dynamic", "fmt": "e4m3"})
    return want


QWEN3 = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16)
# DeepSeek-V3's shapes do not all divide its 128 blocks (kv_a_proj_with_mqa has 576 rows); here
# kv_lora_rank + rope = 20 rows and hidden 40 in blocks of 16 x 8 leave partial edge blocks too.
DEEPSEEK = ModelConfig(vocab_size=71, hidden_size=40, intermediate_size=48, num_hidden_layers=3,
                       num_attention_heads=4, model_type="deepseek_v3", head_dim=4,
                       moe=MoEConfig(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=24,
                                     norm_topk_prob=True, n_shared_experts=1, routed_scaling_factor=2.5,
                                     n_group=2, topk_group=1, first_k_dense_replace=1),
                       mla=MLAConfig(kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8,
                                     q_lora_rank=24))


@pytest.fixture(scope="module")
def deepseek_fp8(tmp_path_factory):
    """A DeepSeek-V3 FP8 checkpoint (per-expert layout, blocks of 16) and the weights it must load to."""
    folder = tmp_path_factory.mktemp("ds-fp8")
    model = Decoder(DEEPSEEK)
    randomize(model, seed=5)
    model.save_pretrained(folder)
    return folder, quantize_folder(folder, (16, 8))


def test_transformers_dequantizes_to_the_same_logits(tmp_path):
    transformers = import_transformers()
    pytest.importorskip("accelerate", reason="transformers loads FP8 checkpoints through accelerate")
    hf_model(QWEN3, seed=2).save_pretrained(tmp_path)
    want = quantize_folder(tmp_path, (32, 16))
    model = from_pretrained(tmp_path)
    peer = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32,
                                                            attn_implementation="eager").eval()
    state = model.state_dict()
    for name, weight in want.items():
        assert torch.equal(state[name], weight), name
    ids = torch.randint(0, QWEN3.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), peer(input_ids=ids).logits, atol=1e-5, rtol=0)


def test_per_expert_fp8_with_partial_blocks_loads_exactly(deepseek_fp8):
    folder, want = deepseek_fp8
    assert any(".experts.3.down_proj" in n for n in want) and "model.layers.0.self_attn.kv_a_proj_with_mqa.weight" in want
    state = from_pretrained(folder).state_dict()
    for name, weight in want.items():
        if ".experts." in name:  # the model holds the experts fused: [E, 2I, H] (gate rows first), [E, H, I]
            prefix, expert, kind = name.rsplit(".", 3)[0], int(name.split(".")[-3]), name.split(".")[-2]
            inner = DEEPSEEK.moe.moe_intermediate_size
            got = {"gate_proj": state[f"{prefix}.gate_up_proj"][expert, :inner],
                   "up_proj": state[f"{prefix}.gate_up_proj"][expert, inner:],
                   "down_proj": state[f"{prefix}.down_proj"][expert]}[kind]
        else:
            got = state[name]
        assert torch.equal(got, weight), name
    bf16 = from_pretrained(folder, dtype=torch.bfloat16).state_dict()
    name = "model.layers.1.self_attn.kv_a_proj_with_mqa.weight"
    assert torch.equal(bf16[name], want[name].to(torch.bfloat16))


def test_scales_in_another_shard_load(deepseek_fp8, tmp_path):
    folder, want = deepseek_fp8
    tensors = load_file(str(folder / "model.safetensors"))
    scales = {n: t for n, t in tensors.items() if n.endswith("_scale_inv")}
    save_file(scales, str(tmp_path / "model-00002-of-00002.safetensors"))
    save_file({n: t for n, t in tensors.items() if n not in scales}, str(tmp_path / "model-00001-of-00002.safetensors"))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        n: "model-00002-of-00002.safetensors" if n in scales else "model-00001-of-00002.safetensors" for n in tensors}}))
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    name = "model.layers.2.self_attn.o_proj.weight"
    assert torch.equal(from_pretrained(tmp_path).state_dict()[name], want[name])


def test_saved_model_is_plain_and_reloads(deepseek_fp8, tmp_path):
    folder, _ = deepseek_fp8
    model = from_pretrained(folder)
    model.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    stored = load_file(str(tmp_path / "model.safetensors"))
    assert not any(n.endswith("_scale_inv") for n in stored) and all(t.dtype == torch.float32 for t in stored.values())
    again = from_pretrained(tmp_path).state_dict()
    assert all(torch.equal(t, again[n]) for n, t in model.state_dict().items())


# ---------------------------------------------------------------- malformed FP8 checkpoints

@pytest.fixture
def fp8_copy(deepseek_fp8, tmp_path):
    return copy_checkpoint(deepseek_fp8[0], tmp_path / "c")


def test_other_quantization_methods_name_the_field(fp8_copy):
    edit_config(fp8_copy, quantization_config={"quant_method": "gptq", "weight_block_size": [16, 8]})
    msg = load_error(fp8_copy)
    assert "config.json" in msg and "quantization_config" in msg and "'gptq'" in msg


def test_misshapen_scale_names_tensor_and_block(fp8_copy):
    name = "model.layers.0.self_attn.q_a_proj.weight_scale_inv"
    rewrite_weights(fp8_copy, lambda t: t.update({name: t[name][:1]}))
    msg = load_error(fp8_copy)
    assert name in msg and "weight_block_size" in msg and "(1, 5)" in msg and "(2, 5)" in msg


def test_fp8_weight_without_its_scale_is_refused(fp8_copy):
    name = "model.layers.1.mlp.experts.2.up_proj.weight"
    rewrite_weights(fp8_copy, lambda t: t.pop(name + "_scale_inv"))
    msg = load_error(fp8_copy)
    assert name in msg and "float8" in msg


def test_scales_without_a_declared_format_are_unexpected(fp8_copy):
    edit_config(fp8_copy, quantization_config=None)
    msg = load_error(fp8_copy)
    assert "_scale_inv" in msg and "FP8 scale" in msg and "quantization_config" in msg


def test_scale_of_a_tensor_not_stored_is_named(fp8_copy):
    name = "model.layers.0.mlp.shared.weight_scale_inv"
    rewrite_weights(fp8_copy, lambda t: t.update({name: torch.ones(1, 1)}))
    msg = load_error(fp8_copy)
    assert name in msg and "not stored" in msg
