"""Maze dynamics and a gymnasium-shaped environment.

procgen's 15 actions map to five moves as procgen-tools does:
LEFT = {0, 1, 2}, DOWN = {3}, UP = {5}, RIGHT = {6, 7, 8}, NOOP = {4, 9, ..., 14}
(diagonals count as their horizontal part). Walls and the world's edge block a move.
Reward 10 on reaching the cheese, which ends the episode; otherwise truncation after 500 steps.
"""

from __future__ import annotations

import numpy as np
import torch

from .render import OBS_SIZE, render
from .world import MOVES, WORLD, Maze

ACTION_NAMES = ("LEFT", "DOWN", "UP", "RIGHT", "NOOP")  # order of every 5-way distribution
ACTION_GROUPS = {
    "LEFT": (0, 1, 2),
    "DOWN": (3,),
    "UP": (5,),
    "RIGHT": (6, 7, 8),
    "NOOP": (4, 9, 10, 11, 12, 13, 14),
}
N_ACTIONS = 15
# canonical procgen action for each move (used by experts and tests)
CANONICAL = {"LEFT": 1, "DOWN": 3, "UP": 5, "RIGHT": 7, "NOOP": 4}
REWARD = 10.0
MAX_STEPS = 500

_GROUP_OF = np.empty(N_ACTIONS, dtype=np.int64)
for _i, _name in enumerate(ACTION_NAMES):
    _GROUP_OF[list(ACTION_GROUPS[_name])] = _i
# [15, 5] one-hot matrix: probs15 @ GROUP_MATRIX = probs5
GROUP_MATRIX = torch.zeros(N_ACTIONS, len(ACTION_NAMES))
GROUP_MATRIX[torch.arange(N_ACTIONS), torch.from_numpy(_GROUP_OF)] = 1.0


def action_name(action: int) -> str:
    """Name of the move a procgen action (0..14) makes."""
    if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < N_ACTIONS:
        raise ValueError(f"action must be an int in 0..{N_ACTIONS - 1}, got {action!r}")
    return ACTION_NAMES[_GROUP_OF[int(action)]]


def five_way(probs15: torch.Tensor) -> torch.Tensor:
    """``[..., 15]`` action probabilities -> ``[..., 5]`` in ACTION_NAMES order."""
    return probs15 @ GROUP_MATRIX.to(probs15)


def greedy_mask(greedy, n: int) -> np.ndarray:
    """``greedy`` (one bool, or a bool per maze) as bool ``[n]``: which of ``n`` rollouts take the most likely
    move rather than a sampled action. An int is refused rather than taken as truthy."""
    mask = np.asarray(greedy)
    if mask.dtype != bool or mask.shape not in ((), (n,)):
        raise ValueError(f"greedy must be one bool or a bool per maze ({n} mazes), got {mask.dtype} of shape "
                         f"{mask.shape}")
    return np.broadcast_to(mask, (n,))


_MOVE_ACTION = np.array([CANONICAL[a] for a in ACTION_NAMES], np.int32)  # 5-way move -> a procgen action making it


def choose_actions(logits: torch.Tensor, greedy: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Procgen actions int32 ``[k]`` from action logits ``[k, 15]``: row j takes the most likely MOVE (5-way, not
    the top one of 15 actions: LEFT / RIGHT have 3) where ``greedy[j]`` (bool ``[k]``), else a sampled action;
    ``rng`` is drawn once per sampled row, in row order. Both backends' rollouts choose with this."""
    actions = np.empty(len(logits), np.int32)
    probs = torch.softmax(logits.double(), 1)
    if greedy.any():
        actions[greedy] = _MOVE_ACTION[five_way(probs[torch.from_numpy(greedy)]).argmax(1).numpy()]
    if not greedy.all():
        p = probs[torch.from_numpy(~greedy)].numpy()
        u = rng.random((len(p), 1))
        actions[~greedy] = np.minimum((p.cumsum(1) < u).sum(1), N_ACTIONS - 1)
    return actions


def move(maze: Maze, pos, action: int):
    """Position after taking procgen ``action`` at ``pos`` (blocked moves stay put)."""
    name = action_name(action)
    if name == "NOOP":
        return tuple(pos)
    dr, dc = MOVES[name]
    q = (pos[0] + dr, pos[1] + dc)
    if 0 <= q[0] < WORLD and 0 <= q[1] < WORLD and maze.grid[q]:
        return q
    return tuple(pos)


def step(maze: Maze, action: int) -> tuple[Maze, float, bool]:
    """One step of the dynamics: (next maze, reward, reached cheese)."""
    nxt = maze.with_mouse(move(maze, maze.mouse, action))
    done = nxt.cheese is not None and nxt.mouse == nxt.cheese
    return nxt, (REWARD if done else 0.0), done


def expert_move(maze: Maze, pos=None) -> str:
    """First move of a shortest path from ``pos`` (default: the mouse) to the cheese."""
    if maze.cheese is None:
        raise ValueError("the maze has no cheese; the expert needs a target")
    pos = maze.mouse if pos is None else tuple(pos)
    if pos == maze.cheese:
        return "NOOP"
    dist = maze.distances(maze.cheese)
    if dist[pos] < 0:
        raise ValueError(f"the cheese is unreachable from {pos}")
    for name in ACTION_NAMES[:4]:
        dr, dc = MOVES[name]
        q = (pos[0] + dr, pos[1] + dc)
        if 0 <= q[0] < WORLD and 0 <= q[1] < WORLD and dist[q] == dist[pos] - 1:
            return name
    raise AssertionError("unreachable: BFS distances are inconsistent")


try:  # gymnasium is optional: subclass it when present, same API shape either way
    import gymnasium as _gym
    from gymnasium import spaces as _spaces

    _EnvBase = _gym.Env
except ImportError:  # pragma: no cover - depends on the environment
    _gym = None
    _EnvBase = object


class MazeEnv(_EnvBase):
    """Gymnasium-style maze env. Observations are uint8 ``[64, 64, 3]`` RGB like procgen.

    ``reset(seed=..., options={"maze": Maze})`` -> (obs, info);
    ``step(action)`` -> (obs, reward, terminated, truncated, info). ``info["maze"]`` is the state.
    size / region: as :meth:`Maze.from_seed` (region=None: cheese anywhere).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size: int | None = None, region: int | None = None, max_steps: int = MAX_STEPS):
        self.size, self.region, self.max_steps = size, region, int(max_steps)
        self.maze: Maze | None = None
        self.t = 0
        self._rng = np.random.default_rng()
        if _gym is not None:
            self.observation_space = _spaces.Box(0, 255, (OBS_SIZE, OBS_SIZE, 3), np.uint8)
            self.action_space = _spaces.Discrete(N_ACTIONS)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if _gym is not None:  # seeds gymnasium's self.np_random, as the Env API expects
            super().reset(seed=seed)
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        if options and "maze" in options:
            self.maze = options["maze"]
        else:
            level = int(seed) if seed is not None else int(self._rng.integers(2**31))
            self.maze = Maze.from_seed(level, size=self.size, region=self.region)
            # further resets without a seed draw fresh levels from this stream
            self._rng = np.random.default_rng([level, 1])
        self.t = 0
        return render(self.maze), {"maze": self.maze}

    def step(self, action):
        if self.maze is None:
            raise RuntimeError("call reset() before step()")
        self.maze, reward, terminated = step(self.maze, int(action))
        self.t += 1
        truncated = not terminated and self.t >= self.max_steps
        return render(self.maze), reward, terminated, truncated, {"maze": self.maze}

    def render(self):
        return None if self.maze is None else render(self.maze)
