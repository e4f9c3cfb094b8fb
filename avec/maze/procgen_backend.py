"""The real procgen maze (procgen 0.10.7) as a backend of ``avec.maze``. Optional: ``make setup``
installs it (``procgen2`` without its stale pins, see README "The procgen backend").

    maze = ProcgenMaze.from_seed(0)              # procgen level 0: start_level=0, num_levels=1, hard mode
    maze.decision_square(), maze.with_cheese(...), maze.with_top_right_path()   # all of Maze's API
    obs = observe(maze)                          # uint8 [64, 64, 3], as procgen renders the edited level
    reached, steps, _ = rollout(policy, [maze])  # the policy acting in procgen's own vectorised env

A :class:`ProcgenMaze` is an avec :class:`Maze` (walls, cheese, mouse read from procgen's state
bytes by :mod:`avec.maze.procgen_state`) that also carries its level's state; edits are ordinary
Maze edits, and :meth:`ProcgenMaze.state_bytes` writes the edited walls, cheese and mouse back
into that state (background, textures and everything else unchanged). procgen renders and steps
from those bytes, so the observations and the dynamics are procgen's own.

Levels are the original study's: level seed ``s`` is what ``ProcgenGym3Env(env_name="maze",
start_level=s, num_levels=1, distribution_mode="hard")`` starts on. Many levels are drawn at
once in one pooled env: each slot's state is given ``level_seed_low = s, level_seed_high = s + 1``
and an episode clock one step from its timeout, so one no-op step makes procgen reset every slot
into its level exactly as a fresh env would (tested: the same state bytes, bar the env index and
the level-sampling generator, and the same pixels).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from .env import ACTION_GROUPS, CANONICAL, N_ACTIONS, choose_actions, greedy_mask, move
from .procgen_state import ProcgenState, StateError, parse
from .render import to_tensor
from .world import WORLD, Maze

INSTALL_HINT = ("the procgen backend needs procgen 0.10.7: run `make setup` in the avec checkout, or "
                "`pip install --no-deps procgen2==0.10.7 gym3==0.3.3 gym==0.26.2` then "
                "`pip install 'avec[procgen]'` (README: The procgen backend)")
MAX_LEVEL = 2**31 - 2  # level seeds are int32 and procgen draws from [s, s + 1)
POOL = 64  # slots of the pooled env that draws levels and renders observations
_NOOP = CANONICAL["NOOP"]


def available() -> bool:
    """True when procgen can be imported (the optional backend is installed)."""
    try:
        import procgen  # noqa: F401
    except Exception:  # ImportError, or a broken install (gym3 without cffi, ...)
        return False
    return True


def _procgen():
    try:
        import procgen
    except Exception as e:
        raise ImportError(f"{INSTALL_HINT}; importing procgen failed: {type(e).__name__}: {e}") from None
    return procgen


def make_env(num: int, level: int = 0):
    """A fresh ``ProcgenGym3Env`` of ``num`` maze slots on level ``level``, as the original study made
    them (hard mode, ``num_levels=1``); ``num_threads=0`` steps in the calling thread."""
    return _procgen().ProcgenGym3Env(num=int(num), env_name="maze", start_level=int(level), num_levels=1,
                                     distribution_mode="hard", num_threads=0, rand_seed=0)


_envs: dict = {}


def _env(num: int):
    """A pooled env of ``num`` slots (created once per process and size)."""
    if num not in _envs:
        _envs[num] = make_env(num)
    return _envs[num]


@lru_cache(maxsize=1024)  # ~50 kB a state: the level states that mazes render from again and again
def _parsed(data: bytes) -> ProcgenState:
    return parse(data)


def _check_level(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_LEVEL:
        raise ValueError(f"a procgen level seed must be an int in 0..{MAX_LEVEL}, got {seed!r}")
    return int(seed)


# ------------------------------------------------------------------------------------ mazes
@dataclass(frozen=True, eq=False)
class ProcgenMaze(Maze):
    """A :class:`Maze` from a procgen level: the grid, cheese and mouse of ``level_state`` (procgen's
    state bytes of the level as generated), possibly edited since. Equality is Maze's (same world)."""

    level_state: bytes = field(default=b"", repr=False)

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.level_state, bytes) or not self.level_state:
            raise ValueError("a ProcgenMaze needs its level's procgen state bytes (use ProcgenMaze.from_seed "
                             "or ProcgenMaze.from_state)")

    @classmethod
    def from_seed(cls, seed: int, size: int | None = None, region: int | None = None) -> ProcgenMaze:
        """procgen's maze level ``seed`` (``start_level=seed, num_levels=1``, hard mode)."""
        if size is not None or region is not None:
            raise ValueError("procgen draws a level's size and cheese from its seed: size= and region= are for "
                             "the pure-Python Maze.from_seed; choose procgen levels by seed (filter them after)")
        return levels([seed])[0]

    @classmethod
    def from_state(cls, data: bytes) -> ProcgenMaze:
        """The maze of procgen state bytes (``env.callmethod("get_state")[i]``)."""
        return _parsed(bytes(data)).to_maze(cls, level_state=bytes(data))

    @property
    def state(self) -> ProcgenState:
        return _parsed(self.level_state)

    def state_bytes(self, restart: bool = False, mouse=None) -> bytes:
        """procgen state bytes of this maze (its level's state with these walls, cheese and mouse).
        ``mouse``: another open cell for the mouse; ``restart``: zero the episode clock."""
        return self.state.with_maze(self, restart=restart, mouse=mouse)

    def __repr__(self) -> str:
        return f"ProcgenMaze(level={self.seed}, size={self.size}, mouse={self.mouse}, cheese={self.cheese})"


def levels(seeds) -> list[ProcgenMaze]:
    """The procgen maze levels of ``seeds``, as ProcgenMazes (``POOL`` levels per procgen step)."""
    seeds = [_check_level(s) for s in seeds]
    env = _env(POOL)
    out = []
    for s in range(0, len(seeds), POOL):
        chunk = seeds[s:s + POOL]
        states = []
        for b, seed in zip(env.callmethod("get_state"), chunk + chunk[:1] * (POOL - len(chunk))):
            st = _parsed(b)
            raw = bytearray(b)
            # the next step times out and procgen resets the slot into level `seed` (Game::reset)
            for name, value in (("level_seed_low", seed), ("level_seed_high", seed + 1), ("episodes_remaining", 0),
                                ("cur_time", st.fields["timeout"] - 1)):
                struct.pack_into("<i", raw, st.offsets[name], value)
            states.append(bytes(raw))
        env.callmethod("set_state", states)
        env.act(np.full(POOL, _NOOP, np.int32))
        for b in env.callmethod("get_state")[:len(chunk)]:
            out.append(ProcgenMaze.from_state(_fresh(b)))
    return out


def _fresh(data: bytes) -> bytes:
    """Reset the bookkeeping fields the reseeding step touched to a fresh env's values (so a level's
    state is byte-equal to ``make_env(1, seed)``'s apart from the env index and the level sampler,
    whatever levels the pooled slot held before: ``prev_level_seed`` would remember the last one)."""
    st = _parsed(data)
    raw = bytearray(data)
    for name in ("episode_done", "move_action", "step_rand_int", "game_n", "prev_level_seed"):
        struct.pack_into("<i", raw, st.offsets[name], 0)
    return bytes(raw)


# ------------------------------------------------------------------------------- observations
def _check_mazes(mazes) -> list[ProcgenMaze]:
    mazes = [mazes] if isinstance(mazes, Maze) else list(mazes)
    bad = [type(m).__name__ for m in mazes if not isinstance(m, ProcgenMaze)]
    if bad:
        raise TypeError(f"the procgen backend needs ProcgenMazes (ProcgenMaze.from_seed / levels), got {bad[0]}; "
                        "a pure-Python Maze has no procgen level to render")
    return mazes


def render_states(states) -> np.ndarray:
    """uint8 ``[B, 64, 64, 3]``: procgen's observation of each state (``set_state`` renders it)."""
    states = [bytes(s) for s in states]
    for s in states:
        parse(s)  # a state procgen cannot read would exit() the process: check first
    return _render(states)


def _render(states: list[bytes]) -> np.ndarray:
    """render_states for bytes written by ProcgenState.with_maze into a parsed state (already valid)."""
    env = _env(POOL)
    out = np.empty((len(states), 64, 64, 3), np.uint8)
    for s in range(0, len(states), POOL):
        chunk = states[s:s + POOL]
        env.callmethod("set_state", chunk + chunk[:1] * (POOL - len(chunk)))
        out[s:s + len(chunk)] = env.observe()[1]["rgb"][:len(chunk)]
    return out


def observe(mazes) -> np.ndarray:
    """procgen's observation of one ProcgenMaze (uint8 ``[64, 64, 3]``) or of a list (``[B, 64, 64, 3]``)."""
    one = isinstance(mazes, Maze)
    obs = _render([m.state_bytes() for m in _check_mazes(mazes)])
    return obs[0] if one else obs


def obs_tensor(mazes) -> torch.Tensor:
    """Network input float ``[B, 3, 64, 64]`` (= rgb / 255) of one ProcgenMaze or a list."""
    return to_tensor(observe(_check_mazes(mazes)))


class ProcgenBatch:
    """Observations of many ProcgenMazes with the mouse moved, rendered by procgen: the procgen
    twin of :class:`avec.maze.evaluate.Batch` (same ``obs(idx, pos)``)."""

    def __init__(self, mazes):
        self.mazes = _check_mazes(mazes)

    def obs(self, idx, pos) -> torch.Tensor:
        """float ``[len(idx), 3, 64, 64]`` with maze idx[k]'s mouse at pos[k]."""
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        pos = np.asarray(pos, dtype=np.int64).reshape(-1, 2)
        return to_tensor(_render([self.mazes[i].state_bytes(mouse=tuple(p)) for i, p in zip(idx, pos)]))


# ------------------------------------------------------------------------------------ rollouts
# which way the mouse faces after each procgen action: a LEFT-group action unmirrors the sprite, a RIGHT-group
# one mirrors it (blocked or not), any other keeps it (-1)
FACING_AFTER = np.full(N_ACTIONS, -1, np.int64)
FACING_AFTER[list(ACTION_GROUPS["LEFT"])] = 0
FACING_AFTER[list(ACTION_GROUPS["RIGHT"])] = 1


def rollout(policy, mazes, max_steps: int = 500, greedy=False, rng: np.random.Generator | None = None,
            record: bool = False, num_envs: int = POOL):
    """Run ``policy`` on each ProcgenMaze in procgen's vectorised env until it gets the cheese,
    procgen ends the episode (its 500-step timeout) or ``max_steps`` pass.

    The same contract as :func:`avec.maze.evaluate.rollout`: greedy takes the most likely of the
    five moves (as its canonical procgen action), else one of the 15 actions is sampled with
    ``rng``; ``greedy`` may also be a bool per maze. Returns (reached bool ``[N]``, steps int ``[N]``,
    visited list of (maze index, row, col) of every state the policy acted in if ``record``, else [])."""
    reached, steps, visited = run_episodes(policy, mazes, max_steps, greedy, rng or np.random.default_rng(0),
                                           track=record, num_envs=num_envs)
    return reached, steps, [tuple(int(v) for v in row[:3]) for row in visited] if record else []


@torch.no_grad()
def run_episodes(policy, mazes, max_steps: int, greedy, rng: np.random.Generator, track: bool = True,
                 autocast: bool = False, num_envs: int = POOL):
    """The rollout loop behind :func:`rollout` and the DAgger recorder (``train_procgen.rollout_record``):
    ``mazes`` run ``num_envs`` at a time in the pooled env, greedy and sampled mazes (``greedy``: one bool or a
    bool per maze) side by side. Returns (reached bool ``[N]``, steps int ``[N]``, visited int ``[k, 4]`` of
    (maze index, row, col, reflected) for every state the policy acted in, each step's live slots in slot
    order; empty unless ``track``).

    The mouse's cell and facing are tracked from the actions rather than read back from procgen's state each
    step (reading and parsing every slot's state was ~13% of a training run's time): a move is ``env.move`` on
    the maze's grid (a diagonal counts as its horizontal part, a blocked move stays put) and any action of the
    LEFT (RIGHT) group unmirrors (mirrors) the sprite, blocked or not, as procgen does
    (:data:`FACING_AFTER`; a test re-renders every tracked state and compares pixels with what the policy was
    shown; ``benchmarks/procgen_dagger.py`` checks the cells against procgen's state read every step)."""
    mazes = _check_mazes(mazes)
    if isinstance(max_steps, bool) or not isinstance(max_steps, (int, np.integer)) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    n = len(mazes)
    greedy = greedy_mask(greedy, n)
    reached, steps, visited = np.zeros(n, bool), np.zeros(n, np.int64), []
    for c in range(0, n, num_envs):
        part = np.arange(c, min(n, c + num_envs))
        k = len(part)
        env = _env(num_envs)
        states = [mazes[i].state_bytes(restart=True) for i in part]
        env.callmethod("set_state", states + states[:1] * (num_envs - k))
        if track:  # the fresh states' cell and facing, read once
            start = [parse(b) for b in env.callmethod("get_state")[:k]]
            cells = [st.mouse for st in start]
            refl = np.array([st.fields[f"entity{st.player}.is_reflected"] for st in start], np.int64)
        obs = env.observe()[1]["rgb"]
        done = np.zeros(num_envs, bool)
        done[k:] = True  # padding slots
        for _ in range(int(max_steps)):
            live = np.flatnonzero(~done)
            if not len(live):
                break
            if track:
                visited.extend((part[j], *cells[j], refl[j]) for j in live)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = policy(to_tensor(obs[live])).logits.float()
            chosen = choose_actions(logits, greedy[part[live]], rng)
            actions = np.full(num_envs, _NOOP, np.int32)
            actions[live] = chosen
            env.act(actions)
            if track:
                for j, a in zip(live, chosen):
                    cells[j] = move(mazes[part[j]], cells[j], int(a))
                    refl[j] = FACING_AFTER[a] if FACING_AFTER[a] >= 0 else refl[j]
            rew, ob, first = env.observe()
            obs = ob["rgb"]
            steps[part[live]] += 1
            reached[part[live]] = rew[live] > 0
            done[live] = first[live]  # procgen starts a new episode after the cheese or its timeout
    return reached, steps, np.array(visited, np.int64).reshape(-1, 4)


def random_levels(count: int, seed_base: int = 0, keep=None, max_tries: int = 1_000_000) -> list[ProcgenMaze]:
    """The first ``count`` levels from ``seed_base`` on for which ``keep(maze)`` holds (all if None),
    in seed order; levels are drawn ``POOL`` at a time."""
    out, s = [], _check_level(seed_base)
    while len(out) < count and s < seed_base + max_tries:
        batch = levels(range(s, min(s + POOL, seed_base + max_tries, MAX_LEVEL + 1)))
        s += len(batch)
        out.extend(m for m in batch if keep is None or keep(m))
        if not batch:
            break
    return out[:count]


def off_region_levels(region: int, count: int, seed_base: int = 0, max_tries: int = 1_000_000) -> list[ProcgenMaze]:
    """The procgen twin of :func:`avec.maze.evaluate.off_region_mazes`: the first ``count`` levels from
    ``seed_base`` on with a decision square and the cheese outside the top-right ``region`` square."""
    from .evaluate import is_off_region

    return random_levels(count, seed_base, keep=lambda m: is_off_region(m, region), max_tries=max_tries)


__all__ = ["INSTALL_HINT", "ProcgenBatch", "ProcgenMaze", "StateError", "available", "levels", "make_env",
           "obs_tensor", "off_region_levels", "observe", "random_levels", "render_states", "rollout", "run_episodes",
           "WORLD"]
