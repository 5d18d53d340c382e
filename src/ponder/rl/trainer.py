"""The RL loop: sample prompts, generate G completions each, score, advantages, update; repeat.

    from ponder.rl import RLConfig, train_rl
    summary = train_rl(RLConfig(model="out/base", task="multiply:train", eval_task="multiply:test"))

One step: `collect` (generation with ponder.engine, rewards, dynamic sampling) then `update`
(micro-batched clipped-ratio loss with gradient accumulation, mu times). Around it: held-out greedy
evaluation, atomic checkpoints (checkpoint.py) from which a re-run resumes exactly, and rollback to
the last good checkpoint with a lower learning rate when training collapses.

Exact resume rests on every random choice being a function of saved state: the data order of
(seed, epoch), the sampling seed of (seed, step, try, rollbacks), the weights and optimizer.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ponder import config as config_io
from ponder.rl import checkpoint, losses
from ponder.rl.advantages import advantages as compute_advantages
from ponder.rl.advantages import combine, zero_variance_groups
from ponder.rl.config import RLConfig
from ponder.rl.metrics import MetricsLog, plot
from ponder.rl.scoring import correct, overlong_penalty, resolve_reward, reward_name, score
from ponder.tools import Tool, make_tool, tool_metrics

log = logging.getLogger("ponder.rl")

# Keys whose values depend on wall-clock time, not on the computation (left out of comparisons).
TIMING_KEYS = ("tokens_per_s", "time/generate", "time/score", "time/train", "time/eval", "time/step")


class Collapse(Exception):
    """Training went wrong in a way a rollback can fix (NaN loss, entropy blow-up, eval drop)."""


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


def sampling_seed(seed: int, step: int, attempt: int, rollbacks: int) -> int:
    """Seed of one generation round: a pure function of the run's seed and its position."""
    return (((seed * 1_000_003 + step) * 1009 + attempt) * 101 + rollbacks) % (2**63)


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


def prompt_text(problem, tokenizer, chat: bool, enable_thinking: bool) -> str:
    if not chat:
        return problem.prompt
    return tokenizer.apply_chat_template([{"role": "user", "content": problem.prompt}],
                                         add_generation_prompt=True, enable_thinking=enable_thinking)


@dataclass
class Rollout:
    """The completions one step trains on, flattened group by group (G per prompt)."""

    prompt_ids: list[list[int]]
    completions: list  # ponder.engine.Completion
    advantages: torch.Tensor  # [N]


def collect(cfg: RLConfig, engine, tokenizer, problems: Sequence, stream: ProblemStream, fns, step: int,
            rollbacks: int) -> tuple[Rollout, dict[str, Any]]:
    """Generate and score one step's batch; with dynamic sampling keep only groups with signal."""
    from ponder.engine import SamplingParams

    g = cfg.group_size
    names = [reward_name(f) for f in fns] + (["overlong"] if cfg.overlong == "soft" else [])
    weights = list(cfg.reward_weights or [1.0] * len(fns)) + ([1.0] if cfg.overlong == "soft" else [])
    weights = torch.tensor(weights, dtype=torch.float64)
    kept: list[tuple[list[int], list, torch.Tensor]] = []  # per group: prompt ids, completions, rewards
    seen_rewards, seen_samples, lengths, truncated = [], [], [], []
    seen_completions, seen_problems = [], []  # for the tool metrics
    groups_tried = groups_flat = 0
    t_gen = t_score = 0.0
    tries = cfg.max_sampling_tries if cfg.dynamic_sampling else 1
    attempt = 0
    for attempt in range(tries):
        need = cfg.prompts_per_step - len(kept)
        batch = [problems[i] for i in stream.take(need)]
        texts = [prompt_text(p, tokenizer, cfg.chat, cfg.enable_thinking) for p in batch]
        ids = [tokenizer.encode(t) for t in texts]
        params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                                top_p=cfg.top_p, stop_strings=tuple(cfg.stop_strings), tool=sampling_tool(cfg),
                                seed=sampling_seed(cfg.seed, step, attempt, rollbacks))
        t0 = time.perf_counter()
        outs = engine.generate(ids, n=g, params=params)
        t_gen += time.perf_counter() - t0
        t0 = time.perf_counter()
        flat = [c for group in outs for c in group]
        rewards = score(fns, [t for t in texts for _ in range(g)], [c.text for c in flat],
                        [p for p in batch for _ in range(g)])
        lens = torch.tensor([len(c.token_ids) for c in flat])
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
        for j in range(len(batch)):
            if cfg.dynamic_sampling and flat_groups[j]:
                continue
            kept.append((ids[j], outs[j], rewards[j * g:(j + 1) * g]))
        if len(kept) >= cfg.prompts_per_step:
            break

    if not kept:  # dynamic sampling found no group with signal: train on nothing this step
        per_reward = torch.zeros(0, len(names), dtype=torch.float64)
        adv = torch.zeros(0)
    else:
        per_reward = torch.cat([r for _, _, r in kept])
        adv = compute_advantages(per_reward, g, cfg.advantage, weights, cfg.reward_aggregation).float()
    rollout = Rollout([p for p, _, _ in kept for _ in range(g)], [c for _, cs, _ in kept for c in cs], adv)

    every = torch.cat(seen_rewards)
    lens = torch.cat(lengths).double()
    metrics: dict[str, Any] = {}
    for k, name in enumerate(names):
        col = every[:, k][~torch.isnan(every[:, k])]
        metrics[f"reward/{name}/mean"] = col.mean().item() if len(col) else float("nan")
        metrics[f"reward/{name}/std"] = col.std().item() if len(col) > 1 else 0.0
    total = combine(every, weights, g, "sum")
    metrics["reward/total/mean"] = torch.nanmean(total).item()
    if "correct" in names:
        metrics["accuracy"] = torch.nanmean(every[:, names.index("correct")]).item()
    else:  # accuracy by the task's verifier is worth seeing whatever the rewards are
        metrics["accuracy"] = sum(correct(*x) or 0.0 for x in seen_samples) / len(seen_samples)
    if cfg.tool != "none":
        right = (every[:, names.index("correct")].tolist() if "correct" in names
                 else [correct(*x) or 0.0 for x in seen_samples])
        metrics.update(tool_metrics(seen_completions, right, seen_problems))
    metrics.update({
        "zero_variance_frac": groups_flat / groups_tried,
        "groups": len(kept),
        "sampling_tries": attempt + 1,
        "truncated_frac": sum(truncated) / len(truncated),
        "completion_len": lens.mean().item(),
        "time/generate": t_gen,
        "time/score": t_score,
        "generated_tokens": int(lens.sum().item()),
    })
    return rollout, metrics


def _pad(rows: list[list[int]], value: int = 0) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def update(cfg: RLConfig, model, ref_model, optimizer, rollout: Rollout, device: torch.device,
           entropy_limit: float | None) -> dict[str, Any]:
    """mu optimizer steps on one rollout; raises Collapse on a non-finite loss or gradient, or when
    the policy entropy exceeds `entropy_limit`."""
    comps = rollout.completions
    n = len(comps)
    if n == 0:
        return {"loss": 0.0, "entropy": float("nan"), "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0,
                "grad_norm": 0.0, "loss_tokens": 0}
    masks = []
    for c in comps:
        keep = 0.0 if cfg.overlong == "mask" and c.finish_reason == "length" else 1.0
        forced = c.forced or [False] * len(c.token_ids)
        masks.append([keep * (0.0 if f else 1.0) for f in forced])
    batch_tokens = int(sum(sum(m) for m in masks))
    # Micro-batches of similar total length waste less compute on padding.
    order = sorted(range(n), key=lambda i: len(rollout.prompt_ids[i]) + len(comps[i].token_ids))
    micro = [order[i:i + cfg.micro_batch_size] for i in range(0, n, cfg.micro_batch_size)]

    def tensors(idx):
        ids = _pad([rollout.prompt_ids[i] + comps[i].token_ids for i in idx]).to(device)
        starts = torch.tensor([len(rollout.prompt_ids[i]) for i in idx], device=device)
        length = max(len(comps[i].token_ids) for i in idx)
        mask = torch.tensor([m + [0.0] * (length - len(m)) for m in (masks[i] for i in idx)], device=device)
        old = torch.tensor([c.logprobs + [0.0] * (length - len(c.logprobs)) for c in (comps[i] for i in idx)],
                           device=device)
        return ids, starts, length, mask, old

    def logprobs(net, ids, starts, length, entropy=False):
        with autocast(device, cfg.dtype):
            return losses.completion_logprobs(net, ids, starts, length, cfg.temperature, with_entropy=entropy)

    # mu > 1 reuses the samples: ratios are taken against the policy that sampled them. The engine's
    # log-probs are exactly that when no top-k/top-p truncation changed the distribution.
    old_logps: dict[int, torch.Tensor] = {}
    if cfg.mu > 1:
        for b, idx in enumerate(micro):
            ids, starts, length, mask, old = tensors(idx)
            if cfg.top_k == 0 and cfg.top_p >= 1.0:
                old_logps[b] = old
            else:
                with torch.no_grad():
                    old_logps[b] = logprobs(model, ids, starts, length)[0]

    totals = {"loss": 0.0, "entropy": 0.0, "kl": 0.0, "clip_low": 0.0, "clip_high": 0.0, "tokens": 0.0}
    params = [p for p in model.parameters() if p.requires_grad]
    grad_norm = 0.0
    for inner in range(cfg.mu):
        optimizer.zero_grad(set_to_none=True)
        for b, idx in enumerate(micro):
            ids, starts, length, mask, _ = tensors(idx)
            logp, ent = logprobs(model, ids, starts, length, entropy=inner == 0)
            ref = None
            if cfg.beta:
                with torch.no_grad():
                    ref = logprobs(ref_model, ids, starts, length)[0]
            loss, stats = losses.policy_loss(
                logp, old_logps.get(b), rollout.advantages[idx].to(device), mask, loss_type=cfg.loss_type,
                level=cfg.importance_sampling, epsilon_low=cfg.epsilon_low, epsilon_high=cfg.epsilon_high,
                beta=cfg.beta, ref_logp=ref, batch_sequences=n, batch_tokens=batch_tokens,
                max_completion_length=cfg.max_new_tokens)
            if not torch.isfinite(loss):
                raise Collapse(f"non-finite loss ({loss.item()})")
            loss.backward()
            if inner == 0:
                totals["loss"] += loss.item()
                totals["entropy"] += float((ent * mask).sum())
                for key in ("kl", "clip_low", "clip_high", "tokens"):
                    totals[key] += stats[key]
        if inner == 0 and entropy_limit is not None and totals["tokens"]:
            entropy = totals["entropy"] / totals["tokens"]
            if entropy > entropy_limit:
                raise Collapse(f"entropy {entropy:.3f} exceeds {entropy_limit:.3f}")
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if not torch.isfinite(norm):
            raise Collapse(f"non-finite gradient norm ({norm.item()})")
        if inner == 0:
            grad_norm = norm.item()
        optimizer.step()
    tokens = max(totals["tokens"], 1.0)
    return {"loss": totals["loss"], "entropy": totals["entropy"] / tokens if totals["tokens"] else float("nan"),
            "kl": totals["kl"] / tokens, "clip_low": totals["clip_low"] / tokens,
            "clip_high": totals["clip_high"] / tokens, "grad_norm": grad_norm, "loss_tokens": batch_tokens}


def routing_metrics(model, gamma: float) -> dict[str, float]:
    """MoE policies: this step's expert-load balance (generation forwards included), after the
    optional auxiliary-loss-free bias update (DeepSeek-V3). Empty for dense models."""
    from ponder.models import router_stats, update_routing_bias

    if gamma:
        update_routing_bias(model, gamma)
    stats = router_stats(model)
    return {f"router/{k}": stats[k] for k in ("cv_mean", "cv_max", "max_share")} if stats else {}


def sampling_tool(cfg: RLConfig) -> Tool | None:
    """The tool the policy samples with (the same for rollouts and held-out evaluation), or None."""
    return make_tool(cfg.tool)


def evaluate_greedy(engine, tokenizer, problems: Sequence, *, max_new_tokens: int, chat: bool = False,
                    enable_thinking: bool = True, stop_strings: Sequence[str] = (), tool=None) -> dict[str, float]:
    """Greedy accuracy on held-out problems by the task verifier, with mean length and truncation."""
    from ponder.engine import SamplingParams

    texts = [prompt_text(p, tokenizer, chat, enable_thinking) for p in problems]
    outs = engine.generate([tokenizer.encode(t) for t in texts], n=1,
                           params=SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0,
                                                 stop_strings=tuple(stop_strings), tool=tool))
    flat = [o[0] for o in outs]
    right = [correct(t, c.text, p) or 0.0 for t, c, p in zip(texts, flat, problems)]
    return {"eval/accuracy": sum(right) / len(right),
            "eval/completion_len": sum(len(c.token_ids) for c in flat) / len(flat),
            "eval/truncated_frac": sum(c.finish_reason == "length" for c in flat) / len(flat)}


def train_rl(cfg: RLConfig, *, model=None, tokenizer=None, problems: Sequence | None = None,
             eval_problems: Sequence | None = None, rewards: Sequence | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Train with GRPO-family RL as `cfg` says; resume from cfg.output_dir's checkpoint if present.

    Objects passed in (a model, tokenizer, problem lists, reward functions) replace what the
    config would load. Returns a summary: steps, seconds, the last record, held-out accuracies,
    rollbacks, and paths of the final model and the plots.
    """
    from tqdm.auto import tqdm

    from ponder.engine import Engine

    start = time.perf_counter()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    model, tokenizer = load_policy(cfg, model, tokenizer)
    model.to(device).train()
    if problems is None:
        from ponder.tasks import load_task

        problems = load_task(cfg.task, cfg.task_path, cfg.task_limit)
    if eval_problems is None and cfg.eval_task:
        from ponder.tasks import load_task

        eval_problems = load_task(cfg.eval_task, cfg.eval_path, cfg.eval_limit)
    if eval_problems:
        overlap = {p.prompt for p in problems} & {p.prompt for p in eval_problems}
        if overlap:
            log.warning("%d held-out prompts also appear in the training problems", len(overlap))
    fns = list(rewards) if rewards is not None else [resolve_reward(name) for name in cfg.rewards]
    if cfg.reward_weights is not None and len(cfg.reward_weights) != len(fns):
        raise ValueError(f"{len(cfg.reward_weights)} reward_weights for {len(fns)} reward functions")
    config_io.save_config(cfg, out / "config.yaml")

    ref_model = None
    if cfg.beta:
        ref_dir = out / "reference"
        if not (ref_dir / "config.json").exists():  # the initial policy, kept for every resume
            model.save_pretrained(ref_dir)
        from ponder.models import from_pretrained

        ref_model = from_pretrained(ref_dir).to(device).eval().requires_grad_(False)

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                                  weight_decay=cfg.weight_decay)
    engine = Engine(model, tokenizer)
    ckpt_root = out / "checkpoints"
    st: dict[str, Any] = {"step": 0, "lr_scale": 1.0, "rollbacks": 0, "history": [], "best_eval": None,
                          "entropy_mean": None, "healthy_steps": 0}
    stream = ProblemStream(len(problems), cfg.seed)

    def snapshot() -> dict[str, Any]:
        return {**st, "history": list(st["history"]), "stream": stream.state(),
                "optimizer": optimizer.state_dict(), "rng": checkpoint.rng_state(),
                "config": config_io.to_dict(cfg)}

    def restore(path: Path) -> dict[str, Any]:
        nonlocal stream
        saved, stream = restore_train_state(path, model, optimizer, len(problems), "problems")
        for key in st:
            st[key] = saved[key]
        return saved

    found = checkpoint.latest(ckpt_root)
    if found is not None:
        saved_config = restore(found)["config"]
        changed = [k for k, v in config_io.to_dict(cfg).items() if saved_config.get(k) != v]
        log.info("resuming from %s (step %d)%s", found, st["step"], f"; config changed: {changed}" if changed else "")
    metrics = MetricsLog(out, st["history"])

    def run_eval(step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        model.eval()
        result = evaluate_greedy(engine, tokenizer, eval_problems, max_new_tokens=cfg.max_new_tokens,
                                 chat=cfg.chat, enable_thinking=cfg.enable_thinking, stop_strings=cfg.stop_strings,
                                 tool=sampling_tool(cfg))
        model.train()
        result["time/eval"] = time.perf_counter() - t0
        return result

    if found is None:
        if eval_problems:  # the baseline: plots start here, and eval-drop rollback measures from it
            record = {"step": 0, **run_eval(0)}
            st["best_eval"] = record["eval/accuracy"]
            metrics.log(record)
        # A step-0 checkpoint gives a rollback target before the first scheduled save.
        checkpoint.save(ckpt_root, 0, model, tokenizer, snapshot())

    bar = tqdm(total=cfg.steps, initial=st["step"], disable=not progress, desc="rl", dynamic_ncols=True)
    warned_truncation = 0
    while st["step"] < cfg.steps:
        step = st["step"] + 1
        t_step = time.perf_counter()
        lr = lr_at(cfg, step, st["lr_scale"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        try:
            model.eval()
            rollout, record = collect(cfg, engine, tokenizer, problems, stream, fns, step, st["rollbacks"])
            model.train()
            t0 = time.perf_counter()
            entropy_limit = None
            if st["entropy_mean"] is not None and st["healthy_steps"] >= 3:
                entropy_limit = cfg.rollback_entropy_factor * st["entropy_mean"]
            record.update(update(cfg, model, ref_model, optimizer, rollout, device, entropy_limit))
            record.update(routing_metrics(model, cfg.routing_bias_gamma))
            record["time/train"] = time.perf_counter() - t0
            record["lr"] = lr
            if eval_problems and ((cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps):
                record.update(run_eval(step))
                best = st["best_eval"]
                if best is not None and record["eval/accuracy"] < best - cfg.rollback_eval_drop:
                    raise Collapse(f"held-out accuracy {record['eval/accuracy']:.3f} fell from its best {best:.3f}")
        except Collapse as why:
            if not cfg.rollback or st["rollbacks"] >= cfg.max_rollbacks:
                raise RuntimeError(f"training collapsed at step {step}: {why} (rollbacks used: {st['rollbacks']})") from why
            target = checkpoint.latest(ckpt_root)
            lr_scale, rollbacks = st["lr_scale"] * cfg.rollback_lr_factor, st["rollbacks"] + 1
            restore(target)
            st["lr_scale"], st["rollbacks"] = lr_scale, rollbacks
            event = {"step": step, "event": "rollback", "reason": str(why), "to_step": st["step"],
                     "lr_scale": lr_scale}
            log.warning("step %d: %s; rolled back to step %d, learning rate x%g", step, why, st["step"], lr_scale)
            metrics.rewrite(st["history"])
            metrics.log(event)
            bar.n = st["step"]
            bar.refresh()
            continue

        elapsed = time.perf_counter() - t_step
        record["tokens_per_s"] = record.pop("generated_tokens") / max(elapsed, 1e-9)
        record["time/step"] = elapsed
        record = {"step": step, **record}
        if record["truncated_frac"] > cfg.truncation_warning and (warned_truncation == 0
                                                                  or step - warned_truncation >= 10):
            warned_truncation = step
            log.warning("step %d: %.0f%% of completions hit max_new_tokens=%d: their rewards are likely 0 and "
                        "the model learns nothing; raise max_new_tokens or shorten the task",
                        step, 100 * record["truncated_frac"], cfg.max_new_tokens)
        if not math.isnan(record["entropy"]):
            prev = st["entropy_mean"]
            st["entropy_mean"] = record["entropy"] if prev is None else 0.9 * prev + 0.1 * record["entropy"]
            st["healthy_steps"] += 1
        if "eval/accuracy" in record:
            st["best_eval"] = max(record["eval/accuracy"], st["best_eval"] or 0.0)
        st["step"] = step
        metrics.log(record)
        bar.update(1)
        bar.set_postfix({k: f"{record[k]:.3f}" for k in ("reward/total/mean", "accuracy", "eval/accuracy")
                         if k in record})
        if (cfg.save_every and step % cfg.save_every == 0) or step == cfg.steps:
            checkpoint.save(ckpt_root, step, model, tokenizer, snapshot())
    bar.close()

    model_dir = out / "model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    plots = plot(st["history"], out, {"reward": ["reward/total/mean", "accuracy"], "heldout_accuracy": ["eval/accuracy"]})
    metrics.close()
    evals = [(r["step"], r["eval/accuracy"]) for r in st["history"] if "eval/accuracy" in r]
    last = next((r for r in reversed(st["history"]) if "event" not in r), {})
    return {"steps": st["step"], "seconds": time.perf_counter() - start, "final": last, "eval": evals,
            "best_eval_accuracy": st["best_eval"], "rollbacks": st["rollbacks"], "output_dir": str(out),
            "model_dir": str(model_dir), "plots": [str(p) for p in plots]}
