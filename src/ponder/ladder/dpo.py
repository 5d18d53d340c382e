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

from ponder.ladder.common import LadderConfig, Run, completion_logprobs, micro_batches, over_ranks, pairs_of, sample_groups
from ponder.runtime import distributed
from ponder.runtime.training import ProblemStream, sampling_seed

log = logging.getLogger("ponder.ladder")


@dataclass
class DPOConfig(LadderConfig):
    output_dir: str = "out/dpo"  # metrics.jsonl, TensorBoard events, plots, final model
    steps: int = 50  # optimizer steps
    pairs_per_step: int = 64  # (chosen, rejected) pairs per optimizer step
    pairs_per_prompt: int = 4  # most pairs taken from one prompt's group; 0: every right x wrong combination
    beta: float = 0.1  # DPO's beta: strength of the implicit KL to the reference (sigmoid loss)
    refresh_every: int = 0  # 0: offline, one set of pairs from the base model; K: re-sample pairs from the current policy every K steps
    lr: float = 1e-5  # AdamW peak learning rate

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
    # Online, the reference is the starting policy: with LoRA the model with its adapter off,
    # else a frozen copy (sharded under FSDP2).
    copy = cfg.refresh_every and cfg.lora is None
    run = Run(cfg, model, tokenizer, problems, eval_problems, copies=1 if copy else 0)
    reference = run.frozen(run.copies.pop()) if copy else None
    rng = random.Random(cfg.seed)
    pairs: list = []
    order = None
    saved = run.resume()
    metrics = run.start_metrics(saved)
    if saved is None:
        done = samples = rounds = 0
    else:  # the pairs in use and their order come back too: a refresh need not fall on a checkpoint
        pairs = saved["pairs"]
        order = ProblemStream(**saved["order"]) if saved["order"] else None
        rng.setstate(saved["rng"])
        done, samples, rounds = saved["step"], saved["samples"], saved["rounds"]
    world = distributed.world()
    for step in range(done + 1, cfg.steps + 1):
        record: dict[str, Any] = {"step": step, "lr": run.set_step_lr(step, cfg.steps)}
        if step == 1 or (cfg.refresh_every and (step - 1) % cfg.refresh_every == 0):
            rounds += 1
            groups = sample_groups(run, run.stream.take(cfg.prompts_per_round), rounds)
            samples += sum(map(len, groups))
            found = pairs_of(groups, cfg.pairs_per_prompt, rng)
            record["accuracy"] = sum(s.reward for g in groups for s in g) / sum(map(len, groups))
            record["new_pairs"] = len(found)
            if found:  # a round with no pair keeps training on the last set
                pairs = [(c, r, *ref) for (c, r), ref in zip(found, reference_logps(run, reference, found))]
                order = ProblemStream(len(pairs), sampling_seed(cfg.seed, rounds))
        if not pairs:
            raise RuntimeError("no prompt had both a right and a wrong completion: nothing for DPO to learn from "
                               "(raise group_size or prompts_per_round)")
        batch = [pairs[i] for i in order.take(cfg.pairs_per_step)]
        loss_sum = margin = right = 0.0
        parts = micro_batches(run, batch, cfg.micro_batch_size)
        for b, (micro, real) in enumerate(parts):
            with run.accumulate(b, len(parts)):
                logps = sequence_logps(run.net, [(s.prompt_ids, s.token_ids) for c, r, _, _ in micro for s in (c, r)],
                                       cfg, run.device)
                chosen, rejected = logps[0::2], logps[1::2]
                ref_c = torch.tensor([x[2] for x in micro], device=run.device)
                ref_r = torch.tensor([x[3] for x in micro], device=run.device)
                losses = dpo_loss(chosen, rejected, ref_c, ref_r, cfg.beta) * float(real)
                # DDP / FSDP average gradients over ranks; the batch's mean loss needs their sum.
                (losses.sum() * world / len(batch)).backward()
            if real:
                loss_sum += losses.sum().item()
                with torch.no_grad():
                    m = cfg.beta * ((chosen - ref_c) - (rejected - ref_r))
                    margin += m.sum().item()
                    right += (m > 0).sum().item()
        loss_sum, margin, right = distributed.all_sum([loss_sum, margin, right]).tolist()
        record.update({"loss": loss_sum / len(batch), "reward_margin": margin / len(batch),
                       "reward_accuracy": right / len(batch), "samples": samples, "grad_norm": run.step()})
        if run.due(step, cfg.steps):
            record.update(run.evaluate())
        metrics.log(record)
        if run.checkpoint_due(step, cfg.steps):
            run.save(step, {"samples": samples, "rounds": rounds, "pairs": pairs,
                            "order": order.state() if order else None, "rng": rng.getstate(),
                            "history": metrics.history})
        if progress and distributed.is_main() and (step % 10 == 0 or step == cfg.steps):
            log.info(f"dpo step {step}/{cfg.steps}: loss {record['loss']:.4f}, "
                     f"held-out {record.get('eval/accuracy', float('nan')):.3f}")
    summary = run.finish(metrics.history, {"dpo_loss": ["loss"], "dpo_accuracy": ["accuracy", "eval/accuracy"]})
    metrics.close()
    return {**summary, "steps": cfg.steps, "samples": samples, "sampling_rounds": rounds,
            "pairs": [r["new_pairs"] for r in metrics.history if "new_pairs" in r],
            "models_in_memory": 2 if reference is not None else 1, "seconds": time.perf_counter() - t_start}


def reference_logps(run: Run, reference, pairs) -> list[tuple[float, float]]:
    """(chosen, rejected) summed log-probs of each pair under the reference: `reference`, else the
    policy with its LoRA adapter off (online), else the policy as it is (offline: before training)."""
    def score(micro):
        logps = sequence_logps(reference or run.net, [(s.prompt_ids, s.token_ids) for pair in micro for s in pair],
                               run.cfg, run.device)
        return list(zip(logps[0::2].tolist(), logps[1::2].tolist()))

    if reference is None and run.cfg.refresh_every:
        with run.reference():
            return over_ranks(run, pairs, score)
    return over_ranks(run, pairs, score)
