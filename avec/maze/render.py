"""Rendering a maze world to RGB pictures.

The whole 25 x 25 world becomes an ``S x S`` image (``S = 64`` for the network: 2.56 px per
cell, like procgen). Grid row 0 is the top image row, grid column 0 the left image column.

Why it is fast: walls and floor are flat colours, so their area-averaged picture is exactly
``W @ colours @ W.T`` with ``W[pixel, cell]`` the overlap of a pixel with a cell. The mouse and
cheese sprites are drawn supersampled in a small window around their cell and added as a
delta. A batch of mouse positions (a vector field) reuses one background.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .world import WORLD, Maze

FLOOR = np.array([222, 206, 168], dtype=np.float64)  # sand
WALL = np.array([38, 58, 92], dtype=np.float64)  # dark blue
CHEESE = np.array([255, 204, 0], dtype=np.float64)  # yellow
CHEESE_HOLE = np.array([205, 140, 0], dtype=np.float64)
MOUSE = np.array([150, 88, 56], dtype=np.float64)  # brown
MOUSE_EAR = np.array([240, 120, 150], dtype=np.float64)  # pink

OBS_SIZE = 64


def _cheese_sprite(fy: np.ndarray, fx: np.ndarray):
    """Colour and mask of a cheese wedge; fy, fx in [0, 1) inside the cell (fy down)."""
    wedge = (fy > 0.05) & (fy < 0.95) & (fx > 0.05) & (fx < 0.95) & (fy > 0.95 - (fx - 0.05) * 1.1)
    hole = (fy - 0.7) ** 2 + (fx - 0.65) ** 2 < 0.015
    colour = np.where(hole[..., None], CHEESE_HOLE, CHEESE)
    return colour, wedge


def _mouse_sprite(fy: np.ndarray, fx: np.ndarray):
    """Colour and mask of a mouse: a brown disc with two pink ears."""
    body = (fy - 0.58) ** 2 + (fx - 0.5) ** 2 < 0.42**2
    ear = ((fy - 0.2) ** 2 + (fx - 0.2) ** 2 < 0.2**2) | ((fy - 0.2) ** 2 + (fx - 0.8) ** 2 < 0.2**2)
    colour = np.where((ear & ~body)[..., None], MOUSE_EAR, MOUSE)
    return colour, body | ear


class Renderer:
    """Renders worlds at ``size x size`` px, sprites supersampled ``supersample`` times per axis."""

    def __init__(self, size: int = OBS_SIZE, supersample: int = 8):
        if size < WORLD:
            raise ValueError(f"render size must be >= {WORLD} px, got {size}")
        self.size, self.k = int(size), int(supersample)
        p = self.size / WORLD  # pixels per cell
        # Overlap of pixel interval [i, i+1) with cell interval [c*p, (c+1)*p), in pixel units.
        i = np.arange(self.size)[:, None]
        c = np.arange(WORLD)[None, :]
        self.W = np.clip(np.minimum(i + 1, (c + 1) * p) - np.maximum(i, c * p), 0, None)
        self._patches: dict = {}

    def background(self, grid: np.ndarray) -> np.ndarray:
        """Float ``[S, S, 3]`` picture of walls and floor only."""
        return self.backgrounds(np.asarray(grid, bool)[None])[0]

    def backgrounds(self, grids: np.ndarray) -> np.ndarray:
        """Float ``[n, S, S, 3]`` pictures of the walls and floor of bool grids ``[n, 25, 25]``.

        Each pixel's cell overlaps sum to 1, so the picture is WALL plus (FLOOR - WALL) times the
        pixel's open fraction ``W @ grid @ W.T``: two small matmuls for the whole batch."""
        open_frac = self.W @ np.asarray(grids, np.float64) @ self.W.T  # [n, S, S]
        return WALL + open_frac[..., None] * (FLOOR - WALL)

    def _patch(self, sprite: str, r: int, c: int):
        """(y0, x0, delta [h, w, 3]) to add for a sprite drawn on a floor cell (r, c)."""
        key = (sprite, r, c)
        if key not in self._patches:
            p, k = self.size / WORLD, self.k
            y0, y1 = int(np.floor(r * p)), int(np.ceil((r + 1) * p))
            x0, x1 = int(np.floor(c * p)), int(np.ceil((c + 1) * p))
            ys = y0 + (np.arange((y1 - y0) * k) + 0.5) / k
            xs = x0 + (np.arange((x1 - x0) * k) + 0.5) / k
            fy = (ys[:, None] - r * p) / p + 0 * xs[None, :]
            fx = (xs[None, :] - c * p) / p + 0 * ys[:, None]
            inside = (fy >= 0) & (fy < 1) & (fx >= 0) & (fx < 1)
            colour, mask = (_mouse_sprite if sprite == "mouse" else _cheese_sprite)(fy, fx)
            delta = np.where((mask & inside)[..., None], colour - FLOOR, 0.0)
            delta = delta.reshape(y1 - y0, k, x1 - x0, k, 3).mean(axis=(1, 3))
            self._patches[key] = (y0, x0, delta)
        return self._patches[key]

    def sprite_table(self, sprite: str):
        """Every cell's sprite patch at once, for batched drawing: ``(y0 [25, 25], x0 [25, 25],
        delta [25, 25, h, w, 3])`` with patches zero-padded to a common ``h x w``; drawing on an
        ``[S + h, S + w]`` canvas and cropping equals :meth:`add_sprite` exactly."""
        key = ("table", sprite)
        if key not in self._patches:
            patches = [[self._patch(sprite, r, c) for c in range(WORLD)] for r in range(WORLD)]
            h = max(d.shape[0] for row in patches for _, _, d in row)
            w = max(d.shape[1] for row in patches for _, _, d in row)
            y0 = np.array([[p[0] for p in row] for row in patches])
            x0 = np.array([[p[1] for p in row] for row in patches])
            delta = np.zeros((WORLD, WORLD, h, w, 3))
            for r in range(WORLD):
                for c in range(WORLD):
                    d = patches[r][c][2]
                    delta[r, c, : d.shape[0], : d.shape[1]] = d
            self._patches[key] = (y0, x0, delta)
        return self._patches[key]

    def add_sprite(self, img: np.ndarray, sprite: str, pos) -> None:
        """Draw "mouse" or "cheese" on floor cell ``pos`` of a float ``[S, S, 3]`` picture, in place."""
        y0, x0, d = self._patch(sprite, *pos)
        img[y0 : y0 + d.shape[0], x0 : x0 + d.shape[1]] += d

    def render(self, maze: Maze, mouse: bool = True) -> np.ndarray:
        """uint8 ``[S, S, 3]``. When mouse and cheese share a cell only the mouse is drawn."""
        img = self.background(maze.grid)
        if maze.cheese is not None and not (mouse and maze.cheese == maze.mouse):
            self.add_sprite(img, "cheese", maze.cheese)
        if mouse:
            self.add_sprite(img, "mouse", maze.mouse)
        return _to_uint8(img)

    def render_mice(self, maze: Maze, positions) -> np.ndarray:
        """The maze with the mouse at each of ``positions`` (``[B, 2]``): uint8 ``[B, S, S, 3]``.

        Equal to ``render(maze.with_mouse(p))`` for each p (tested)."""
        positions = np.asarray(positions, dtype=int).reshape(-1, 2)
        base = self.background(maze.grid)
        if maze.cheese is not None:
            self.add_sprite(base, "cheese", maze.cheese)
        out = np.empty((len(positions), self.size, self.size, 3), dtype=np.uint8)
        no_cheese = None
        for b, (r, c) in enumerate(positions):
            if not maze.grid[r, c]:
                raise ValueError(f"mouse position {(int(r), int(c))} is a wall")
            if maze.cheese == (r, c):  # mouse hides the cheese
                if no_cheese is None:
                    no_cheese = self.background(maze.grid)
                img = no_cheese.copy()
            else:
                img = base.copy()
            self.add_sprite(img, "mouse", (r, c))
            out[b] = _to_uint8(img)
        return out


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@lru_cache(maxsize=8)
def renderer(size: int = OBS_SIZE, supersample: int = 8) -> Renderer:
    return Renderer(size, supersample)


def render(maze: Maze, size: int = OBS_SIZE) -> np.ndarray:
    """uint8 ``[size, size, 3]`` RGB picture of the world (64 = the network's observation)."""
    return renderer(size, 8 if size <= 128 else 2).render(maze)


def human_view(maze: Maze, size: int = 512) -> np.ndarray:
    """A large uint8 ``[size, size, 3]`` picture for people."""
    return render(maze, size)


def to_tensor(obs: np.ndarray) -> torch.Tensor:
    """uint8 ``[B, 64, 64, 3]`` or ``[64, 64, 3]`` -> float ``[B, 3, 64, 64]`` in [0, 1] (= obs/255)."""
    x = torch.from_numpy(np.ascontiguousarray(obs))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected observations [B, H, W, 3], got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div_(255.0)


def obs_tensor(mazes) -> torch.Tensor:
    """Network input for one maze or a list of mazes: float ``[B, 3, 64, 64]``."""
    if isinstance(mazes, Maze):
        mazes = [mazes]
    return to_tensor(np.stack([render(m) for m in mazes]))


def cell_pixels(pos, size: int = OBS_SIZE) -> tuple[slice, slice]:
    """Image rows/cols fully covered by cell ``pos`` (for orientation checks and overlays)."""
    p = size / WORLD
    r, c = pos
    return (
        slice(int(np.ceil(r * p)), int(np.floor((r + 1) * p))),
        slice(int(np.ceil(c * p)), int(np.floor((c + 1) * p))),
    )
