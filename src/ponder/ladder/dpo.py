"""DPO (Rafailov et al. 2023, arXiv:2305.18290) on pairs the task's verifier labels.

    ponder train dpo CONFIG.yaml key=value ...     # or train_dpo(DPOConfig(...))

Pairs are the policy's own samples: for a prompt with group_size completions, a verified-right
one is "chosen" and a wrong one "rejected". Offline (refresh_every 0): one set of pairs from the
base model, trained on for `steps`. Online / iterative (refresh_every K, as in online DPO,
arXiv:2402.04792): a new set sampled from the current policy every K steps.

The reference is the starting policy. Its log-probs are taken when a set of pairs is sampled:
offline, that is the policy itself before training, so no second model is kept (TRL's
precompute_ref_log_probs); online, a frozen copy of the starting policy is.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ponder.ladder.common import (LadderConfig, chunks, clip_and_step, completion_logprobs, copy_decoder, pairs_of,
                                  round_seed, sample_groups, start)
from ponder.runtime.training import ProblemStream

log = logging.getLogger("ponder.ladder")


@dataclass
class DPOConfig(LadderConfig):
    output_dir: str = "out/dpo"  # metrics.jsonl, TensorBoard events, plots, final model
    steps: int = 50  # optimizer steps
    pairs_per_step: int = 64  # (chosen, rejected) pairs per optimizer step
    pairs_per_prompt: int = 4  # most pairs taken from one prompt's group; 0: every right x wrong combination
    beta: float = 0.1  # DPO's beta: strength of the implicit KL to the reference (sigmoid loss)
    refresh_every: int = 0  # 0: offline, one set of pairs from the base model; K: re-sample pairs from the current policy every K steps
    lr: float = 1e-5  # AdamW learning rate (constant)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1 or self.pairs_per_step < 1 or self.refresh_every < 0 or self.pairs_per_prompt < 0:
            raise ValueError("steps and pairs_per_step must be >= 1, refresh_every and pairs_per_prompt >= 0")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-pair sigmoid DPO loss -log sigma(beta * (log-ratio of chosen - log-ratio of rejected)).
    Arguments are summed completion log-probs [B]; the mean over pairs is TRL's DPOTrainer loss."""
    return -F.logsigmoid(beta * ((chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)))


def sequence_logps(model, rows, cfg: LadderConfig, device) -> torch.Tensor:
    """Summed completion log-probs [B] of (prompt ids, completion ids) rows, under the model's own
    distribution (temperature 1, as TRL's DPOTrainer: the sampling temperature plays no part)."""
    logp, mask = completion_logprobs(model, rows, cfg, device, temperature=1.0)
    return (logp * mask).sum(-1)


def train_dpo(cfg: DPOConfig, *, model=None, tokenizer=None, problems=None, eval_problems=None,
              progress: bool = True) -> dict[str, Any]:
    """DPO as `cfg` says. Returns a summary (held-out accuracy, samples generated, pairs, seconds)."""
    t_start = time.perf_counter()
    run = start(cfg, model, tokenizer, problems, eval_problems)
    engine = run.engine()
    optimizer = run.optimizer()
    params = [p for p in run.model.parameters() if p.requires_grad]
    reference = None
    if cfg.refresh_every:
        reference = copy_decoder(run.model).eval().requires_grad_(False)
    prompts = ProblemStream(len(run.problems), cfg.seed)
    rng = random.Random(cfg.seed)
    pairs: list = []
    order = None
    saved = run.resume({"policy": run.model}, [optimizer])
    metrics = run.metrics(engine, saved)
    if saved is None:
        done = samples = rounds = 0
    else:  # the pairs in use and their order come back too: a refresh need not fall on a checkpoint
        prompts, pairs = ProblemStream(**saved["prompts"]), saved["pairs"]
        order = ProblemStream(**saved["order"]) if saved["order"] else None
        rng.setstate(saved["rng"])
        done, samples, rounds = saved["step"], saved["samples"], saved["rounds"]
    for step in range(done + 1, cfg.steps + 1):
        record: dict[str, Any] = {"step": step}
        if step == 1 or (cfg.refresh_every and (step - 1) % cfg.refresh_every == 0):
            rounds += 1
            groups = sample_groups(run, engine, prompts.take(cfg.prompts_per_round), round_seed(cfg.seed, rounds))
            samples += sum(map(len, groups))
            found = pairs_of(groups, cfg.pairs_per_prompt, rng)
            record["accuracy"] = sum(s.reward for g in groups for s in g) / sum(map(len, groups))
            record["new_pairs"] = len(found)
            if found:  # a round with no pair keeps training on the last set
                pairs = [(c, r, *ref) for (c, r), ref in zip(found, reference_logps(
                    reference or run.model, found, cfg, run.device))]
                order = ProblemStream(len(pairs), round_seed(cfg.seed, rounds))
        if not pairs:
            raise RuntimeError("no prompt had both a right and a wrong completion: nothing for DPO to learn from "
                               "(raise group_size or prompts_per_round)")
        batch = [pairs[i] for i in order.take(cfg.pairs_per_step)]
        loss_sum = margin = right = 0.0
        for micro in chunks(batch, cfg.micro_batch_size):
            logps = sequence_logps(run.model, [(s.prompt_ids, s.token_ids) for c, r, _, _ in micro for s in (c, r)],
                                   cfg, run.device)
            chosen, rejected = logps[0::2], logps[1::2]
            ref_c = torch.tensor([x[2] for x in micro], device=run.device)
            ref_r = torch.tensor([x[3] for x in micro], device=run.device)
            losses = dpo_loss(chosen, rejected, ref_c, ref_r, cfg.beta)
            (losses.sum() / len(batch)).backward()
            loss_sum += losses.sum().item()
            with torch.no_grad():
                m = cfg.beta * ((chosen - ref_c) - (rejected - ref_r))
                margin += m.sum().item()
                right += (m > 0).sum().item()
        record.update({"loss": loss_sum / len(batch), "reward_margin": margin / len(batch),
                       "reward_accuracy": right / len(batch), "samples": samples,
                       "grad_norm": clip_and_step(params, optimizer, cfg.max_grad_norm)})
        if run.due(step, cfg.steps):
            record.update(run.evaluate(engine))
        metrics.log(record)
        run.save(step, {"policy": run.model}, [optimizer], {
            "step": step, "samples": samples, "rounds": rounds, "prompts": prompts.state(), "pairs": pairs,
            "order": order.state() if order else None, "rng": rng.getstate(), "history": metrics.history})
        if progress and (step % 10 == 0 or step == cfg.steps):
            log.info(f"dpo step {step}/{cfg.steps}: loss {record['loss']:.4f}, "
                     f"held-out {record.get('eval/accuracy', float('nan')):.3f}")
    metrics.close()
    summary = run.finish(metrics.history, {"dpo_loss": ["loss"], "dpo_accuracy": ["accuracy", "eval/accuracy"]})
    return {**summary, "steps": cfg.steps, "samples": samples, "sampling_rounds": rounds,
            "pairs": [r["new_pairs"] for r in metrics.history if "new_pairs" in r],
            "models_in_memory": 2 if reference is not None else 1, "seconds": time.perf_counter() - t_start}


@torch.no_grad()
def reference_logps(reference, pairs, cfg: DPOConfig, device) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probs of each pair under the reference model."""
    out = []
    for micro in chunks(pairs, cfg.micro_batch_size):
        logps = sequence_logps(reference, [(s.prompt_ids, s.token_ids) for pair in micro for s in pair], cfg, device)
        out += list(zip(logps[0::2].tolist(), logps[1::2].tolist()))
    return out
