"""What every rung of the ladder shares: the config fields, sampling scored by the task's verifier,
padded batches for the log-prob head, a decoder with a scalar head (PPO's value model and the
reward model), and the set-up, checkpoints and wrap-up of a run."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import nn

from ponder import config as config_io
from ponder.models import token_logprobs
from ponder.evaluate.heldout import evaluate_greedy
from ponder.evaluate.prompts import build_prompt
from ponder.rl.scoring import correct
from ponder.device import pick_device
from ponder.runtime import checkpoint, distributed
from ponder.runtime.training import adamw, autocast, changed_settings, describe_changes, load_model, load_tokenizer


@dataclass
class LadderConfig:
    """The fields every method of the ladder has; each method's config adds its own."""

    # --- model and data ---
    model: str = ""  # HF-layout folder of the policy to start from (config.json + model.safetensors)
    tokenizer: str | None = None  # folder holding tokenizer.json; None: the model folder
    task: str = "multiply:train"  # ponder.tasks name of the training problems
    task_path: str | None = None  # data file for a file-backed task
    task_limit: int | None = None  # use only the first N training problems
    eval_task: str | None = None  # held-out problems for greedy evaluation; None: no held-out eval
    eval_path: str | None = None  # data file for the held-out task
    eval_limit: int | None = 64  # held-out problems per evaluation
    chat: bool | None = None  # wrap prompts in the chat template; None: when the checkpoint ships one (ponder.evaluate.prompts)
    output_dir: str = "out/ladder"  # metrics.jsonl, TensorBoard events, plots, final model

    # --- sampling ---
    prompts_per_round: int = 64  # distinct prompts per generation round (a PPO step, an RFT round, a DPO (re)sampling)
    group_size: int = 8  # completions sampled per prompt
    max_new_tokens: int = 48  # completion cap; truncated completions are scored like any other
    temperature: float = 1.0  # sampling temperature; log-probs are taken on logits / temperature

    # --- optimisation ---
    lr: float = 1e-4  # AdamW learning rate of the policy (constant)
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0: off
    micro_batch_size: int = 64  # sequences per forward/backward; gradients accumulate over the batch
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast forward (weights and log-probs stay fp32)
    device: str = "auto"  # "auto": cuda when available, else cpu
    seed: int = 0  # seeds the data order and every generation round's sampling seed
    eval_every: int = 10  # held-out greedy evaluation every N steps (and at the end); 0: only at the end
    save_every: int = 10  # resumable checkpoint every N steps (RFT: rounds); a re-run of the same config resumes; 0: none

    def __post_init__(self) -> None:
        for name in ("prompts_per_round", "group_size", "max_new_tokens", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError("lr and temperature must be > 0")
        if self.eval_every < 0 or self.save_every < 0:
            raise ValueError("eval_every and save_every must be >= 0")


@dataclass
class Sample:
    """One sampled completion and the verifier's verdict on it."""

    prompt_ids: list[int]
    token_ids: list[int]  # the completion, its stop token included
    text: str
    reward: float  # the task verifier: 1.0 right, 0.0 wrong


@dataclass
class Run:
    """What a loop starts from: device, policy, tokenizer, problems, where outputs go."""

    cfg: LadderConfig
    device: torch.device
    model: nn.Module
    tokenizer: object
    problems: list
    eval_problems: list
    out: Path

    def engine(self):
        from ponder.engine import Engine

        return Engine(self.model, self.tokenizer)

    def optimizer(self, params=None, lr: float | None = None) -> torch.optim.Optimizer:
        return adamw(self.model.parameters() if params is None else params, lr or self.cfg.lr)

    def logprobs(self, ids, starts, length: int, temperature: float = 1.0):
        """The policy's log-probs of completion tokens (the chunked loss head, configured precision)."""
        with autocast(self.device, self.cfg.dtype):
            return token_logprobs(self.model, ids, starts, length, temperature)

    def evaluate(self, engine) -> dict[str, float]:
        """Held-out greedy accuracy by the task verifier (empty without held-out problems)."""
        if not self.eval_problems:
            return {}
        was_training = self.model.training
        self.model.eval()
        result = evaluate_greedy(engine, self.tokenizer, self.eval_problems, max_new_tokens=self.cfg.max_new_tokens,
                                 chat=self.cfg.chat)
        self.model.train(was_training)
        return result

    def due(self, step: int, steps: int) -> bool:
        """Whether held-out evaluation runs after `step`."""
        return bool(self.eval_problems) and ((self.cfg.eval_every and step % self.cfg.eval_every == 0) or step == steps)

    def resume(self, models: dict[str, nn.Module], optimizers: list) -> dict | None:
        """Load the newest checkpoint of output_dir into `models` and `optimizers` (and the RNGs) and
        return the loop's record; None on a fresh start. A checkpoint of other settings is an error."""
        found = checkpoint.latest(self.out / "checkpoints")
        if found is None:
            return None
        record = checkpoint.load_state(found)
        changed = changed_settings(self.cfg, record["config"])
        if changed:
            raise config_io.ConfigError(f"{self.out} holds a run (at {found.name}) trained with other settings: "
                                        f"{describe_changes(changed)}. Start it in another output_dir")
        checkpoint.load_train_state(found, nn.ModuleDict(models), optimizers)
        return record

    def metrics(self, engine, saved: dict | None):
        """The run's metrics log: a resumed run's history, or a new log opened with the held-out
        evaluation of the starting policy (step 0)."""
        from ponder.runtime.metrics import MetricsLog

        if saved is not None:
            return MetricsLog(self.out, saved["history"], tensorboard=False)
        metrics = MetricsLog(self.out, [], tensorboard=False)
        if self.eval_problems:
            metrics.log({"step": 0, **self.evaluate(engine)})
        return metrics

    def save(self, step: int, models: dict[str, nn.Module], optimizers: list, record: dict) -> None:
        """Checkpoint the loop after `step` when save_every says so: weights, optimizer states, RNGs
        and the loop's own `record` (its counters, data positions and metrics history)."""
        if self.cfg.save_every and step % self.cfg.save_every == 0:
            checkpoint.save(self.out / "checkpoints", step, nn.ModuleDict(models), optimizers,
                            {**record, "config": config_io.to_dict(self.cfg)})

    def finish(self, history: list[dict], series: dict[str, list[str]]) -> dict:
        """Save the final model and the plots; the summary fields every method returns."""
        from ponder.runtime.metrics import plot

        model_dir = self.out / "model"
        self.model.save_pretrained(model_dir)
        self.tokenizer.save_pretrained(model_dir)
        plots = plot(history, self.out, series)
        evals = [(r["step"], r["eval/accuracy"]) for r in history if "eval/accuracy" in r]
        return {"eval": evals, "eval_accuracy": evals[-1][1] if evals else None, "model_dir": str(model_dir),
                "output_dir": str(self.out), "plots": [str(p) for p in plots]}


def start(cfg: LadderConfig, model=None, tokenizer=None, problems: Sequence | None = None,
          eval_problems: Sequence | None = None) -> Run:
    """Load what `cfg` names (objects passed in win), seed torch, write config.yaml."""
    from ponder.tasks import load_task

    if distributed.launched():
        raise ValueError("the ladder's methods run in one process; launch them without torchrun")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
    model = model if model is not None else load_model(cfg)
    model.to(device).train()
    if problems is None:
        problems = load_task(cfg.task, cfg.task_path, cfg.task_limit)
    if eval_problems is None and cfg.eval_task:
        eval_problems = load_task(cfg.eval_task, cfg.eval_path, cfg.eval_limit)
    config_io.save_config(cfg, out / "config.yaml")
    return Run(cfg, device, model, tokenizer, list(problems), list(eval_problems or []), out)


def round_seed(seed: int, round_index: int) -> int:
    """Sampling seed of one generation round: a pure function of the run's seed and the round."""
    return (seed * 1_000_003 + round_index) % (2**63)


def sample_groups(run: Run, engine, indices: Sequence[int], seed: int) -> list[list[Sample]]:
    """group_size completions for each problem in `indices`, each scored by the task's verifier."""
    from ponder.engine import SamplingParams

    cfg = run.cfg
    problems = [run.problems[i] for i in indices]
    texts = [build_prompt(p, run.tokenizer, chat=cfg.chat) for p in problems]
    ids = [run.tokenizer.encode(t) for t in texts]
    was_training = run.model.training
    run.model.eval()
    outs = engine.generate(ids, n=cfg.group_size, params=SamplingParams(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed))
    run.model.train(was_training)
    return [[Sample(p_ids, c.token_ids, c.text, correct(text, c.text, problem) or 0.0) for c in group]
            for p_ids, text, problem, group in zip(ids, texts, problems, outs)]


def pairs_of(groups: list[list[Sample]], per_prompt: int, rng: random.Random) -> list[tuple[Sample, Sample]]:
    """(right, wrong) pairs of the same prompt, at most `per_prompt` per prompt (0: every combination);
    prompts whose completions are all right or all wrong give none."""
    out = []
    for group in groups:
        right = [s for s in group if s.reward > 0.5]
        wrong = [s for s in group if s.reward <= 0.5]
        combos = [(r, w) for r in right for w in wrong]
        rng.shuffle(combos)
        out += combos[:per_prompt] if per_prompt else combos
    return out


def padded(rows: Sequence[tuple[list[int], list[int]]], device) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor]:
    """(prompt ids, completion ids) rows -> ids [B, T] (right-padded), starts [B], the longest
    completion's length L, and the completion mask [B, L]."""
    width = max(len(p) + len(c) for p, c in rows)
    length = max(len(c) for _, c in rows)
    ids = torch.tensor([p + c + [0] * (width - len(p) - len(c)) for p, c in rows], device=device)
    starts = torch.tensor([len(p) for p, _ in rows], device=device)
    mask = torch.tensor([[1.0] * len(c) + [0.0] * (length - len(c)) for _, c in rows], device=device)
    return ids, starts, length, mask


def completion_logprobs(model, rows, cfg: LadderConfig, device,
                        temperature: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs [B, L] of each row's completion (chunked loss head) and the mask [B, L],
    on logits / temperature (default: the sampling temperature)."""
    ids, starts, length, mask = padded(rows, device)
    with autocast(device, cfg.dtype):
        logp, _ = token_logprobs(model, ids, starts, length, cfg.temperature if temperature is None else temperature)
    return logp, mask


def chunks(items: Sequence, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


def clip_and_step(params, optimizer, max_grad_norm: float) -> float:
    """Clip the gradient norm (0: off), step, zero the gradients; returns the norm before clipping."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    if not torch.isfinite(norm):
        raise RuntimeError(f"non-finite gradient norm ({norm.item()}); lower the learning rate")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return norm.item()


class ScalarModel(nn.Module):
    """A decoder with one scalar per position in place of its vocabulary head.

    PPO's value model reads it at every completion position (the value of the state before each
    token); the reward model reads it at a completion's last token. The head starts at zero, so a
    fresh model scores everything 0 and its first gradients come from the loss alone.
    """

    HEAD_FILE = "scalar_head.pt"

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.head = nn.Linear(decoder.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.extra: dict = {}  # saved beside the head (the reward model's calibration)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Scalars [B, K] at `positions` [B, K] (never the [B, T, vocab] logits)."""
        def head(hidden, _logits_fn):
            picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
            with torch.autocast(device_type=picked.device.type, enabled=False):  # scalars in fp32, as log-probs
                return self.head(picked.float()).squeeze(-1)

        return self.decoder(input_ids, head=head)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        self.decoder.save_pretrained(path)
        torch.save({"head": self.head.state_dict(), "extra": self.extra}, path / self.HEAD_FILE)

    @classmethod
    def load(cls, path: str | Path) -> "ScalarModel":
        from ponder.models import from_pretrained

        path = Path(path)
        if not (path / cls.HEAD_FILE).exists():
            raise FileNotFoundError(f"{path}: no {cls.HEAD_FILE} (not a model written by `ponder train rm`)")
        model = cls(from_pretrained(path))
        saved = torch.load(path / cls.HEAD_FILE, map_location="cpu", weights_only=True)
        model.head.load_state_dict(saved["head"])
        model.extra = saved["extra"]
        return model


def copy_decoder(model: nn.Module) -> nn.Module:
    """An independent copy of a ponder decoder (same config and weights)."""
    from ponder.models import Decoder

    twin = Decoder(model.config).to(next(model.parameters()).device)
    twin.load_state_dict(model.state_dict())
    return twin
