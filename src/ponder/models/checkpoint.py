"""Load and save Hugging Face checkpoint folders (config.json + safetensors), strictly.

A folder holds `config.json` and either `model.safetensors` or a sharded
`model.safetensors.index.json` (its `weight_map` names the shard of each tensor). Loading checks
every tensor name and shape against the model the config describes before any weight is used:
a missing, unexpected or misshapen tensor, an unreadable file, or an unsupported config is a
CheckpointError naming the file and the field or tensor. There is no partial load.

Mixture-of-experts weights: the model holds each layer's experts fused (`experts.gate_up_proj`
[E, 2I, H], gate rows first; `experts.down_proj` [E, H, I]), as transformers 5 does in memory.
Files may hold them fused or as one module per expert (`experts.N.{gate,up,down}_proj.weight`,
transformers 4.x, and what transformers 5 itself writes to disk); both load. Saving writes the
per-expert layout, like transformers' own save_pretrained, so 4.x-era readers load it too.

Fine-grained FP8 checkpoints (DeepSeek-V3's released weights, Qwen3-*-FP8: config.json
`quantization_config` with quant_method "fp8" and `weight_block_size` [b0, b1]) store a linear's
weight in float8 with `weight_scale_inv` [ceil(rows / b0), ceil(cols / b1)], one scale per block.
They are dequantized on load (weight * its block's scale, in fp32, as DeepSeek's and transformers'
dequantizers compute it) to the requested dtype; the model holds, and saves, plain weights.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import torch

from .config import ConfigError, ModelConfig
from .decoder import Decoder

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
# Kept in fp32 whatever dtype the model loads in (transformers does the same): routing-bias
# updates of ~1e-3 would round away in bf16.
FP32_TENSORS = ("e_score_correction_bias",)
SCALE = "_scale_inv"  # FP8: the scales of tensor `x.weight` are `x.weight_scale_inv`
PER_EXPERT = re.compile(r"(.+\.experts)\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded exactly; the message names the file and field."""


def resolve(path: str | Path) -> Path:
    """A local folder, or a hub id already in the local huggingface_hub cache (never downloads)."""
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise CheckpointError(f"{p}: expected a checkpoint folder (with {CONFIG}), got a file")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        snapshot_download = None
    if snapshot_download is not None and str(path).count("/") == 1:
        try:
            return Path(snapshot_download(str(path), local_files_only=True))
        except Exception:
            pass
    raise CheckpointError(f"{path}: no such checkpoint folder (and not a hub id in the local cache)")


def read_config(folder: Path) -> ModelConfig:
    file = folder / CONFIG
    if not file.is_file():
        raise CheckpointError(f"{file}: missing")
    try:
        d = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: not valid JSON ({e})") from None
    try:
        return ModelConfig.from_hf_dict(d, source=str(file))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def _weight_files(folder: Path) -> dict[Path, list[str] | None]:
    """Each weight file -> the tensor names the index assigns to it (None: single file, no index)."""
    single, index = folder / WEIGHTS, folder / INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            if not isinstance(weight_map, dict):
                raise TypeError("weight_map is not an object")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index}: field 'weight_map': unreadable ({e!r})") from None
        files: dict[Path, list[str]] = {}
        for name, shard in weight_map.items():
            files.setdefault(folder / shard, []).append(name)
        for shard in files:
            if not shard.is_file():
                raise CheckpointError(f"{shard}: missing (listed in {index} field 'weight_map')")
        return files
    if single.is_file():
        return {single: None}
    raise CheckpointError(f"{folder}: missing {WEIGHTS} (or {INDEX})")


def weights_source(folder: Path) -> Path:
    """The file that declares the weights: the shard index if there is one, else the single file."""
    return folder / INDEX if (folder / INDEX).is_file() else folder / WEIGHTS


def _open(file: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # safetensors raises its own error type for every malformed file
        raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from None


def _tensor_shapes(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Each stored tensor -> (its file, its shape), from the files' headers (no data read yet)."""
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for file, listed in _weight_files(folder).items():
        with _open(file) as f:
            names = list(f.keys())
            for name in names:
                if name in found:
                    raise CheckpointError(f"{file}: tensor {name!r} is also in {found[name][0]}")
                found[name] = (file, tuple(f.get_slice(name).get_shape()))
        missing = sorted(set(listed or ()) - set(names))
        if missing:
            raise CheckpointError(f"{file}: tensor {missing[0]!r} missing (the index {INDEX} lists it here)")
    return found


def load_checkpoint(path: str | Path, dtype: torch.dtype = torch.float32,
                    device: torch.device | str = "cpu") -> Decoder:
    folder = resolve(path)
    config = read_config(folder)
    with torch.device("meta"):
        model = Decoder(config)  # shapes only: no memory, no random init
    expected = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    stored = _tensor_shapes(folder)
    # Some writers store a tied head anyway; it is skipped (checked equal to the embedding below).
    tied_head = stored.pop("lm_head.weight", None) if config.tie_word_embeddings else None
    # DeepSeek-V3 files also hold its multi-token-prediction module(s), stored as the layers after
    # the last one; generation and RL do not use them, so they are skipped (as transformers does).
    mtp_layers = config.raw.get("num_nextn_predict_layers") or 0
    mtp_prefixes = tuple(f"model.layers.{config.num_hidden_layers + i}." for i in range(mtp_layers))
    for name in [n for n in stored if n.startswith(mtp_prefixes)]:  # () matches nothing
        del stored[name]
    file_key, model_key = _multimodal_text_part(config, stored, folder)
    block = _fp8_block(config, folder)
    scales = _take_scales(stored, block)  # FP8 weight name -> (its scale's name, file)
    parts = _per_expert_parts(stored, expected)  # fused name -> its per-expert tensors, when stored so

    # Check every name and shape first, in the model's own order, so that nothing is loaded
    # from a checkpoint that does not match, and the first problem named is the earliest tensor.
    for name, shape in expected.items():
        if name not in stored:
            raise CheckpointError(f"{weights_source(folder)}: tensor {name!r} missing "
                                  f"(the model {CONFIG} describes needs it)")
        file, got = stored[name]
        if got != shape:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {got}, expected {shape} from {CONFIG}")
    unexpected = sorted(stored.keys() - expected.keys())
    if unexpected:
        name = unexpected[0]
        why = (f"an FP8 scale, but {CONFIG} declares no 'quantization_config'" if name.endswith(SCALE)
               else f"not part of the model {CONFIG} describes")
        raise CheckpointError(f"{stored[name][0]}: unexpected tensor {name!r} ({why})")

    scale_values = {model_key(name): t for name, t, _ in _read((file_key(n), f) for n, f in scales.values())}
    state: dict[str, torch.Tensor] = {}
    to_read = [part for name, (file, _) in stored.items() for part in parts.get(name, [(name, file)])]
    for name, t, file in _read((file_key(n), f) for n, f in to_read):
        name = model_key(name)
        if not t.is_floating_point():
            raise CheckpointError(f"{file}: tensor {name!r} has dtype {t.dtype}, expected floating point")
        if name in scales:
            t = _dequantize(t, scale_values[scales[name][0]], block)
        elif t.element_size() == 1:  # a float8 weight read without its scales would be silently wrong
            raise CheckpointError(f"{file}: tensor {name!r} is {t.dtype} without a {name + SCALE!r} (and "
                                  f"{CONFIG} field 'quantization_config' must declare fine-grained 'fp8')")
        state[name] = t.to(device=device, dtype=torch.float32 if name.endswith(FP32_TENSORS) else dtype)
    for name, names in parts.items():
        tensors = [state.pop(part) for part, _ in names]
        if name.endswith("gate_up_proj"):  # [gate_0 .. gate_E-1, up_0 .. up_E-1] -> [E, 2I, H]
            half = len(tensors) // 2
            state[name] = torch.cat([torch.stack(tensors[:half]), torch.stack(tensors[half:])], dim=1)
        else:
            state[name] = torch.stack(tensors)
    if tied_head is not None:
        _, head, _ = next(_read([("lm_head.weight", tied_head[0])]))
        head = head.to(device=device, dtype=dtype)
        if not torch.equal(head, state["model.embed_tokens.weight"]):
            raise CheckpointError(f"{tied_head[0]}: tensor 'lm_head.weight' differs from "
                                  f"'model.embed_tokens.weight' but {CONFIG} sets tie_word_embeddings")
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def _multimodal_text_part(config: ModelConfig, stored: dict[str, tuple[Path, tuple[int, ...]]], folder: Path):
    """Qwen3.5's released checkpoints are multimodal (Qwen3_5ForConditionalGeneration): the text
    decoder under `model.language_model.`, the vision tower under `model.visual.`, and a
    multi-token-prediction head under `mtp.`. Only the text decoder is loaded: the others are
    dropped from `stored` (with a message naming what was skipped) and the decoder's names
    renamed in place. Returns (file_key, model_key): a model tensor name -> its name in the file,
    and back. Any other checkpoint: both are the identity."""
    text = "model.language_model."
    if not config.qwen3_5 or not any(n.startswith(text) for n in stored):
        return (lambda n: n), (lambda n: n)
    skipped = [n for n in stored if n.startswith(("model.visual.", "mtp."))]
    for name in skipped:
        del stored[name]
    for name in [n for n in stored if n.startswith(text)]:
        stored["model." + name[len(text):]] = stored.pop(name)
    if skipped:
        import warnings
        warnings.warn(f"{weights_source(folder)}: loading the text decoder only; skipped {len(skipped)} tensors of "
                      "the vision tower (model.visual.*) and multi-token prediction (mtp.*), which ponder does not use",
                      stacklevel=3)

    def file_key(name: str) -> str:
        return text + name[len("model."):] if name.startswith("model.") else name

    def model_key(name: str) -> str:
        return "model." + name[len(text):] if name.startswith(text) else name

    return file_key, model_key


def _read(named: Iterable[tuple[str, Path]]):
    """(name, tensor, file) for each (tensor name, file), each file opened once."""
    by_file: dict[Path, list[str]] = {}
    for name, file in named:
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with _open(file) as f:
            for name in names:
                yield name, f.get_tensor(name), file


def _fp8_block(config: ModelConfig, folder: Path) -> tuple[int, int] | None:
    """The [rows, cols] block of a fine-grained FP8 checkpoint; None when it is not quantized."""
    quant = config.raw.get("quantization_config")
    if quant is None:
        return None
    method = quant.get("quant_method") if isinstance(quant, dict) else None
    block = quant.get("weight_block_size") if isinstance(quant, dict) else None
    if method != "fp8" or not (isinstance(block, list) and len(block) == 2
                               and all(isinstance(b, int) and b > 0 for b in block)):
        raise CheckpointError(
            f"{folder / CONFIG}: field 'quantization_config': quant_method {method!r} with weight_block_size "
            f"{block!r} is not supported; ponder loads plain weights and fine-grained FP8 (quant_method 'fp8' "
            "with a two-number weight_block_size): convert other formats to bf16 first")
    return block[0], block[1]


def _take_scales(stored: dict[str, tuple[Path, tuple[int, ...]]],
                 block: tuple[int, int] | None) -> dict[str, tuple[str, Path]]:
    """Take the FP8 scale tensors out of `stored`, checking each against its weight's shape.

    Returns weight name -> (scale name, file). Without a declared FP8 block the scales stay in
    `stored`, and are reported as unexpected tensors."""
    scales: dict[str, tuple[str, Path]] = {}
    if block is None:
        return scales
    for name in [n for n in stored if n.endswith(SCALE)]:
        file, shape = stored.pop(name)
        weight = name.removesuffix(SCALE)
        if weight not in stored:
            raise CheckpointError(f"{file}: tensor {name!r} holds the scales of {weight!r}, which is not stored")
        rows, cols = stored[weight][1][-2:] if len(stored[weight][1]) >= 2 else (0, 0)
        want = (*stored[weight][1][:-2], -(-rows // block[0]), -(-cols // block[1]))
        if not rows or shape != want:
            raise CheckpointError(f"{file}: tensor {name!r} has shape {shape}, expected {want}: one scale per "
                                  f"{block[0]}x{block[1]} block ({CONFIG} field 'quantization_config."
                                  f"weight_block_size') of {weight!r} {stored[weight][1]}")
        scales[weight] = (name, file)
    return scales


def _dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """An FP8 weight times its blocks' scales, in fp32; edge blocks may be partial."""
    rows, cols = weight.shape[-2:]
    per_element = scale.float().repeat_interleave(block[0], dim=-2)[..., :rows, :]
    return weight.float() * per_element.repeat_interleave(block[1], dim=-1)[..., :cols]


def save_checkpoint(model: Decoder, path: str | Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Write `model` (or `state`, a full state dict of it, e.g. gathered from shards) in HF layout."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    dtype = str(model.dtype).removeprefix("torch.")
    config = model.config.to_hf_dict()
    config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    # A tied model has no lm_head module, so the state dict holds the shared tensor once.
    state = {n: t.detach().contiguous().cpu() for n, t in (state or model.state_dict()).items()}
    state = _split_experts(state)
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    stale = folder / INDEX  # a leftover index would shadow the file just written
    if stale.exists():
        stale.unlink()


Decoder.hf_writer = save_checkpoint  # model.save_pretrained(path) writes through this module


def _per_expert_parts(stored: dict[str, tuple[Path, tuple[int, ...]]],
                      expected: dict[str, tuple[int, ...]]) -> dict[str, list[tuple[str, Path]]]:
    """Map per-expert tensors onto the fused ones the model expects, checking each part.

    For every fused expert tensor that is not stored as such but whose per-expert parts are,
    each of the E parts must be present with the expected shape (else a CheckpointError naming
    it); `stored` then lists the fused name (with the expected shape) in place of its parts.
    Returns fused name -> [(part name, its file)] in stacking order. Parts that belong to no
    expected tensor (an expert index >= E, a dense layer) stay in `stored`, reported as unexpected.
    """
    prefixes = {m.group(1) for name in stored if (m := PER_EXPERT.fullmatch(name))}
    parts: dict[str, list[tuple[str, Path]]] = {}
    for prefix in sorted(prefixes):
        gate_up, down = f"{prefix}.gate_up_proj", f"{prefix}.down_proj"
        if gate_up not in expected or gate_up in stored or down in stored:
            continue
        E, two_inner, hidden = expected[gate_up]
        want = {"gate_proj": (two_inner // 2, hidden), "up_proj": (two_inner // 2, hidden),
                "down_proj": expected[down][1:]}
        names = {kind: [f"{prefix}.{e}.{kind}.weight" for e in range(E)] for kind in want}
        for kind, shape in want.items():
            for name in names[kind]:
                if name not in stored:
                    first = next(n for n in stored if n.startswith(prefix + "."))
                    raise CheckpointError(f"{stored[first][0]}: tensor {name!r} missing (the other experts of "
                                          f"{prefix!r} are stored one module per expert)")
                if stored[name][1] != shape:
                    raise CheckpointError(f"{stored[name][0]}: tensor {name!r} has shape {stored[name][1]}, "
                                          f"expected {shape} from {CONFIG}")
        for fused, kinds in ((gate_up, ("gate_proj", "up_proj")), (down, ("down_proj",))):
            parts[fused] = [(name, stored[name][0]) for kind in kinds for name in names[kind]]
            stored[fused] = (parts[fused][0][1], expected[fused])
            for name, _ in parts[fused]:
                del stored[name]
    return parts


def _split_experts(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fused expert tensors -> one gate/up/down weight per expert (the layout written to disk)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if name.endswith(".experts.gate_up_proj"):
            prefix, inner = name.removesuffix("gate_up_proj"), t.shape[1] // 2
            for e in range(t.shape[0]):
                out[f"{prefix}{e}.gate_proj.weight"] = t[e, :inner].contiguous()
                out[f"{prefix}{e}.up_proj.weight"] = t[e, inner:].contiguous()
        elif name.endswith(".experts.down_proj"):
            for e in range(t.shape[0]):
                out[f"{name.removesuffix('down_proj')}{e}.down_proj.weight"] = t[e].contiguous()
        else:
            out[name] = t
    return out
