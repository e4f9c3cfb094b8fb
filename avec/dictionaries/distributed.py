"""torch.distributed plumbing for the SAE trainer (``train`` uses it; nothing here is needed directly).

Data parallelism by explicit collectives rather than ``DistributedDataParallel``: the training loss is
``SAE.losses`` (not ``forward``, which DDP's reducer hooks), several SAEs train in one step, and the
steps around the optimiser (gradient clipping on the global gradient, decoder projection, dead-latent
counters, BatchTopK's threshold) need the reduced values at known points. One flat all-reduce per SAE
per step carries its gradients (weighted by each rank's token count) and the token count itself.
"""

from __future__ import annotations

import inspect
import itertools
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import torch


@dataclass(frozen=True)
class Dist:
    """The process group as the trainer sees it: ``world == 1`` means no collectives at all."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")  # where collective buffers live (cuda for nccl)

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def setup() -> Dist:
    """The current process group, initialising it from torchrun's environment (gloo on CPU, nccl when
    CUDA is available) if that environment is there and no group exists yet."""
    import torch.distributed as dist

    if not dist.is_available():
        return Dist()
    if not dist.is_initialized():
        if not under_torchrun() or int(os.environ["WORLD_SIZE"]) < 2:
            return Dist()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    world = dist.get_world_size()
    if world < 2:
        return Dist()
    device = (torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl"
              else torch.device("cpu"))
    return Dist(dist.get_rank(), world, device)


# ----------------------------------------------------------------------------- data
def _takes_rank(fn: Callable) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return ("rank" in params and "world_size" in params) or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def shard(batches: Any, position: int, d: Dist) -> Iterator:
    """This rank's batches from its ``position``-th on (``position`` counts this rank's batches, i.e.
    steps). A callable ``(start, rank=, world_size=)`` yields the rank's own shard; any other source
    (``start -> iterator`` or an iterable) is read round-robin: global step s takes stream batches
    s * world .. s * world + world - 1, rank r the (s * world + r)-th."""
    if callable(batches) and not isinstance(batches, (torch.Tensor, Mapping)):
        if _takes_rank(batches):
            return iter(batches(position, rank=d.rank, world_size=d.world))
        it = iter(batches(position * d.world))
    else:
        it = iter(batches)
        for _ in range(position * d.world):
            next(it)
    return itertools.islice(it, d.rank, None, d.world)


# ----------------------------------------------------------------------------- collectives
def all_true(flag: bool, d: Dist) -> bool:
    """Whether ``flag`` holds on every rank (e.g. every rank still has a batch)."""
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def broadcast_flag(flag: bool, d: Dist) -> bool:
    """Rank 0's ``flag`` on every rank."""
    import torch.distributed as dist

    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=d.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_module(module: torch.nn.Module, d: Dist) -> None:
    """Rank 0's parameters and buffers on every rank (in place)."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in itertools.chain(module.parameters(), module.buffers()):
            buf = t.detach().to(d.device).contiguous()
            dist.broadcast(buf, src=0)
            t.copy_(buf.to(t.device))


def gather_rows(x: torch.Tensor, d: Dist) -> torch.Tensor:
    """The concatenation, in rank order, of every rank's ``x`` [n_r, ...] (n_r may differ)."""
    import torch.distributed as dist

    local = x.detach().to(d.device).contiguous()
    n = torch.tensor([local.shape[0]], dtype=torch.int64, device=d.device)
    sizes = [torch.zeros_like(n) for _ in range(d.world)]
    dist.all_gather(sizes, n)
    sizes = [int(s.item()) for s in sizes]
    pad = local.new_zeros((max(sizes) - local.shape[0], *local.shape[1:]))
    parts = [local.new_empty((max(sizes), *local.shape[1:])) for _ in range(d.world)]
    dist.all_gather(parts, torch.cat([local, pad]))
    return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(x.device)


def average_grads(params: list[torch.nn.Parameter], n_local: int, d: Dist) -> int:
    """Replace each gradient (of a per-rank mean loss) by the token-weighted mean over ranks, i.e. the
    gradient of the mean over the global batch when the loss is a mean over tokens. Returns the
    global token count. Missing gradients count as zeros."""
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dtype = torch.float32
    for g in grads:
        dtype = torch.promote_types(dtype, g.dtype)
    flat = torch.cat([g.detach().reshape(-1).to(d.device, dtype) for g in grads]
                     + [torch.ones(1, dtype=dtype, device=d.device)]) * n_local
    dist.all_reduce(flat)
    total = flat[-1].item()
    flat = flat[:-1] / total
    i = 0
    for p, g in zip(params, grads):
        k = g.numel()
        p.grad = flat[i:i + k].view_as(g).to(p.device, p.dtype).clone()
        i += k
    return int(round(total))


def any_rank(mask: torch.Tensor, d: Dist) -> torch.Tensor:
    """Elementwise OR of a bool tensor over ranks."""
    import torch.distributed as dist

    t = mask.to(d.device, torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.to(mask.device).bool()


def min_over_ranks_(t: torch.Tensor, d: Dist) -> None:
    """In place: the smallest value over ranks."""
    import torch.distributed as dist

    buf = t.detach().reshape(-1).to(d.device).clone()
    dist.all_reduce(buf, op=dist.ReduceOp.MIN)
    with torch.no_grad():
        t.copy_(buf.reshape(t.shape).to(t.device))


def weighted_mean(values: dict[str, float], weight: float, d: Dist) -> dict[str, float]:
    """``sum_r w_r v_r / sum_r w_r`` for each value (metrics over the global batch from per-rank ones)."""
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] * weight for k in keys] + [weight], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {k: float(t[i] / t[-1]) for i, k in enumerate(keys)}


def barrier(d: Dist) -> None:
    import torch.distributed as dist

    if d.on:
        dist.barrier()
