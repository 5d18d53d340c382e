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

from ponder.ladder.common import (LadderConfig, Run, ScalarModel, chunks, micro_batches, over_ranks, padded, pairs_of,
                                  sample_groups)
from ponder.runtime import distributed
from ponder.runtime.training import ProblemStream, autocast, lr_at

log = logging.getLogger("ponder.ladder")


@dataclass
class RewardModelConfig(LadderConfig):
    output_dir: str = "out/rm"  # metrics.jsonl, plots, the reward model (model/)
    rounds: int = 4  # generation rounds of prompts_per_round prompts from the policy (the pairs' source)
    pairs_per_prompt: int = 4  # most pairs taken from one prompt's group; 0: every right x wrong combination
    held_out: float = 0.2  # share of the sampled prompts whose pairs are kept for the held-out accuracy
    epochs: float = 2.0  # passes over the training pairs
    pairs_per_step: int = 64  # pairs per optimizer step
    lr: float = 1e-4  # AdamW peak learning rate of the reward model

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


def pair_accuracy(run: Run, model, pairs) -> tuple[float, float, float]:
    """(share of pairs scored right, mean chosen score, mean rejected score); under torchrun each
    rank scores its share."""
    def score(micro):
        s = scores(model, [(x.prompt_ids, x.token_ids) for pair in micro for x in pair], run.cfg, run.device)
        return list(zip(s[0::2].tolist(), s[1::2].tolist()))

    c, r = torch.tensor(over_ranks(run, pairs, score), dtype=torch.float64).unbind(-1)
    return (c > r).double().mean().item(), c.mean().item(), r.mean().item()


def train_reward_model(cfg: RewardModelConfig, *, model=None, tokenizer=None, problems=None,
                       progress: bool = True) -> dict[str, Any]:
    """Sample pairs from the policy, train the reward model, save it to output_dir/model.
    Returns a summary: held-out and training pair accuracy, pairs, samples, seconds, model folder."""
    t_start = time.perf_counter()
    # The policy only samples; the reward model, a copy of it with a scalar head, trains.
    run = Run(cfg, model, tokenizer, problems, [], copies=1, trains_policy=False)
    module = ScalarModel(run.copies.pop())
    rm, optimizer = run.add_model("reward_model", module, cfg.lr)
    params = [p for p in module.parameters() if p.requires_grad]
    saved = run.resume()
    if saved is None:
        rng = random.Random(cfg.seed)
        groups = []
        for r in range(1, cfg.rounds + 1):
            groups += sample_groups(run, run.stream.take(cfg.prompts_per_round), 10_000 + r)
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
    metrics = run.start_metrics(saved)  # no held-out problems: nothing evaluated at step 0

    steps = max(1, round(cfg.epochs * len(train_pairs) / cfg.pairs_per_step))
    world = distributed.world()
    for step in range(done + 1, steps + 1):
        lr = lr_at(cfg, step, steps)
        run.set_lr(lr, optimizer)
        batch = [train_pairs[i] for i in order.take(cfg.pairs_per_step)]
        loss_sum = 0.0
        parts = micro_batches(run, batch, cfg.micro_batch_size)
        for b, (micro, real) in enumerate(parts):
            with distributed.no_sync(rm, b == len(parts) - 1):
                s = scores(rm, [(x.prompt_ids, x.token_ids) for pair in micro for x in pair], cfg, run.device)
                losses = bradley_terry_loss(s[0::2], s[1::2]) * float(real)
                (losses.sum() * world / len(batch)).backward()  # DDP / FSDP average over ranks
            loss_sum += losses.sum().item()
        record = {"step": step, "lr": lr, "loss": distributed.all_sum([loss_sum]).item() / len(batch),
                  "grad_norm": run.step(params, optimizer)}
        if step == steps or (cfg.eval_every and step % cfg.eval_every == 0):
            if test_pairs:
                module.eval()
                record["eval/pair_accuracy"] = pair_accuracy(run, rm, test_pairs)[0]
                module.train()
        metrics.log(record)
        if run.checkpoint_due(step, steps):
            run.save(step, {"samples": samples, "test_pairs": test_pairs, "train_pairs": train_pairs,
                            "order": order.state(), "history": metrics.history})
    module.eval()
    train_acc, mean_chosen, mean_rejected = pair_accuracy(run, rm, train_pairs)
    module.extra = {"threshold": (mean_chosen + mean_rejected) / 2}
    held_out_acc = pair_accuracy(run, rm, test_pairs)[0] if test_pairs else None
    model_dir = run.out / "model"
    module.save(model_dir)
    metrics.close()
    if distributed.is_main():
        from ponder.runtime.metrics import plot

        run.tokenizer.save_pretrained(model_dir)
        plot(metrics.history, run.out, {"rm_loss": ["loss"], "rm_pair_accuracy": ["eval/pair_accuracy"]})
    if progress and distributed.is_main():
        log.info(f"reward model: {len(train_pairs)} training pairs, pair accuracy {train_acc:.3f} (train), "
                 f"{held_out_acc if held_out_acc is None else round(held_out_acc, 3)} (held out)")
    return {"pair_accuracy": held_out_acc, "train_pair_accuracy": train_acc, "pairs": len(train_pairs),
            "held_out_pairs": len(test_pairs), "samples": samples, "steps": steps, "model_dir": str(model_dir),
            "output_dir": str(run.out), "threshold": module.extra["threshold"], "seconds": time.perf_counter() - t_start}
