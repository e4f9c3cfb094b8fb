"""Channel retargeting: find channels whose activation tracks the cheese location, then write a
positive value at one spatial position of them and see whether the policy heads there.

Grid cell (row, col) -> activation position at a 16 x 16 hook point: the cell's centre pixel
``(row + 0.5) * 2.56`` divided by the 4x downsampling, i.e. ``floor((row + 0.5) * 0.64)``.
Path probability = geometric mean of the on-path action probabilities along the shortest path
from the start to a target, each with the mouse on that path cell (one batched forward).
All edits go through the core (``Apply``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from avec.core import Apply

from .evaluate import Batch, direction_index
from .experiments import DEFAULT_HOOK, _acts, _at_start
from .env import five_way
from .fields import as_model, new_figure, png_base64
from .world import WORLD, Maze


def act_position(pos, side: int = 16) -> tuple[int, int]:
    """Spatial index at a ``side x side`` activation of grid cell ``pos`` (row 0 = top)."""
    scale = side / WORLD
    return int((pos[0] + 0.5) * scale), int((pos[1] + 0.5) * scale)


def cheese_channels(policy: Any, mazes: Sequence[Maze], at: str = DEFAULT_HOOK, k: int = 8):
    """Channels whose cheese-vector value at the cheese's own position stands out, best first.

    Score = mean over mazes of v[ch, cheese position] / mean over mazes of std(v[ch]) with
    v = act(with cheese) - act(without). Returns (channels int [k], scores float [C])."""
    model = as_model(policy)
    mazes = _at_start(mazes)
    v = _acts(model, mazes, at) - _acts(model, [m.without_cheese() for m in mazes], at)  # [N, C, H, W]
    side = v.shape[-1]
    pos = [act_position(m.cheese, side) for m in mazes]
    at_cheese = torch.stack([v[i, :, y, x] for i, (y, x) in enumerate(pos)])  # [N, C]
    spread = v.flatten(2).std(2).mean(0) + 1e-6  # [C]
    scores = at_cheese.mean(0) / spread
    return torch.argsort(scores, descending=True)[:k].numpy(), scores.numpy()


def retarget_intervention(at: str, channels, pos, value: float, side: int = 16):
    """Set ``channels`` at the activation position of grid cell ``pos`` to ``value`` (every row)."""
    chans = torch.as_tensor(np.asarray(channels), dtype=torch.long)
    y, x = act_position(pos, side)

    def write(v, ctx):
        v = v.clone()
        v[:, chans, y, x] = value
        return v

    return Apply(at, fn=write)


@torch.no_grad()
def path_probability(policy: Any, maze: Maze, target, steer=None) -> float:
    """Geometric mean of P(on-path move) along the shortest path from the start to ``target``."""
    model = as_model(policy)
    path = maze.shortest_path(maze.start, target)
    if len(path) < 2:
        raise ValueError(f"target {target} is the start; no path to follow")
    cells = path[:-1]
    obs = Batch([maze]).obs([0] * len(cells), cells)
    iv = [] if steer is None else (list(steer) if isinstance(steer, (list, tuple)) else [steer])
    p5 = five_way(torch.softmax(model.run(obs, interventions=iv).logits.double(), 1)).numpy()
    on_path = [p5[i, direction_index(a, b)] for i, (a, b) in enumerate(zip(path[:-1], path[1:]))]
    return float(np.exp(np.mean(np.log(np.maximum(on_path, 1e-12)))))


@dataclass(frozen=True)
class RetargetResult:
    """Per-maze path probabilities toward a target cell, float ``[N]`` each."""

    channels: np.ndarray
    value: float
    targets: list
    before: np.ndarray
    after: np.ndarray

    def summary(self) -> dict:
        return {"mazes": len(self.before), "channels": [int(c) for c in self.channels], "value": self.value,
                "path_prob_before": float(np.mean(self.before)), "path_prob_after": float(np.mean(self.after)),
                "frac_increased": float(np.mean(self.after > self.before))}

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"target_row": [t[0] for t in self.targets], "target_col": [t[1] for t in self.targets],
                             "path_prob_before": self.before, "path_prob_after": self.after})

    def plot(self, figsize=(4, 4)):
        fig = new_figure(figsize)
        ax = fig.subplots()
        ax.scatter(self.before, self.after, s=10)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.set_xlabel("path probability, original")
        ax.set_ylabel("retargeted")
        ax.set_title(f"retargeting {len(self.channels)} channels to {self.value:g}", fontsize=10)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        return f"{self.summary()}<br><img src='data:image/png;base64,{png_base64(self.plot())}'/>"


def retarget_experiment(policy: Any, mazes: Sequence[Maze], channels=None, value: float = 5.0,
                        at: str = DEFAULT_HOOK, rng_seed: int = 0) -> RetargetResult:
    """For each maze pick a random open target cell (not the start, not the cheese), write ``value``
    into the cheese channels there, and compare the path probability toward it."""
    model = as_model(policy)
    mazes = list(mazes)
    if channels is None:
        channels, _ = cheese_channels(model, mazes, at)
    rng = np.random.default_rng(rng_seed)
    targets, before, after = [], [], []
    for m in mazes:
        cells = [tuple(c) for c in m.open_cells() if tuple(c) not in (m.start, m.cheese)]
        t = cells[rng.integers(len(cells))]
        targets.append(t)
        before.append(path_probability(model, m, t))
        after.append(path_probability(model, m, t, retarget_intervention(at, channels, t, value)))
    return RetargetResult(np.asarray(channels), value, targets, np.array(before), np.array(after))
