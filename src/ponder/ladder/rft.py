"""Rejection-sampling fine-tuning (expert iteration, STaR: arXiv:2203.14465; RFT: arXiv:2308.01825).

    ponder train rft CONFIG.yaml key=value ...     # or train_rft(RFTConfig(...))

Each round samples group_size completions for prompts_per_round prompts from the current policy,
keeps the distinct ones the task's verifier accepts (at most keep_per_prompt per prompt, so easy
prompts do not crowd out hard ones) and fine-tunes on them with ponder.sft's loss (token mean of the
completion's negative log-likelihood, the batch's tokens over every rank). Wrong samples are thrown away: the method learns only
from what the policy already gets right, with no reward model, value model or reference.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from ponder.ladder.common import LadderConfig, Run, micro_batches, sample_groups
from ponder.runtime import distributed
from ponder.runtime.training import ProblemStream, sampling_seed
from ponder.sft import Example, batch_loss

log = logging.getLogger("ponder.ladder")


@dataclass
class RFTConfig(LadderConfig):
    output_dir: str = "out/rft"  # metrics.jsonl, TensorBoard events, plots, final model
    rounds: int = 5  # R: sample -> filter -> fine-tune rounds
    keep_per_prompt: int = 4  # most distinct verified completions kept per prompt; 0: all
    epochs: float = 1.0  # passes over each round's kept completions
    batch_size: int = 64  # kept completions per optimizer step
    lr: float = 1e-4  # AdamW peak learning rate

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1 or self.batch_size < 1 or self.keep_per_prompt < 0 or self.epochs <= 0:
            raise ValueError("rounds and batch_size must be >= 1, keep_per_prompt >= 0, epochs > 0")


def keep_verified(groups, keep_per_prompt: int) -> list[Example]:
    """The distinct verified completions of each group (first come first kept), as SFT examples."""
    out = []
    for group in groups:
        seen = set()
        for s in group:
            room = not keep_per_prompt or len(seen) < keep_per_prompt
            if s.reward > 0.5 and tuple(s.token_ids) not in seen and room:
                seen.add(tuple(s.token_ids))
                out.append(Example(s.prompt_ids, s.token_ids))
    return out


def train_rft(cfg: RFTConfig, *, model=None, tokenizer=None, problems=None, eval_problems=None,
              progress: bool = True) -> dict[str, Any]:
    """R rounds of sample, keep the verified, fine-tune. Returns a summary (held-out accuracy by
    round, samples generated, kept per round, seconds, model folder)."""
    t_start = time.perf_counter()
    run = Run(cfg, model, tokenizer, problems, eval_problems)
    saved = run.resume()
    metrics = run.start_metrics(saved)
    done, step, samples = (0, 0, 0) if saved is None else (saved["step"], saved["optimizer_steps"], saved["samples"])
    world = distributed.world()
    for r in range(done + 1, cfg.rounds + 1):
        groups = sample_groups(run, run.stream.take(cfg.prompts_per_round), r)
        samples += sum(map(len, groups))
        kept = keep_verified(groups, cfg.keep_per_prompt)
        record = {"round": r, "accuracy": sum(s.reward for g in groups for s in g) / sum(map(len, groups)),
                  "kept": len(kept), "lr": run.set_step_lr(r, cfg.rounds)}
        loss = 0.0
        order = ProblemStream(len(kept), sampling_seed(cfg.seed, r)) if kept else None
        for _ in range(math.ceil(cfg.epochs * len(kept) / cfg.batch_size)):
            batch = [kept[i] for i in order.take(min(cfg.batch_size, len(kept)))]
            tokens = sum(len(e.target) for e in batch)  # the whole batch's, over every rank
            loss = 0.0
            parts = micro_batches(run, batch, cfg.micro_batch_size)
            for b, (micro, real) in enumerate(parts):
                with run.accumulate(b, len(parts)):
                    part = batch_loss(run, micro, tokens) * float(real)
                    (part * world).backward()  # DDP / FSDP average over ranks; the batch loss is their sum
                loss += part.item()
            loss = distributed.all_sum([loss]).item()
            run.step()
            step += 1
        record.update({"step": r, "optimizer_steps": step, "loss": loss, "samples": samples})
        if run.due(r, cfg.rounds):
            record.update(run.evaluate())
        metrics.log(record)
        if run.checkpoint_due(r, cfg.rounds):
            run.save(r, {"optimizer_steps": step, "samples": samples, "history": metrics.history})
        if progress and distributed.is_main():
            log.info(f"rft round {r}/{cfg.rounds}: sampled accuracy {record['accuracy']:.3f}, kept {len(kept)}, "
                     f"held-out {record.get('eval/accuracy', float('nan')):.3f}")
    summary = run.finish(metrics.history, {"rft": ["accuracy", "eval/accuracy"]})
    metrics.close()
    return {**summary, "rounds": cfg.rounds, "optimizer_steps": step, "samples": samples,
            "kept": [r["kept"] for r in metrics.history if "kept" in r], "models_in_memory": 1,
            "seconds": time.perf_counter() - t_start}
