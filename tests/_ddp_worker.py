"""Run by tests/test_dictionaries_ddp.py under ``python -m torch.distributed.run --nproc_per_node 2``:
the trainer initialises the (gloo) process group from torchrun's environment itself.

Scenarios (each writes to ``<out>/<scenario>``; every rank also saves its final tensors as
``rank<r>.pt`` so that the test can check the ranks agree):
  pair      relu + jumprelu + topk (no dead latents), a plain ``start -> iterator`` source read round-robin
  aux       topk with AuxK active + batchtopk, a rank-aware source ``(start, rank=, world_size=)``
  resumed   as ``pair``, stopped after half the steps and resumed from its checkpoint
"""

import os
import sys
from pathlib import Path

import torch

from avec.dictionaries.sae import SAE
from avec.dictionaries.train import TrainConfig, train

D_IN, D_SAE, N_FEAT, PER_RANK, WORLD = 16, 32, 24, 32, 2
STEPS = 12
PAIR_CFG = TrainConfig(steps=STEPS, lr=1e-2, warmup_steps=3, decay="none", sparsity_warmup_steps=4,
                       dead_tokens=10**9, log_every=3, checkpoint_every=4, clip_grad_norm=0.5)
AUX_CFG = TrainConfig(steps=STEPS, lr=1e-2, warmup_steps=3, decay="cosine", decay_start=0.5,
                      dead_tokens=2 * WORLD * PER_RANK, log_every=3, clip_grad_norm=0.5)


def chunk(i: int) -> torch.Tensor:
    """The i-th batch of a stream [PER_RANK, D_IN]: sparse codes over a fixed random dictionary."""
    g = torch.Generator().manual_seed(12345)
    dictionary = torch.randn(N_FEAT, D_IN, generator=g)
    g = torch.Generator().manual_seed(1000 + i)
    codes = torch.rand(PER_RANK, N_FEAT, generator=g) * (torch.rand(PER_RANK, N_FEAT, generator=g) < 0.15)
    return 2 * codes @ dictionary + 0.3


def stream(start: int):
    """A plain source: the trainer reads it round-robin (rank r takes batches r, r + 2, ...)."""
    i = start
    while True:
        yield chunk(i)
        i += 1


def rank_stream(start: int, rank: int, world_size: int):
    """A rank-aware source: rank r owns batches 10_000 * (r + 1) + i (disjoint shards)."""
    i = start
    while True:
        yield chunk(10_000 * (rank + 1) + i)
        i += 1


def saes(names):
    torch.manual_seed(0)  # the same random init for the distributed and the reference runs
    made = {"relu": dict(arch="relu", sparsity_coeff=0.3), "topk": dict(arch="topk", k=3),
            "jumprelu": dict(arch="jumprelu", sparsity_coeff=0.3, bandwidth=0.05, init_threshold=0.1),
            "batchtopk": dict(arch="batchtopk", k=3)}
    return {n: SAE(d_in=D_IN, d_sae=D_SAE, **made[n]) for n in names}


def main(out: Path) -> None:
    import torch.distributed as dist

    runs = {"pair": (["relu", "jumprelu", "topk"], stream, PAIR_CFG),
            "aux": (["topk", "batchtopk"], rank_stream, AUX_CFG)}
    rank = int(os.environ["RANK"])
    for scenario, (names, source, cfg) in runs.items():
        models = saes(names)
        if rank:  # ranks start from different weights: the trainer must broadcast rank 0's
            for m in models.values():
                with torch.no_grad():
                    m.W_enc.add_(1.0)
        result = train(models, source, cfg, out=out / scenario, progress=False)
        torch.save({n: s.state_dict() for n, s in result.saes.items()}, out / scenario / f"rank{rank}.pt")
    half = TrainConfig(**{**PAIR_CFG.__dict__, "steps": STEPS // 2})
    train(saes(["relu", "jumprelu", "topk"]), stream, half, out=out / "resumed", progress=False)
    result = train(saes(["relu", "jumprelu", "topk"]), stream, PAIR_CFG, out=out / "resumed", progress=False)
    torch.save({n: s.state_dict() for n, s in result.saes.items()}, out / "resumed" / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
