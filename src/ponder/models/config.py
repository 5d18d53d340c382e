"""ModelConfig: the decoder's shape, parsed from (and written back to) a Hugging Face config.json.

Seven families share one decoder: Qwen3 (per-head QK-norm), Qwen2 (q/k/v bias), Llama
(bias only where `attention_bias` / `mlp_bias` say so), Qwen3-MoE (Qwen3 with routed experts:
`moe`), DeepSeek-V3 (multi-head latent attention: `mla`, and DeepSeekMoE: `moe`), Gemma 3's
text decoder (`gemma3_text`: sliding-window layers between full ones, norms on both sides of each
block, GeGLU, optional soft-capping) and Qwen3.5 (`qwen3_5_text`: Gated DeltaNet linear attention
beside gated full attention: `linear`). The config.json dict is kept whole in `raw`, so that
`to_hf_dict` round-trips keys this package does not use.

Why one file of over 500 lines: every family is read into, checked by and written back from the
same ModelConfig (one `from_hf_dict`, one `to_hf_dict`, one set of field checks), so a reader
sees the whole round trip in one place; the per-family pieces (RoPE scaling, Gemma, Qwen3.5, MoE,
MLA) follow ModelConfig as one small function each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# model_type -> the HF class name written into config.json's `architectures`.
ARCHITECTURES = {
    "qwen3": "Qwen3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3_moe": "Qwen3MoeForCausalLM",
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "qwen3_5_text": "Qwen3_5ForCausalLM",
    "qwen3_5_moe_text": "Qwen3_5MoeForCausalLM",
}
MOE_TYPES = ("qwen3_moe", "deepseek_v3", "qwen3_5_moe_text")
# The MLP's activation: "silu" (SwiGLU) for every family but Gemma, whose GeGLU uses the
# tanh approximation of GELU (config.json: `hidden_activation`).
ACTIVATIONS = ("silu", "gelu_pytorch_tanh")
LAYER_TYPES = ("full_attention", "sliding_attention")
# Qwen3.5's layer types: Gated DeltaNet (linear attention) or gated full attention.
HYBRID_LAYER_TYPES = ("full_attention", "linear_attention")
ROPE_TYPES = ("default", "linear", "llama3", "yarn")


class ConfigError(ValueError):
    """A config.json (or a ModelConfig) this package cannot build a model from."""


@dataclass
class MoEConfig:
    """Routed experts (names as in config.json). Which layers are sparse: ModelConfig.is_sparse_layer."""

    num_experts: int  # routed experts (config.json: num_experts / num_local_experts, or n_routed_experts)
    num_experts_per_tok: int  # k: experts each token is sent to
    moe_intermediate_size: int  # each expert's SwiGLU inner width
    norm_topk_prob: bool = False  # rescale the k chosen weights to sum to 1
    # Qwen3-MoE: layer l is sparse when l not in mlp_only_layers and (l + 1) % decoder_sparse_step == 0.
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()
    # DeepSeek-V3: sigmoid scores, group-limited choice, shared experts, first layers dense.
    n_shared_experts: int = 0  # always-on experts, one SwiGLU of n_shared x moe_intermediate_size
    routed_scaling_factor: float = 1.0  # multiplies the (normalised) routing weights
    n_group: int = 1  # experts are split into n_group groups ...
    topk_group: int = 1  # ... and a token may only use experts of its topk_group best groups
    first_k_dense_replace: int = 0  # layers [0, first_k_dense_replace) use the dense MLP
    # Qwen3.5-MoE: one always-on shared expert of this inner width, its output scaled by
    # sigmoid(shared_expert_gate(x)) per token; 0: none.
    shared_expert_intermediate_size: int = 0


@dataclass
class MLAConfig:
    """DeepSeek's multi-head latent attention (names as in config.json)."""

    kv_lora_rank: int  # width of the compressed key/value latent (what the KV cache stores)
    qk_nope_head_dim: int  # per-head query/key width without RoPE
    qk_rope_head_dim: int  # per-head query width with RoPE; the rotated key is shared by all heads
    v_head_dim: int  # per-head value width
    q_lora_rank: int | None = None  # None: q_proj; else q_a_proj -> RMSNorm -> q_b_proj
    rope_interleave: bool = True  # RoPE rotates adjacent pairs (x0, x1), (x2, x3), ... instead of halves


@dataclass
class LinearAttentionConfig:
    """Qwen3.5's Gated DeltaNet layers (names as in config.json, without their `linear_` prefix).

    Each layer keeps a fixed-size state per sequence: the last conv_kernel_dim - 1 inputs of its
    causal convolution and a [num_value_heads, key_head_dim, value_head_dim] recurrent state."""

    conv_kernel_dim: int = 4  # width of the depthwise causal convolution over q, k and v
    key_head_dim: int = 128  # per-head query/key width
    value_head_dim: int = 128  # per-head value width
    num_key_heads: int = 16  # query/key heads; each serves num_value_heads / num_key_heads value heads
    num_value_heads: int = 32  # value heads (the recurrent states)

    @property
    def key_dim(self) -> int:
        return self.num_key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.num_value_heads * self.value_head_dim

    @property
    def conv_dim(self) -> int:
        """Channels of the convolution: [q | k | v]."""
        return 2 * self.key_dim + self.value_dim


@dataclass
class RopeScaling:
    """Long-context RoPE frequency scaling (config.json `rope_parameters` or `rope_scaling`).

    linear: every frequency / factor. llama3 (Llama 3.1+): low frequencies / factor, high ones
    kept, a smooth blend between. yarn (Qwen3 long context, DeepSeek-V3): a ramp between
    interpolated and original frequencies, and cos/sin scaled by an attention factor.
    """

    rope_type: str  # "linear" | "llama3" | "yarn"
    factor: float
    original_max_position_embeddings: int = 0  # llama3, yarn: the pretraining context
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn: rotations bounding the ramp
    beta_slow: float = 1.0
    mscale: float | None = None  # yarn: attention factor = mscale(factor, mscale) / mscale(factor, mscale_all_dim)
    mscale_all_dim: float | None = None  # (DeepSeek's MLA also scales its softmax by mscale(factor, this)**2)
    attention_factor: float | None = None  # yarn: overrides the mscale rule
    truncate: bool = True  # yarn: round the ramp's bounds to whole dimensions

    def to_hf(self) -> dict[str, Any]:
        d = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            d.update(low_freq_factor=self.low_freq_factor, high_freq_factor=self.high_freq_factor,
                     original_max_position_embeddings=self.original_max_position_embeddings)
        elif self.rope_type == "yarn":
            d.update(beta_fast=self.beta_fast, beta_slow=self.beta_slow, truncate=self.truncate,
                     original_max_position_embeddings=self.original_max_position_embeddings)
            d.update({k: v for k, v in (("mscale", self.mscale), ("mscale_all_dim", self.mscale_all_dim),
                                        ("attention_factor", self.attention_factor)) if v is not None})
        return d


@dataclass
class ModelConfig:
    """Shape and options of a decoder-only transformer (names as in HF config.json)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int  # SwiGLU inner width
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: same as num_attention_heads (no GQA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    model_type: str = "qwen3"  # a key of ARCHITECTURES
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10_000.0  # RoPE base wavelength
    rope_scaling: RopeScaling | None = None  # None: plain RoPE
    max_position_embeddings: int = 4096  # written to config.json; positions beyond it still work
    tie_word_embeddings: bool = False  # lm_head shares embed_tokens.weight
    attention_bias: bool = False  # Qwen3/Llama: bias on q/k/v/o (Qwen2 always has q/k/v bias)
    mlp_bias: bool = False  # Llama only: bias on gate/up/down
    initializer_range: float = 0.02  # std of the normal init used by Decoder(config)
    moe: MoEConfig | None = None  # routed experts (qwen3_moe, deepseek_v3); None: every MLP dense
    mla: MLAConfig | None = None  # latent attention (deepseek_v3); None: grouped-query attention
    # Gemma 3 (gemma3_text) options. None: the family's default, as transformers' config class
    # has it (Gemma: GeGLU, five sliding layers then a full one, window 4096, local base 10,000,
    # query_pre_attn_scalar 256); the other families take none of them.
    hidden_act: str | None = None  # the gated MLP's activation: "silu" (SwiGLU) or "gelu_pytorch_tanh" (GeGLU)
    layer_types: tuple[str, ...] | None = None  # per layer "full_attention" | "sliding_attention"
    sliding_window: int | None = None  # a sliding layer's query sees itself and the window - 1 keys before it
    rope_local_theta: float | None = None  # RoPE base of the sliding layers (rope_local_base_freq)
    query_pre_attn_scalar: float | None = None  # attention scale = this ** -0.5 (other families: head_dim ** -0.5)
    attn_logit_softcapping: float | None = None  # scores -> c * tanh(scores / c) before the softmax; None: off
    final_logit_softcapping: float | None = None  # logits -> c * tanh(logits / c); None: off
    # Qwen3.5 (qwen3_5_text): Gated DeltaNet layers (`linear`; layer_types says which layers are
    # "linear_attention", by default three of every four) beside gated full attention that
    # rotates only the first partial_rotary_factor of each head (None: 0.25 for Qwen3.5, else 1).
    linear: LinearAttentionConfig | None = None
    partial_rotary_factor: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.model_type not in ARCHITECTURES:
            raise ConfigError(
                f"model_type {self.model_type!r} is not supported (supported: {', '.join(ARCHITECTURES)})"
            )
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        self._check_qwen3_5_options()
        if self.rope_dim % 2 or self.rope_dim <= 0:
            raise ConfigError(f"the rotated part of a head (head_dim x partial_rotary_factor) must be even "
                              f"for RoPE, got {self.rope_dim}")
        if (self.moe is not None) != (self.model_type in MOE_TYPES):
            raise ConfigError(f"model_type {self.model_type!r} {'needs' if self.moe is None else 'takes no'} moe settings")
        if (self.mla is not None) != (self.model_type == "deepseek_v3"):
            raise ConfigError(f"model_type {self.model_type!r} {'needs' if self.mla is None else 'takes no'} mla settings")
        if self.moe is not None:
            _check_moe(self.moe)
        if self.mla is not None:
            _check_mla(self.mla, self.head_dim)
        self._check_gemma_options()

    def _check_qwen3_5_options(self) -> None:
        if not self.qwen3_5:
            if self.linear is not None:
                raise ConfigError(f"model_type {self.model_type!r} takes no linear-attention settings")
            if self.partial_rotary_factor not in (None, 1.0):
                raise ConfigError(f"model_type {self.model_type!r} takes no partial_rotary_factor")
            return
        # transformers' Qwen3_5TextConfig defaults: every fourth layer full, a quarter of each head rotated
        self.linear = self.linear or LinearAttentionConfig()
        _positive(self.linear, ("conv_kernel_dim", "key_head_dim", "value_head_dim", "num_key_heads",
                                "num_value_heads"))
        if self.linear.num_value_heads % self.linear.num_key_heads:
            raise ConfigError(f"linear_num_value_heads ({self.linear.num_value_heads}) must be a multiple of "
                              f"linear_num_key_heads ({self.linear.num_key_heads})")
        if self.layer_types is None:
            self.layer_types = tuple("linear_attention" if (i + 1) % 4 else "full_attention"
                                     for i in range(self.num_hidden_layers))
        self.layer_types = tuple(self.layer_types)
        if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(HYBRID_LAYER_TYPES):
            raise ConfigError(f"layer_types must give one of {', '.join(HYBRID_LAYER_TYPES)} for each of the "
                              f"{self.num_hidden_layers} layers, got {list(self.layer_types)!r}")
        factor = 0.25 if self.partial_rotary_factor is None else self.partial_rotary_factor
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1:
            raise ConfigError(f"partial_rotary_factor must be in (0, 1], got {factor!r}")
        self.partial_rotary_factor = float(factor)

    def _check_gemma_options(self) -> None:
        if self.gemma:  # transformers' Gemma3TextConfig defaults
            self.hidden_act = self.hidden_act or "gelu_pytorch_tanh"
            if self.layer_types is None:
                self.layer_types = tuple("sliding_attention" if (i + 1) % 6 else "full_attention"
                                         for i in range(self.num_hidden_layers))
            self.sliding_window = 4096 if self.sliding_window is None else self.sliding_window
            self.rope_local_theta = 10_000.0 if self.rope_local_theta is None else self.rope_local_theta
            self.query_pre_attn_scalar = 256.0 if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar
        self.hidden_act = self.hidden_act or "silu"
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        if self.layer_types is not None and not self.qwen3_5:
            self.layer_types = tuple(self.layer_types)
            if len(self.layer_types) != self.num_hidden_layers or not set(self.layer_types) <= set(LAYER_TYPES):
                raise ConfigError(f"layer_types must give one of {', '.join(LAYER_TYPES)} for each of the "
                                  f"{self.num_hidden_layers} layers, got {list(self.layer_types)!r}")
            if "sliding_attention" in self.layer_types and self.sliding_window is None:
                raise ConfigError("sliding_attention layers need sliding_window")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int)
                                                or isinstance(self.sliding_window, bool) or self.sliding_window <= 0):
            raise ConfigError(f"sliding_window must be a positive integer, got {self.sliding_window!r}")
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping", "rope_local_theta"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{name} must be a positive number or None, got {value!r}")
        gemma_only = [name for name in ("layer_types", "sliding_window", "rope_local_theta", "query_pre_attn_scalar",
                                        "attn_logit_softcapping", "final_logit_softcapping")
                      if getattr(self, name) is not None]
        if self.hidden_act != "silu":
            gemma_only.append("hidden_act")
        if self.qwen3_5 and "layer_types" in gemma_only:
            gemma_only.remove("layer_types")
        if gemma_only and not self.gemma:
            raise ConfigError(f"model_type {self.model_type!r} takes no {', '.join(gemma_only)} "
                              "(sliding windows, GeGLU and soft-capping are read for gemma3_text only)")

    # Which optional parts each family has (as transformers builds them).
    @property
    def qk_norm(self) -> bool:
        return self.model_type in ("qwen3", "qwen3_moe", "gemma3_text", "qwen3_5_text", "qwen3_5_moe_text")

    @property
    def qwen3_5(self) -> bool:
        """Qwen3.5's hybrid: Gated DeltaNet layers beside full attention whose output is gated by a
        sigmoid of a second query-sized projection, partial RoPE, and RMSNorms that scale by 1 + weight."""
        return self.model_type in ("qwen3_5_text", "qwen3_5_moe_text")

    @property
    def norm_offset(self) -> bool:
        """Whether RMSNorm weights are stored as an offset from 1 (Gemma 3, Qwen3.5)."""
        return self.gemma or self.qwen3_5

    def is_linear_layer(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` is a Gated DeltaNet (linear attention) layer."""
        return self.layer_types is not None and self.layer_types[layer_idx] == "linear_attention"

    @property
    def gemma(self) -> bool:
        """Gemma's layer layout: RMSNorm weights stored as an offset from 1 (the norm multiplies by
        1 + weight), a norm after each block's output as well as before its input (four per layer),
        and the embedding scaled by sqrt(hidden_size)."""
        return self.model_type == "gemma3_text"

    def layer_window(self, layer_idx: int) -> int | None:
        """The sliding window of layer `layer_idx`; None for a full-attention layer."""
        if self.layer_types is None or self.layer_types[layer_idx] != "sliding_attention":
            return None
        return self.sliding_window

    @property
    def attention_softcap(self) -> float | None:
        """The soft-cap applied to attention scores; None: none.

        Gemma 3's config carries `attn_logit_softcapping` (Gemma 2's option) but Gemma 3 replaced
        soft-capping by QK-norm: transformers' Gemma 3 never applies it (checked on 5.25), and no
        released Gemma 3 checkpoint sets it, so it is kept for the round trip and not applied. The
        soft-capped attention itself (layers.sdpa) is there for a family that does apply it."""
        return None if self.gemma else self.attn_logit_softcapping

    @property
    def attention_scale(self) -> float | None:
        """The softmax scale of attention scores; None: the usual head_dim ** -0.5."""
        return None if self.query_pre_attn_scalar is None else self.query_pre_attn_scalar ** -0.5

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.model_type != "qwen2" and self.attention_bias

    @property
    def architecture(self) -> str:
        return ARCHITECTURES[self.model_type]

    # Token ids the decoder does not use but generation does; config.json is their home.
    @property
    def eos_token_id(self) -> int | list[int] | None:
        return self.raw.get("eos_token_id")

    @property
    def bos_token_id(self) -> int | None:
        return self.raw.get("bos_token_id")

    # The cache and RoPE table sizes. Attention variants with other key/value widths (e.g.
    # multi-head latent attention) change these, not the cache or the decoder.
    # MLA caches one row per token and layer, [normed kv latent | roped shared key], and reads its
    # values from the latent part of that row (see mla.py): one cache "head", no separate values.
    @property
    def cache_heads(self) -> int:
        return 1 if self.mla else self.num_key_value_heads

    @property
    def k_head_dim(self) -> int:
        return self.mla.kv_lora_rank + self.mla.qk_rope_head_dim if self.mla else self.head_dim

    @property
    def v_head_dim(self) -> int:
        return 0 if self.mla else self.head_dim

    @property
    def rope_dim(self) -> int:
        """The width RoPE rotates: MLA's rope part, or the first partial_rotary_factor of a head."""
        if self.mla:
            return self.mla.qk_rope_head_dim
        return int(self.head_dim * (self.partial_rotary_factor or 1.0))

    def is_sparse_layer(self, layer_idx: int) -> bool:
        """Whether layer `layer_idx` uses routed experts (as transformers decides it per family)."""
        if self.moe is None:
            return False
        if self.model_type == "deepseek_v3":
            return layer_idx >= self.moe.first_k_dense_replace
        return layer_idx not in self.moe.mlp_only_layers and (layer_idx + 1) % self.moe.decoder_sparse_step == 0

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parse a HF config dict; errors name `source` and the offending field."""

        def fail(field_name: str, why: str) -> ConfigError:
            return ConfigError(f"{source}: field {field_name!r}: {why}")

        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        if d.get("model_type") == "gemma3" and isinstance(d.get("text_config"), dict):
            # The multimodal Gemma 3 config: its text decoder is a gemma3_text config of its own.
            d = {**d["text_config"], "model_type": "gemma3_text", "architectures": [ARCHITECTURES["gemma3_text"]]}
        if d.get("model_type") in ("qwen3_5", "qwen3_5_moe") and isinstance(d.get("text_config"), dict):
            # Qwen3.5's multimodal config: the text decoder is its qwen3_5(_moe)_text part (the
            # vision tower's weights are skipped when the checkpoint loads).
            text, text_type = d["text_config"], d["model_type"] + "_text"
            d = {"tie_word_embeddings": d.get("tie_word_embeddings", False), **text,
                 "model_type": text_type, "architectures": [ARCHITECTURES[text_type]]}
        archs = d.get("architectures") or []
        model_type = d.get("model_type")
        if model_type not in ARCHITECTURES:
            raise fail("model_type", f"{model_type!r} is not supported "
                                     f"(supported: {', '.join(ARCHITECTURES)})")
        if archs and archs[0] != ARCHITECTURES[model_type]:
            raise fail("architectures", f"{archs[0]!r} is not supported "
                                        f"(expected {ARCHITECTURES[model_type]!r} for model_type {model_type!r})")
        gemma = model_type == "gemma3_text"
        # Gemma's config names its activation `hidden_activation`; the others `hidden_act`.
        act_field = "hidden_activation" if gemma and d.get("hidden_activation") else "hidden_act"
        act = d.get(act_field) or ("gelu_pytorch_tanh" if gemma else "silu")
        if act != ("gelu_pytorch_tanh" if gemma else "silu"):
            raise fail(act_field, f"{act!r} is not supported (only {'gelu_pytorch_tanh' if gemma else 'silu'!r} "
                                  f"for model_type {model_type!r})")
        if d.get("use_sliding_window"):  # Qwen2/Qwen3's window (max_window_layers) is not Gemma's
            raise fail("use_sliding_window", "sliding-window attention is not supported")
        if d.get("use_bidirectional_attention"):
            raise fail("use_bidirectional_attention", "bidirectional attention (an encoder) is not supported")

        def get(name: str, kind: type, default: Any = ...) -> Any:
            if name not in d or d[name] is None:
                if default is ...:
                    raise fail(name, "missing")
                return default
            value = d[name]
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
                raise fail(name, f"expected {kind.__name__}, got {value!r}")
            return value

        # transformers 5 keeps RoPE settings in `rope_parameters`; older files have a top-level
        # `rope_theta` and an optional `rope_scaling`.
        rope_field = "rope_parameters" if d.get("rope_parameters") else "rope_scaling"
        rope = d.get(rope_field) or {}
        if not isinstance(rope, dict):
            raise fail(rope_field, f"expected an object, got {rope!r}")
        local_theta = None
        if rope and all(isinstance(v, dict) for v in rope.values()):
            # Per-layer-type settings (transformers 5 writes Gemma 3's this way): the full layers'
            # are the model's RoPE; the sliding layers' may only change the base.
            if not gemma or set(rope) - set(LAYER_TYPES):
                raise fail(rope_field, "per-layer-type RoPE settings are read for gemma3_text's "
                                       f"{' and '.join(LAYER_TYPES)} only")
            local = rope.get("sliding_attention") or {}
            if local.get("rope_type", local.get("type", "default")) != "default":
                raise fail(f"{rope_field}.sliding_attention.rope_type", "RoPE scaling on sliding layers is not supported")
            local_theta = local.get("rope_theta")
            rope_field += ".full_attention"
            rope = rope.get("full_attention") or {}
        if gemma:
            # transformers' defaults: 10,000 on sliding layers (legacy name rope_local_base_freq),
            # 1,000,000 on full ones.
            local_theta = local_theta if local_theta is not None else d.get("rope_local_base_freq", 10_000.0)
            if isinstance(local_theta, bool) or not isinstance(local_theta, (int, float)) or local_theta <= 0:
                raise fail("rope_local_base_freq", f"expected a positive number, got {local_theta!r}")
            local_theta = float(local_theta)
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ROPE_TYPES:
            raise fail(f"{rope_field}.rope_type",
                       f"{rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
        rope_scaling = _rope_scaling_from_hf(rope, rope_type, d, lambda name, why: fail(f"{rope_field}.{name}", why))
        qwen3_5 = model_type in ("qwen3_5_text", "qwen3_5_moe_text")
        if model_type == "qwen3_5_moe_text" and "intermediate_size" not in d:
            # every layer is sparse: no dense MLP width in the file (ModelConfig wants one)
            d = {**d, "intermediate_size": d.get("shared_expert_intermediate_size") or d.get("moe_intermediate_size")}
        partial = rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 0.25 if qwen3_5 else 1.0))
        if partial != 1.0 and not qwen3_5:
            raise fail("partial_rotary_factor", "partial rotary embeddings are read for qwen3_5_text only")
        theta = rope.get("rope_theta", d.get("rope_theta", 1_000_000.0 if gemma else 10_000.0))
        if isinstance(theta, bool) or not isinstance(theta, (int, float)) or not math.isfinite(theta) or theta <= 0:
            raise fail("rope_theta", f"expected a positive number, got {theta!r}")

        try:
            moe, mla = _moe_from_hf(d, model_type, get), _mla_from_hf(d, model_type, get, fail)
            if mla is not None:
                # MLA has no key/value head grouping (transformers expands the latent to every
                # head), and its RoPE width is the rope part of a head. (`get` reads this new d.)
                d = {**d, "num_key_value_heads": d.get("num_attention_heads"), "head_dim": mla.qk_rope_head_dim}
            return cls(
                vocab_size=get("vocab_size", int),
                hidden_size=get("hidden_size", int),
                intermediate_size=get("intermediate_size", int),
                num_hidden_layers=get("num_hidden_layers", int),
                num_attention_heads=get("num_attention_heads", int),
                num_key_value_heads=get("num_key_value_heads", int, None),
                head_dim=get("head_dim", int, 256 if qwen3_5 else None),
                model_type=model_type,
                rms_norm_eps=get("rms_norm_eps", float, 1e-6),
                rope_theta=float(theta),
                rope_scaling=rope_scaling,
                max_position_embeddings=get("max_position_embeddings", int, 4096),
                tie_word_embeddings=get("tie_word_embeddings", bool, gemma),  # Gemma ties by default
                attention_bias=get("attention_bias", bool, False) if model_type != "qwen2" else False,
                mlp_bias=get("mlp_bias", bool, False) if model_type == "llama" else False,
                initializer_range=get("initializer_range", float, 0.02),
                moe=moe,
                mla=mla,
                **(_gemma_from_hf(d, get, fail, local_theta) if gemma else {}),
                **(_qwen3_5_from_hf(d, get, fail, partial) if qwen3_5 else {}),
                raw=dict(d),
            )
        except ConfigError as e:
            if str(e).startswith(source):
                raise
            raise ConfigError(f"{source}: {e}") from None

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json dict: `raw` with this config's fields written over it."""
        d = dict(self.raw)
        # Models here hold plain weights (an FP8 checkpoint is dequantized on load), so what is
        # saved is never quantized.
        d.pop("quantization_config", None)
        d["architectures"] = [self.architecture]
        d["model_type"] = self.model_type
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
                     "max_position_embeddings", "tie_word_embeddings", "initializer_range"):
            d[name] = getattr(self, name)
        if not self.gemma:
            d["hidden_act"] = "silu"
        # Qwen2's config class has no head_dim field; write it only where it carries information.
        if self.model_type != "qwen2" or "head_dim" in d or self.head_dim != self.hidden_size // self.num_attention_heads:
            d["head_dim"] = self.head_dim
        if self.model_type != "qwen2":
            d["attention_bias"] = self.attention_bias
        if self.model_type == "llama":
            d["mlp_bias"] = self.mlp_bias
        # Both RoPE spellings, so transformers 4.x (rope_theta, rope_scaling) and 5.x
        # (rope_parameters) agree.
        scaling = self.rope_scaling.to_hf() if self.rope_scaling else None
        d["rope_parameters"] = {**(scaling or {"rope_type": "default"}), "rope_theta": self.rope_theta}
        d["rope_theta"] = self.rope_theta
        if scaling or "rope_scaling" in d:
            d["rope_scaling"] = scaling
        if self.moe is not None:
            d.update(_moe_to_hf(self.moe, self.model_type, d))
        if self.gemma:
            d.update(_gemma_to_hf(self, d["rope_parameters"]))
        if self.qwen3_5:
            lin = self.linear
            d["rope_parameters"]["partial_rotary_factor"] = self.partial_rotary_factor
            d.update(partial_rotary_factor=self.partial_rotary_factor, layer_types=list(self.layer_types),
                     linear_conv_kernel_dim=lin.conv_kernel_dim, linear_key_head_dim=lin.key_head_dim,
                     linear_value_head_dim=lin.value_head_dim, linear_num_key_heads=lin.num_key_heads,
                     linear_num_value_heads=lin.num_value_heads)
        if self.mla is not None:
            m = self.mla
            d.update(kv_lora_rank=m.kv_lora_rank, q_lora_rank=m.q_lora_rank, qk_nope_head_dim=m.qk_nope_head_dim,
                     qk_rope_head_dim=m.qk_rope_head_dim, v_head_dim=m.v_head_dim, rope_interleave=m.rope_interleave,
                     qk_head_dim=m.qk_nope_head_dim + m.qk_rope_head_dim)
        return d


def _rope_scaling_from_hf(rope: dict[str, Any], rope_type: str, d: dict[str, Any], fail) -> RopeScaling | None:
    """The scaling settings of a RoPE dict, with transformers' defaults; None for plain RoPE."""
    if rope_type == "default":
        return None

    def number(name: str, default: Any = ...) -> Any:
        value = rope.get(name)
        if value is None:
            if default is ...:
                raise fail(name, f"missing (needed by rope_type {rope_type!r})")
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise fail(name, f"expected a positive number, got {value!r}")
        return float(value)

    # transformers takes a top-level original_max_position_embeddings first, then the RoPE dict's,
    # then max_position_embeddings.
    original = d.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings") \
        or d.get("max_position_embeddings", 4096)
    if isinstance(original, bool) or not isinstance(original, int) or original <= 0:
        raise fail("original_max_position_embeddings", f"expected a positive integer, got {original!r}")
    if rope_type == "linear":
        return RopeScaling("linear", number("factor"))
    if rope_type == "llama3":
        low, high = number("low_freq_factor"), number("high_freq_factor")
        if high <= low:
            raise fail("high_freq_factor", f"must exceed low_freq_factor ({low}), got {high}")
        return RopeScaling("llama3", number("factor"), original, low_freq_factor=low, high_freq_factor=high)
    # yarn: a missing factor is the context extension itself (DeepSeek-V3 files carry both)
    factor = number("factor", d.get("max_position_embeddings", 4096) / original)
    return RopeScaling("yarn", factor, original, beta_fast=number("beta_fast", 32.0),
                       beta_slow=number("beta_slow", 1.0), mscale=number("mscale", None),
                       mscale_all_dim=number("mscale_all_dim", None),
                       attention_factor=number("attention_factor", None), truncate=bool(rope.get("truncate", True)))


def _gemma_from_hf(d: dict[str, Any], get, fail, local_theta: float) -> dict[str, Any]:
    """Gemma 3's fields of ModelConfig, with transformers' defaults for those a file leaves out."""
    n = get("num_hidden_layers", int)
    layer_types = d.get("layer_types")
    if layer_types is None:
        # Older files give a period instead: every `pattern`-th layer is full, the rest slide.
        pattern = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", 6))
        if isinstance(pattern, bool) or not isinstance(pattern, int) or pattern <= 0:
            raise fail("sliding_window_pattern", f"expected a positive integer, got {pattern!r}")
        layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]
    if not isinstance(layer_types, list) or len(layer_types) != n or not set(layer_types) <= set(LAYER_TYPES):
        raise fail("layer_types", f"expected one of {', '.join(LAYER_TYPES)} for each of the {n} layers")

    def optional(name: str, default: Any = None) -> Any:
        value = get(name, float, default)
        if value is not None and (not math.isfinite(value) or value <= 0):
            raise fail(name, f"expected a positive number or null, got {value!r}")
        return value

    return dict(hidden_act="gelu_pytorch_tanh", layer_types=tuple(layer_types),
                sliding_window=get("sliding_window", int, None), rope_local_theta=local_theta,
                query_pre_attn_scalar=optional("query_pre_attn_scalar"),
                attn_logit_softcapping=optional("attn_logit_softcapping"),
                final_logit_softcapping=optional("final_logit_softcapping"))


def _qwen3_5_from_hf(d: dict[str, Any], get, fail, partial: Any) -> dict[str, Any]:
    """Qwen3.5's fields of ModelConfig, with transformers' defaults for those a file leaves out."""
    n = get("num_hidden_layers", int)
    layer_types = d.get("layer_types")
    if layer_types is None:
        interval = get("full_attention_interval", int, 4)
        layer_types = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n)]
    if not isinstance(layer_types, list) or len(layer_types) != n or not set(layer_types) <= set(HYBRID_LAYER_TYPES):
        raise fail("layer_types", f"expected one of {', '.join(HYBRID_LAYER_TYPES)} for each of the {n} layers")
    if isinstance(partial, bool) or not isinstance(partial, (int, float)) or not 0 < partial <= 1:
        raise fail("partial_rotary_factor", f"expected a number in (0, 1], got {partial!r}")
    defaults = LinearAttentionConfig()
    linear = LinearAttentionConfig(**{name: get("linear_" + name, int, getattr(defaults, name))
                                      for name in ("conv_kernel_dim", "key_head_dim", "value_head_dim",
                                                   "num_key_heads", "num_value_heads")})
    return dict(layer_types=tuple(layer_types), linear=linear, partial_rotary_factor=float(partial))


def _int_if_whole(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _gemma_to_hf(cfg: "ModelConfig", full_rope: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3's config.json fields. RoPE per layer type as transformers 5 writes it, and the legacy
    top-level rope_theta / rope_local_base_freq beside it, which transformers 4.x reads."""
    local = cfg.rope_local_theta
    return dict(
        hidden_activation=cfg.hidden_act, layer_types=list(cfg.layer_types), sliding_window=cfg.sliding_window,
        query_pre_attn_scalar=_int_if_whole(cfg.query_pre_attn_scalar),  # transformers' config wants an int
        attn_logit_softcapping=cfg.attn_logit_softcapping, final_logit_softcapping=cfg.final_logit_softcapping,
        rope_local_base_freq=local,
        rope_parameters={"full_attention": full_rope,
                         "sliding_attention": {"rope_type": "default", "rope_theta": local}},
    )


# transformers' defaults for the routing options a config.json may leave out.
_MOE_DEFAULTS = {
    "qwen3_moe": dict(norm_topk_prob=False, decoder_sparse_step=1),
    "qwen3_5_moe_text": dict(norm_topk_prob=True, decoder_sparse_step=1),
    "deepseek_v3": dict(norm_topk_prob=True, n_shared_experts=1, routed_scaling_factor=2.5, n_group=8,
                        topk_group=4, first_k_dense_replace=3),
}


def _moe_from_hf(d: dict[str, Any], model_type: str, get) -> MoEConfig | None:
    if model_type not in _MOE_DEFAULTS:
        return None
    defaults = _MOE_DEFAULTS[model_type]
    if model_type == "qwen3_5_moe_text":
        # every layer sparse, the top-k weights always renormalised, one gated shared expert
        return MoEConfig(num_experts=get("num_experts", int), num_experts_per_tok=get("num_experts_per_tok", int),
                         moe_intermediate_size=get("moe_intermediate_size", int), norm_topk_prob=True,
                         shared_expert_intermediate_size=get("shared_expert_intermediate_size", int, 0))
    if model_type == "qwen3_moe":
        # transformers 5 writes num_local_experts (an alias it maps num_experts onto).
        experts = "num_local_experts" if "num_local_experts" in d and "num_experts" not in d else "num_experts"
        layers = get("mlp_only_layers", list, [])
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
            raise ConfigError(f"field 'mlp_only_layers': expected a list of layer indices, got {layers!r}")
        extra = dict(decoder_sparse_step=get("decoder_sparse_step", int, defaults["decoder_sparse_step"]),
                     mlp_only_layers=tuple(layers))
    else:
        experts = "n_routed_experts"
        extra = {name: get(name, type(value), value) for name, value in defaults.items() if name != "norm_topk_prob"}
    return MoEConfig(num_experts=get(experts, int), num_experts_per_tok=get("num_experts_per_tok", int),
                     moe_intermediate_size=get("moe_intermediate_size", int),
                     norm_topk_prob=get("norm_topk_prob", bool, defaults["norm_topk_prob"]), **extra)


def _moe_to_hf(moe: MoEConfig, model_type: str, d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(num_experts_per_tok=moe.num_experts_per_tok,
                               moe_intermediate_size=moe.moe_intermediate_size, norm_topk_prob=moe.norm_topk_prob)
    if model_type == "qwen3_5_moe_text":
        out.update(num_experts=moe.num_experts, shared_expert_intermediate_size=moe.shared_expert_intermediate_size)
    elif model_type == "qwen3_moe":
        out.update(num_experts=moe.num_experts, decoder_sparse_step=moe.decoder_sparse_step,
                   mlp_only_layers=list(moe.mlp_only_layers))
        if "num_local_experts" in d:
            out["num_local_experts"] = moe.num_experts
    else:
        out.update(n_routed_experts=moe.num_experts, n_shared_experts=moe.n_shared_experts,
                   routed_scaling_factor=moe.routed_scaling_factor, n_group=moe.n_group, topk_group=moe.topk_group,
                   first_k_dense_replace=moe.first_k_dense_replace)
    return out


def _mla_from_hf(d: dict[str, Any], model_type: str, get, fail) -> MLAConfig | None:
    if model_type != "deepseek_v3":
        return None
    # null means "no query compression"; a missing key means transformers' default, 1536.
    q_lora_rank = d.get("q_lora_rank", 1536)
    if q_lora_rank is not None and (not isinstance(q_lora_rank, int) or isinstance(q_lora_rank, bool)):
        raise fail("q_lora_rank", f"expected int or null, got {q_lora_rank!r}")
    return MLAConfig(kv_lora_rank=get("kv_lora_rank", int), qk_nope_head_dim=get("qk_nope_head_dim", int),
                     qk_rope_head_dim=get("qk_rope_head_dim", int), v_head_dim=get("v_head_dim", int),
                     q_lora_rank=q_lora_rank, rope_interleave=get("rope_interleave", bool, True))


def _positive(obj: Any, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _check_moe(moe: MoEConfig) -> None:
    _positive(moe, ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "decoder_sparse_step",
                    "n_group", "topk_group"))
    if moe.num_experts_per_tok > moe.num_experts:
        raise ConfigError(f"num_experts_per_tok ({moe.num_experts_per_tok}) exceeds the {moe.num_experts} experts")
    if moe.num_experts % moe.n_group:
        raise ConfigError(f"n_group ({moe.n_group}) must divide the {moe.num_experts} routed experts")
    if moe.topk_group > moe.n_group:
        raise ConfigError(f"topk_group ({moe.topk_group}) exceeds n_group ({moe.n_group})")
    if moe.n_group > 1 and moe.num_experts // moe.n_group < 2:
        raise ConfigError("group-limited routing scores each group by its top-2 experts: "
                          f"n_group ({moe.n_group}) leaves fewer than 2 experts per group")
    if moe.num_experts_per_tok > moe.topk_group * (moe.num_experts // moe.n_group):
        raise ConfigError(f"num_experts_per_tok ({moe.num_experts_per_tok}) exceeds the experts of the "
                          f"topk_group ({moe.topk_group}) groups a token may use")
    if moe.n_shared_experts < 0 or moe.first_k_dense_replace < 0:
        raise ConfigError("n_shared_experts and first_k_dense_replace must be >= 0")


def _check_mla(mla: MLAConfig, head_dim: int) -> None:
    _positive(mla, ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"))
    if mla.q_lora_rank is not None:
        _positive(mla, ("q_lora_rank",))
    if head_dim != mla.qk_rope_head_dim:
        raise ConfigError(f"head_dim ({head_dim}) must equal qk_rope_head_dim ({mla.qk_rope_head_dim}) for MLA")
