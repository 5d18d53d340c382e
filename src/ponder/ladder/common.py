"""What every rung of the ladder shares, on the training runtime every trainer uses
(ponder.runtime.training): the config fields (LadderConfig extends TrainConfig), the run
(Run extends TrainingRun: optimizer, schedule, clipping, chunked loss head, metrics and
TensorBoard, checkpoints, torchrun with DDP / FSDP2, LoRA, activation checkpointing), sampling
scored by the task's verifier, padded batches for the log-prob head, and a decoder with a scalar
head (PPO's value model and the reward model).

Under torchrun each rank generates its share of a round's groups (each group's seed a function of
the round and its place, as in RL) and every rank then holds the whole round, so pairs, orders and
minibatches are the same everywhere; each rank computes the loss of its share of every batch,
scaled by the batch's global counts, so N ranks make the gradient one process makes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import torch
from torch import nn

from ponder.evaluate.heldout import evaluate_greedy
from ponder.evaluate.prompts import build_prompt, grade
from ponder.models import token_logprobs
from ponder.runtime import distributed
from ponder.runtime.distributed import my_share
from ponder.runtime.training import (TrainConfig, TrainingRun, autocast, chunk_positions, load_model, lr_at,
                                     sampling_seed)


@dataclass
class LadderConfig(TrainConfig):
    """The fields every method of the ladder has; each method's config adds its own. Model,
    optimisation (AdamW's betas and weight decay, warm-up and schedule, clipping), memory, many
    devices and checkpoints come from ponder.runtime.training.TrainConfig, as for RL and SFT."""

    # --- data ---
    task: str = "multiply:train"  # ponder.tasks name of the training problems
    task_path: str | None = None  # data file for a file-backed task
    task_limit: int | None = None  # use only the first N training problems
    eval_task: str | None = None  # held-out problems for greedy evaluation; None: no held-out eval
    eval_path: str | None = None  # data file for the held-out task
    eval_limit: int | None = 64  # held-out problems per evaluation
    chat: bool | None = None  # wrap prompts in the chat template; None: when the checkpoint ships one (ponder.evaluate.prompts)
    instruction: str | None = None  # appended to math problems after a blank line; None: ponder.evaluate.prompts.MATH_INSTRUCTION; "": none
    extract: Literal["lenient", "strict"] = "lenient"  # how the verifier and held-out accuracy read a math answer (as `ponder eval`)
    output_dir: str = "out/ladder"  # checkpoints, metrics.jsonl, TensorBoard events, plots, final model

    # --- sampling ---
    prompts_per_round: int = 64  # distinct prompts per generation round (a PPO step, an RFT round, a DPO (re)sampling)
    group_size: int = 8  # completions sampled per prompt
    max_new_tokens: int = 48  # completion cap; truncated completions are scored like any other
    temperature: float = 1.0  # sampling temperature; log-probs are taken on logits / temperature

    # --- optimisation (the rest: TrainConfig) ---
    lr: float = 1e-4  # AdamW peak learning rate of the policy
    micro_batch_size: int = 64  # sequences per forward/backward (per rank); gradients accumulate over the batch
    eval_every: int = 10  # held-out greedy evaluation every N steps (and at the end); 0: only at the end
    save_every: int = 10  # train-state checkpoint every N steps (RFT: rounds) and at the end; a re-run of the same config resumes; 0: only at the end

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("prompts_per_round", "group_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.eval_every < 0:
            raise ValueError("eval_every must be >= 0")


@dataclass
class Sample:
    """One sampled completion and the verifier's verdict on it."""

    prompt_ids: list[int]
    token_ids: list[int]  # the completion, its stop token included
    text: str
    reward: float  # the task verifier: 1.0 right, 0.0 wrong


class Run(TrainingRun):
    """A ladder method's run: the training runtime's (policy, optimizer, data stream, checkpoints,
    metrics, export) plus the problems, the engine, held-out evaluation, and `copies` of the
    starting policy made before it is wrapped (a value model's or reward model's body, a reference)."""

    def __init__(self, cfg: LadderConfig, model=None, tokenizer=None, problems: Sequence | None = None,
                 eval_problems: Sequence | None = None, *, copies: int = 0, trains_policy: bool = True):
        from ponder.engine import Engine
        from ponder.tasks import load_task

        if problems is None:
            problems = load_task(cfg.task, cfg.task_path, cfg.task_limit)
        if eval_problems is None and cfg.eval_task:
            eval_problems = load_task(cfg.eval_task, cfg.eval_path, cfg.eval_limit)
        torch.manual_seed(cfg.seed)
        model = model if model is not None else load_model(cfg)
        self.copies = [copy_decoder(model) for _ in range(copies)]
        super().__init__(cfg, data_size=len(problems), what="problems", model=model, tokenizer=tokenizer,
                         trains_model=trains_policy)
        self.problems, self.eval_problems = list(problems), list(eval_problems or [])
        self.engine = Engine(self.model, self.tokenizer)

    def evaluate(self) -> dict[str, float]:
        """Held-out greedy accuracy by the task verifier (empty without held-out problems)."""
        if not self.eval_problems:
            return {}
        cfg = self.cfg
        with self.generation(self.engine):
            return evaluate_greedy(self.engine, self.tokenizer, self.eval_problems, max_new_tokens=cfg.max_new_tokens,
                                   chat=cfg.chat, instruction=cfg.instruction, extract=cfg.extract)

    def due(self, step: int, steps: int) -> bool:
        """Whether held-out evaluation runs after `step`."""
        return bool(self.eval_problems) and ((self.cfg.eval_every and step % self.cfg.eval_every == 0) or step == steps)

    def checkpoint_due(self, step: int, steps: int) -> bool:
        return bool(self.cfg.save_every and step % self.cfg.save_every == 0) or step == steps

    def set_step_lr(self, step: int, steps: int) -> float:
        """The policy's learning rate of `step` by the configured warm-up and schedule."""
        lr = lr_at(self.cfg, step, steps)
        if self.optimizer is not None:
            self.set_lr(lr)
        return lr

    def start_metrics(self, saved: dict | None):
        """The run's metrics log (metrics.jsonl and TensorBoard on rank 0): a resumed run's
        history, or a new log opened with the held-out evaluation of the starting policy (step 0)."""
        if saved is not None:
            return self.metrics(saved["history"])
        metrics = self.metrics([])
        if self.eval_problems:
            record = {"step": 0, **self.evaluate()}
            metrics.log(record)
        return metrics

    def finish(self, history: list[dict], series: dict[str, list[str]]) -> dict:
        """Export the final model (HF layout; with LoRA, merged, and the adapter beside it) and the
        plots; the summary fields every method returns."""
        from ponder.runtime.metrics import plot

        model_dir = self.export(self.out / "model")
        plots = plot(history, self.out, series) if distributed.is_main() else []
        evals = [(r["step"], r["eval/accuracy"]) for r in history if "eval/accuracy" in r]
        return {"eval": evals, "eval_accuracy": evals[-1][1] if evals else None, "model_dir": str(model_dir),
                "output_dir": str(self.out), "plots": [str(p) for p in plots]}


def sample_groups(run: Run, indices: Sequence[int], round_index: int) -> list[list[Sample]]:
    """group_size completions for each problem in `indices`, each scored by the task's verifier
    (read as `ponder eval` reads it). Under torchrun each rank generates its share of the groups
    and every rank gets all of them, in order; each group's seed depends on the round and its
    place only, so N ranks draw what one process draws."""
    from ponder.engine import SamplingParams

    cfg = run.cfg
    places = my_share(list(enumerate(indices)))
    problems = [run.problems[i] for _, i in places]
    texts = [build_prompt(p, run.tokenizer, chat=cfg.chat, instruction=cfg.instruction) for p in problems]
    ids = [run.tokenizer.encode(t) for t in texts]
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                            group_seeds=tuple(sampling_seed(cfg.seed, round_index, group=j) for j, _ in places))
    with run.generation(run.engine):
        outs = run.engine.generate(ids, n=cfg.group_size, params=params) if ids else []
    mine = [(j, [Sample(p_ids, c.token_ids, c.text, float(grade(problem, text, c.text, extract=cfg.extract).correct))
                 for c in group])
            for (j, _), p_ids, text, problem, group in zip(places, ids, texts, problems, outs)]
    every = sorted((pair for part in distributed.gather(mine) for pair in part), key=lambda pair: pair[0])
    return [group for _, group in every]


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
    """Per-token log-probs [B, L] of each row's completion and the mask [B, L], on logits /
    temperature (default: the sampling temperature), through the chunked loss head (loss_chunk_mb)
    under the configured precision. `model`: a decoder or its DDP / FSDP2 wrapper."""
    ids, starts, length, mask = padded(rows, device)
    config = getattr(getattr(model, "module", model), "config", None)  # DDP keeps the decoder as .module
    chunk = {} if config is None else {"chunk_tokens": chunk_positions(cfg.loss_chunk_mb, config.vocab_size)}
    with autocast(torch.device(device), cfg.dtype):
        logp, _ = token_logprobs(model, ids, starts, length, cfg.temperature if temperature is None else temperature,
                                 **chunk)
    return logp, mask


def chunks(items: Sequence, size: int) -> list:
    return [items[i:i + size] for i in range(0, len(items), size)]


def micro_batches(run: Run, items: Sequence, size: int) -> list[tuple[list, bool]]:
    """This rank's share of a global batch in micro-batches of `size`, as (items, real): every rank
    runs as many as the busiest one, the extra ones a stand-in (the batch's first item) whose loss
    the caller weighs 0, so DDP's and FSDP2's collectives stay matched."""
    mine = chunks(my_share(items), size)
    return [(mine[b], True) if b < len(mine) else ([items[0]], False) for b in range(run.micro_batches(len(mine)))]


@torch.no_grad()
def over_ranks(run: Run, items: Sequence, fn: Callable[[list], list]) -> list:
    """[fn(micro-batch)...] over every item, in order: each rank computes its share (micro-batches
    of micro_batch_size, stand-ins where it has fewer) and every rank gets every result. `fn` maps
    a list of items to a list of picklable results (numbers, CPU tensors), one per item."""
    places = list(range(len(items)))
    found: dict[int, Any] = {}
    for part, real in micro_batches(run, places, run.cfg.micro_batch_size):
        results = fn([items[i] for i in part])
        if real:
            found.update(zip(part, results))
    merged: dict[int, Any] = {}
    for part in distributed.gather(found):
        merged.update(part)
    return [merged[i] for i in places]


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
        if decoder.lm_head is not None:  # never used here: no gradient would reach it (DDP wants none such)
            decoder.lm_head.requires_grad_(False)

    # What the training runtime reads of a decoder (distributed.wrap shards `model.layers`).
    @property
    def model(self) -> nn.Module:
        return self.decoder.model

    @property
    def config(self):
        return self.decoder.config

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.decoder.set_gradient_checkpointing(enabled)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Scalars [B, K] at `positions` [B, K] (default: the last position; never the [B, T,
        vocab] logits)."""
        if positions is None:
            positions = torch.full((input_ids.size(0), 1), input_ids.size(1) - 1, device=input_ids.device)

        def head(hidden, _logits_fn):
            picked = hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))
            with torch.autocast(device_type=picked.device.type, enabled=False):  # scalars in fp32, as log-probs
                return self.head(picked.float()).squeeze(-1)

        return self.decoder(input_ids, head=head)

    def save(self, path: str | Path) -> None:
        """The decoder in HF layout and the head beside it, from gathered weights (a collective
        under FSDP2: every rank calls it, rank 0 writes)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        from ponder.models.checkpoint import save_checkpoint

        path = Path(path)
        full = get_model_state_dict(self, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if distributed.is_main():
            save_checkpoint(self.decoder, path, state={k.removeprefix("decoder."): v for k, v in full.items()
                                                       if k.startswith("decoder.")})
            head = {k.removeprefix("head."): v for k, v in full.items() if k.startswith("head.")}
            torch.save({"head": head, "extra": self.extra}, path / self.HEAD_FILE)
        distributed.barrier()

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
