"""Mixture-of-experts feed-forward blocks (Qwen3-MoE, DeepSeekMoE), router metrics and bias balancing.

A sparse layer's MLP is `SparseMoE`: a router (`gate`) picks k of E experts per token with
weights, the experts run batched by expert, and DeepSeek-V3 adds always-on shared experts.
Parameter names follow transformers 5 (`mlp.gate.weight`, `mlp.gate.e_score_correction_bias`,
`mlp.experts.gate_up_proj` [E, 2I, H] with gate rows first, `mlp.experts.down_proj` [E, H, I],
`mlp.shared_experts.{gate,up,down}_proj`), so a HF state dict maps 1:1.

Training hooks (see README): `router_stats(model)` reports each sparse layer's expert load since
the last reset and its coefficient of variation; `update_routing_bias(model, gamma)` is
DeepSeek-V3's auxiliary-loss-free balancing (arXiv:2412.19437, sec. 2.1.2). Routing here is
dropless (no capacity limit), so no token is ever dropped or overflows.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .layers import SwiGLU


class SoftmaxRouter(nn.Module):
    """Qwen3-MoE: softmax over all experts in fp32, top-k, optionally renormalised to sum to 1."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        moe = config.moe
        self.top_k, self.norm_topk_prob = moe.num_experts_per_tok, moe.norm_topk_prob
        self.weight = nn.Parameter(torch.empty(moe.num_experts, config.hidden_size))

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.weight, 0.0, std)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] -> expert indices [N, k] and their weights [N, k] (x's dtype)."""
        probs = F.softmax(F.linear(x, self.weight), dim=-1, dtype=torch.float32)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.norm_topk_prob:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return experts, weights.to(x.dtype)


class SigmoidGroupRouter(nn.Module):
    """DeepSeek-V3: sigmoid scores in fp32; a per-expert bias steers which experts are chosen
    (never their weights); a token may only use experts of its `topk_group` best groups, a group
    scored by the sum of its two best biased scores; the chosen unbiased scores are normalised
    and scaled by `routed_scaling_factor`."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        moe = config.moe
        self.top_k, self.norm_topk_prob = moe.num_experts_per_tok, moe.norm_topk_prob
        self.n_group, self.topk_group, self.scale = moe.n_group, moe.topk_group, moe.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(moe.num_experts, config.hidden_size))
        # A buffer, not a parameter: it is moved by update_routing_bias, not by the optimizer.
        # Kept in fp32 whatever the model's dtype (as transformers keeps it): bias steps of
        # ~1e-3 would round away in bf16.
        self.register_buffer("e_score_correction_bias", torch.zeros(moe.num_experts))

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.weight, 0.0, std)
        self.e_score_correction_bias.zero_()

    def _apply(self, fn, recurse=True):
        bias = self.e_score_correction_bias
        super()._apply(fn, recurse)
        # model.to(dtype) casts every floating buffer; put the fp32 bias back, on the new device.
        self.e_score_correction_bias = bias.to(device=self.e_score_correction_bias.device)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [N, H] -> expert indices [N, k] and their weights [N, k] (fp32)."""
        N, E = x.shape[0], self.weight.shape[0]
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        choice = scores + self.e_score_correction_bias.float()
        group_scores = choice.view(N, self.n_group, -1).topk(2, dim=-1).values.sum(dim=-1)  # [N, groups]
        best_groups = group_scores.topk(self.topk_group, dim=-1).indices
        allowed = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best_groups, True)
        choice = choice.masked_fill(~allowed.repeat_interleave(E // self.n_group, dim=1), float("-inf"))
        experts = choice.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, experts)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return experts, weights * self.scale


class Experts(nn.Module):
    """E SwiGLU experts stored fused as transformers 5 stores them, run batched by expert."""

    def __init__(self, num_experts: int, hidden: int, inner: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * inner, hidden))  # gate rows, then up rows
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, inner))

    def reset_parameters(self, std: float) -> None:
        nn.init.normal_(self.gate_up_proj, 0.0, std)
        nn.init.normal_(self.down_proj, 0.0, std)

    def forward(self, x: torch.Tensor, experts: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """sum_j weights[n, j] * expert_{experts[n, j]}(x[n]) for x [N, H], experts/weights [N, k].

        The (token, slot) pairs are sorted by expert so that each expert's tokens are one
        contiguous slice: one matmul pair per expert that has tokens, then a weighted
        scatter-add back to the tokens. The loop runs over experts, never over tokens.
        """
        N, k = experts.shape
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        tokens = order // k  # the token of each sorted pair
        counts = torch.bincount(flat, minlength=self.gate_up_proj.shape[0]).tolist()
        outputs = []
        for e, chunk in enumerate(x.index_select(0, tokens).split(counts)):
            if chunk.shape[0]:
                gate, up = F.linear(chunk, self.gate_up_proj[e]).chunk(2, dim=-1)
                outputs.append(F.linear(F.silu(gate) * up, self.down_proj[e]))
        if not outputs:  # no tokens at all
            return torch.zeros_like(x)
        weighted = torch.cat(outputs) * weights.reshape(-1)[order, None]
        return torch.zeros_like(x).index_add_(0, tokens, weighted.to(x.dtype))


class SparseMoE(nn.Module):
    """A sparse layer's MLP: routed experts (+ shared experts for DeepSeek-V3). forward(x) -> x's shape."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        moe = config.moe
        self.gate = SigmoidGroupRouter(config) if config.model_type == "deepseek_v3" else SoftmaxRouter(config)
        self.experts = Experts(moe.num_experts, config.hidden_size, moe.moe_intermediate_size)
        # DeepSeek-V3 always has the module (transformers builds it, empty, for 0 shared experts),
        # so that checkpoints match tensor for tensor.
        self.shared_experts = (SwiGLU(config.hidden_size, moe.moe_intermediate_size * moe.n_shared_experts)
                               if config.model_type == "deepseek_v3" else None)
        # Qwen3.5-MoE: one shared expert whose output each token scales by a sigmoid gate
        if moe.shared_expert_intermediate_size:
            self.shared_expert = SwiGLU(config.hidden_size, moe.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(config.hidden_size, 1, bias=False)
        else:
            self.shared_expert = self.shared_expert_gate = None
        self.load: torch.Tensor | None = None  # tokens routed to each expert since the last reset
        self.counting = True  # whether forwards add to `load` (see set_load_counting)
        self.count_only: torch.Tensor | None = None  # [B * T] bool: the positions that count (load_counting)

    def forward(self, x: torch.Tensor, recompute_experts: bool = False) -> torch.Tensor:
        """`recompute_experts`: keep only the experts' input for the backward pass and recompute
        their matmuls there (activation checkpointing), with this forward's routing."""
        flat = x.reshape(-1, x.shape[-1])
        experts, weights = self.gate(flat)
        counts = torch.bincount(experts.reshape(-1), minlength=self.experts.gate_up_proj.shape[0])
        if self.counting:
            if self.count_only is not None:  # padding does not count
                counts = torch.bincount(experts[self.count_only.to(experts.device)].reshape(-1),
                                        minlength=self.experts.gate_up_proj.shape[0])
            # Out of place: the first count may be made under inference_mode (the engine), and an
            # inference tensor cannot be updated in place by a later training forward.
            self.load = counts if self.load is None else self.load.to(counts.device) + counts
        if recompute_experts:
            y = checkpoint(self.experts, flat, experts, weights, use_reentrant=False).view_as(x)
            if self.shared_experts is not None:
                y = y + checkpoint(self.shared_experts, x, use_reentrant=False)
            if self.shared_expert is not None:
                y = y + checkpoint(self._gated_shared, x, use_reentrant=False)
            return y
        y = self.experts(flat, experts, weights).view_as(x)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        if self.shared_expert is not None:
            y = y + self._gated_shared(x)
        return y

    def _gated_shared(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


def sparse_layers(model: nn.Module) -> dict[int, SparseMoE]:
    """Layer index -> its SparseMoE block, for every sparse layer of a Decoder."""
    return {i: layer.mlp for i, layer in enumerate(model.model.layers) if isinstance(layer.mlp, SparseMoE)}


def set_load_counting(model: nn.Module, on: bool) -> None:
    """Whether `model`'s forwards add to the expert-load counts (on, for every forward, until
    told otherwise). A trainer turns counting off and back on only around the policy's training
    forwards (`load_counting`), so that generation, held-out evaluation, reference forwards and
    FSDP's set-up forward leave the counts, and the routing bias they move, alone: N ranks then
    balance as one process does, and a resumed run as an uninterrupted one."""
    for block in sparse_layers(model).values():
        block.counting = on


@contextmanager
def load_counting(model: nn.Module, tokens: torch.Tensor | None = None):
    """Inside, `model`'s forwards count expert load; after, they do not (see set_load_counting).
    `tokens` [B, T] (bool) marks the input positions that count: padding, and the stand-in
    micro-batches of a rank with fewer rows, must not, or N ranks would count other padding
    than one process."""
    for block in sparse_layers(model).values():
        block.count_only = None if tokens is None else tokens.reshape(-1)
    set_load_counting(model, True)
    try:
        yield
    finally:
        set_load_counting(model, False)
        for block in sparse_layers(model).values():
            block.count_only = None


def router_stats(model: nn.Module, reset: bool = True) -> dict:
    """Expert load per sparse layer since the last reset (every counted forward: all of them
    unless a trainer limits counting to its training forwards, see set_load_counting).

    Returns {"load": {layer: [tokens per expert]}, "cv": {layer: std/mean of that load},
    "cv_mean", "cv_max", "max_share": the largest fraction of a layer's assignments one expert
    got}; a perfectly balanced layer has cv 0 and max_share 1/E. Empty dict for a dense model.
    `reset` zeroes the counts, so calling it once per optimizer step gives per-step figures.
    """
    blocks = sparse_layers(model)
    if not blocks:
        return {}
    load, cv, share = {}, {}, []
    for i, block in blocks.items():
        counts = (block.load if block.load is not None
                  else torch.zeros(block.experts.gate_up_proj.shape[0], dtype=torch.long)).double()
        load[i] = counts.long().tolist()
        mean = counts.mean().item()
        cv[i] = counts.std(unbiased=False).item() / mean if mean > 0 else 0.0
        share.append(counts.max().item() / counts.sum().item() if mean > 0 else 0.0)
        if reset:
            block.load = None
    return {"load": load, "cv": cv, "cv_mean": sum(cv.values()) / len(cv), "cv_max": max(cv.values()),
            "max_share": max(share)}


@torch.no_grad()
def update_routing_bias(model: nn.Module, gamma: float = 1e-3) -> int:
    """DeepSeek-V3's auxiliary-loss-free balancing: bias_e += gamma * sign(mean load - load_e).

    Call after each optimizer step, before `router_stats` resets the loads it reads (the loads
    counted since the last reset). Overloaded experts become less likely to be chosen and
    underloaded ones more; the routing *weights* never see the bias, so the loss is unchanged.
    Returns the number of layers updated. Only routers with `e_score_correction_bias`
    (DeepSeek-V3) can be balanced this way; Qwen3-MoE checkpoints have no such bias.
    """
    if not math.isfinite(gamma) or gamma < 0:
        raise ValueError(f"gamma must be a finite number >= 0, got {gamma!r}")
    blocks = sparse_layers(model)
    if not any(isinstance(b.gate, SigmoidGroupRouter) for b in blocks.values()):
        raise ValueError("update_routing_bias needs routers with e_score_correction_bias (DeepSeek-V3 routing); "
                         "this model has none")
    updated = 0
    for block in blocks.values():
        if block.load is None:
            continue
        load = block.load.float().to(block.gate.e_score_correction_bias.device)
        block.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
        updated += 1
    return updated
