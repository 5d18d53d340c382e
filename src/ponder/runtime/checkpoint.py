"""Train-state checkpoints that survive kill -9: written whole or not at all.

Layout under a run's `checkpoints/` folder:
    step-000010/model/        HF layout (config.json, model.safetensors, tokenizer files)
    step-000010/state.pt      optimizer, step, RNG states, data position, metrics so far, ...
    LATEST                    the name of the newest complete checkpoint
A checkpoint is written into a temporary folder, every file fsync'ed, then renamed into place;
only then does LATEST move (write + fsync + os.replace). A crash at any point leaves LATEST
naming a complete checkpoint; leftovers of an interrupted write are removed on the next save.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

POINTER = "LATEST"


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may touch."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(root))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: str | Path, step: int, model, tokenizer, state: dict[str, Any], keep: int = 1) -> Path:
    """Write checkpoint `step` atomically and point LATEST at it; keep the newest `keep`."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # an earlier write that was killed half-way
        shutil.rmtree(stale, ignore_errors=True)
    name = f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    model.save_pretrained(tmp / "model")
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    torch.save(state, tmp / "state.pt")
    _fsync_tree(tmp)
    final = root / name
    if final.exists():  # the same step saved again (after a rollback): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    pointer_tmp = root / f".tmp-{POINTER}"
    with open(pointer_tmp, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(pointer_tmp, root / POINTER)
    _fsync_dir(root)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under `root`, or None."""
    pointer = Path(root) / POINTER
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "state.pt").exists():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is missing or incomplete")
    return path


def load_state(path: str | Path) -> dict[str, Any]:
    """The state dict of a checkpoint folder (weights are in path/model, HF layout)."""
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)


def load_weights(model, path: str | Path) -> None:
    """Copy a checkpoint's weights into `model` in place (the optimizer keeps its parameter refs)."""
    from ponder.models import from_pretrained

    loaded = from_pretrained(Path(path) / "model", dtype=next(model.parameters()).dtype)
    model.load_state_dict(loaded.state_dict())
