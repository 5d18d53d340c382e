"""Supervised fine-tuning: `ponder train sft CONFIG.yaml key=value ...` or `train_sft(SFTConfig(...))`.

Data is JSONL: {"text": ...} records (loss on every token) or {"prompt": ..., "completion": ...}
records (loss on completion tokens only; prompt and completion are tokenized apart, as the RL
engine sees them). An end-of-sequence token closes every example. The loss is the token mean
over the whole batch across micro-batches. Checkpoints, exact resume and metrics reuse the RL
runtime (ponder.runtime); the result is an HF-layout model + tokenizer.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ponder.models import token_logprobs
from ponder.runtime import checkpoint
from ponder.runtime.metrics import MetricsLog, plot
from ponder.runtime.training import ProblemStream, autocast, load_policy, lr_at, pick_device, restore_train_state
from ponder.tasks.loaders import read_records

log = logging.getLogger("ponder.sft")


@dataclass
class SFTConfig:
    model: str = ""  # HF-layout folder to start from (config.json + weights)
    init_from_config: bool = False  # build a freshly initialised model from `model`/config.json (seeded) instead of loading weights
    tokenizer: str | None = None  # folder holding tokenizer.json; None: the model folder
    data: str = ""  # JSON / JSONL (.gz) / parquet of {"text"} or {"prompt", "completion"} records
    eval_data: str | None = None  # records of the same kind for a held-out loss; None: none
    max_length: int = 512  # examples longer than this (in tokens) are cut to it
    output_dir: str = "out/sft"  # checkpoints, metrics.jsonl, TensorBoard, loss plot, final model
    epochs: float = 1.0  # passes over the data (used when steps is 0)
    steps: int = 0  # optimizer steps; 0: epochs x examples / batch_size
    batch_size: int = 32  # examples per optimizer step
    micro_batch_size: int = 32  # examples per forward/backward; gradients accumulate over the batch
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0: off
    warmup_steps: int = 0  # linear warm-up steps from 0 to lr
    schedule: Literal["constant", "cosine"] = "cosine"  # after warm-up: constant, or cosine decay to min_lr_ratio x lr
    min_lr_ratio: float = 0.1  # cosine floor as a share of lr
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast forward (weights stay fp32)
    device: str = "auto"  # "auto": cuda when available, else cpu
    seed: int = 0  # seeds initialisation (init_from_config) and data order
    eval_every: int = 0  # held-out loss every N steps (and at the end); 0: only at the end
    save_every: int = 100  # write the train-state checkpoint every N steps (and at the end)

    def __post_init__(self) -> None:
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        for name in ("batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.epochs <= 0:
            raise ValueError("lr and epochs must be > 0")
        for name in ("steps", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Example:
    prompt: list[int]  # ids the loss skips (empty for text records but its first token)
    target: list[int]  # ids the loss is on


def read_examples(path: str | Path, tokenizer, max_length: int) -> list[Example]:
    """Tokenized examples of a JSON / JSONL (.gz) / parquet file. A malformed record is logged
    with its file and line and skipped; the rest are used. An error when none is usable."""
    records, problems = read_records(path)
    out = []
    for where, record in records:
        try:
            out.append(_example(record, tokenizer, max_length))
        except ValueError as e:
            problems.append(f"{where}: {e}; skipped")
    for problem in problems:
        log.warning("%s", problem)
    if not out:
        raise ValueError(f"{path}: no usable example ({len(problems)} malformed, first: {problems[0]})")
    return out


def _example(record: dict, tokenizer, max_length: int) -> Example:
    if isinstance(record.get("text"), str):
        ids = tokenizer.encode(record["text"])
        prompt, target = ids[:1], ids[1:]
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        prompt, target = tokenizer.encode(record["prompt"]), tokenizer.encode(record["completion"])
    else:
        raise ValueError("expected a string field 'text', or 'prompt' and 'completion'")
    if tokenizer.eos_token_id is not None:
        target = target + [tokenizer.eos_token_id]
    if not prompt:
        raise ValueError("empty prompt (the first token needs something to follow)")
    target = target[: max(0, max_length - len(prompt))]
    if not target:
        raise ValueError(f"nothing to learn after cutting to max_length={max_length}")
    return Example(prompt, target)


def batch_loss(model, examples: list[Example], device, dtype: str, total_tokens: int) -> torch.Tensor:
    """Summed target-token negative log-likelihood of `examples`, divided by `total_tokens`."""

    rows = [e.prompt + e.target for e in examples]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    starts = torch.tensor([len(e.prompt) for e in examples], device=device)
    length = max(len(e.target) for e in examples)
    mask = torch.tensor([[1.0] * len(e.target) + [0.0] * (length - len(e.target)) for e in examples], device=device)
    with autocast(device, dtype):
        logp, _ = token_logprobs(model, ids, starts, length)
    return -(logp * mask).sum() / total_tokens


def evaluate_loss(model, examples: list[Example], device, dtype: str, micro: int) -> float:
    total = sum(len(e.target) for e in examples)
    model.eval()
    with torch.no_grad():
        loss = sum(batch_loss(model, examples[i:i + micro], device, dtype, total).item()
                   for i in range(0, len(examples), micro))
    model.train()
    return loss


def train_sft(cfg: SFTConfig, *, model=None, tokenizer=None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune as `cfg` says, resuming from cfg.output_dir's checkpoint if there is one.
    Returns a summary: steps, seconds, final loss, held-out loss, model folder."""
    from tqdm.auto import tqdm

    from ponder import config as config_io

    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    model, tokenizer = load_policy(cfg, model, tokenizer, init_seed=cfg.seed if cfg.init_from_config else None)
    model.to(device).train()
    if not cfg.data:
        raise ValueError("config: `data` (a JSONL file) is required")
    examples = read_examples(cfg.data, tokenizer, cfg.max_length)
    held_out = read_examples(cfg.eval_data, tokenizer, cfg.max_length) if cfg.eval_data else None
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    config_io.save_config(cfg, out / "config.yaml")

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    schedule = SFTConfig(**{**config_io.to_dict(cfg), "steps": steps})  # lr_at reads steps from it
    stream = ProblemStream(len(examples), cfg.seed)
    st: dict[str, Any] = {"step": 0, "history": []}
    ckpt_root = out / "checkpoints"
    found = checkpoint.latest(ckpt_root)
    if found is not None:
        saved, stream = restore_train_state(found, model, optimizer, len(examples), f"examples of {cfg.data}")
        st = {"step": saved["step"], "history": saved["history"]}
        log.info("resuming from %s (step %d)", found, st["step"])
    metrics = MetricsLog(out, st["history"])
    params = [p for p in model.parameters() if p.requires_grad]

    bar = tqdm(total=steps, initial=st["step"], disable=not progress, desc="sft", dynamic_ncols=True)
    while st["step"] < steps:
        step = st["step"] + 1
        t0 = time.perf_counter()
        lr = lr_at(schedule, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = [examples[i] for i in stream.take(cfg.batch_size)]
        tokens = sum(len(e.target) for e in batch)
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for i in range(0, len(batch), cfg.micro_batch_size):
            loss = batch_loss(model, batch[i:i + cfg.micro_batch_size], device, cfg.dtype, tokens)
            if not torch.isfinite(loss):
                raise RuntimeError(f"step {step}: non-finite loss; lower lr (now {lr:g})")
            loss.backward()
            loss_value += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf"))
        optimizer.step()
        record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm.item(),
                  "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}
        if held_out and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
            record["eval/loss"] = evaluate_loss(model, held_out, device, cfg.dtype, cfg.micro_batch_size)
        st["step"] = step
        metrics.log(record)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if (cfg.save_every and step % cfg.save_every == 0) or step == steps:
            checkpoint.save(ckpt_root, step, model, tokenizer,
                            {"step": step, "history": list(st["history"]), "stream": stream.state(),
                             "optimizer": optimizer.state_dict(), "rng": checkpoint.rng_state(),
                             "config": config_io.to_dict(cfg)})
    bar.close()
    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    plot(st["history"], out, {"loss": ["loss", "eval/loss"]})
    metrics.close()
    last = st["history"][-1] if st["history"] else {}
    return {"steps": st["step"], "seconds": time.perf_counter() - start, "loss": last.get("loss"),
            "eval_loss": last.get("eval/loss"), "model_dir": str(model_dir), "output_dir": str(out)}
