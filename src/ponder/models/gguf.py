"""Import a GGUF file (llama.cpp's format, how many small checkpoints are shipped) as an ordinary
Hugging Face checkpoint folder that ponder and transformers both load.

The format is read by the libraries made for it, not by hand: transformers' GGUF loader (which
uses the `gguf` package to read and dequantise the tensors) builds the model and its tokenizer,
and transformers writes the folder (safetensors, config.json, generation_config.json,
tokenizer.json, tokenizer_config.json, the chat template). Quantised weights come out
dequantised to the dtype asked for: the folder holds plain weights, with no quantisation config
left behind (transformers refuses to save a model still flagged as quantised).

    ponder convert model.Q4_1.gguf out/model [--dtype float32|bfloat16]

Both libraries are the optional extra `ponder[gguf]`; without them the error says so. An
architecture transformers cannot read from GGUF, or one ponder's decoder does not support, is
named in the error, and nothing is left in OUT_DIR.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import CheckpointError, load_checkpoint

EXTRA = "pip install 'ponder[gguf]'  (the gguf and transformers packages)"


class ConvertError(ValueError):
    """A GGUF file that cannot be converted; the message names the file and the reason."""


def gguf_architecture(file: Path) -> str:
    """The `general.architecture` field of a GGUF header (e.g. llama, gemma3, qwen3)."""
    from gguf import GGUFReader

    field = GGUFReader(str(file)).fields.get("general.architecture")
    if field is None:
        raise ConvertError(f"{file}: no general.architecture field: not a model GGUF file")
    return bytes(field.parts[field.data[0]]).decode()


@contextmanager
def one_reader_per_file():
    """transformers reads a GGUF header three times in one conversion (config, tokenizer,
    weights), and reading one walks every vocabulary entry in Python: about 15 s a time for Gemma
    3's 262,144 entries. Within this block each file is read once and its reader shared (it is
    read-only: a memory map and the parsed fields). transformers imports the reader inside its
    loading function, so this reaches it; were that to change, conversion is slower, not wrong."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared(path, *args, **kwargs):
        key = (str(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def readable_architecture(file: Path) -> str:
    """The architecture for an error message, read only once something has failed: reading a GGUF
    header walks the whole vocabulary (a quarter of a Gemma 3 conversion's time)."""
    try:
        return gguf_architecture(file)
    except (ValueError, OSError) as e:
        raise ConvertError(f"{file}: not a readable GGUF file ({e})") from None


def convert_gguf(file: str | Path, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `file` as a HF checkpoint folder at `out_dir` (created; must not hold a checkpoint)."""
    file, out = Path(file), Path(out_dir)
    if not file.is_file():
        raise ConvertError(f"{file}: no such file")
    if (out / "config.json").exists():
        raise ConvertError(f"{out}: already holds a checkpoint (config.json); choose an empty folder")
    try:
        import gguf  # noqa: F401  (transformers' GGUF loader needs it; fail early with the extra's name)
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise ConvertError(f"{file}: converting GGUF needs the gguf extra ({e.name} is missing): {EXTRA}") from None
    try:
        with one_reader_per_file():
            tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
            model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, dtype=dtype)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise ConvertError(f"{file}: transformers cannot read GGUF architecture {readable_architecture(file)!r} "
                           f"({e})") from None
    # Dequantised on load: what is saved is plain weights, so the quantised flags must go.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = str(file)

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        try:
            load_checkpoint(partial, dtype=dtype)  # the folder is only worth keeping if ponder loads it
        except CheckpointError as e:
            raise ConvertError(f"{file}: GGUF architecture {model.config.model_type!r} converted, but ponder "
                               f"cannot load it: {e}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()  # empty (checked above for a checkpoint; rmdir refuses anything else)
        partial.rename(out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return out
