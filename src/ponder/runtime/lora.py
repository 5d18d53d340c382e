"""LoRA on ponder's Decoder through peft: train a low-rank adapter, keep the base frozen.

    model = apply_lora(model, LoRAConfig(r=16))   # adapters in, every base weight frozen
    with adapter_disabled(model):                 # the base policy (KL reference), same weights
        ref_logits = model(ids)
    save_adapter(model, "out/adapter")            # PEFT's files: peft loads them onto transformers
    save_merged(model, "out/merged")              # one plain HF checkpoint, base + adapter

peft's low-level `inject_adapter_in_model` wraps the named `nn.Linear` layers in place, so the
model stays a `Decoder` with its own forward, its own names (`model.layers.N.self_attn.q_proj`, as
transformers names them) and its own loss head; `get_peft_model` would wrap it in a PeftModel whose
forward expects a transformers model's arguments. The adapter's B starts at zero (peft's default),
so the adapted model computes exactly the base at step 0.

What can be targeted: every `nn.Linear` by name or dotted suffix: the attention projections
(q_proj, k_proj, v_proj, o_proj; multi-head latent attention's q_proj or q_a_proj and q_b_proj,
kv_a_proj_with_mqa, o_proj), dense MLPs and DeepSeek-V3's shared experts (gate_proj,
up_proj, down_proj), an untied lm_head. On a mixture-of-experts model, only attention is adapted:
its routed experts are fused [E, ...] tensors, not `nn.Linear`, and peft itself reads the MLP names
there as those experts (it rewrites them for transformers 5's fused layout), so an adapter on the
dense or shared-expert MLPs would not load into peft faithfully; the MLP names are refused.
MLA's kv_b_proj is refused too: ponder absorbs its weight into the query and the value output (so
that the cache holds the latent), and never calls the layer that an adapter would wrap.

Generation runs the adapter alongside the base weights (`DecodeStep` declines a model with
adapters, so the engine decodes with `Decoder.forward`): merging in place and back would drift the
base weights in floating point and break bit-exact resume. peft is imported only when a function
here runs: importing it loads transformers, seconds that a run without LoRA should not pay.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

ADAPTER = "default"  # peft's name for the one adapter; PEFT's files leave it out of tensor names
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # what PeftModel puts before the wrapped model's names in its files
MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """The `lora:` key of RL and SFT configs (e.g. `lora: {r: 8}`)."""

    r: int = 16  # rank of each adapter (A is r x in, B is out x r); 16
    alpha: float = 32  # the adapter's output is scaled by alpha / r; 32
    dropout: float = 0.0  # dropout on the adapter's input while training; 0.0
    # names (or dotted suffixes) of the nn.Linear layers to adapt; default: every attention and MLP projection
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("target_modules must name at least one layer")


def _lora_layers(model: nn.Module) -> list[nn.Module]:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.modules() if isinstance(m, LoraLayer)]


def _adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The adapters' A and B weights by name (peft's own rule: its layers' names start with `lora_`)."""
    return {name: p for name, p in model.named_parameters() if ".lora_" in name}


def _targets(model: nn.Module, targets: list[str]) -> set[str]:
    """The names of the layers `targets` select; an error names a target that selects nothing, or
    something other than an nn.Linear (peft's own errors do not say which layers there are)."""
    modules = dict(model.named_modules())
    moe = any(name.endswith(".experts") for name in modules)
    mlp = [t for t in targets if any(t == n or t.endswith("." + n) for n in MLP_NAMES)]
    if moe and mlp:
        # peft takes a model with `config.model_type` for transformers' and, for MoE types, rewrites
        # these names into LoRA on the fused expert tensors (its transformers-5 conversion): on ponder's
        # model and on transformers' alike, an adapter on the dense or shared-expert MLPs would not be
        # the one trained.
        raise ValueError(f"lora.target_modules: {mlp} on a mixture-of-experts model: its routed experts are fused "
                         f"tensors, not nn.Linear, which ponder does not adapt, and peft reads these names as "
                         f"those experts; target the attention projections")
    selected, missing = set(), []
    for target in targets:
        hits = [name for name in modules if name == target or name.endswith("." + target)]
        wrong = [name for name in hits if type(modules[name]) is not nn.Linear]
        if wrong:
            raise ValueError(f"lora.target_modules: {target!r} names {wrong[0]}, a "
                             f"{type(modules[wrong[0]]).__name__}, not an nn.Linear")
        absorbed = [name for name in hits if name.endswith(".kv_b_proj")]
        if absorbed:  # see the module's notes
            raise ValueError(f"lora.target_modules: {target!r} names {absorbed[0]}, whose weight multi-head "
                             f"latent attention folds into the query and value paths without calling the layer, "
                             f"so an adapter there would never run")
        if not hits:
            missing.append(target)
        selected.update(hits)
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in modules.items() if type(m) is nn.Linear})
        raise ValueError(f"lora.target_modules: {missing} match no nn.Linear of the model "
                         f"(its linear layers: {', '.join(linear)})")
    return selected


def apply_lora(model: nn.Module, cfg: LoRAConfig, seed: int = 0) -> nn.Module:
    """Wrap `cfg.target_modules` of `model` in LoRA adapters, in place, and freeze every other weight.

    A is drawn from `seed` (peft's Kaiming-uniform init) in a forked RNG, so the adapter is the same
    for the same seed and the run's other random draws do not move; B is zero."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    if _lora_layers(model):
        raise ValueError("apply_lora: the model already holds LoRA adapters")
    selected = _targets(model, cfg.target_modules)
    peft_config = LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                             target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):  # peft draws A on the CPU, then moves it to the layer's device
        torch.manual_seed(seed)
        inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)
    adapted = {name for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    if adapted != selected:  # peft chose other layers than the names select: say so, never train them silently
        raise RuntimeError(f"apply_lora: peft adapted {sorted(adapted - selected)} and left "
                           f"{sorted(selected - adapted)}, not the layers target_modules names")
    adapter = _adapter_parameters(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in adapter)
    return model


@contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside, `model` computes as its base (the reference policy of a KL term, without a second
    copy of the weights); the adapters, and which weights train, are restored on exit."""
    layers = _lora_layers(model)
    if not layers:  # a KL against the policy itself would silently be zero
        raise ValueError("adapter_disabled: the model holds no LoRA adapters")
    trains = [(p, p.requires_grad) for p in model.parameters()]  # peft's toggle also sets requires_grad
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield model
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for p, flag in trains:
            p.requires_grad_(flag)


def save_adapter(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None,
                 base_model: str | Path | None = None) -> None:
    """Write the adapter in PEFT's layout (adapter_config.json + adapter_model.safetensors):
    `peft.PeftModel.from_pretrained(<transformers model of the same base>, path)` loads it.
    `state`: the model's full state dict when its live tensors are shards (FSDP2).
    `base_model`: the base checkpoint it was trained on, recorded as PEFT records it
    (base_model_name_or_path), so that the adapter names what to load it onto."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    if state is None:
        state = get_peft_model_state_dict(model, adapter_name=ADAPTER, save_embedding_layers=False)
    else:  # PEFT's files leave the adapter's name out of tensor names
        state = {name.replace(f".{ADAPTER}.", "."): t for name, t in state.items() if ".lora_" in name}
    save_file({PEFT_PREFIX + name: t.detach().contiguous().cpu() for name, t in state.items()},
              str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    # sets (target names) as sorted lists, so the same adapter always writes the same file
    config = {k: sorted(v) if isinstance(v, set) else v for k, v in model.peft_config[ADAPTER].to_dict().items()}
    config["inference_mode"] = True  # as PeftModel.save_pretrained writes it: a loaded adapter is frozen
    if base_model is not None:
        config["base_model_name_or_path"] = str(base_model)
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Copy the adapter weights of a `save_adapter` (or PEFT) folder into `model`'s adapters, in place
    (an optimizer keeps its parameter references): resume, or evaluate a saved adapter."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(path)
    saved = json.loads((folder / ADAPTER_CONFIG).read_text())
    ours = model.peft_config[ADAPTER]
    for key in ("r", "lora_alpha", "use_rslora"):  # a different scale would load without a shape error
        if saved.get(key) != getattr(ours, key):
            raise ValueError(f"{folder / ADAPTER_CONFIG}: {key} is {saved.get(key)!r}, the model's adapter "
                             f"has {getattr(ours, key)!r}")
    state = {name.removeprefix(PEFT_PREFIX): t for name, t in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    result = set_peft_model_state_dict(model, state, adapter_name=ADAPTER)
    missing = sorted(set(result.missing_keys) & _adapter_parameters(model).keys())
    if result.unexpected_keys or missing:
        what = (f"unexpected tensor {result.unexpected_keys[0]!r}" if result.unexpected_keys
                else f"tensor for {missing[0]!r} missing")
        raise ValueError(f"{folder / ADAPTER_WEIGHTS}: {what}")


@torch.no_grad()
def merged_state_dict(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The model's state dict under its plain names with each adapter merged (W + alpha / r * B @ A,
    summed in fp32). The live weights are not touched: merged tensors are new, the others are the
    live tensors themselves (detached, not copied). `state`: the model's full state dict to merge
    instead of the live one (under FSDP2 the live tensors are shards)."""
    from peft.tuners.lora import LoraLayer

    source = model.state_dict() if state is None else state
    merged = {name.replace(".base_layer.", "."): t for name, t in source.items() if ".lora_" not in name}
    for name, layer in model.named_modules():
        if isinstance(layer, LoraLayer):
            weight = merged[f"{name}.weight"]
            a, b = source[f"{name}.lora_A.{ADAPTER}.weight"], source[f"{name}.lora_B.{ADAPTER}.weight"]
            delta = (b.float() @ a.float()) * layer.scaling[ADAPTER]  # what peft's get_delta_weight computes
            merged[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
    return merged


def save_merged(model: nn.Module, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write base + adapter as one plain HF checkpoint (config.json + model.safetensors) that
    `ponder.models.from_pretrained` and transformers load; `model` is left as it is. `state`: as
    for merged_state_dict."""
    from ponder.models import Decoder

    with torch.device("meta"):
        plain = Decoder(model.config)  # names and shapes only; the tensors come from the merge
    plain.load_state_dict(merged_state_dict(model, state), strict=True, assign=True)
    plain.save_pretrained(path)
