"""Attribution patching: a first-order estimate of every activation patch from one forward and one
backward pass (Nanda 2023; Syed et al. 2023).

Patching cell c replaces activation ``a`` by ``a'`` on the cells' coordinates; to first order the metric
moves by ``grad_a(metric) . (a' - a)`` summed over those coordinates. Denoising takes the gradient on
the corrupted run and ``a' - a = clean - corrupted``; noising the reverse. Scores are normalised like
activation patching (0 = corrupted, 1 = clean), so the two grids can be compared cell by cell
(``PatchingResult.correlation``). The estimate is exact for linear paths and degrades where attention
patterns or norms saturate (often at resid_pre of early layers).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import torch

from ..models.lm import LanguageModel
from .activation import make_grid
from ._pairs import measure, prepare
from .metrics import Metric
from .result import PatchingResult


def attribution_patching(lm: LanguageModel, clean: Any, corrupted: Any, point: str = "resid_pre", by: str | None = None,
                         *, metric: Metric | None = None, answer: Any = None, wrong: Any = None,
                         layers: Iterable[int] | None = None, direction: str = "denoise") -> PatchingResult:
    """Estimate ``activation_patching(...)`` with the same arguments from gradients (see module docs)."""
    if direction not in ("denoise", "noise"):
        raise ValueError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    t0 = time.perf_counter()
    pair = prepare(lm, clean, corrupted, metric, answer, wrong)
    grid = make_grid(lm, point, by, pair.seq, pair.labels, layers)
    hooks = [grid.hook(l) for l in grid.layers]
    # one forward + backward on the base prompt, one forward on the source: they also give the baselines
    clean_run, corrupt_run = measure(lm, pair, hooks, grad_on="corrupted" if direction == "denoise" else "clean")
    base, src, base_metric = (corrupt_run, clean_run, pair.corrupted_metric) if direction == "denoise" \
        else (clean_run, corrupt_run, pair.clean_metric)
    rows = []
    for hook in hooks:
        g, delta = base.grads[hook].float(), (src.cache[hook] - base.cache[hook]).float()
        est = (g * delta).sum(-1)  # [batch, seq] or, on attn.z, [batch, seq, n_heads]
        est = est * pair.clean_mask.reshape(est.shape[:2] + (1,) * (est.dim() - 2))  # padding patches nothing
        est = est.sum(0)  # the metric is already a mean over prompt pairs
        if grid.by == "layer":
            est = est.sum(0)
        elif grid.by == "head":
            est = est.sum(0)  # [n_heads]
        elif grid.by == "head_position":
            est = est.T  # [n_heads, seq]
        rows.append(est)
    raw = (base_metric + torch.stack(rows)).cpu().reshape(grid.shape)
    return PatchingResult(pair.normalise(raw), raw, grid.axes, grid.labels, grid.point, "attribution", direction,
                          pair.clean_metric, pair.corrupted_metric, lm.name, time.perf_counter() - t0)
