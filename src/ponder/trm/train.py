"""Training a Tiny Recursive Model on 6x6 Sudoku: `ponder train trm CONFIG.yaml key=value ...` or
`train_trm(TRMConfig(...))`.

Each training step draws a batch of puzzles (augmented on the fly) and runs deep supervision on
it: up to `sup_steps` supervision steps, each with its own loss (cross-entropy over the 36 cells
plus the halting head's binary cross-entropy against "the answer is exactly right") and its own
optimizer step, carrying (y, z) over detached. A puzzle whose halting logit turns positive leaves
the batch (ACT, as TRM trains), so easy puzzles stop costing compute. An EMA of the weights is
what is evaluated and exported.

Checkpoints, exact resume and metrics follow the other trainers through ponder.runtime: the
train state (weights, AdamW, RNGs) in DCP checkpoints written atomically, the data position,
EMA and metrics history in the checkpoint's record; augmentation is seeded by (seed, step), so a
resumed run draws what the uninterrupted run drew. A re-run with other settings is refused unless
allow_config_change.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ponder import config as config_io
from ponder.runtime import checkpoint
from ponder.runtime.metrics import MetricsLog, plot
from ponder.runtime.training import ProblemStream, adamw, changed_settings, describe_changes, lr_at
from ponder.trm import sudoku
from ponder.trm.model import TRM, ModelShape, count_parameters

log = logging.getLogger("ponder.trm")


@dataclass
class TRMConfig:
    """Options of a TRM run on 6x6 Sudoku; a YAML file maps onto it one to one."""

    output_dir: str = "out/trm"  # checkpoints, metrics.jsonl, TensorBoard events, plots, model.pt
    seed: int = 0  # seeds the weights, the batch order and the augmentation
    device: str = "cpu"  # torch device; these models are small enough for a CPU
    threads: int = 0  # torch.set_num_threads for the run; 0: torch's default

    # --- data (ponder.trm.sudoku) ---
    data_seed: int = 0  # seeds the puzzle generator (held-out set and training set)
    train_puzzles: int = 4000  # training puzzles (each seen under a fresh random symmetry when augment)
    heldout_puzzles: int = 500  # held-out puzzles: none shares its solution grid with a training puzzle or its augmentations
    givens: list[int] = field(default_factory=lambda: [12, 18])  # [low, high]: digits shown per puzzle, drawn uniformly (fewer: harder)
    augment: bool = True  # relabel digits and permute bands/stacks/rows/columns (flips, 180-degree rotation) on the fly; never transpose

    # --- model (ponder.trm.model) ---
    hidden: int = 64  # width of the latents and of the net
    layers: int = 2  # blocks in the net (TRM: 2)
    mixer: Literal["mlp", "attention"] = "mlp"  # how cells talk: an MLP across the 36 cells (TRM's best on Sudoku) or self-attention
    heads: int = 4  # attention heads (mixer: attention)
    expansion: float = 4.0  # SwiGLU inner width as a multiple of its input
    halt_bias: float = -5.0  # initial bias of the halting head (weights start at zero); near 0 halts too early and never recovers

    # --- recursion ---
    T: int = 3  # outer steps per supervision step; all but the last without gradients (TRM: 3)
    n: int = 6  # z updates per outer step (TRM: 6); 0 with T=1 and sup_steps=1: a single pass
    sup_steps: int = 16  # deep-supervision steps per batch in training (N_sup; TRM: 16), and at evaluation
    grad: Literal["full", "one_step"] = "full"  # back-propagate through the whole last outer step (TRM) or only its last z and y updates (HRM's one-step gradient)
    halt_weight: float = 0.5  # weight of the halting head's loss
    halt_in_training: bool = True  # drop a puzzle from the batch once its halting logit is > 0

    # --- optimisation ---
    steps: int = 500  # training batches (each up to sup_steps optimizer steps)
    batch_size: int = 64  # puzzles per batch
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.1  # AdamW weight decay
    adam_beta1: float = 0.9  # AdamW beta1
    adam_beta2: float = 0.95  # AdamW beta2 (TRM's)
    max_grad_norm: float = 1.0  # clip the gradient norm of each optimizer step; 0: off
    warmup_steps: int = 20  # linear warm-up batches from 0 to lr
    schedule: Literal["constant", "cosine"] = "cosine"  # after warm-up: constant, or cosine decay to min_lr_ratio x lr
    min_lr_ratio: float = 0.1  # cosine floor as a share of lr
    ema_decay: float = 0.999  # EMA of the weights per optimizer step (TRM: 0.999); the EMA is evaluated and exported; 0: off

    # --- evaluation, checkpoints ---
    eval_every: int = 0  # held-out accuracy (first eval_puzzles) every N batches and at the end; 0: only at the end
    eval_puzzles: int = 200  # held-out puzzles of the periodic evaluation (the final one uses all)
    save_every: int = 100  # train-state checkpoint every N batches (and at the end); 0: only at the end
    save_total_limit: int = 1  # train-state checkpoints kept, newest first; 0: all
    allow_config_change: bool = False  # resume an output_dir saved with other settings (recorded in config-changes.jsonl)
    tensorboard: bool = True  # also write TensorBoard events

    def __post_init__(self) -> None:
        if len(self.givens) != 2 or not 8 <= self.givens[0] <= self.givens[1] <= sudoku.CELLS:
            raise ValueError(f"givens must be [low, high] within 8..36, got {self.givens}")
        for name in ("T", "sup_steps", "steps", "batch_size", "train_puzzles", "heldout_puzzles", "hidden", "layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("n", "eval_every", "save_every", "save_total_limit", "warmup_steps", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 <= self.ema_decay < 1:
            raise ValueError("lr must be > 0 and ema_decay in [0, 1)")

    @property
    def shape(self) -> ModelShape:
        return ModelShape(hidden=self.hidden, layers=self.layers, mixer=self.mixer, heads=self.heads,
                          expansion=self.expansion, halt_bias=self.halt_bias)


# Settings that may differ on a resume without changing what is trained.
RESUMABLE = ("output_dir", "device", "threads", "allow_config_change", "tensorboard")


def make_data(cfg: TRMConfig) -> dict[str, np.ndarray]:
    """The held-out puzzles first, then training puzzles whose solution grids avoid them."""
    low, high = cfg.givens
    held_p, held_s = sudoku.generate(cfg.heldout_puzzles, (low, high), seed=[cfg.data_seed, 1])
    exclude = {g.tobytes() for g in held_s}
    train_p, train_s = sudoku.generate(cfg.train_puzzles, (low, high), seed=[cfg.data_seed, 0], exclude=exclude)
    return {"train_puzzles": train_p, "train_solutions": train_s, "heldout_puzzles": held_p, "heldout_solutions": held_s}


def draw_batch(cfg: TRMConfig, data, idx: list[int], step: int, heldout: set[bytes]):
    """Batch `step`'s puzzles and solutions: the training rows `idx`, each under a random symmetry
    seeded by (seed, step); a symmetry that lands on a held-out solution grid is drawn again."""
    p, s = data["train_puzzles"][idx], data["train_solutions"][idx]
    if not cfg.augment:
        return p, s
    rng = np.random.default_rng([cfg.seed, step])
    p, s = sudoku.augment(p, s, rng)
    while clash := [k for k in range(len(s)) if s[k].tobytes() in heldout]:
        p[clash], s[clash] = sudoku.augment(data["train_puzzles"][np.array(idx)[clash]],
                                            data["train_solutions"][np.array(idx)[clash]], rng)
    return p, s


class EMA:
    """Exponential moving average of a model's weights (buffers copied as they are)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.is_floating_point() and self.decay > 0:
                self.state[k].lerp_(v, 1 - self.decay)
            else:
                self.state[k].copy_(v)

    def model(self, model: TRM) -> TRM:
        copy = TRM(model.shape).to(next(model.parameters()).device)
        copy.load_state_dict(self.state)
        return copy.eval()


def train_batch(model: TRM, optimizer, cfg: TRMConfig, ema: EMA, puzzle: torch.Tensor, solution: torch.Tensor):
    """Deep supervision on one batch: up to sup_steps supervision steps, an optimizer step after
    each. Returns the batch's metrics."""
    target = solution.long() - 1
    y, z = model.start(len(puzzle))
    active = torch.arange(len(puzzle), device=puzzle.device)
    answer = torch.zeros_like(target)
    used = torch.zeros(len(puzzle), device=puzzle.device)
    losses = []
    for k in range(cfg.sup_steps):
        x = model.embed_puzzle(puzzle[active])
        y_a, z_a, logits, q = model.supervision_step(x, y[active], z[active], cfg.T, cfg.n, cfg.grad)
        pred = logits.argmax(-1)
        exact = (pred == target[active]).all(1)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target[active].reshape(-1))
        if cfg.halt_weight:
            loss = loss + cfg.halt_weight * F.binary_cross_entropy_with_logits(q, exact.float())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        optimizer.step()
        ema.update(model)
        losses.append(loss.item())
        y[active], z[active], answer[active] = y_a, z_a, pred
        used[active] = k + 1
        if cfg.halt_in_training:
            active = active[q.detach() <= 0]
            if len(active) == 0:
                break
    right = answer == target
    return {"loss": sum(losses) / len(losses), "train/cell_acc": right.float().mean().item(),
            "train/exact": right.all(1).float().mean().item(), "train/sup_steps": used.mean().item()}


@torch.no_grad()
def evaluate(model: TRM, puzzles: np.ndarray, solutions: np.ndarray, T: int, n: int, steps: int,
             halt: bool = False, batch: int = 500) -> dict[str, Any]:
    """Exact-puzzle and per-cell accuracy on `puzzles` after `steps` supervision steps (with
    `halt`: fewer where the halting head stops), and the steps used per puzzle."""
    device = next(model.parameters()).device
    answers, used = [], []
    for i in range(0, len(puzzles), batch):
        a, u = model.solve(torch.as_tensor(puzzles[i:i + batch], device=device), T, n, steps, halt=halt)
        answers.append(a.cpu().numpy())
        used.append(u.cpu().numpy())
    answers, used = np.concatenate(answers), np.concatenate(used)
    right = answers == solutions
    exact = right.all(1)
    return {"exact": float(exact.mean()), "cell_acc": float(right.mean()), "steps_used": used.tolist(),
            "solved": exact.tolist()}


def _record(cfg: TRMConfig, step: int, stream: ProblemStream, ema: EMA, history, seconds: float) -> dict[str, Any]:
    return {"step": step, "stream": stream.state(), "config": config_io.to_dict(cfg), "ema": ema.state,
            "history": history, "train_seconds": seconds}


def train_trm(cfg: TRMConfig, progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the run in cfg.output_dir; returns its summary."""
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, progress)
    finally:
        torch.set_num_threads(threads)


def _saved_run(cfg: TRMConfig, out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint of output_dir and its record (None, None on a fresh start). Other
    settings than the saved run's are an error unless allow_config_change (then recorded)."""
    found = checkpoint.latest(out / "checkpoints")
    if found is None:
        return None, None
    saved = checkpoint.load_state(found)
    changed = {k: v for k, v in changed_settings(cfg, saved["config"]).items() if k not in RESUMABLE}
    if changed and not cfg.allow_config_change:
        raise config_io.ConfigError(
            f"{out} holds a run (at {found.name}) trained with other settings: {describe_changes(changed)}. "
            "Use another output_dir, or add allow_config_change=true to continue it with the new settings")
    if changed:
        with open(out / "config-changes.jsonl", "a") as f:
            f.write(json.dumps({"step": saved["step"],
                                "changed": {k: {"from": a, "to": b} for k, (a, b) in changed.items()}}) + "\n")
    return found, saved


def _train(cfg: TRMConfig, progress: bool) -> dict[str, Any]:
    device = torch.device(cfg.device)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    found, saved = _saved_run(cfg, out)
    data = make_data(cfg)
    heldout = {g.tobytes() for g in data["heldout_solutions"]}
    torch.manual_seed(cfg.seed)
    model = TRM(cfg.shape).to(device).train()
    optimizer = adamw(model.parameters(), cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2),
                      weight_decay=cfg.weight_decay)
    stream = ProblemStream(cfg.train_puzzles, cfg.seed)
    ema = EMA(model, cfg.ema_decay)
    history: list[dict[str, Any]] = []
    start, seconds = 0, 0.0
    root = out / "checkpoints"
    if found is None:
        config_io.save_config(cfg, out / "config.yaml")
    else:
        checkpoint.load_train_state(found, model, optimizer)
        s = saved["stream"]
        stream = ProblemStream(s["size"], s["seed"], s["epoch"], s["index"])
        ema.state = saved["ema"]
        history, start, seconds = saved["history"], saved["step"], saved["train_seconds"]
        log.info("resuming %s from %s (step %d)", out, found, start)
    metrics = MetricsLog(out, history, tensorboard=cfg.tensorboard)
    params = count_parameters(model)
    log.info("TRM: %d parameters, T=%d n=%d sup_steps=%d grad=%s", params, cfg.T, cfg.n, cfg.sup_steps, cfg.grad)

    from ponder.progress import ProgressBar

    bar = ProgressBar(total=cfg.steps, initial=start, desc="train trm", enabled=progress)
    try:
        for step in range(start + 1, cfg.steps + 1):
            t0 = time.perf_counter()
            p, s = draw_batch(cfg, data, stream.take(cfg.batch_size), step, heldout)
            lr = lr_at(cfg, step, cfg.steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = train_batch(model, optimizer, cfg, ema, torch.as_tensor(p, device=device),
                                torch.as_tensor(s, device=device))
            record = {"step": step, "lr": lr, **batch}
            seconds += time.perf_counter() - t0
            record["train_seconds"] = seconds
            last = step == cfg.steps
            if last or (cfg.eval_every and step % cfg.eval_every == 0):
                k = len(data["heldout_puzzles"]) if last else cfg.eval_puzzles
                result = evaluate(ema.model(model), data["heldout_puzzles"][:k], data["heldout_solutions"][:k],
                                  cfg.T, cfg.n, cfg.sup_steps)
                record.update({"heldout/exact": result["exact"], "heldout/cell_acc": result["cell_acc"]})
            metrics.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", exact=f"{record['train/exact']:.2f}")
            if last or (cfg.save_every and step % cfg.save_every == 0):
                checkpoint.save(root, step, model, optimizer, _record(cfg, step, stream, ema, history, seconds),
                                keep=cfg.save_total_limit)
    finally:
        bar.close()
        metrics.close()
    final = history[-1] if history else {}
    tmp = out / "model.pt.tmp"  # written whole, then renamed: a kill leaves the old one or none
    torch.save({"config": config_io.to_dict(cfg), "shape": asdict(cfg.shape), "ema": ema.state,
                "weights": model.state_dict()}, tmp)
    tmp.replace(out / "model.pt")
    plot(history, out, {"loss": ["loss"], "accuracy": ["train/exact", "train/cell_acc", "heldout/*"],
                        "sup_steps": ["train/sup_steps"]})
    return {"output_dir": str(out), "parameters": params, "steps": cfg.steps, "train_seconds": round(seconds, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "heldout_exact": final.get("heldout/exact"), "heldout_cell_acc": final.get("heldout/cell_acc"),
            "final": final}


def load_trained(path: str | Path, device: str = "cpu", ema: bool = True) -> tuple[TRM, TRMConfig]:
    """The model (EMA weights unless `ema` is False) and config of a finished run (its folder or
    its model.pt)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such TRM model (a finished `ponder train trm` run writes OUTPUT_DIR/model.pt)")
    saved = torch.load(path, map_location=device, weights_only=False)
    cfg = config_io.from_dict(TRMConfig, saved["config"], str(path))
    model = TRM(ModelShape(**saved["shape"])).to(device)
    model.load_state_dict(saved["ema" if ema else "weights"])
    return model.eval(), cfg
