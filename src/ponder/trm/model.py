"""The Tiny Recursive Model (TRM, Jolicoeur-Martineau 2025, arXiv 2510.04871) over the 36 cells
of a 6x6 Sudoku.

One small network `net` refines two latents of the same shape as the embedded puzzle x: y (the
current answer) and z (a scratch state). One *outer step* is

    n times:  z = net(x + y + z)        (think: update the scratch state from puzzle and answer)
    once:     y = net(y + z)            (act: update the answer from the scratch state)

and one *supervision step* runs T outer steps, of which only the last keeps gradients (the first
T - 1 run under no_grad: they only move (y, z) to a better start). Deep supervision repeats the
supervision step up to N_sup times on the same puzzle, each time with its own loss and optimizer
step, carrying (y, z) over detached. A halting head reads y and says whether the answer is done.

`grad="one_step"` is HRM's one-step gradient (Wang et al. 2025) instead: within the last outer
step only the last z update and the y update keep gradients. TRM's paper finds full
back-propagation through the last outer step much better (Sudoku-Extreme 87.4% vs 56.5%).

With n = 0 there is no z update, so the y update reads the puzzle: y = net(x + y + z). T = 1,
n = 0 and one supervision step is a plain single pass of `net`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from ponder.trm.sudoku import CELLS, SIZE

VOCAB = SIZE + 1  # 0 = blank, 1..6


@dataclass
class ModelShape:
    """What `TRM` is built from (TRMConfig's model options)."""

    hidden: int = 128
    layers: int = 2
    mixer: Literal["mlp", "attention"] = "mlp"
    heads: int = 4
    expansion: float = 4.0
    halt_bias: float = -5.0


def rms_norm(h: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    # Weightless RMSNorm after each residual add (post-norm, as TRM and HRM do): the latents stay
    # at unit scale however many times the net is applied to its own output.
    return h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + eps).to(h.dtype)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.gate_up = nn.Linear(dim, 2 * inner, bias=False)
        self.down = nn.Linear(inner, dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(h).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    """Cell mixing (an MLP across the 36 cells, or self-attention), then a channel SwiGLU."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        d = shape.hidden
        self.mixer = shape.mixer
        if shape.mixer == "mlp":
            # MLP-Mixer's token mixing: the 36 cells are a fixed set, so a dense map across them
            # suits Sudoku (TRM's best Sudoku result uses it instead of attention).
            self.cells = SwiGLU(CELLS, int(CELLS * shape.expansion))
        else:
            if d % shape.heads:
                raise ValueError(f"hidden ({d}) must be a multiple of heads ({shape.heads})")
            self.heads = shape.heads
            self.qkv = nn.Linear(d, 3 * d, bias=False)
            self.proj = nn.Linear(d, d, bias=False)
        self.channels = SwiGLU(d, int(d * shape.expansion))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mixer == "mlp":
            h = rms_norm(h + self.cells(h.transpose(1, 2)).transpose(1, 2))
        else:
            b, t, d = h.shape
            q, k, v = self.qkv(h).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v)  # every cell sees every cell: no mask
            h = rms_norm(h + self.proj(a.transpose(1, 2).reshape(b, t, d)))
        return rms_norm(h + self.channels(h))


class Net(nn.Module):
    """The one network TRM applies again and again."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        self.blocks = nn.ModuleList(Block(shape) for _ in range(shape.layers))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            h = block(h)
        return h


class TRM(nn.Module):
    """Embedding of the puzzle, the shared `net`, the starting latents, and the two heads (digits
    per cell from y; halting from the mean of y). `supervision_step` is one step of training;
    `solve` runs several at inference, optionally stopping each puzzle where the head says so."""

    def __init__(self, shape: ModelShape):
        super().__init__()
        d = shape.hidden
        self.shape = shape
        self.embed = nn.Embedding(VOCAB, d)
        self.pos = nn.Parameter(torch.zeros(CELLS, d))  # attention is blind to position without it
        self.net = Net(shape)
        self.head = nn.Linear(d, SIZE)  # logits of digits 1..6 per cell
        self.halt = nn.Linear(d, 1)
        # Starting latents: fixed random vectors, as TRM's reference code has them.
        self.register_buffer("y_init", torch.randn(d))  # unit RMS, like a post-norm output
        self.register_buffer("z_init", torch.randn(d))
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.pos, std=0.02)
        # The halting head starts at "keep going" (sigmoid(-5) = 0.007): a zero bias halts after
        # about two steps, before the answer is any good, and rarely recovers (REFERENCES.md).
        nn.init.zeros_(self.halt.weight)
        nn.init.constant_(self.halt.bias, shape.halt_bias)

    def embed_puzzle(self, puzzle: torch.Tensor) -> torch.Tensor:
        """x: [B, 36, d] from [B, 36] digits (0 = blank)."""
        return self.embed(puzzle.long()) + self.pos

    def start(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(y, z) before the first supervision step."""
        d = self.shape.hidden
        return (self.y_init.expand(batch, CELLS, d).clone(), self.z_init.expand(batch, CELLS, d).clone())

    def outer_step(self, x, y, z, n: int, grad: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
        """n z updates then one y update. grad="one_step": all but the last z update without
        gradients (HRM's approximation); "full": all with gradients (as the autograd mode allows)."""
        if n == 0:
            return z, self.net(x + y + z)
        for i in range(n):
            if grad == "one_step" and i < n - 1:
                with torch.no_grad():
                    z = self.net(x + y + z)
            else:
                z = self.net(x + y + z)
        return z, self.net(y + z)

    def supervision_step(self, x, y, z, T: int, n: int, grad: str = "full"):
        """One deep-supervision step from carried (y, z): T outer steps, gradients only through
        the last. Returns (y, z) detached for the next step, digit logits [B, 36, 6] and halting
        logits [B]."""
        with torch.no_grad():
            for _ in range(T - 1):
                z, y = self.outer_step(x, y, z, n)
        z, y = self.outer_step(x, y, z, n, grad)
        return y.detach(), z.detach(), self.head(y), self.halt(y.mean(1)).squeeze(-1)

    @torch.no_grad()
    def solve(self, puzzle: torch.Tensor, T: int, n: int, steps: int, halt: bool = False,
              threshold: float = 0.0, trace: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Answers [B, 36] (digits 1..6) after up to `steps` supervision steps, and the steps each
        puzzle used. `halt`: a puzzle stops at the first step whose halting logit exceeds
        `threshold` (logit 0 = probability 1/2); its answer is that step's. `trace`: a list that
        gets a copy of the answers after every step."""
        x = self.embed_puzzle(puzzle)
        y, z = self.start(len(puzzle))
        answer = torch.zeros_like(puzzle, dtype=torch.long)
        used = torch.zeros(len(puzzle), dtype=torch.long, device=puzzle.device)
        active = torch.ones(len(puzzle), dtype=torch.bool, device=puzzle.device)
        for step in range(1, steps + 1):
            idx = active.nonzero().squeeze(1)
            y_a, z_a, logits, q = self.supervision_step(x[idx], y[idx], z[idx], T, n)
            y[idx], z[idx] = y_a, z_a
            answer[idx] = logits.argmax(-1) + 1
            used[idx] = step
            if trace is not None:
                trace.append(answer.clone())
            if halt:
                active[idx[q > threshold]] = False
                if not active.any():
                    break
        return answer, used


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
