"""A learned reward model: Bradley-Terry on verifier-labelled pairs (the RLHF recipe, arXiv:2203.02155).

    ponder train rm CONFIG.yaml key=value ...      # or train_reward_model(RewardModelConfig(...))

The policy samples group_size completions per prompt; a verified-right completion is preferred
to a wrong one of the same prompt. The reward model is a copy of the policy with a scalar head
(common.ScalarModel) read at the completion's last token, trained with the Bradley-Terry loss
-log sigma(r_chosen - r_rejected). A share of the prompts is held out: the model's accuracy on
their pairs is what it would get right on prompts it never saw.

Bradley-Terry fixes only differences of scores. So that PPO can use it where it would use the
verifier's 0/1, the model also stores a threshold (midway between the mean chosen and the mean
rejected score on the training pairs) and `reward` returns sigma(score - threshold), a number in
(0, 1) comparable with the verifier's: their gap on the same samples is the reward model's error.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ponder.ladder.common import (LadderConfig, ScalarModel, chunks, clip_and_step, copy_decoder, padded, pairs_of,
                                  round_seed, sample_groups, start)
from ponder.runtime.training import ProblemStream, adamw, autocast

log = logging.getLogger("ponder.ladder")


@dataclass
class RewardModelConfig(LadderConfig):
    output_dir: str = "out/rm"  # metrics.jsonl, plots, the reward model (model/)
    rounds: int = 4  # generation rounds of prompts_per_round prompts from the policy (the pairs' source)
    pairs_per_prompt: int = 4  # most pairs taken from one prompt's group; 0: every right x wrong combination
    held_out: float = 0.2  # share of the sampled prompts whose pairs are kept for the held-out accuracy
    epochs: float = 2.0  # passes over the training pairs
    pairs_per_step: int = 64  # pairs per optimizer step
    lr: float = 1e-4  # AdamW learning rate (constant)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 1 or self.pairs_per_step < 1 or self.epochs <= 0 or not 0 <= self.held_out < 1:
            raise ValueError("rounds and pairs_per_step must be >= 1, epochs > 0, 0 <= held_out < 1")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair -log sigma(r_chosen - r_rejected): the negative log-likelihood that chosen wins."""
    return -F.logsigmoid(chosen - rejected)


def scores(model: ScalarModel, rows, cfg: LadderConfig, device) -> torch.Tensor:
    """The reward model's raw score [B] of (prompt ids, completion ids) rows, read at each
    completion's last token (after the stop token, when there is one)."""
    ids, starts, _, mask = padded(rows, device)
    last = starts + mask.sum(-1).long() - 1
    with autocast(device, cfg.dtype):
        return model(ids, last.unsqueeze(1)).squeeze(1)


@torch.no_grad()
def reward(model: ScalarModel, rows, cfg: LadderConfig, device) -> torch.Tensor:
    """sigma(score - threshold) [B]: the reward model's stand-in for the verifier's 0/1."""
    out = [torch.sigmoid(scores(model, part, cfg, device) - model.extra["threshold"])
           for part in chunks(rows, cfg.micro_batch_size)]
    return torch.cat(out)


@torch.no_grad()
def pair_accuracy(model: ScalarModel, pairs, cfg: LadderConfig, device) -> tuple[float, float, float]:
    """(share of pairs scored right, mean chosen score, mean rejected score)."""
    chosen, rejected = [], []
    for micro in chunks(pairs, cfg.micro_batch_size):
        s = scores(model, [(x.prompt_ids, x.token_ids) for pair in micro for x in pair], cfg, device)
        chosen.append(s[0::2])
        rejected.append(s[1::2])
    c, r = torch.cat(chosen), torch.cat(rejected)
    return (c > r).float().mean().item(), c.mean().item(), r.mean().item()


def train_reward_model(cfg: RewardModelConfig, *, model=None, tokenizer=None, problems=None,
                       progress: bool = True) -> dict[str, Any]:
    """Sample pairs from the policy, train the reward model, save it to output_dir/model.
    Returns a summary: held-out and training pair accuracy, pairs, samples, seconds, model folder."""
    t_start = time.perf_counter()
    run = start(cfg, model, tokenizer, problems, [])
    rm = ScalarModel(copy_decoder(run.model)).to(run.device).train()
    optimizer = adamw(rm.parameters(), cfg.lr)
    params = list(rm.parameters())
    saved = run.resume({"reward_model": rm}, [optimizer])
    if saved is None:
        engine = run.engine()
        stream = ProblemStream(len(run.problems), cfg.seed)
        rng = random.Random(cfg.seed)
        groups = []
        for r in range(1, cfg.rounds + 1):
            groups += sample_groups(run, engine, stream.take(cfg.prompts_per_round), round_seed(cfg.seed, 10_000 + r))
        samples = sum(map(len, groups))
        rng.shuffle(groups)  # prompts, not pairs, are held out: no held-out prompt is ever trained on
        cut = round(len(groups) * cfg.held_out)
        test_pairs = pairs_of(groups[:cut], cfg.pairs_per_prompt, rng)
        train_pairs = pairs_of(groups[cut:], cfg.pairs_per_prompt, rng)
        if not train_pairs:
            raise RuntimeError("no prompt had both a right and a wrong completion: no pair to train the reward "
                               "model on")
        order = ProblemStream(len(train_pairs), cfg.seed)
        done = 0
    else:  # the pairs come back with the checkpoint: no sampling again
        samples, test_pairs, train_pairs = saved["samples"], saved["test_pairs"], saved["train_pairs"]
        order = ProblemStream(**saved["order"])
        done = saved["step"]
    metrics = run.metrics(None, saved)  # no held-out problems: nothing evaluated at step 0

    steps = max(1, round(cfg.epochs * len(train_pairs) / cfg.pairs_per_step))
    for step in range(done + 1, steps + 1):
        batch = [train_pairs[i] for i in order.take(cfg.pairs_per_step)]
        loss_sum = 0.0
        for micro in chunks(batch, cfg.micro_batch_size):
            s = scores(rm, [(x.prompt_ids, x.token_ids) for pair in micro for x in pair], cfg, run.device)
            losses = bradley_terry_loss(s[0::2], s[1::2])
            (losses.sum() / len(batch)).backward()
            loss_sum += losses.sum().item()
        record = {"step": step, "loss": loss_sum / len(batch),
                  "grad_norm": clip_and_step(params, optimizer, cfg.max_grad_norm)}
        if step == steps or (cfg.eval_every and step % cfg.eval_every == 0):
            if test_pairs:
                record["eval/pair_accuracy"] = pair_accuracy(rm, test_pairs, cfg, run.device)[0]
        metrics.log(record)
        run.save(step, {"reward_model": rm}, [optimizer], {
            "step": step, "samples": samples, "test_pairs": test_pairs, "train_pairs": train_pairs,
            "order": order.state(), "history": metrics.history})
    rm.eval()
    train_acc, mean_chosen, mean_rejected = pair_accuracy(rm, train_pairs, cfg, run.device)
    rm.extra = {"threshold": (mean_chosen + mean_rejected) / 2}
    held_out_acc = pair_accuracy(rm, test_pairs, cfg, run.device)[0] if test_pairs else None
    model_dir = run.out / "model"
    rm.save(model_dir)
    run.tokenizer.save_pretrained(model_dir)
    metrics.close()
    from ponder.runtime.metrics import plot

    plot(metrics.history, run.out, {"rm_loss": ["loss"], "rm_pair_accuracy": ["eval/pair_accuracy"]})
    if progress:
        log.info(f"reward model: {len(train_pairs)} training pairs, pair accuracy {train_acc:.3f} (train), "
                 f"{held_out_acc if held_out_acc is None else round(held_out_acc, 3)} (held out)")
    return {"pair_accuracy": held_out_acc, "train_pair_accuracy": train_acc, "pairs": len(train_pairs),
            "held_out_pairs": len(test_pairs), "samples": samples, "steps": steps, "model_dir": str(model_dir),
            "output_dir": str(run.out), "threshold": rm.extra["threshold"], "seconds": time.perf_counter() - t_start}
