"""Steered generation helpers: unsteered vs steered completions side by side, and many steering
settings ("cells") completed in one batched generate call."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Sequence

import torch

from ..results import Result


@dataclass(frozen=True)
class Completions(Result):
    """prompts[i] completed without (``unsteered``) and with (``steered``) the vector."""

    prompts: tuple[str, ...]
    unsteered: tuple[str, ...]
    steered: tuple[str, ...]
    vector: str
    settings: str

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"prompt": self.prompts, "unsteered": self.unsteered, "steered": self.steered})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt
        import textwrap

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(10, 0.9 + 1.1 * len(self.prompts)))
        ax.axis("off")
        cells = [[textwrap.fill(c, 45) for c in row] for row in zip(self.prompts, self.unsteered, self.steered)]
        table = ax.table(cellText=cells, colLabels=["prompt", "unsteered", "steered"], loc="center", cellLoc="left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        table.scale(1, 3.2)
        ax.set_title(f"{self.vector} ({self.settings})", fontsize=8)
        return fig


def side_by_side(lm: Any, prompts: str | Sequence[str], steer: Any, max_new_tokens: int = 30, *,
                 seed: int | None = 0, do_sample: bool = False, temperature: float = 1.0,
                 top_p: float | None = None, chat: bool = False, samples: int = 1) -> Completions:
    """Complete each prompt ``samples`` times without and with ``steer`` (same seed for both)."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    prompts = [p for p in prompts for _ in range(samples)]
    kw = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature, top_p=top_p, chat=chat)
    base = lm.generate(prompts, seed=seed, **kw)
    steered = lm.generate(prompts, steer=steer, seed=seed, **kw)
    settings = f"{'sampled T=' + str(temperature) if do_sample else 'greedy'}, {max_new_tokens} tokens, seed {seed}"
    return Completions(tuple(prompts), tuple(base), tuple(steered), repr(steer), settings)


def generate_cells(lm: Any, prompts: str | Sequence[str], cells: Sequence[tuple[Hashable, Any, float]],
                   max_new_tokens: int = 30, **generate_kw: Any) -> dict[Hashable, list[str]]:
    """Complete every prompt under every steering setting ("cell") in ONE batched ``generate`` call.

    cells: ``(key, vector or None, coeff)`` each; ``None`` (or coefficient 0) is the unsteered baseline.
           A vector is any object with ``as_interventions(coeff=...)`` (a ``SteeringVector``, a sum of them).
    generate_kw: passed to ``lm.generate`` (``do_sample``, ``temperature``, ``top_p``, ``seed``, ``chat``)
    Returns ``{key: [completion of prompts[0], completion of prompts[1], ...]}`` in the order of ``cells``.

    The batch is ``len(cells) * len(prompts)`` rows: row block k holds the prompts of cell k. Each distinct
    vector (by identity) becomes one set of additions with one coefficient per row: the cell's own on its
    rows, 0 elsewhere (adding 0 * v leaves a row exactly as it was), so greedy completions equal those of
    one call per cell. One call instead of one per cell matters most on large vocabularies: a decoding step
    of Gemma 3 reads its 262k x 640 unembedding whatever the batch size. Sampled rows draw from one seeded
    generator for the whole batch, so a cell's samples depend on the batch it ran in (reproducible for the
    same call, not equal to the cell sampled alone).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts is empty; give at least one prompt")
    cells = list(cells)
    if not cells:
        raise ValueError("cells is empty; give at least one (key, vector or None, coeff)")
    for cell in cells:
        if not (isinstance(cell, tuple) and len(cell) == 3):
            raise TypeError(f"each cell is a (key, vector or None, coeff) tuple, got {cell!r}")
        _, v, c = cell
        if v is not None and not hasattr(v, "as_interventions"):
            raise TypeError(f"a cell's vector must be a steering vector (with as_interventions) or None, got {type(v).__name__}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not math.isfinite(c):
            raise ValueError(f"a cell's coefficient must be a finite number, got {c!r}")
    keys = [k for k, _, _ in cells]
    if len(set(keys)) != len(keys):
        raise ValueError(f"cell keys must be distinct, got {keys}")
    n = len(prompts)
    rows = [p for _ in cells for p in prompts]
    vectors: list[Any] = []
    for _, v, _ in cells:
        if v is not None and not any(v is u for u in vectors):
            vectors.append(v)
    interventions = []
    for v in vectors:
        per_row = torch.tensor([float(c) if u is v else 0.0 for _, u, c in cells for _ in prompts])
        interventions += v.as_interventions(coeff=per_row)
    out = lm.generate(rows, max_new_tokens, interventions=interventions, **generate_kw)
    return {key: out[i * n:(i + 1) * n] for i, key in enumerate(keys)}
