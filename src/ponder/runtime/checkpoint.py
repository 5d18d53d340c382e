"""Train-state checkpoints that survive kill -9, in one process or many: written whole or not at all.

Layout under a run's `checkpoints/` folder:
    step-000010/weights/      weights and optimizer state through torch.distributed.checkpoint
                              (DCP: a file per rank, resharded on load, so a run saved by N ranks
                              resumes on M)
    step-000010/rng-R.pt      every RNG of rank R (a resume on other ranks reseeds the new ones)
    step-000010/state.pt      step, data position, metrics so far, config, ... (rank 0)
    LATEST                    the name of the newest complete checkpoint
Every rank writes into one temporary folder; after a barrier rank 0 fsyncs it and renames it into
place, and only then moves LATEST (write + fsync + os.replace). A crash at any point leaves LATEST
naming a complete checkpoint; leftovers of an interrupted write are removed on the next save.
A full disk is reported as such, with the path, and the partial folder is removed.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

# What trains, and only that: frozen weights (a LoRA run's whole base) are reloaded from the
# model folder on resume, so a checkpoint never holds them (a 135M base is 540 MB per save).
TRAINED_ONLY = StateDictOptions(ignore_frozen_params=True)

from ponder.runtime import distributed

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


@contextmanager
def _one_process_is_fine():
    """DCP warns that it assumes one process when no process group is up: here that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def _train_state(model, optimizer) -> dict[str, Any]:
    """Weights and optimizer state keyed by parameter name, sharded as the model is (DDP, FSDP2 or
    none). `optimizer` may be a list (one model trained by several, such as a policy and its critic)."""
    # The optimizer's first: on an FSDP2 model whose optimizer has no state yet, torch 2.13
    # crashes (SIGSEGV in AdamW's zero-gradient initialising step) when the model's state dict
    # was taken before.
    optimizers = list(optimizer) if isinstance(optimizer, (list, tuple)) else [optimizer]
    fresh = not any(o.state for o in optimizers)
    optimizer_state = get_optimizer_state_dict(model, optimizer)
    if fresh:
        # DCP builds the state of a fresh optimizer by stepping it once on zero gradients with lr 0,
        # which leaves AdamW's step count at 1: the first real update would then be bias-corrected
        # as a second one (0.74 x lr). Put the count back to 0, in the optimizers and in what is
        # saved (a sharded model's saved state may hold copies).
        for state in [*(s for o in optimizers for s in o.state.values()), *optimizer_state["state"].values()]:
            if torch.is_tensor(state.get("step")):
                state["step"].zero_()
    return {"model": get_model_state_dict(model, options=TRAINED_ONLY), "optimizer": optimizer_state}


def save(root: str | Path, step: int, model, optimizer, state: dict[str, Any], keep: int = 1,
         protect: str | None = None) -> Path:
    """Write checkpoint `step` atomically (a collective: every rank calls it) and point LATEST at it.

    `state` is rank 0's picklable record; every rank's RNGs are saved beside it. Older checkpoints
    beyond the newest `keep` are removed (0: keep all), except the one named `protect`.
    """
    root = Path(root)
    name = f"step-{step:06d}"
    tmp = root / f".tmp-{name}"
    if distributed.is_main():
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # an earlier write that was killed half-way
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    distributed.barrier()
    failure = None
    try:
        with _one_process_is_fine():
            dcp.save(_train_state(model, optimizer), checkpoint_id=str(tmp / "weights"),
                     no_dist=not torch.distributed.is_initialized())
        torch.save(rng_state(), tmp / f"rng-{distributed.rank()}.pt")
        if distributed.is_main():
            torch.save(state, tmp / "state.pt")
    except (OSError, RuntimeError) as exc:
        failure = exc
    failed = distributed.all_sum([failure is not None]).item() > 0
    if failed:
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)
        distributed.barrier()
        raise _explain(failure, tmp) if failure is not None else RuntimeError(
            f"{tmp}: another rank failed to write its part of the checkpoint; it was removed")
    distributed.barrier()
    final = root / name
    if distributed.is_main():
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (after a rollback): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_pointer(root, POINTER, name)
        done = sorted(p for p in root.glob("step-*") if p.is_dir())
        for old in done[:-keep] if keep > 0 else []:
            if old.name not in (name, protect):
                shutil.rmtree(old, ignore_errors=True)
    distributed.barrier()
    return final


def write_pointer(root: Path, pointer: str, name: str) -> None:
    """Point `root/pointer` (LATEST, BEST) at checkpoint `name`: write, fsync, rename."""
    tmp = root / f".tmp-{pointer}"
    with open(tmp, "w") as f:
        f.write(name)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / pointer)
    _fsync_dir(root)


def _explain(exc: BaseException, tmp: Path) -> Exception:
    """A full disk as "no space left on device" with the path (torch's own message for it is an
    `enforce fail` of its zip writer); anything else as it was, naming the folder."""
    text = str(exc)
    if getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text or "unexpected pos" in text:
        return OSError(errno.ENOSPC, f"no space left on device while writing checkpoint {tmp} (removed; the "
                                     f"previous checkpoint is intact): {text.splitlines()[0] if text else ''}")
    return RuntimeError(f"writing checkpoint {tmp} failed (removed; the previous checkpoint is intact): {exc}")


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
    """The rank-0 record of a checkpoint folder (step, data position, history, config, ...)."""
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)


def load_train_state(path: str | Path, model, optimizer) -> None:
    """Load weights and optimizer state into `model` / `optimizer` in place (resharded to this
    run's ranks), and this rank's RNGs (rank 0's on ranks the saving run did not have)."""
    path = Path(path)
    target = _train_state(model, optimizer)
    with _one_process_is_fine():
        dcp.load(target, checkpoint_id=str(path / "weights"), no_dist=not torch.distributed.is_initialized())
    set_model_state_dict(model, target["model"], options=StateDictOptions(ignore_frozen_params=True, strict=False))
    set_optimizer_state_dict(model, optimizer, target["optimizer"])
    own = path / f"rng-{distributed.rank()}.pt"
    set_rng_state(torch.load(own if own.exists() else path / "rng-0.pt", weights_only=False))
