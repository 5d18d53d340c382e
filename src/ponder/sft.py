"""Supervised fine-tuning: `ponder train sft CONFIG.yaml key=value ...` or `train_sft(SFTConfig(...))`.

Data is JSONL: {"text": ...} records (loss on every token), {"prompt": ..., "completion": ...}
records (loss on completion tokens only; prompt and completion are tokenized apart, as the RL
engine sees them), or {"messages": [{"role", "content"}, ...]} chat records (TRL's format: loss
on the last assistant turn). Prompts and messages are rendered with the checkpoint's chat
template when it ships one (`chat`, as RL and `ponder eval` ask). An end-of-sequence token
closes every example. The loss is the token mean
over the whole batch across micro-batches (and across ranks under torchrun). Checkpoints, exact resume and metrics reuse the RL
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

from ponder.runtime import distributed
from ponder.runtime.metrics import plot
from ponder.runtime.training import TrainConfig, TrainingRun, load_tokenizer, lr_at
from ponder.tasks.loaders import read_records

log = logging.getLogger("ponder.sft")


@dataclass
class SFTConfig(TrainConfig):
    """SFT options; the model, optimisation, memory, device and checkpoint options every trainer
    shares come from ponder.runtime.training.TrainConfig (some defaults differ here)."""

    init_from_config: bool = False  # build a freshly initialised model from `model`/config.json (seeded) instead of loading weights
    data: str = ""  # JSON / JSONL (.gz) / parquet of {"text"}, {"prompt", "completion"} or {"messages"} records
    chat: bool | None = None  # render prompts and messages with the chat template; None: when the checkpoint ships one
    eval_data: str | None = None  # records of the same kind for a held-out loss; None: none
    max_length: int = 512  # examples longer than this (in tokens) are cut to it
    output_dir: str = "out/sft"  # checkpoints, metrics.jsonl, TensorBoard, loss plot, final model
    epochs: float = 1.0  # passes over the data (used when steps is 0)
    steps: int = 0  # optimizer steps; 0: epochs x examples / batch_size
    batch_size: int = 32  # examples per optimizer step
    micro_batch_size: int = 32  # examples per forward/backward; gradients accumulate over the batch
    lr: float = 1e-3  # AdamW peak learning rate
    schedule: Literal["constant", "cosine"] = "cosine"  # after warm-up: constant, or cosine decay to min_lr_ratio x lr
    min_lr_ratio: float = 0.1  # cosine floor as a share of lr
    eval_every: int = 0  # held-out loss every N steps (and at the end); 0: only at the end
    save_every: int = 100  # write the train-state checkpoint every N steps (and at the end)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.epochs <= 0:
            raise ValueError("epochs must be > 0")
        for name in ("steps", "eval_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class Example:
    prompt: list[int]  # ids the loss skips (empty for text records but its first token)
    target: list[int]  # ids the loss is on


def read_examples(path: str | Path, tokenizer, max_length: int, chat: bool | None = None) -> list[Example]:
    """Tokenized examples of a JSON / JSONL (.gz) / parquet file. A malformed record is logged
    with its file and line and skipped; the rest are used. An error when none is usable."""
    records, problems = read_records(path)
    out = []
    for where, record in records:
        try:
            out.append(_example(record, tokenizer, max_length, chat))
        except ValueError as e:
            problems.append(f"{where}: {e}; skipped")
    for problem in problems:
        log.warning("%s", problem)
    if not out:
        raise ValueError(f"{path}: no usable example ({len(problems)} malformed, first: {problems[0]})")
    return out


def _chat_turns(messages, tokenizer) -> tuple[str, str]:
    """(prompt, completion) texts of a chat record: everything up to the last assistant turn
    rendered with a generation prompt, and what the full rendering adds after it."""
    if (not isinstance(messages, list) or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages)):
        raise ValueError("field 'messages': expected a list of {'role', 'content'} objects")
    if messages[-1].get("role") != "assistant":
        raise ValueError("field 'messages': the last message must be the assistant's (the turn to learn)")
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError("field 'messages': the chat template renders the last turn apart from the earlier ones")
    return prompt, full[len(prompt):]


def _example(record: dict, tokenizer, max_length: int, chat: bool | None = None) -> Example:
    from ponder.evaluate.prompts import uses_chat

    closed = False  # does the target already end its turn with the eos token?
    if isinstance(record.get("text"), str):
        ids = tokenizer.encode(record["text"])
        prompt, target = ids[:1], ids[1:]
    elif "messages" in record:
        prompt_text, completion = _chat_turns(record["messages"], tokenizer)
        eos = tokenizer.eos_token
        if eos and eos in completion:  # the template closes the turn itself: stop there
            completion, closed = completion[:completion.rindex(eos) + len(eos)], True
        prompt = tokenizer.encode(prompt_text)
        target = tokenizer.encode(completion, add_special_tokens=False)
    elif isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        text = record["prompt"]
        if uses_chat(tokenizer, chat):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        # the completion continues the prompt: no second BOS (Tokenizer.encode)
        prompt = tokenizer.encode(text)
        target = tokenizer.encode(record["completion"], add_special_tokens=False)
    else:
        raise ValueError("expected a string field 'text', 'prompt' and 'completion', or 'messages'")
    if tokenizer.eos_token_id is not None and not closed:
        target = target + [tokenizer.eos_token_id]
    if not prompt:
        raise ValueError("empty prompt (the first token needs something to follow)")
    target = target[: max(0, max_length - len(prompt))]
    if not target:
        raise ValueError(f"nothing to learn after cutting to max_length={max_length}")
    return Example(prompt, target)


def batch_loss(run: TrainingRun, examples: list[Example], total_tokens: int) -> torch.Tensor:
    """Summed target-token negative log-likelihood of `examples`, divided by `total_tokens`
    (`run`: anything with a `device` and the `logprobs` of TrainingRun, e.g. the ladder's RFT)."""
    device = run.device
    rows = [e.prompt + e.target for e in examples]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], device=device)
    starts = torch.tensor([len(e.prompt) for e in examples], device=device)
    length = max(len(e.target) for e in examples)
    mask = torch.tensor([[1.0] * len(e.target) + [0.0] * (length - len(e.target)) for e in examples], device=device)
    logp, _ = run.logprobs(ids, starts, length)
    return -(logp * mask).sum() / total_tokens


def evaluate_loss(run: TrainingRun, examples: list[Example], micro: int) -> float:
    """Token-mean held-out loss; under torchrun each rank scores its share, the mean covers all."""
    mine = examples[distributed.rank()::distributed.world()]
    total = sum(len(e.target) for e in examples)
    chunks = [mine[i:i + micro] for i in range(0, len(mine), micro)]
    loss = 0.0
    run.model.eval()
    with torch.no_grad():
        # FSDP2 gathers weights in every forward: every rank runs as many as the busiest one.
        for i in range(run.micro_batches(len(chunks))):
            batch = chunks[i] if i < len(chunks) else examples[:1]
            value = batch_loss(run, batch, total).item()
            loss += value if i < len(chunks) else 0.0
    run.model.train()
    return float(distributed.all_sum([loss]).item())


def train_sft(cfg: SFTConfig, *, model=None, tokenizer=None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune as `cfg` says, resuming from cfg.output_dir's checkpoint if there is one. Under
    torchrun each rank takes its share of every batch and the gradient is the whole batch's.
    Returns a summary: steps, seconds, final loss, held-out loss, model folder."""
    start = time.perf_counter()
    if not cfg.data:
        raise ValueError("config: `data` (a JSONL file) is required")
    # The tokenizer is needed to read the data before the run (and its model) is set up.
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    examples = read_examples(cfg.data, tokenizer, cfg.max_length, cfg.chat)
    held_out = read_examples(cfg.eval_data, tokenizer, cfg.max_length, cfg.chat) if cfg.eval_data else None
    steps = cfg.steps or max(1, math.ceil(cfg.epochs * len(examples) / cfg.batch_size))
    run = TrainingRun(cfg, data_size=len(examples), what=f"examples of {cfg.data}", model=model,
                      tokenizer=tokenizer, init_seed=cfg.seed if cfg.init_from_config else None)
    st: dict[str, Any] = {"step": 0, "history": []}
    saved = run.resume()
    if saved is not None:
        st = {"step": saved["step"], "history": saved["history"]}
    metrics = run.metrics(st["history"])

    bar = run.progress(steps, st["step"], "sft", progress)
    with run.interruptible():
        while st["step"] < steps:
            step = st["step"] + 1
            t0 = time.perf_counter()
            lr = lr_at(cfg, step, steps)
            run.set_lr(lr)
            batch = [examples[i] for i in run.stream.take(cfg.batch_size)]
            tokens = sum(len(e.target) for e in batch)  # the whole batch's, over every rank
            mine = batch[distributed.rank()::distributed.world()]
            micro = [mine[i:i + cfg.micro_batch_size] for i in range(0, len(mine), cfg.micro_batch_size)]
            count = run.micro_batches(len(micro))
            run.optimizer.zero_grad(set_to_none=True)
            loss_value, finite = 0.0, True
            for i in range(count):
                with run.accumulate(i, count):
                    # A rank with fewer micro-batches runs zero-weight ones (collectives stay matched).
                    loss = batch_loss(run, micro[i] if i < len(micro) else batch[:1], tokens)
                    if i >= len(micro):
                        loss = loss * 0.0
                    finite &= bool(torch.isfinite(loss))
                    # DDP / FSDP average gradients over ranks; the batch loss needs their sum.
                    (loss * distributed.world()).backward()
                loss_value += loss.item()
            loss_value, bad = distributed.all_sum([loss_value, not finite]).tolist()
            if bad:
                raise RuntimeError(f"step {step}: non-finite loss; lower lr (now {lr:g})")
            norm = run.step()
            record = {"step": step, "loss": loss_value, "lr": lr, "grad_norm": norm,
                      "tokens_per_s": tokens / max(time.perf_counter() - t0, 1e-9)}
            if held_out and ((cfg.eval_every and step % cfg.eval_every == 0) or step == steps):
                record["eval/loss"] = evaluate_loss(run, held_out, cfg.micro_batch_size)
            st["step"] = step
            metrics.log(record)
            bar.set_postfix(loss=f"{loss_value:.4f}")
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == steps:
                run.save(step, {"history": list(st["history"])})
    bar.close()
    model_dir = run.export(run.out / "model")
    if distributed.is_main():
        plot(st["history"], run.out, {"loss": ["loss", "eval/loss"]})
    metrics.close()
    last = st["history"][-1] if st["history"] else {}
    return {"steps": st["step"], "seconds": time.perf_counter() - start, "loss": last.get("loss"),
            "eval_loss": last.get("eval/loss"), "model_dir": str(model_dir), "output_dir": str(run.out)}
