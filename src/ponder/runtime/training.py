"""The training runtime: what every trainer's loop shares, below the methods that use it.

`TrainConfig` holds the options every trainer has; `TrainingRun`, made from it, owns the device
and precision, the distributed launch, the memory options, the optimizer, the seeded data stream,
train-state checkpoints that resume exactly, metrics and the final export. RL, SFT and the other
methods import from here; nothing here knows which method runs.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ponder import config as config_io
from ponder.device import pick_device
from ponder.models import token_logprobs
from ponder.models.checkpoint import save_checkpoint
from ponder.runtime import checkpoint, distributed
from ponder.runtime.lora import LoRAConfig
from ponder.runtime.metrics import MetricsLog

log = logging.getLogger("ponder.runtime")


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


def sampling_seed(seed: int, step: int, attempt: int = 0, rollbacks: int = 0, group: int = 0) -> int:
    """Seed of one prompt group's generation: a pure function of the run's seed, its position
    (step or sampling round, try, rollbacks) and the group's place in the global batch, not of
    the rank that generates it, so N ranks draw the completions one process draws."""
    base = ((seed * 1_000_003 + step) * 1009 + attempt) * 101 + rollbacks
    return (base * 1_000_033 + group) % (2**63)


class NonFiniteGradient(RuntimeError):
    """The gradient norm of a step was NaN or infinite: the update was not applied."""


def adamw(params, lr: float, **options) -> torch.optim.AdamW:
    """AdamW as every trainer here builds it: the fused kernel, TRL's default ("adamw_torch_fused").
    The default multi-tensor path holds temporaries about the size of the weights during the step
    and runs far slower on a CPU: for 186M parameters on 2 cores, 3.82 vs 3.12 GiB peak and 0.90
    vs 0.07 s per step."""
    params = list(params)
    optimizer = torch.optim.AdamW(params, lr=lr, fused=True, **options)

    def weights_changed(*_):
        # The fused kernel writes the weights without bumping their version counters, which is
        # how the engine learns that its packed copies are stale (it would sample from old weights).
        torch.autograd.graph.increment_version([p for p in params if p.grad is not None])

    optimizer.register_step_post_hook(weights_changed)
    return optimizer


def load_tokenizer(cfg):
    """The tokenizer a config names: `cfg.tokenizer`, else the model folder's."""
    from ponder.tokenizer import Tokenizer

    if not (cfg.tokenizer or cfg.model):
        raise ValueError("config: set `model` (and `tokenizer` if it lives elsewhere)")
    return Tokenizer.from_pretrained(cfg.tokenizer or cfg.model)


def load_model(cfg, init_seed: int | None = None):
    """The model `cfg.model` names; with `init_seed`, a fresh one built from the folder's
    config.json (seeded) instead of loading its weights."""
    if not cfg.model:
        raise ValueError("config: `model` (an HF-layout folder) is required")
    if init_seed is not None:
        from ponder.models import Decoder
        from ponder.models.checkpoint import read_config

        torch.manual_seed(init_seed)
        return Decoder(read_config(Path(cfg.model)))
    from ponder.models import from_pretrained

    return from_pretrained(cfg.model)


def lr_at(cfg, step: int, total_steps: int, scale: float = 1.0) -> float:
    """Learning rate of optimizer step `step` (1-based) of `total_steps`: linear warm-up, then
    constant or cosine decay to min_lr_ratio x lr."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * scale * step / cfg.warmup_steps
    if cfg.schedule == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        factor = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        return cfg.lr * scale * factor
    return cfg.lr * scale


def chunk_positions(megabytes: float, vocab_size: int) -> int:
    """How many positions' fp32 logits fit in `megabytes` (at least one); 0 MB: 0, one chunk."""
    return 0 if megabytes == 0 else max(1, int(megabytes * 2**20) // (4 * vocab_size))


def autocast(device: torch.device, dtype: str):
    """bf16 autocast for the forward where asked; fp32 (no autocast) otherwise."""
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class TrainConfig:
    """Options every trainer shares. RLConfig, SFTConfig and the other methods' configs extend it;
    their YAML files stay flat (`lr: 1e-5`, `lora: {r: 16}`, `parallel: fsdp`)."""

    # --- model ---
    model: str = ""  # HF-layout folder of the policy to train (config.json + model.safetensors)
    tokenizer: str | None = None  # folder holding tokenizer.json; None: the model folder
    output_dir: str = "out/train"  # checkpoints, metrics.jsonl, TensorBoard events, plots, final model

    # --- optimisation ---
    lr: float = 1e-5  # AdamW peak learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.999  # AdamW beta2 (TRL's default)
    max_grad_norm: float = 1.0  # clip the global gradient norm; 0: off
    warmup_steps: int = 0  # linear warm-up steps from 0 to lr
    schedule: Literal["constant", "cosine"] = "constant"  # after warm-up: constant, or cosine decay to min_lr_ratio x lr
    min_lr_ratio: float = 0.0  # cosine floor as a share of lr
    micro_batch_size: int = 16  # sequences per forward/backward; gradients accumulate over the batch
    dtype: Literal["float32", "bfloat16"] = "float32"  # bfloat16: autocast forward (weights, optimizer and log-probs stay fp32)
    device: str = "auto"  # "auto": cuda when available, else cpu; under torchrun each rank takes cuda:LOCAL_RANK
    seed: int = 0  # seeds the data order and every sampling seed

    # --- memory ---
    gradient_checkpointing: bool = False  # recompute each decoder layer in the backward pass (less activation memory, ~20-30% more step time)
    loss_chunk_mb: float = 64  # memory of one chunk's fp32 logits in the loss head (~100 positions at a 151,936 vocabulary; a small vocabulary fits in one chunk, no recomputation); never [B, T, vocab]; 0: one chunk
    lora: LoRAConfig | None = None  # train LoRA adapters (peft) instead of every weight: {r, alpha, dropout, target_modules}; None: full fine-tuning

    # --- many devices ---
    parallel: Literal["auto", "none", "ddp", "fsdp"] = "auto"  # under torchrun: ddp (auto) or fsdp (FSDP2, sharded weights, gradients and optimizer); ignored in one process

    # --- checkpoints ---
    save_every: int = 10  # write the train-state checkpoint every N steps (and at the end); 0: only at the end
    save_total_limit: int = 1  # train-state checkpoints kept, newest first (the best one is kept besides, with keep_best); 0: all
    keep_best: bool = False  # also keep the checkpoint with the best held-out score (BEST names it) and export it to best-model/
    allow_config_change: bool = False  # resume an output_dir whose saved run had other settings (each change is recorded in config-changes.jsonl); off: such a re-run is an error

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {self.micro_batch_size}")
        for name in ("save_every", "save_total_limit", "warmup_steps", "loss_chunk_mb"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# Settings that may differ on a resume without changing what is trained.
RESUMABLE_CHANGES = ("device", "parallel", "output_dir", "allow_config_change")


def changed_settings(cfg, saved_config: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """{key: (saved value, value now)} for every setting of `cfg` that differs from a checkpoint's
    and matters to what is trained (RESUMABLE_CHANGES may differ)."""
    now = config_io.to_dict(cfg)
    return {k: (saved_config.get(k), v) for k, v in now.items()
            if k not in RESUMABLE_CHANGES and saved_config.get(k) != v}


def describe_changes(changed: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())


class TrainingRun:
    """The machinery a training run shares with every method, set up from its TrainConfig:

    - `model` (the policy; under FSDP2 sharded in place) and `net`, the module training
      forwards go through (`model`, or its DDP wrapper); `tokenizer`; `device`; `optimizer`
      (AdamW over the trainable weights: all, or the LoRA adapters);
    - `stream`, the seeded data order, and `resume` / `restore` / `save` of the whole train
      state (weights, optimizer, every rank's RNGs, data position and the method's own record);
    - `logprobs` (the chunked loss head under the configured precision), `step` (clip, step),
      `generation(engine)` (weights gathered for the engine, its decode copy freed after), the micro-batch agreement between ranks,
      `export` (the final model, HF layout), and rank-0-only metrics and progress bars.
    A method's trainer makes one and runs its own loop with it.
    """

    def __init__(self, cfg: TrainConfig, *, data_size: int, what: str, model=None, tokenizer=None,
                 init_seed: int | None = None, trains_model: bool = True):
        self.cfg, self.what = cfg, what
        self.device, self.parallel = distributed.setup(cfg.parallel, pick_device(cfg.device))
        self.out = Path(cfg.output_dir)
        if distributed.is_main():
            self.out.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
        model = model if model is not None else load_model(cfg, init_seed)
        model.to(self.device).train()
        if not trains_model:  # it only samples (a reward model's run trains a model of its own)
            model.requires_grad_(False)
        elif cfg.lora is not None:
            from ponder.runtime.lora import apply_lora

            apply_lora(model, cfg.lora, seed=cfg.seed)
        if cfg.gradient_checkpointing and trains_model:
            model.set_gradient_checkpointing(True)
        self.model = model
        self.net = distributed.wrap(model, self.parallel, self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = self.adamw(self.params) if trains_model else None
        # Models trained beside the policy (PPO's value model, a reward model): name -> (module,
        # the module its forwards go through, its optimizer); saved and restored with the policy.
        self.companions: dict[str, tuple[torch.nn.Module, torch.nn.Module, torch.optim.Optimizer]] = {}
        self.stream = ProblemStream(data_size, cfg.seed)
        self.checkpoints = self.out / "checkpoints"

    def adamw(self, params, lr: float | None = None) -> torch.optim.AdamW:
        """AdamW with the run's settings (betas, weight decay) at `lr` (default: cfg.lr): the one
        optimizer every model of every method trains with."""
        cfg = self.cfg
        return adamw(params, cfg.lr if lr is None else lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                     weight_decay=cfg.weight_decay)

    def add_model(self, name: str, module: torch.nn.Module, lr: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """Train `module` beside the policy (PPO's value model, a reward model): on the run's
        device, with its memory options, wrapped as the policy is (DDP, or FSDP2 shards), with the
        run's AdamW at `lr`; saved and restored with the policy. Returns (the module to run
        training forwards through, its optimizer). `module` needs the decoder's `model.layers`
        and `config` (ponder.ladder.common.ScalarModel has them)."""
        module.to(self.device).train()
        if self.cfg.gradient_checkpointing:
            module.set_gradient_checkpointing(True)
        net = distributed.wrap(module, self.parallel, self.device)
        optimizer = self.adamw([p for p in module.parameters() if p.requires_grad], lr)
        self.companions[name] = (module, net, optimizer)
        return net, optimizer

    def frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """A model that only computes (a KL or DPO reference, a reward model): on the run's device,
        in eval mode, without gradients; under FSDP2 sharded as the policy is, so each rank holds
        a shard of it rather than the whole model (elsewhere, whole)."""
        model = model.to(self.device).eval().requires_grad_(False)
        if self.parallel == "fsdp":
            distributed.wrap(model, "fsdp", self.device)
        return model

    def _trained(self):
        """(module, optimizer or list) as checkpoints hold them: the policy alone, as it always
        was, or the policy and its companions under their names."""
        if not self.companions:
            return self.model, self.optimizer
        modules = {name: m for name, (m, _, _) in self.companions.items()}
        optimizers = [o for _, _, o in self.companions.values()]
        if self.optimizer is not None:
            modules, optimizers = {"policy": self.model, **modules}, [self.optimizer, *optimizers]
        return torch.nn.ModuleDict(modules), optimizers

    # ---- train state ------------------------------------------------------------------------
    def resume(self) -> dict[str, Any] | None:
        """Restore the newest checkpoint of output_dir and return its record; None on a fresh
        start (then config.yaml is written). A saved run with other settings is an error unless
        allow_config_change, and config.yaml keeps saying what the run started with."""
        found = checkpoint.latest(self.checkpoints)
        if found is None:
            if distributed.is_main():
                config_io.save_config(self.cfg, self.out / "config.yaml")
            return None
        saved = checkpoint.load_state(found)
        self._check_config(saved, found)
        log.info("resuming from %s (step %d)", found, saved["step"])
        return self.restore(found, saved)

    def _check_config(self, saved: dict[str, Any], found: Path) -> None:
        changed = changed_settings(self.cfg, saved["config"])
        if not changed:
            return
        if not self.cfg.allow_config_change:
            raise config_io.ConfigError(
                f"{self.out} holds a run (at {found.name}) trained with other settings: {describe_changes(changed)}. "
                "Start a new run with another output_dir, or continue this one with the new settings "
                "by adding allow_config_change=true (the change is recorded in config-changes.jsonl)")
        log.warning("continuing %s with changed settings: %s", self.out, describe_changes(changed))
        if distributed.is_main():
            with open(self.out / "config-changes.jsonl", "a") as f:
                f.write(json.dumps({"step": saved["step"], "changed": {k: {"from": a, "to": b}
                                                                        for k, (a, b) in changed.items()}}) + "\n")

    def restore(self, path: Path, saved: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load checkpoint `path` into the model, optimizer, RNGs and data stream; its record."""
        saved = saved if saved is not None else checkpoint.load_state(path)
        s = saved["stream"]
        if s["size"] != self.stream.size:
            raise ValueError(f"{path}: checkpoint was trained on {s['size']} {self.what}, this run has "
                             f"{self.stream.size}")
        checkpoint.load_train_state(path, *self._trained())
        self.stream = ProblemStream(s["size"], s["seed"], s["epoch"], s["index"])
        return saved

    def save(self, step: int, record: dict[str, Any], best: bool = False) -> Path:
        """Write the train state of `step` with the method's `record` (a collective). `best`:
        this step has the best held-out score so far (kept besides the newest with keep_best)."""
        record = {**record, "step": step, "stream": self.stream.state(), "config": config_io.to_dict(self.cfg)}
        protect = None  # the best checkpoint, kept however old it gets
        if self.cfg.keep_best:
            protect = f"step-{step:06d}" if best else self._pointer("BEST")
        path = checkpoint.save(self.checkpoints, step, *self._trained(), record,
                               keep=self.cfg.save_total_limit, protect=protect)
        if best and self.cfg.keep_best and distributed.is_main():
            checkpoint.write_pointer(self.checkpoints, "BEST", protect)
        return path

    def _pointer(self, name: str) -> str | None:
        path = self.checkpoints / name
        return path.read_text().strip() if path.exists() else None

    # ---- forward, backward, step ------------------------------------------------------------
    @property
    def chunk_tokens(self) -> int:
        """Positions per chunk of the loss head, from loss_chunk_mb and the vocabulary (0: one chunk)."""
        return chunk_positions(self.cfg.loss_chunk_mb, self.model.config.vocab_size)

    def logprobs(self, ids, starts, length: int, temperature: float = 1.0, with_entropy: bool = False,
                 model=None):
        """Log-probs (and entropy) of completion tokens through `net` (or another `model`, such as
        a frozen reference), under the configured precision."""
        with autocast(self.device, self.cfg.dtype):
            return token_logprobs(self.net if model is None else model, ids, starts, length, temperature,
                                  with_entropy=with_entropy, chunk_tokens=self.chunk_tokens)

    def reference(self):
        """Inside: forwards compute the reference policy. With LoRA it is the same model with the
        adapter off (no second copy of the weights); without, the caller keeps its own copy."""
        if self.cfg.lora is None:
            raise ValueError("reference(): without LoRA the reference policy is a separate model")
        from ponder.runtime.lora import adapter_disabled

        return adapter_disabled(self.model)

    def micro_batches(self, local: int) -> int:
        """How many micro-batches every rank runs this step: the most any rank has. A rank with
        fewer runs zero-weight ones, so collectives stay matched (no hang on uneven ranks)."""
        return distributed.all_max(local)

    def accumulate(self, index: int, count: int):
        """Context for micro-batch `index` of `count`: gradients are synchronised on the last only."""
        return distributed.no_sync(self.net, index == count - 1)

    def step(self, params=None, optimizer=None) -> float:
        """Clip the global gradient norm of `params` (default: the policy's; max_grad_norm, 0:
        off), step `optimizer` (default: the policy's) and zero the gradients; returns the norm
        before clipping (the same on every rank).

        A NaN or infinite norm is an error for every method (NonFiniteGradient, raised on every
        rank alike, before the optimizer moves anything): a skipped update would hide a broken
        run behind a `grad_norm: nan` line. RL turns it into a rollback (rl.trainer.Collapse)."""
        params = self.params if params is None else list(params)
        optimizer = self.optimizer if optimizer is None else optimizer
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor over the shards
            norm = norm.full_tensor()
        norm = float(norm)
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            raise NonFiniteGradient(f"non-finite gradient norm ({norm}); the update was not applied. Lower lr "
                                    f"(now {optimizer.param_groups[0]['lr']:g}) or max_grad_norm, or use float32")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm

    def set_lr(self, lr: float, optimizer=None) -> None:
        for group in (self.optimizer if optimizer is None else optimizer).param_groups:
            group["lr"] = lr

    @contextmanager
    def generation(self, engine):
        """Inside: eval mode, and under FSDP2 every weight gathered once for `engine`. On the way
        out the engine's fast decode copy of the weights is freed: training changes the weights
        next (and FSDP2 reshards them), so the copy is stale, and kept it would add the model's
        size to the update's peak memory."""
        self.model.eval()
        try:
            with distributed.gathered(self.model):
                yield
        finally:
            engine.release()
            self.model.train()

    # ---- output -----------------------------------------------------------------------------
    def export(self, folder: str | Path) -> Path:
        """The model in HF layout (+ tokenizer) from gathered weights, written by rank 0 (a
        collective). With LoRA: the adapter merged in, and the adapter alone in PEFT's layout
        under adapter/ (peft loads it onto the transformers model of the same base)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        folder = Path(folder)
        # A collective: under FSDP2 every rank sends its shards; rank 0 gets whole tensors.
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if distributed.is_main():
            if self.cfg.lora is not None:
                from ponder.runtime.lora import save_adapter, save_merged

                save_merged(self.model, folder, state=full)
                save_adapter(self.model, folder / "adapter", state=full, base_model=self.cfg.model or None)
            else:
                save_checkpoint(self.model, folder, state=full)
            self.tokenizer.save_pretrained(folder)
            # how the base is meant to be sampled (its eos tokens, temperature) stays with the model
            generation = Path(self.cfg.model) / "generation_config.json" if self.cfg.model else None
            if generation is not None and generation.is_file():
                shutil.copyfile(generation, folder / generation.name)
        distributed.barrier()
        return folder

    def metrics(self, history: list[dict[str, Any]]):
        """metrics.jsonl + TensorBoard on rank 0; the other ranks log nothing."""
        return MetricsLog(self.out, history) if distributed.is_main() else _NoMetrics(history)

    def progress(self, total: int, initial: int, desc: str, enabled: bool):
        """A progress bar on rank 0 when stderr is a terminal (pipes and log files get none);
        log lines and warnings print above it."""
        from ponder.progress import ProgressBar

        return ProgressBar(total=total, initial=initial, desc=desc, enabled=enabled and distributed.is_main())

    @contextmanager
    def interruptible(self):
        """Ctrl-C says where a re-run of the same command resumes from."""
        try:
            yield
        except KeyboardInterrupt:
            found = checkpoint.latest(self.checkpoints)
            where = f"checkpoint {found}" if found else "the start (no checkpoint was written yet)"
            log.warning("interrupted; re-run the same command to resume from %s", where)
            raise


class _NoMetrics:
    """The other ranks' log: it writes nothing but keeps the history, as rank 0's does."""

    def __init__(self, history: list[dict[str, Any]]):
        self.history = history

    def log(self, record):
        self.history.append(record)

    def rewrite(self, history):
        self.history = history

    def close(self): ...
