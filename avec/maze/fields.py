"""Vector fields: the policy's action distribution with the mouse on every open cell.

One field = ONE batched forward pass over ``[k, 3, 64, 64]`` observations (k = open cells minus
the cheese cell). Steering goes through the core (``avec.core.Model`` interventions), never
through raw hooks here.

Arrow convention: ``dx = P(RIGHT) - P(LEFT)``, ``dy = P(UP) - P(DOWN)`` with "up" = towards
grid row 0 = the top of the picture.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..results import figure_png
from .env import ACTION_NAMES, five_way
from .evaluate import decision_targets
from .render import renderer, to_tensor
from .world import WORLD, Maze


def as_model(policy: Any):
    """A core ``Model`` for a policy module (or the Model itself)."""
    from avec.core import Model

    if isinstance(policy, Model):
        return policy
    if isinstance(policy, torch.nn.Module):
        return Model(policy, name=getattr(policy, "name", None) or "maze-policy")
    raise TypeError(f"expected an nn.Module policy or an avec.core.Model, got {type(policy).__name__}")


def _as_list(steer) -> list:
    if steer is None:
        return []
    return list(steer) if isinstance(steer, (list, tuple)) else [steer]


@torch.no_grad()
def policy_probs(policy: Any, obs: torch.Tensor, steer=None, chunk: int = 1024) -> torch.Tensor:
    """5-way probabilities ``[B, 5]`` (ACTION_NAMES order) for observations ``[B, 3, 64, 64]``,
    optionally under interventions (``steer``: an intervention, a list of them, or an object with
    ``as_interventions()``). A batch up to ``chunk`` rows is one forward pass."""
    model = as_model(policy)
    out = []
    for s in range(0, len(obs), chunk):
        run = model.run(obs[s:s + chunk], interventions=_as_list(steer))
        out.append(five_way(torch.softmax(run.logits.double(), -1)))
    return torch.cat(out)


def field_obs(maze: Maze) -> tuple[np.ndarray, torch.Tensor]:
    """(cells int ``[k, 2]``, observations float ``[k, 3, 64, 64]``) with the mouse on every open
    cell except the cheese; a ProcgenMaze's observations are procgen's."""
    cells = maze.open_cells()
    if maze.cheese is not None:
        cells = cells[(cells != np.array(maze.cheese)).any(1)]
    from .procgen_backend import ProcgenBatch, ProcgenMaze

    if isinstance(maze, ProcgenMaze):  # procgen renders each position
        return cells, ProcgenBatch([maze]).obs(np.zeros(len(cells), np.int64), cells)
    return cells, to_tensor(renderer().render_mice(maze, cells))


def vector_field(policy: Any, maze: Maze, steer=None, label: str = "") -> VectorField:
    """The policy's field over ``maze``, optionally steered. One batched forward pass. A ProcgenMaze's
    field is drawn on procgen's own picture of the level (``backdrop``)."""
    cells, obs = field_obs(maze)
    probs = policy_probs(policy, obs, steer, chunk=len(obs))
    return VectorField(maze, cells, probs.numpy(), label or ("steered" if steer is not None else "original"),
                       procgen_backdrop(maze))


def procgen_backdrop(maze: Maze) -> np.ndarray | None:
    """procgen's picture of a ProcgenMaze without the mouse, uint8 ``[64, 64, 3]`` (None for a pure-Python
    maze). procgen always draws the mouse, so the level is rendered with the mouse on three open cells
    far apart and each pixel takes the median: at any pixel at least two of the three show no mouse."""
    from .procgen_backend import ProcgenBatch, ProcgenMaze

    if not isinstance(maze, ProcgenMaze):
        return None
    cells = maze.open_cells()
    if maze.cheese is not None and len(cells) > 3:
        cells = cells[(cells != np.array(maze.cheese)).any(1)]
    steps = lambda a: np.array([maze.distances(tuple(a))[tuple(c)] for c in cells], dtype=float)  # noqa: E731
    d0 = steps(cells[0])
    far = cells[int(np.argmax(d0))]
    picks = [cells[0], far, cells[int(np.argmax(np.minimum(d0, steps(far))))]]  # the third: far from both
    pics = ProcgenBatch([maze]).obs(np.zeros(3, np.int64), np.array(picks)).numpy()  # [3, 3, 64, 64] in [0, 1]
    return np.rint(np.median(pics, 0).transpose(1, 2, 0) * 255).astype(np.uint8)


def new_figure(figsize):
    """A pyplot-free Figure (Agg canvas): no global state, nothing to close, works headless."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def png_base64(fig) -> str:
    return base64.b64encode(figure_png(fig, dpi=80)).decode()


def summary_html(summary: dict, fig) -> str:
    """A result's notebook view: its summary as a two-column table, then its figure."""
    rows = "".join(f"<tr><td>{k}</td><td>{v:.3f}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in summary.items())
    return f"<table>{rows}</table><img src='data:image/png;base64,{png_base64(fig)}'/>"


def _draw(ax, maze: Maze, cells: np.ndarray, dx: np.ndarray, dy: np.ndarray, title: str, color: str,
          backdrop: np.ndarray | None = None):
    # the mouse is not drawn: the field shows it everywhere. Cell (r, c) spans [c, c+1] x [r, r+1]; procgen's
    # 64 x 64 picture puts every cell on the same pixels as avec's renderer, so it takes the same extent
    if backdrop is None:
        ax.imshow(renderer(400, 2).render(maze, mouse=False), extent=(0, WORLD, WORLD, 0))
    else:
        ax.imshow(backdrop, extent=(0, WORLD, WORLD, 0), interpolation="nearest")
    # data y grows downward (row index), so the "up" component is drawn as -dy
    ax.quiver(cells[:, 1] + 0.5, cells[:, 0] + 0.5, dx, -dy, color=color, angles="xy", scale_units="xy",
              scale=1.0, width=0.006, headwidth=3.5)
    p, n = maze.pad, maze.size
    ax.set_xlim(p - 0.5, p + n + 0.5)
    ax.set_ylim(p + n + 0.5, p - 0.5)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


@dataclass(frozen=True)
class VectorField:
    """maze; cells int ``[k, 2]`` (row, col); probs float ``[k, 5]`` in ACTION_NAMES order; backdrop: the
    picture to draw the arrows on, uint8 ``[64, 64, 3]`` (procgen's, for a procgen level), or None for
    avec's rendering of ``maze``."""

    maze: Maze
    cells: np.ndarray
    probs: np.ndarray
    label: str = ""
    backdrop: np.ndarray | None = None

    @property
    def arrows(self) -> np.ndarray:
        """``[k, 2]`` of (dx, dy) = (P(RIGHT) - P(LEFT), P(UP) - P(DOWN))."""
        p = self.probs
        return np.stack([p[:, 3] - p[:, 0], p[:, 2] - p[:, 1]], 1)

    def at(self, pos) -> dict:
        """The 5-way distribution with the mouse at ``pos``."""
        hit = np.flatnonzero((self.cells == np.array(pos)).all(1))
        if not len(hit):
            raise KeyError(f"{tuple(pos)} is not an open non-cheese cell of this maze")
        return dict(zip(ACTION_NAMES, map(float, self.probs[hit[0]])))

    def decision(self) -> dict:
        """P(cheese), P(top-right), P(other) at the decision square (first step along each path)."""
        d, ic, it = decision_targets(self.maze)
        row = self.at(d)
        pc, pt = row[ACTION_NAMES[ic]], row[ACTION_NAMES[it]]
        return {"decision_square": d, "p_cheese": pc, "p_top_right": pt, "p_other": 1.0 - pc - pt}

    def diff(self, other: VectorField) -> FieldDiff:
        """``self - other`` (e.g. steered minus original); the two must cover the same cells."""
        if self.cells.shape != other.cells.shape or not (self.cells == other.cells).all():
            raise ValueError("the two fields cover different cells (different mazes or cheese positions)")
        return FieldDiff(self, other)

    def to_dict(self) -> dict:
        """JSON data: the maze, ``cells`` ``[k][2]``, ``probs`` ``[k][5]`` (``actions`` order), ``arrows``
        ``[k][2]`` of (dx, dy), the label."""
        from ..results import jsonable

        out = {"type": "VectorField", "label": self.label, "maze": self.maze.to_dict(), "actions": list(ACTION_NAMES),
               "cells": jsonable(self.cells), "probs": jsonable(self.probs), "arrows": jsonable(self.arrows)}
        if self.backdrop is not None:  # exact bytes, base64: 16 kB where nested lists would take ~50
            out["backdrop"] = {"shape": list(self.backdrop.shape),
                               "uint8_base64": base64.b64encode(np.ascontiguousarray(self.backdrop, np.uint8).tobytes()).decode()}
        return out

    @classmethod
    def from_dict(cls, d: dict) -> VectorField:
        """The field back from ``to_dict()`` (arrows are recomputed from ``probs``)."""
        b = d.get("backdrop")
        backdrop = None if b is None else np.frombuffer(base64.b64decode(b["uint8_base64"]), np.uint8).reshape(b["shape"])
        return cls(Maze.from_dict(d["maze"]), np.array(d["cells"], dtype=int), np.array(d["probs"], dtype=float),
                   d.get("label", ""), backdrop)

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.probs, columns=[f"p_{a.lower()}" for a in ACTION_NAMES])
        df.insert(0, "row", self.cells[:, 0])
        df.insert(1, "col", self.cells[:, 1])
        df["dx"], df["dy"] = self.arrows[:, 0], self.arrows[:, 1]
        return df

    def plot(self, compare_to: VectorField | None = None, figsize=None):
        """Arrows over the rendered maze; with ``compare_to``: three panels (this, that, this - that)."""
        if compare_to is not None:
            return self.diff(compare_to).plot(figsize=figsize)
        fig = new_figure(figsize or (5, 5))
        ax = fig.subplots()
        a = self.arrows
        _draw(ax, self.maze, self.cells, a[:, 0], a[:, 1], self.label, "red", self.backdrop)
        return fig

    def _repr_html_(self) -> str:
        fig = self.plot()
        head = f"<b>VectorField</b> {self.label} over {self.maze!r}: {len(self.cells)} cells"
        return f"{head}<br><img src='data:image/png;base64,{png_base64(fig)}'/>"


@dataclass(frozen=True)
class FieldDiff:
    """``a - b`` of two fields over the same maze cells."""

    a: VectorField
    b: VectorField

    @property
    def probs(self) -> np.ndarray:
        return self.a.probs - self.b.probs

    @property
    def arrows(self) -> np.ndarray:
        return self.a.arrows - self.b.arrows

    def to_dict(self) -> dict:
        """JSON data: both fields (``a``, ``b``), and ``probs`` / ``arrows`` of ``a - b``."""
        from ..results import jsonable

        return {"type": "FieldDiff", "a": self.a.to_dict(), "b": self.b.to_dict(), "probs": jsonable(self.probs),
                "arrows": jsonable(self.arrows)}

    @classmethod
    def from_dict(cls, d: dict) -> FieldDiff:
        """The difference back from ``to_dict()`` (from its two fields)."""
        return cls(VectorField.from_dict(d["a"]), VectorField.from_dict(d["b"]))

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.probs, columns=[f"dp_{x.lower()}" for x in ACTION_NAMES])
        df.insert(0, "row", self.a.cells[:, 0])
        df.insert(1, "col", self.a.cells[:, 1])
        df["ddx"], df["ddy"] = self.arrows[:, 0], self.arrows[:, 1]
        return df

    def plot(self, figsize=None):
        fig = new_figure(figsize or (14, 5))
        axes = fig.subplots(1, 3)
        for ax, f, col in ((axes[0], self.b, "red"), (axes[1], self.a, "red")):
            ar = f.arrows
            _draw(ax, f.maze, f.cells, ar[:, 0], ar[:, 1], f.label, col, f.backdrop)
        d = self.arrows
        _draw(axes[2], self.a.maze, self.a.cells, d[:, 0], d[:, 1], f"{self.a.label} - {self.b.label}", "blue",
              self.a.backdrop)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        big = np.abs(self.probs).sum(1).max()
        return f"<b>FieldDiff</b> (max total |dp| = {big:.3f})<br><img src='data:image/png;base64,{png_base64(self.plot())}'/>"
