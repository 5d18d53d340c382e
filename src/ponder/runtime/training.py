"""The training runtime: what every trainer's loop shares, below the methods that use it.

Device and precision, loading the policy a config names, the learning-rate schedule, the seeded
data stream, and restoring a train-state checkpoint (weights, optimizer, every RNG, data position)
so that a resumed run continues exactly. RL, SFT and the other methods import from here; nothing
here knows which method runs.
"""

from __future__ import annotations

import math
import random
from contextlib import nullcontext
from pathlib import Path

import torch

from ponder.runtime import checkpoint


class ProblemStream:
    """Indices into the training problems, reshuffled each epoch by a seeded RNG.

    Its whole state is (epoch, index), so it can be saved and restored exactly."""

    def __init__(self, size: int, seed: int, epoch: int = 0, index: int = 0):
        if size < 1:
            raise ValueError("no training problems")
        self.size, self.seed, self.epoch, self.index = size, seed, epoch, index
        self._order = self._shuffle()

    def _shuffle(self) -> list[int]:
        order = list(range(self.size))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return order

    def take(self, k: int) -> list[int]:
        out = []
        for _ in range(k):
            if self.index == self.size:
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._shuffle()
            out.append(self._order[self.index])
            self.index += 1
        return out

    def state(self) -> dict[str, int]:
        return {"size": self.size, "seed": self.seed, "epoch": self.epoch, "index": self.index}


def restore_train_state(path: Path, model, optimizer, size: int, what: str) -> tuple[dict, ProblemStream]:
    """Load a train-state checkpoint into `model` and `optimizer`, set every RNG, and return the
    saved state with the data stream where it stopped; `size` must match the saved data size."""
    saved = checkpoint.load_state(path)
    checkpoint.load_weights(model, path)
    optimizer.load_state_dict(saved["optimizer"])
    checkpoint.set_rng_state(saved["rng"])
    s = saved["stream"]
    if s["size"] != size:
        raise ValueError(f"{path}: checkpoint was trained on {s['size']} {what}, this run has {size}")
    return saved, ProblemStream(s["size"], s["seed"], s["epoch"], s["index"])


def load_policy(cfg, model=None, tokenizer=None, init_seed: int | None = None):
    """The model and tokenizer a config names (`cfg.model`, `cfg.tokenizer` or else the model
    folder), unless given. With `init_seed`, a fresh model is built from the folder's config.json
    (seeded) instead of loading its weights."""
    if tokenizer is None:
        from ponder.tokenizer import Tokenizer

        if not (cfg.tokenizer or cfg.model):
            raise ValueError("config: set `model` (and `tokenizer` if it lives elsewhere)")
        tokenizer = Tokenizer.from_pretrained(cfg.tokenizer or cfg.model)
    if model is None:
        if not cfg.model:
            raise ValueError("config: `model` (an HF-layout folder) is required")
        if init_seed is not None:
            from ponder.models import Decoder
            from ponder.models.checkpoint import read_config

            torch.manual_seed(init_seed)
            model = Decoder(read_config(Path(cfg.model)))
        else:
            from ponder.models import from_pretrained

            model = from_pretrained(cfg.model)
    return model, tokenizer


def lr_at(cfg, step: int, scale: float = 1.0) -> float:
    """Learning rate of optimizer step `step` (1-based): linear warm-up, then constant or cosine."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * scale * step / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, cfg.steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        factor = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.lr * scale * factor
    return cfg.lr * scale


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device, dtype: str):
    """bf16 autocast for the forward where asked; fp32 (no autocast) otherwise."""
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()
