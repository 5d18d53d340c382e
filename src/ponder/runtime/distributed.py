"""Data parallelism on PyTorch's own engine: torchrun's launch, DDP or FSDP2, and the few
collectives a training loop needs.

    torchrun --nproc_per_node N -m ponder train rl CONFIG.yaml     # N ranks, one process each

Every rank holds the policy (DDP: a full copy; FSDP2: a shard of every decoder layer, and one
group for the embeddings, final norm and lm_head, since a tied lm_head shares the embedding
tensor and torch rejects a parameter in two FSDP groups). Each rank generates, scores and
computes the loss of its own share of the batch; the engine averages gradients across ranks.
Without torchrun nothing here starts a process group and every call is the one-process identity.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger("ponder.runtime")

def launched() -> bool:
    """Started by torchrun (or anything that sets its environment) with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(parallel: str, device: torch.device) -> tuple[torch.device, str]:
    """Start the process group where torchrun launched several ranks; returns this rank's device
    and the engine in use ("none", "ddp" or "fsdp"). Backend: nccl on CUDA, gloo on CPU."""
    if parallel == "none" or not launched():
        if parallel in ("ddp", "fsdp"):
            log.info("parallel=%s without torchrun: one process", parallel)
        return device, "none"
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, "fsdp" if parallel == "fsdp" else "ddp"


def shutdown() -> None:
    """End the process group, if one was started (torchrun runs: at the end of the command)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _all_reduce(values, op) -> torch.Tensor:
    """Element-wise reduction over ranks of a list of numbers (float64, on the CPU; the identity
    in one process)."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        on_gpu = dist.get_backend() == "nccl"  # nccl reduces CUDA tensors only, gloo CPU ones
        t = t.cuda() if on_gpu else t
        dist.all_reduce(t, op=op)
        t = t.cpu()
    return t


def my_share(items) -> list:
    """This rank's share of a global list: items r, r + world, ... (nanochat's split)."""
    return list(items[rank()::world()])


def all_sum(values) -> torch.Tensor:
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_max(value: int) -> int:
    return int(_all_reduce([value], dist.ReduceOp.MAX).item())


def gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (picklable objects)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def wrap(model: torch.nn.Module, engine: str, device: torch.device) -> torch.nn.Module:
    """The module to run training forwards through: `model` itself (one process, or FSDP2,
    which shards it in place) or its DDP wrapper. Generation always uses `model`."""
    if engine == "none":
        return model
    if engine == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        # MoE experts that got no token in a micro-batch have no gradient; DDP must look for them.
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                       forward_sync_buffers=False,  # buffers are equal on every rank
                                       find_unused_parameters=getattr(model.config, "moe", None) is not None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world(),))
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest: embeddings, final norm, lm_head (tied or not) in one group
    # FSDP2 sets itself up in the first forward through the root; the engine's prefill calls
    # `hidden` (no root hooks) under `gathered`, so that first forward happens here.
    with torch.no_grad():
        model(torch.zeros(1, 1, dtype=torch.long, device=device))
    model.reshard()  # the root keeps its weights gathered after a forward; the optimizer must see the shards
    return model


def fsdp_modules(model: torch.nn.Module) -> list:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(model: torch.nn.Module):
    """Inside: every weight of an FSDP2 model is whole on each rank and stays so across forwards
    (the engine's decode steps gather once per rollout phase, not once per step). Others: no-op."""
    modules = fsdp_modules(model)
    for m in modules:
        m.set_reshard_after_forward(False)
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True)


def no_sync(net: torch.nn.Module, sync: bool):
    """Gradient accumulation: skip the gradient all-reduce (DDP) / reduce-scatter (FSDP2) unless
    `sync`, so that only the last micro-batch of a step communicates."""
    modules = fsdp_modules(net)
    if modules:
        for m in modules:
            m.set_requires_gradient_sync(sync)
        return nullcontext()
    if hasattr(net, "no_sync") and not sync:
        return net.no_sync()
    return nullcontext()
