"""The RL loop: sample prompts, generate G completions each, score, advantages, update; repeat.

    from ponder.rl import RLConfig, train_rl
    summary = train_rl(RLConfig(model="out/base", task="multiply:train", eval_task="multiply:test"))

One step: `collect` (generation with ponder.engine, rewards, dynamic sampling) then `update`
(micro-batched clipped-ratio loss with gradient accumulation, mu times). Around it: held-out greedy
evaluation, atomic checkpoints from which a re-run resumes exactly, and rollback to the last good
checkpoint with a lower learning rate when training collapses. Device, precision, memory options,
checkpoints and the distributed launch come from the training runtime (ponder.runtime).

Under torchrun each rank takes its share of a step's prompts (whole groups: a group never crosses
ranks), generates and scores them and computes their advantages locally; the loss of every rank
is scaled by the step's GLOBAL counts, so N ranks make the gradient one process would make on
the same batch. Each group's sampling seed is a function of (seed, step, try, rollbacks, its
place in the global batch), so the same step draws the same completions on any number of ranks.
Exact resume rests on every random choice being a function of saved state.

The file runs a little over 500 lines on purpose: the loop, one step and the recovery from a collapse
read top to bottom in one place; what other trainers share lives below it (ponder.runtime,
ponder.evaluate).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ponder.evaluate.heldout import evaluate_greedy
from ponder.engine import context_window
from ponder.evaluate.prompts import build_prompt, check_context
from ponder.models import router_stats
from ponder.models.moe import load_counting, set_load_counting
from ponder.rewards.process import step_rates, step_sums
from ponder.rl import losses
from ponder.rl.advantages import advantages as compute_advantages
from ponder.rl.advantages import combine, zero_variance_groups
from ponder.rl.config import RLConfig
from ponder.rl.scoring import overlong_penalty, resolve_reward, reward_name, score, verifier
from ponder.runtime import checkpoint, distributed
from ponder.runtime.metrics import plot
from ponder.runtime.training import NonFiniteGradient, TrainingRun, lr_at, sampling_seed
from ponder.tools import Tool, make_tool, tool_metrics

log = logging.getLogger("ponder.rl")

# Keys whose values depend on wall-clock time, not on the computation (left out of comparisons).
TIMING_KEYS = ("tokens_per_s", "time/generate", "time/score", "time/train", "time/eval", "time/step")
FLAT_STEPS_WARNING = 3  # warn when every group of this many steps in a row had equal rewards


class Collapse(Exception):
    """Training went wrong in a way a rollback can fix (NaN loss, entropy blow-up, eval drop)."""


@dataclass
class Rollout:
    """The completions one step trains on (this rank's), flattened group by group (G per prompt)."""

    prompt_ids: list[list[int]]
    completions: list  # ponder.engine.Completion
    advantages: torch.Tensor  # [N]
    sequences: int = 0  # completions trained on this step, over every rank
    tokens: int = 0  # loss tokens this step, over every rank


def loss_masks(cfg: RLConfig, completions) -> list[list[float]]:
    """Per completion token: 1 where the loss applies; forced tokens (tool output) and, with
    overlong='mask', truncated completions get 0."""
    masks = []
    for c in completions:
        keep = 0.0 if cfg.overlong == "mask" and c.finish_reason == "length" else 1.0
        forced = c.forced or [False] * len(c.token_ids)
        masks.append([keep * (0.0 if f else 1.0) for f in forced])
    return masks


def collect(cfg: RLConfig, engine, tokenizer, problems: Sequence, stream, fns, step: int,
            rollbacks: int) -> tuple[Rollout, dict[str, Any]]:
    """Generate and score one step's batch (this rank's share of it); with dynamic sampling keep
    only groups with signal, refilling until the whole batch (over every rank) has enough."""
    from ponder.engine import SamplingParams

    g = cfg.group_size
    names = [reward_name(f) for f in fns] + (["overlong"] if cfg.overlong == "soft" else [])
    weights = list(cfg.reward_weights or [1.0] * len(fns)) + ([1.0] if cfg.overlong == "soft" else [])
    weights = torch.tensor(weights, dtype=torch.float64)
    kept: list[tuple[list[int], list, torch.Tensor]] = []  # per group: prompt ids, completions, rewards
    kept_total = 0  # over every rank
    seen_rewards, seen_samples, lengths, truncated = [], [], [], []
    seen_completions, seen_problems = [], []  # for the tool metrics
    groups_tried = groups_flat = 0
    t_gen = t_score = 0.0
    nonfinite: dict[str, int] = {}  # reward name -> NaN/inf values it returned this step
    tries = cfg.max_sampling_tries if cfg.dynamic_sampling else 1
    attempt = 0
    for attempt in range(tries):
        need = cfg.prompts_per_step - kept_total
        places = distributed.my_share(list(enumerate(stream.take(need))))  # (place in the global batch, problem)
        batch = [problems[i] for _, i in places]
        texts = [build_prompt(p, tokenizer, chat=cfg.chat, instruction=cfg.instruction,
                              enable_thinking=cfg.enable_thinking) for p in batch]
        ids = [tokenizer.encode(t) for t in texts]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                top_p=cfg.top_p, stop_strings=tuple(cfg.stop_strings), tool=sampling_tool(cfg),
                                group_seeds=tuple(sampling_seed(cfg.seed, step, attempt, rollbacks, j)
                                                  for j, _ in places))
        t0 = time.perf_counter()
        outs = engine.generate(ids, n=g, params=params) if ids else []
        t_gen += time.perf_counter() - t0
        t0 = time.perf_counter()
        flat = [c for group in outs for c in group]
        rewards = score(fns, [t for t in texts for _ in range(g)], [c.text for c in flat],
                        [p for p in batch for _ in range(g)], nonfinite=nonfinite)
        lens = torch.tensor([len(c.token_ids) for c in flat], dtype=torch.long)
        if cfg.overlong == "soft":
            penalty = overlong_penalty(lens, cfg.max_new_tokens, cfg.overlong_buffer, cfg.overlong_penalty)
            rewards = torch.cat([rewards, penalty.unsqueeze(1)], dim=1)
        flat_groups = zero_variance_groups(combine(rewards, weights, g, cfg.reward_aggregation), g)
        t_score += time.perf_counter() - t0
        seen_rewards.append(rewards)
        seen_completions += flat
        seen_problems += [p for p in batch for _ in range(g)]
        if "correct" not in names:
            seen_samples += [(texts[i // g], c.text, batch[i // g]) for i, c in enumerate(flat)]
        lengths.append(lens)
        truncated += [c.finish_reason == "length" for c in flat]
        groups_tried += len(batch)
        groups_flat += int(flat_groups.sum())
        before = len(kept)
        for j in range(len(batch)):
            if cfg.dynamic_sampling and flat_groups[j]:
                continue
            kept.append((ids[j], outs[j], rewards[j * g:(j + 1) * g]))
        kept_total += int(distributed.all_sum([len(kept) - before]).item())
        if kept_total >= cfg.prompts_per_step:
            break

    # Advantages over the whole batch (batch-std and GDPO normalise across groups): every rank's
    # kept rewards, in rank order; this rank keeps its own slice.
    mine = torch.cat([r for _, _, r in kept]) if kept else torch.zeros(0, len(names), dtype=torch.float64)
    parts = distributed.gather(mine)
    every = torch.cat(parts)
    offset = sum(len(p) for p in parts[:distributed.rank()])
    adv = torch.zeros(0)
    if len(every):
        adv = compute_advantages(every, g, cfg.advantage, weights, cfg.reward_aggregation).float()
        adv = adv[offset:offset + len(mine)]
    completions = [c for _, cs, _ in kept for c in cs]
    sequences, tokens = distributed.all_sum([len(completions), sum(map(sum, loss_masks(cfg, completions)))])
    rollout = Rollout([p for p, _, _ in kept for _ in range(g)], completions, adv, int(sequences), int(tokens))
    return rollout, step_metrics(cfg, names, weights, seen_rewards, seen_samples, lengths, truncated,
                                 groups_tried, groups_flat, kept_total, attempt, t_gen, t_score, nonfinite,
                                 seen_completions, seen_problems)


def step_metrics(cfg, names, weights, seen_rewards, seen_samples, lengths, truncated, groups_tried, groups_flat,
                 kept_total, attempt, t_gen, t_score, nonfinite, seen_completions, seen_problems) -> dict[str, Any]:
    """The step's reward and sampling figures over every rank's samples."""
    g = cfg.group_size
    rewards = torch.cat(seen_rewards) if seen_rewards else torch.zeros(0, len(names), dtype=torch.float64)
    # the task's verifier, side by side (code completions each wait on a sandbox)
    right = (torch.nan_to_num(score([verifier(cfg.extract)], *map(list, zip(*seen_samples)))[:, 0]).tolist()
             if seen_samples else [])
    # the step checker's figures where the task has one (ponder.rewards.process): counts, summed over ranks
    steps = step_sums([c.text for c in seen_completions], seen_problems)
    parts = distributed.gather((rewards, torch.cat(lengths) if lengths else torch.zeros(0, dtype=torch.long),
                                truncated, right, groups_tried, groups_flat, t_gen, t_score, nonfinite, steps))
    every = torch.cat([p[0] for p in parts])
    lens = torch.cat([p[1] for p in parts]).double()
    truncated = [t for p in parts for t in p[2]]
    right = [r for p in parts for r in p[3]]
    metrics: dict[str, Any] = {}
    for k, name in enumerate(names):
        col = every[:, k][~torch.isnan(every[:, k])]
        metrics[f"reward/{name}/mean"] = col.mean().item() if len(col) else float("nan")
        metrics[f"reward/{name}/std"] = col.std().item() if len(col) > 1 else 0.0
        metrics[f"reward/{name}/nonfinite"] = sum(p[8].get(name, 0) for p in parts)
    total = combine(every, weights, g, "sum")
    metrics["reward/total/mean"] = torch.nanmean(total).item()
    if "correct" in names:
        metrics["accuracy"] = torch.nanmean(every[:, names.index("correct")]).item()
    else:  # accuracy by the task's verifier is worth seeing whatever the rewards are
        metrics["accuracy"] = sum(right) / max(len(right), 1)
    checked = step_rates({k: sum(p[9][k] for p in parts) for k in steps})
    if checked:  # right answer with a wrong step: how often outcome reward pays for bad reasoning
        metrics["right_answer_wrong_step"] = checked["right_answer_wrong_step"]
        metrics["process"] = checked["process"]  # mean credit up to the first wrong step
    if cfg.tool != "none":  # every rank's completions, in the rank order of `every`
        completions = [c for part in distributed.gather(seen_completions) for c in part]
        problems = [q for part in distributed.gather(seen_problems) for q in part]
        verified = every[:, names.index("correct")].tolist() if "correct" in names else right
        metrics.update(tool_metrics(completions, verified, problems))
    metrics.update({
        "zero_variance_frac": sum(p[5] for p in parts) / max(sum(p[4] for p in parts), 1),
        "groups": kept_total,
        "sampling_tries": attempt + 1,
        "truncated_frac": sum(truncated) / max(len(truncated), 1),
        "completion_len": lens.mean().item(),
        "time/generate": max(p[6] for p in parts),
        "time/score": max(p[7] for p in parts),
        "generated_tokens": int(lens.sum().item()),
    })
    return metrics


def _pad(rows: list[list[int]], value: int = 0) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def update(cfg: RLConfig, run: TrainingRun, ref_model, rollout: Rollout,
           entropy_limit: float | None) -> dict[str, Any]:
    """mu optimizer steps on one rollout; raises Collapse (on every rank alike) on a non-finite
    loss or gradient, or when the policy entropy exceeds `entropy_limit`."""
    device = run.device
    comps = rollout.completions
    n = len(comps)
    if rollout.sequences == 0:
        return {"loss": 0.0, "entropy": float("nan"), "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0,
                "grad_norm": 0.0, "loss_tokens": 0}
    masks = loss_masks(cfg, comps)
    # Micro-batches of similar total length waste less compute on padding. Every rank runs as
    # many as the busiest one; the extra ones carry zero weight.
    order = sorted(range(n), key=lambda i: len(rollout.prompt_ids[i]) + len(comps[i].token_ids))
    micro = [order[i:i + cfg.micro_batch_size] for i in range(0, n, cfg.micro_batch_size)]
    count = run.micro_batches(len(micro))

    def tensors(b):
        if b >= len(micro):  # a zero-weight stand-in: one token after one token, masked out
            zero = torch.zeros(1, 1, device=device)
            ids = torch.zeros(1, 2, dtype=torch.long, device=device)
            return ids, torch.ones(1, dtype=torch.long, device=device), 1, zero, zero, zero[0]
        idx = micro[b]
        ids = _pad([rollout.prompt_ids[i] + comps[i].token_ids for i in idx]).to(device)
        starts = torch.tensor([len(rollout.prompt_ids[i]) for i in idx], device=device)
        length = max(len(comps[i].token_ids) for i in idx)
        mask = torch.tensor([m + [0.0] * (length - len(m)) for m in (masks[i] for i in idx)], device=device)
        old = torch.tensor([c.logprobs + [0.0] * (length - len(c.logprobs)) for c in (comps[i] for i in idx)],
                           device=device)
        return ids, starts, length, mask, old, rollout.advantages[idx].to(device)

    # mu > 1 reuses the samples: ratios are taken against the policy that sampled them. The engine's
    # log-probs are exactly that when no top-k/top-p truncation changed the distribution.
    old_logps: dict[int, torch.Tensor] = {}
    if cfg.mu > 1:
        for b in range(count):
            ids, starts, length, mask, old, _ = tensors(b)
            if cfg.top_k == 0 and cfg.top_p >= 1.0:
                old_logps[b] = old
            else:
                with torch.no_grad():
                    old_logps[b] = run.logprobs(ids, starts, length, cfg.temperature)[0]

    # Each rank's loss is its share of the global loss (global counts), times the world size
    # because DDP / FSDP average gradients over ranks where the global loss needs their sum.
    scale = distributed.world()
    totals = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "tokens": 0.0}
    grad_norm = 0.0
    for inner in range(cfg.mu):
        run.optimizer.zero_grad(set_to_none=True)
        finite = True
        for b in range(count):
            ids, starts, length, mask, _, adv = tensors(b)
            with run.accumulate(b, count):
                # MoE: the routing bias follows the training forwards' real tokens only
                real = torch.zeros_like(ids, dtype=torch.bool)
                if b < len(micro):
                    ends = [len(rollout.prompt_ids[i]) + len(comps[i].token_ids) for i in micro[b]]
                    real = torch.arange(ids.size(1), device=device) < torch.tensor(ends, device=device)[:, None]
                with load_counting(run.model, real):
                    logp, ent = run.logprobs(ids, starts, length, cfg.temperature, with_entropy=inner == 0)
                ref = None
                if cfg.beta:
                    with torch.no_grad():
                        if ref_model is None:  # LoRA: the reference is the model with its adapter off
                            with run.reference():
                                ref = run.logprobs(ids, starts, length, cfg.temperature)[0]
                        else:
                            ref = run.logprobs(ids, starts, length, cfg.temperature, model=ref_model)[0]
                loss, stats = losses.policy_loss(
                    logp, old_logps.get(b), adv, mask, loss_type=cfg.loss_type,
                    level=cfg.importance_sampling, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                    beta=cfg.beta, ref_logp=ref, batch_sequences=rollout.sequences,
                    batch_tokens=rollout.tokens, max_completion_length=cfg.max_new_tokens)
                finite &= bool(torch.isfinite(loss))
                (loss * scale).backward()
            if inner == 0 and b < len(micro) and finite:
                totals["loss"] += loss.item()
                totals["entropy"] += float((ent * mask).sum())
                for key in ("kl", "clip_low", "clip_high", "tokens"):
                    totals[key] += stats[key]
        if distributed.all_sum([not finite]).item():
            raise Collapse("non-finite loss")
        if inner == 0:
            summed = distributed.all_sum([totals[k] for k in totals])
            totals = dict(zip(totals, summed.tolist()))
            if entropy_limit is not None and totals["tokens"]:
                entropy = totals["entropy"] / totals["tokens"]
                if entropy > entropy_limit:
                    raise Collapse(f"entropy {entropy:.3f} exceeds {entropy_limit:.3f}")
        try:
            norm = run.step()
        except NonFiniteGradient as why:
            raise Collapse(str(why)) from why
        if inner == 0:
            grad_norm = norm
    tokens = max(totals["tokens"], 1.0)
    return {"loss": totals["loss"], "entropy": totals["entropy"] / tokens if totals["tokens"] else float("nan"),
            "kl": totals["kl"] / tokens, "clip_low": totals["clip_low"] / tokens,
            "clip_high": totals["clip_high"] / tokens, "grad_norm": grad_norm, "loss_tokens": rollout.tokens}


def routing_metrics(model, gamma: float) -> dict[str, float]:
    """MoE policies: this step's expert-load balance (its training forwards, every rank's load
    summed), after the optional auxiliary-loss-free bias update (DeepSeek-V3). Empty for dense
    models."""
    from ponder.models import router_stats, update_routing_bias
    from ponder.models.moe import sparse_layers

    blocks = sparse_layers(model)
    if not blocks:
        return {}
    if distributed.world() > 1:  # every rank must move its routing bias by the same global load
        for block in blocks.values():
            experts = block.experts.gate_up_proj.shape[0]
            load = block.load if block.load is not None else torch.zeros(experts, dtype=torch.long)
            block.load = distributed.all_sum(load.cpu().tolist()).long()
    if gamma:
        update_routing_bias(model, gamma)
    stats = router_stats(model)
    return {f"router/{k}": stats[k] for k in ("cv_mean", "cv_max", "max_share")}


def sampling_tool(cfg: RLConfig) -> Tool | None:
    """The tool the policy samples with (the same for rollouts and held-out evaluation), or None."""
    return make_tool(cfg.tool)


def train_rl(cfg: RLConfig, *, model=None, tokenizer=None, problems: Sequence | None = None,
             eval_problems: Sequence | None = None, rewards: Sequence | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train with GRPO-family RL as `cfg` says; resume from cfg.output_dir's checkpoint if present.

    Objects passed in (a model, tokenizer, problem lists, reward functions) replace what the
    config would load. Returns a summary: steps, seconds, the last record, held-out accuracies,
    rollbacks, and paths of the final model and the plots.
    """
    from ponder.engine import Engine

    start = time.perf_counter()
    if problems is None:
        from ponder.tasks import load_task

        problems = load_task(cfg.task, cfg.task_path, cfg.task_limit, split=cfg.task_split,
                             prompt_column=cfg.prompt_column, answer_column=cfg.answer_column)
    if eval_problems is None and cfg.eval_task:
        from ponder.tasks import load_task

        eval_problems = load_task(cfg.eval_task, cfg.eval_path, cfg.eval_limit, split=cfg.eval_split,
                                  prompt_column=cfg.prompt_column, answer_column=cfg.answer_column)
    if eval_problems:
        overlap = {p.prompt for p in problems} & {p.prompt for p in eval_problems}
        if overlap:
            log.warning("%d held-out prompts also appear in the training problems", len(overlap))
    fns = [resolve_reward(r, cfg.extract) for r in (cfg.rewards if rewards is None else rewards)]
    if cfg.reward_weights is not None and len(cfg.reward_weights) != len(fns):
        raise ValueError(f"{len(cfg.reward_weights)} reward_weights for {len(fns)} reward functions")
    run = TrainingRun(cfg, data_size=len(problems), what="problems", model=model, tokenizer=tokenizer)
    model, tokenizer, out = run.model, run.tokenizer, run.out
    ask = dict(chat=cfg.chat, instruction=cfg.instruction, enable_thinking=cfg.enable_thinking)
    check_context(problems, tokenizer, context_window(model.config), "training", cfg.task_path or cfg.task, **ask)
    check_context(eval_problems or [], tokenizer, context_window(model.config), "held-out",
                  cfg.eval_path or cfg.eval_task or "", **ask)
    set_load_counting(model, False)  # MoE: count the policy's training forwards only (`update`)
    router_stats(model)  # ... and forget FSDP's set-up forward

    ref_model = None
    if cfg.beta and cfg.lora is None:
        ref_dir = out / "reference"
        if distributed.broadcast(not (ref_dir / "config.json").exists()):  # the initial policy, kept for every resume
            run.export(ref_dir)
        from ponder.models import from_pretrained

        ref_model = run.frozen(from_pretrained(ref_dir))  # under FSDP2 sharded as the policy is

    engine = Engine(model, tokenizer)
    st: dict[str, Any] = {"step": 0, "lr_scale": 1.0, "rollbacks": 0, "history": [], "best_eval": None,
                          "entropy_mean": None, "healthy_steps": 0, "flat_steps": 0}

    def restore(path: Path) -> None:
        saved = run.restore(path)
        for key in st:
            st[key] = saved.get(key, st[key])

    saved = run.resume()
    if saved is not None:
        for key in st:
            st[key] = saved.get(key, st[key])
    metrics = run.metrics(st["history"])

    def run_eval() -> dict[str, float]:
        t0 = time.perf_counter()
        with run.generation(engine):
            result = evaluate_greedy(engine, tokenizer, eval_problems, max_new_tokens=cfg.max_new_tokens,
                                     chat=cfg.chat, instruction=cfg.instruction,
                                     enable_thinking=cfg.enable_thinking, extract=cfg.extract,
                                     stop_strings=cfg.stop_strings, tool=sampling_tool(cfg))
        result["time/eval"] = time.perf_counter() - t0
        return result

    if saved is None:
        if eval_problems:  # the baseline: plots start here, and eval-drop rollback measures from it
            record = {"step": 0, **run_eval()}
            st["best_eval"] = record["eval/accuracy"]
            metrics.log(record)
        # A step-0 checkpoint gives a rollback target before the first scheduled save (and is
        # the best so far when there is a held-out baseline).
        run.save(0, dict(st), best=bool(eval_problems))

    bar = run.progress(cfg.steps, st["step"], "rl", progress)
    warned_truncation = 0
    with run.interruptible():
        while st["step"] < cfg.steps:
            step = st["step"] + 1
            t_step = time.perf_counter()
            lr = lr_at(cfg, step, cfg.steps, st["lr_scale"])
            run.set_lr(lr)
            try:
                with run.generation(engine):
                    rollout, record = collect(cfg, engine, tokenizer, problems, run.stream, fns, step,
                                              st["rollbacks"])
                t0 = time.perf_counter()
                entropy_limit = None
                if st["entropy_mean"] is not None and st["healthy_steps"] >= 3:
                    entropy_limit = cfg.rollback_entropy_factor * st["entropy_mean"]
                record.update(update(cfg, run, ref_model, rollout, entropy_limit))
                record.update(routing_metrics(model, cfg.routing_bias_gamma))
                record["time/train"] = time.perf_counter() - t0
                record["lr"] = lr
                if eval_problems and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                    record.update(run_eval())
                    best = st["best_eval"]
                    if best is not None and record["eval/accuracy"] < best - cfg.rollback_eval_drop:
                        raise Collapse(f"held-out accuracy {record['eval/accuracy']:.3f} fell from its best "
                                       f"{best:.3f}")
            except Collapse as why:
                if not cfg.rollback or st["rollbacks"] >= cfg.max_rollbacks:
                    raise RuntimeError(f"training collapsed at step {step}: {why} "
                                       f"(rollbacks used: {st['rollbacks']})") from why
                target = checkpoint.latest(run.checkpoints)
                lr_scale, rollbacks = st["lr_scale"] * cfg.rollback_lr_factor, st["rollbacks"] + 1
                restore(target)
                st["lr_scale"], st["rollbacks"] = lr_scale, rollbacks
                event = {"step": step, "event": "rollback", "reason": str(why), "to_step": st["step"],
                         "lr_scale": lr_scale}
                log.warning("step %d: %s; rolled back to step %d, learning rate x%g", step, why, st["step"],
                            lr_scale)
                metrics.rewrite(st["history"])
                metrics.log(event)
                bar.n = st["step"]
                bar.refresh()
                continue

            elapsed = time.perf_counter() - t_step
            record["tokens_per_s"] = record.pop("generated_tokens") / max(elapsed, 1e-9)
            record["time/step"] = elapsed
            record = {"step": step, **record}
            warned_truncation = warn_degenerate(cfg, st, record, warned_truncation)
            if not math.isnan(record["entropy"]):
                prev = st["entropy_mean"]
                st["entropy_mean"] = record["entropy"] if prev is None else 0.9 * prev + 0.1 * record["entropy"]
                st["healthy_steps"] += 1
            best = False
            if "eval/accuracy" in record:
                best = st["best_eval"] is None or record["eval/accuracy"] > st["best_eval"]
                st["best_eval"] = max(record["eval/accuracy"], st["best_eval"] or 0.0)
            st["step"] = step
            metrics.log(record)
            bar.set_postfix({k: f"{record[k]:.3f}" for k in ("reward/total/mean", "accuracy", "eval/accuracy")
                             if k in record})
            bar.update(1)
            if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps or (best and cfg.keep_best):
                run.save(step, dict(st), best=best)
    bar.close()

    model_dir = run.export(out / "model")
    if cfg.keep_best and (run.checkpoints / "BEST").exists():
        best_path = run.checkpoints / (run.checkpoints / "BEST").read_text().strip()
        run.restore(best_path)  # the run is over: its live state is not needed after this
        run.export(out / "best-model")
    plots = []
    if distributed.is_main():
        plots = plot(st["history"], out, {"reward": ["reward/total/mean", "reward/*/mean", "accuracy",
                                                     "right_answer_wrong_step"],
                                          "heldout_accuracy": ["eval/accuracy", "eval/right_answer_wrong_step"]})
    metrics.close()
    evals = [(r["step"], r["eval/accuracy"]) for r in st["history"] if "eval/accuracy" in r]
    last = next((r for r in reversed(st["history"]) if "event" not in r), {})
    return {"steps": st["step"], "seconds": time.perf_counter() - start, "final": last, "eval": evals,
            "best_eval_accuracy": st["best_eval"], "rollbacks": st["rollbacks"], "output_dir": str(out),
            "model_dir": str(model_dir), "plots": [str(p) for p in plots]}


def warn_degenerate(cfg: RLConfig, st: dict[str, Any], record: dict[str, Any], warned_truncation: int) -> int:
    """Loud warnings for steps that cannot teach anything: most completions truncated, or every
    group flat (equal rewards) for several steps in a row. Returns the step last warned about truncation."""
    step = record["step"]
    if record["truncated_frac"] > cfg.truncation_warning and (warned_truncation == 0
                                                              or step - warned_truncation >= 10):
        warned_truncation = step
        log.warning("step %d: %.0f%% of completions hit max_new_tokens=%d: their rewards are likely 0 and "
                    "the model learns nothing; raise max_new_tokens or shorten the task",
                    step, 100 * record["truncated_frac"], cfg.max_new_tokens)
    st["flat_steps"] = st.get("flat_steps", 0) + 1 if record["zero_variance_frac"] >= 1.0 else 0
    if st["flat_steps"] == FLAT_STEPS_WARNING:
        log.warning("steps %d-%d: every group's rewards were all equal, so every advantage is 0 and the model "
                    "learns nothing. Likely causes: rewards always 0 (task too hard, answers truncated: "
                    "truncated_frac=%.2f, or an answer format the verifier does not read) or always 1 (too "
                    "easy), or a reward function that ignores the completion",
                    step - FLAT_STEPS_WARNING + 1, step, record["truncated_frac"])
    return warned_truncation
