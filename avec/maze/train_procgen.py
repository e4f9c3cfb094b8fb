"""Training maze policies on the real procgen maze: BC + DAgger from the BFS expert, every observation
rendered by procgen 0.10.7 (:mod:`avec.maze.procgen_backend`).

The method and the loop are :func:`avec.maze.train.train_policy`'s (``backend="procgen"``, or
``avec maze train --backend procgen``); what changes is where the training states come from:

* levels: procgen maze levels (``ProcgenMaze``) with seeds in ``[TRAIN_LEVEL_BASE, TRAIN_SEED_LIMIT)``:
  never the held-out seeds (>= ``evaluate.EVAL_SEED_BASE``), nor the first million, which examples and
  tests draw by default (``procgen_backend.off_region_levels(5, 200)`` starts at level 0). Drawing a
  level costs a procgen step, so levels sit in a pool (``pool_size``) that is renewed
  ``level_refresh`` levels at a time, every ``level_refresh_every`` batches;
* the cheese: moved to an open cell of the maze's top-right R x R square drawn uniformly (not the
  start), the analogue of the original study's rand_region_R training levels. Its cells, walls and
  the mouse are written into the level's state bytes, so the level's own textures and background stay;
* observations: procgen renders each state (``set_state`` then ``observe``) with the mouse on the cell
  and facing the way procgen draws it after its last horizontal move (``is_reflected``: moving right
  mirrors the sprite; fresh states face either way at random, DAgger states the way they faced);
* DAgger rollouts run in procgen's own vectorised env (:func:`rollout_record`), which records the
  cell and the facing of every state the policy visited.
* optional auxiliary losses on heads beside the policy (not part of it): where the mouse is, where the cheese
  and the open floor are (block1's 32 x 32 map), and the route: the expert's move from every square of block3's
  8 x 8 map (``route_aux_steps``; :meth:`ProcgenSampler.route_loss` says why and what it measured).

Labels are the BFS expert's first move on the edited level's grid (``train.expert_labels``); a test
checks that acting on them in procgen's env moves the mouse one step closer to the cheese from the
very states that were rendered. :func:`evaluate_procgen` measures reach on held-out training-distribution
levels and the decision-square motivations on held-out off-region levels, overall and per maze size.

The shipped ``procgen_region5`` (80 minutes' training on two threads with a quarter of the training mazes mirrored,
``--mirror-frac 0.25``; 34144 steps, 4.4 M labelled frames) comes near the original agent's motivations but not its
navigation: on 500 held-out levels P(cheese) 0.78 at decision squares (the original: 0.85), gets the cheese in 0.60
of them (0.71), sampled reach 0.70 on its training distribution (>= 0.89 up to 11 x 11 mazes, 0.24 in 25 x 25).
Per-step accuracy on uniform held-out states is 0.91, falling with the distance to the cheese (0.98 within 7 steps,
0.85 at 32-63). The unmirrored command shipped before it reached 0.79 (5.1 M frames) but took the cheese's way
with probability 0.55; at 2.9 M frames the unmirrored recipe reached 0.50: the long-range route is what more frames
keep improving (checkpoints/README.json: scaling, diagnosis, what was tried). The same command run for 120 minutes
(6.8 M frames, outside the 90-minute budget, not shipped) reaches 0.90 with P(cheese) 0.85 and gets the cheese in 0.77:
with more frames the same recipe matches the original agent on the decision square; the budget keeps the shipped one short.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import torch
import torch.nn.functional as F

from . import procgen_backend as pb
from .evaluate import EVAL_SEED_BASE, decision_probs, resolve_region, training_size_power
from .render import to_tensor
from .train import TRAIN_SEED_LIMIT, Sampler, expert_labels, first_moves, heads_loss, loss_fn
from .world import SIZES, WORLD, top_right_region

TRAIN_LEVEL_BASE = 1_000_000  # training level seeds start here (examples and tests use levels 0, 1, ...)


# ------------------------------------------------------------------------------------ states
def place_cheese(maze: pb.ProcgenMaze, region: int, rng: np.random.Generator) -> pb.ProcgenMaze:
    """``maze`` with its cheese moved to an open cell of its top-right ``region`` x ``region`` square drawn
    uniformly (never the start), as ``Maze.from_seed(region=...)`` places it; ``maze.region`` records R."""
    rows, cols = top_right_region(maze.size, region)
    allowed = np.zeros_like(maze.grid)
    allowed[rows, cols] = maze.grid[rows, cols]
    allowed[maze.start] = False
    cells = np.argwhere(allowed)
    cell = tuple(int(v) for v in cells[rng.integers(len(cells))])
    return dataclasses.replace(maze, cheese=cell, region=int(region), _dist_cache={})


def state_bytes(maze: pb.ProcgenMaze, cell, reflected: bool = False) -> bytes:
    """procgen state bytes of ``maze`` with the mouse on ``cell``, its sprite mirrored if ``reflected``
    (procgen mirrors it after a move to the right and unmirrors it after a move to the left)."""
    data = bytearray(maze.state_bytes(mouse=tuple(int(v) for v in cell)))
    st = maze.state
    struct.pack_into("<i", data, st.offsets[f"entity{st.player}.is_reflected"], int(bool(reflected)))
    return bytes(data)


def render(mazes, idx, cells, reflected) -> torch.Tensor:
    """float ``[k, 3, 64, 64]``: procgen's observation of maze idx[j] with the mouse on cells[j] facing
    as reflected[j] says."""
    return to_tensor(pb._render([state_bytes(mazes[i], c, f) for i, c, f in zip(idx, cells, reflected)]))


def training_levels(region: int, count: int, seed_base: int = EVAL_SEED_BASE) -> list[pb.ProcgenMaze]:
    """``count`` procgen levels of the training distribution (level seeds ``seed_base, seed_base + 1, ...``,
    cheese moved into the top-right ``region`` square, drawn from the level's seed): for measuring."""
    return [place_cheese(m, region, np.random.default_rng([m.seed, region]))
            for m in pb.levels(range(seed_base, seed_base + count))]


# ------------------------------------------------------------------------------------ rollouts
def rollout_record(policy, mazes, max_steps: int, greedy, rng: np.random.Generator,
                   autocast: bool = False, num_envs: int = pb.POOL):
    """DAgger rollouts in procgen's env that record what procgen showed the policy. ``greedy``: one bool for
    every maze or a bool per maze (greedy and sampled rollouts share one pass of the env). Returns (reached
    bool ``[N]``, steps int ``[N]``, visited int ``[k, 4]`` of (maze index, row, col, reflected) for every state
    the policy acted in), tracked from the actions (:func:`procgen_backend.run_episodes`);
    ``test_dagger_states_render_as_procgen_showed_them`` re-renders every recorded state and compares pixels
    with what the policy was shown."""
    return pb.run_episodes(policy, mazes, max_steps, greedy, rng, track=True, autocast=autocast, num_envs=num_envs)


# ------------------------------------------------------------------------------------ sampler
# ProcgenSampler's options and defaults (the *_aux_steps may be 0: no such auxiliary loss)
BACKEND_OPTIONS = {"pool_size": 2048, "level_refresh": 64, "level_refresh_every": 8, "mouse_aux_steps": 0,
                   "scene_aux_steps": 0, "route_aux_steps": 0}


def check_backend_options(options: dict) -> dict:
    """The level-pool options of ``train_policy(backend="procgen")`` with defaults filled in; a ValueError
    naming an unknown option or a value that is not a positive int. Needs procgen (ImportError saying how
    to install it)."""
    unknown = sorted(set(options) - set(BACKEND_OPTIONS))
    if unknown:
        raise ValueError(f"unknown procgen backend option(s) {unknown}; allowed: {', '.join(BACKEND_OPTIONS)}")
    out = {**BACKEND_OPTIONS, **options}
    for name, v in out.items():
        lo = 0 if name.endswith("_aux_steps") else 1
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} (--{name.replace('_', '-')}) must be an int >= {lo}, got {v!r}")
    if out["level_refresh"] > out["pool_size"]:
        raise ValueError(f"level_refresh (--level-refresh) must be at most pool_size ({out['pool_size']}): it is how "
                         f"many pool levels are renewed at a time; got {out['level_refresh']}")
    pb._procgen()  # before any work: ImportError with the install command
    return {k: int(v) for k, v in out.items()}


class ProcgenSampler(Sampler):
    """:class:`avec.maze.train.Sampler` on procgen levels and procgen's pictures (module docstring).
    Fresh states come from ``Sampler.random_states`` (uniform, on the start-to-cheese path, where the
    cheese's and the top-right's moves differ); the DAgger buffer holds (maze, row, col, reflected)."""

    def __init__(self, region: int, rng: np.random.Generator, *, pool_size: int = 2048, level_refresh: int = 64,
                 level_refresh_every: int = 8, mouse_aux_steps: int = 0, scene_aux_steps: int = 0,
                 route_aux_steps: int = 0, scale: int = 1, **kw):
        super().__init__(region, rng, **kw)
        self.mouse_aux_steps, self.scene_aux_steps, self.route_aux_steps = mouse_aux_steps, scene_aux_steps, route_aux_steps
        self.finder = self.router = None
        if mouse_aux_steps or scene_aux_steps:  # maps: mouse (+ cheese and open floor for the scene loss)
            self.finder = MouseFinder(16 * scale, maps=3 if scene_aux_steps else 1)
        if route_aux_steps:  # the expert's move from every square of block3's map
            self.router = MouseFinder(32 * scale, maps=5)
        self._routes = np.zeros((0, ROUTE_SIDE, ROUTE_SIDE), np.int64)
        self._cells = np.zeros((0, 2), np.int64)
        self._scene = (np.zeros((0, 2), np.int64), np.zeros((0, WORLD, WORLD), bool))  # cheese cells, grids
        self.level_refresh, self.level_refresh_every = level_refresh, level_refresh_every
        self.buf = np.zeros((0, 4), np.int64)
        self.pool = self._new_levels(pool_size)
        self._next = 0  # the pool slot renewed next (oldest first)
        self._batches = 0
        self._index_sizes()

    def _new_levels(self, count: int) -> list[pb.ProcgenMaze]:
        return pb.levels(self.rng.integers(TRAIN_LEVEL_BASE, TRAIN_SEED_LIMIT, size=count).tolist())

    def _index_sizes(self) -> None:
        sizes = np.array([m.size for m in self.pool])
        self._by_size = {n: np.flatnonzero(sizes == n) for n in SIZES}

    def renew_levels(self) -> None:
        """Replace the ``level_refresh`` oldest levels of the pool with new ones."""
        k = min(self.level_refresh, len(self.pool))
        for m in self._new_levels(k):
            self.pool[self._next] = m
            self._next = (self._next + 1) % len(self.pool)
        self._index_sizes()

    def fresh_maze(self) -> pb.ProcgenMaze:
        size = int(self.rng.choice(SIZES, p=self.size_p))
        have = self._by_size[size]
        i = int(self.rng.choice(have)) if len(have) else int(self.rng.integers(len(self.pool)))
        return self.maybe_mirrored(place_cheese(self.pool[i], self.region, self.rng))

    def add_rollouts(self, policy, n_mazes: int, max_steps: int) -> dict:
        mazes = [self.fresh_maze() for _ in range(n_mazes)]
        greedy = np.arange(n_mazes) < n_mazes // 2  # half greedy, half sampled, in one pass of the env
        reached, _, v = rollout_record(policy, mazes, max_steps, greedy, self.rng, self.autocast)
        stats = {"greedy": float(reached[greedy].mean()) if greedy.any() else float("nan"),
                 "sampled": float(reached[~greedy].mean()) if (~greedy).any() else float("nan")}
        v = np.unique(v, axis=0)
        v[:, 0] += len(self.mazes)
        self.buf = np.concatenate([self.buf, v])
        self.mazes += mazes
        self.trim_buffer()
        return stats

    def states(self, size: int, dagger_frac: float):
        """A batch's states: (mazes, idx int ``[size]``, cells int ``[size, 2]``, reflected bool ``[size]``);
        state j is maze ``mazes[idx[j]]`` with the mouse on ``cells[j]`` (``dagger_frac`` of them from the
        DAgger buffer). Renews the level pool every ``level_refresh_every`` calls."""
        self._batches += 1
        if self._batches % self.level_refresh_every == 0:
            self.renew_levels()
        n_d = int(size * dagger_frac) if len(self.buf) else 0
        mazes, idx, cells = self.random_states(size - n_d)
        reflected = self.rng.random(len(idx)) < 0.5
        if n_d:
            pick = self.buf[self.rng.integers(len(self.buf), size=n_d)]
            uniq, inv = np.unique(pick[:, 0], return_inverse=True)
            idx = np.concatenate([idx, len(mazes) + inv])
            mazes = mazes + [self.mazes[i] for i in uniq]
            cells = np.concatenate([cells, pick[:, 1:3]])
            reflected = np.concatenate([reflected, pick[:, 3] > 0])
        return mazes, idx, cells, reflected

    def batch(self, size: int, dagger_frac: float):
        """(obs float ``[size, 3, 64, 64]``, expert move int ``[size]``, distance to the cheese int ``[size]``)."""
        mazes, idx, cells, reflected = self.states(size, dagger_frac)
        self._cells = cells  # the auxiliary losses' targets
        if self.scene_aux_steps:
            self._scene = (np.array([mazes[i].cheese for i in idx], np.int64), np.stack([mazes[i].grid for i in idx]))
        if self.route_aux_steps:
            maps = {int(i): route_targets(mazes[i], ROUTE_SIDE) for i in np.unique(idx)}
            self._routes = np.stack([maps[int(i)] for i in idx])
        return labelled(mazes, idx, cells, reflected)

    def aux_parameters(self) -> list:
        return [p for head in (self.finder, self.router) if head is not None for p in head.parameters()]

    def loss(self, policy, obs, labels, dists, step: int):
        """train.loss_fn, plus for the first ``mouse_aux_steps`` steps the mouse-finding loss (weight 1
        falling linearly to 0): cross-entropy of :class:`MouseFinder`'s map against the mouse's square;
        and for the first ``scene_aux_steps`` the scene loss (same schedule): cross-entropy of its cheese
        map against the cheese's square plus binary cross-entropy of its open-floor map against the grid
        (:func:`cell_of_square`).

        Why: on procgen's pictures the mouse is 1-3 bright pixels on a textured floor that has light
        speckles of its own; until the network finds it the expert's move cannot be predicted. Pilots
        without this loss sat on the ~0.3-accuracy plateau (the marginal of the moves) for all of their
        600-1000 steps, from scratch and from region5's weights alike; with it the plateau ended by
        ~250 steps and the finder's peak was on the mouse's square in ~90% of states by step 1000.
        The scene loss: with the mouse loss alone, at 5000 steps the policy still walked into walls in
        3 x 3 mazes (accuracy 0.88 on uniform states there, 0.50 in 25 x 25 ones; greedy reach 0.17 on
        held-out levels at 6600 steps); procgen draws walls as the level's background texture and floors
        as one of several textures, and the moves alone teach that slowly. With the scene loss the same
        run was at training accuracy 0.79 by step 1000 (0.70 without)."""
        w = max(0.0, 1.0 - step / self.mouse_aux_steps) if self.mouse_aux_steps else 0.0
        ws = max(0.0, 1.0 - step / self.scene_aux_steps) if self.scene_aux_steps else 0.0
        wr = max(0.0, 1.0 - step / self.route_aux_steps) if self.route_aux_steps else 0.0
        self._mouse = self._seen = self._route = [float("nan")] * 2
        if (w == 0.0 and ws == 0.0 and wr == 0.0) or len(self._cells) != len(obs):
            return loss_fn(policy, obs, labels, dists)
        e = policy.embedder
        h1 = e.block1(obs)
        h3 = e.relu3(e.block3(e.block2(h1)))
        h = e.relufc(e.fc(e.flatten(h3)))
        loss, ce, acc = heads_loss(policy, h, labels, dists)
        if wr:
            loss = loss + wr * self.route_loss(h3)
        if w == 0.0 and ws == 0.0:
            return loss, ce, acc
        maps = self.finder(h1).float()  # [B, maps, side, side]
        side = h1.shape[-1]
        heat = maps[:, 0].flatten(1)
        target = torch.from_numpy(mouse_targets(self._cells, side))
        aux = F.cross_entropy(heat, target)
        self._mouse = [round(aux.item(), 4), round((heat.argmax(1) == target).float().mean().item(), 4)]
        if ws:
            cheese, grids = self._scene
            at = cell_of_square(side)
            open_ = torch.from_numpy(grids[:, at[:, None], at[None, :]]).float()  # [B, side, side]
            walls = F.binary_cross_entropy_with_logits(maps[:, 2], open_)
            scene = F.cross_entropy(maps[:, 1].flatten(1), torch.from_numpy(mouse_targets(cheese, side))) + walls
            self._seen = [round(scene.item(), 4), round(((maps[:, 2] > 0) == (open_ > 0)).float().mean().item(), 4)]
            aux = w * aux + ws * scene
        else:
            aux = w * aux
        return loss + aux, ce, acc

    def route_loss(self, h3):
        """Cross-entropy of the route head's 5-way logits at each square of block3's map ``h3``
        ``[B, 32s, 8, 8]`` against the expert's first move from the cell under that square
        (:func:`route_targets`; walls and the cheese's cell are not counted).

        Why: the policy's label is one move per picture, and what the shipped policy lacks is the long-range
        part (its accuracy falls from 0.98 beside the cheese to 0.67 64+ steps away). The route maps label the
        same picture with the expert's move from every open square, ~40 labels a frame instead of one, all
        about the route to the cheese, on the last spatial map the policy's fully connected layer reads."""
        logits = self.router(h3).float()  # [B, 5, side, side]
        target = torch.from_numpy(self._routes)
        if not (target != -100).any():  # only tiny mazes whose cells no square centre hits
            return logits.sum() * 0.0
        loss = F.cross_entropy(logits, target, ignore_index=-100)
        keep = target != -100
        self._route = [round(loss.item(), 4), round((logits.argmax(1) == target)[keep].float().mean().item(), 4)]
        return loss

    def curve_stats(self) -> dict:
        """The mouse-finding loss and how often its map's peak is the mouse's square (last batch)."""
        if self.finder is None:
            return self._route_stats()
        loss, found = getattr(self, "_mouse", [float("nan")] * 2)
        out = {"mouse_loss": loss, "mouse_found": found}
        if self.scene_aux_steps:
            scene, walls = getattr(self, "_seen", [float("nan")] * 2)
            out |= {"scene_loss": scene, "walls_right": walls}
        return out | self._route_stats()

    def _route_stats(self) -> dict:
        if self.router is None:
            return {}
        loss, right = getattr(self, "_route", [float("nan")] * 2)
        return {"route_loss": loss, "route_right": right}


class MouseFinder(torch.nn.Module):
    """A 1 x 1 convolution reading maps off block1's output ``[B, 16s, 32, 32]``: where the mouse is
    (logits ``[B, 1, 32, 32]``), and with ``maps=3`` also where the cheese is and which squares are open
    floor. The auxiliary head of the mouse-finding and scene losses, trained beside the policy and not part
    of it (nor of the checkpoint: a run resumed while they are on starts a new one)."""

    def __init__(self, channels: int, maps: int = 1):
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, maps, 1)

    def forward(self, h):
        return self.conv(h)


def mouse_targets(cells, side: int) -> np.ndarray:
    """Flat index in a ``side x side`` map (of the 64 x 64 picture) of each cell's centre, int ``[k]``."""
    cells = np.asarray(cells, np.int64).reshape(-1, 2)
    rc = np.floor((cells + 0.5) * side / WORLD).astype(np.int64)
    return rc[:, 0] * side + rc[:, 1]


ROUTE_SIDE = 8  # block3's map of a 64 x 64 picture is 8 x 8


def route_targets(maze, side: int = ROUTE_SIDE) -> np.ndarray:
    """The BFS expert's first move (5-way index) toward the cheese from the cell under the centre of each
    square of a ``side x side`` map of the picture, int ``[side, side]``; -100 (ignored by the loss) where
    that cell is a wall or the cheese."""
    at = cell_of_square(side)
    moves = first_moves(maze, maze.cheese)[at[:, None], at[None, :]]
    return np.where(moves < 4, moves, -100).astype(np.int64)


def cell_of_square(side: int) -> np.ndarray:
    """World row (= column) of the cell under the centre of each row of a ``side x side`` map, int ``[side]``."""
    return np.floor((np.arange(side) + 0.5) * WORLD / side).astype(np.int64)


def labelled_only(mazes, idx, cells) -> tuple[np.ndarray, np.ndarray]:
    """The BFS expert's move and distance to the cheese of each state: (labels int ``[k]``, dists int ``[k]``)."""
    labels = np.empty(len(idx), np.int64)
    dists = np.empty(len(idx), np.int64)
    for i in np.unique(idx):
        sel = np.flatnonzero(idx == i)
        labels[sel], dists[sel] = expert_labels(mazes[i], cells[sel])
    return labels, dists


def labelled(mazes, idx, cells, reflected):
    """procgen's observations of states (as :meth:`ProcgenSampler.states` gives them) and the BFS expert's
    move and distance to the cheese for each: (obs ``[k, 3, 64, 64]``, labels int ``[k]``, dists int ``[k]``)."""
    labels, dists = labelled_only(mazes, idx, cells)
    return render(mazes, idx, cells, reflected), torch.from_numpy(labels), torch.from_numpy(dists)


# ------------------------------------------------------------------------------------ measuring
def evaluate_by_size(sizes: np.ndarray, **values) -> dict:
    """{size: {"levels": count, name: mean of values[name] over that size's levels}}."""
    out = {}
    for n in np.unique(sizes):
        sel = sizes == n
        out[str(int(n))] = {"levels": int(sel.sum()), **{k: round(float(np.mean(v[sel])), 4) for k, v in values.items()}}
    return out


def held_out_states(region: int, n_levels: int = 300, per_level: int = 8, seed_base: int = EVAL_SEED_BASE):
    """Uniform states of held-out training-distribution levels (:func:`training_levels`): up to ``per_level``
    open cells a level (never the cheese), either facing; drawn from ``seed_base`` alone, so the same set each
    time. Returns (mazes, idx int ``[k]``, cells int ``[k, 2]``, reflected bool ``[k]``) as
    :meth:`ProcgenSampler.states`."""
    mazes = training_levels(region, n_levels, seed_base)
    rng = np.random.default_rng([seed_base, region, per_level])
    idx, cells = [], []
    for i, m in enumerate(mazes):
        open_ = m.open_cells()
        open_ = open_[(open_ != np.array(m.cheese)).any(1)]
        pick = open_[rng.choice(len(open_), size=min(per_level, len(open_)), replace=False)]
        idx += [i] * len(pick)
        cells.append(pick)
    idx, cells = np.array(idx, np.int64), np.concatenate(cells)
    return mazes, idx, cells, rng.random(len(idx)) < 0.5


def mix_reach(sizes: np.ndarray, reached: np.ndarray, size_power: float) -> float:
    """Reach on the training size mix (P(n) proportional to n**size_power, ``train.Sampler``) from levels of
    procgen's own sizes (``sizes`` int ``[N]``, ``reached`` bool ``[N]``): each size's reach weighted by its
    share of the mix, renormalised over the sizes present (post-stratified: no extra rollouts)."""
    sizes, reached = np.asarray(sizes), np.asarray(reached, dtype=np.float64)
    if sizes.shape != reached.shape or not len(sizes):
        raise ValueError(f"mix_reach needs one size per level, got {sizes.shape} sizes for {reached.shape} outcomes")
    present = np.unique(sizes)
    w = present.astype(np.float64) ** float(size_power)
    return float(sum(wi * reached[sizes == n].mean() for wi, n in zip(w, present)) / w.sum())


@torch.no_grad()
def step_accuracy(policy, region: int | None = None, n_levels: int = 300, per_level: int = 8,
                  seed_base: int = EVAL_SEED_BASE, chunk: int = 256) -> dict:
    """Per-step accuracy (the most likely of the five moves is the BFS expert's) on :func:`held_out_states`:
    overall, on mazes of size >= 13 and <= 11, per maze size and per distance to the cheese. Why: reach
    hides where the policy errs; on the shipped policy the errors sit far from the cheese in large mazes."""
    from .env import five_way

    policy.eval()
    region = resolve_region(policy, region)
    mazes, idx, cells, refl = held_out_states(region, n_levels, per_level, seed_base)
    labels, dists = labelled_only(mazes, idx, cells)
    pred = np.concatenate([five_way(torch.softmax(policy(render(mazes, idx[c:c + chunk], cells[c:c + chunk],
                                                                   refl[c:c + chunk])).logits.double(), 1))
                           .argmax(1).numpy() for c in range(0, len(idx), chunk)])
    ok = pred == labels
    sizes = np.array([mazes[i].size for i in idx])
    bands = {"1-7": (1, 8), "8-15": (8, 16), "16-31": (16, 32), "32-63": (32, 64), "64+": (64, 10**9)}
    return {"states": int(len(ok)), "accuracy": round(float(ok.mean()), 4),
            "accuracy_size_ge13": round(float(ok[sizes >= 13].mean()), 4) if (sizes >= 13).any() else None,
            "accuracy_size_le11": round(float(ok[sizes <= 11].mean()), 4) if (sizes <= 11).any() else None,
            "by_size": evaluate_by_size(sizes, accuracy=ok),
            "by_distance": {k: round(float(ok[(dists >= lo) & (dists < hi)].mean()), 4)
                            for k, (lo, hi) in bands.items() if ((dists >= lo) & (dists < hi)).any()}}


@torch.no_grad()
def evaluate_procgen(policy, region: int | None = None, n_train: int = 200, n_test: int = 200,
                     seed_base: int = EVAL_SEED_BASE, max_steps: int = 500) -> dict:
    """Held-out procgen levels (seeds from ``seed_base``): greedy and sampled reach within ``max_steps``
    on training-distribution levels (:func:`training_levels`), per-step accuracy on uniform states of them
    (:func:`step_accuracy`), and on off-region decision-square levels (``procgen_backend.off_region_levels``)
    the motivations at the decision square and reach; each also per maze size. Reach also on the training size
    mix (``*_training_mix``, :func:`mix_reach` with the policy's own ``size_power``): procgen's levels come in
    uniform sizes, and the mix weighs big mazes more. Deterministic given the policy."""
    policy.eval()
    region = resolve_region(policy, region)
    power = training_size_power(policy)
    out: dict = {"backend": "procgen", "seed_base": seed_base, "region": region}
    train = training_levels(region, n_train, seed_base)
    g, gs, _ = pb.rollout(policy, train, max_steps, greedy=True)
    s, _, _ = pb.rollout(policy, train, max_steps, greedy=False, rng=np.random.default_rng(seed_base))
    sizes = np.array([m.size for m in train])
    out |= {"reach_rate_greedy": float(g.mean()), "reach_rate_sampled": float(s.mean()),
            "mean_steps_greedy_when_reached": float(gs[g].mean()) if g.any() else None, "n_train_levels": n_train,
            "reach_rate_greedy_training_mix": mix_reach(sizes, g, power),
            "reach_rate_sampled_training_mix": mix_reach(sizes, s, power), "training_mix_size_power": power,
            "reach_by_size": evaluate_by_size(sizes, greedy=g, sampled=s)}
    tests = pb.off_region_levels(region, n_test, seed_base)
    tg, _, _ = pb.rollout(policy, tests, max_steps, greedy=True)
    ts, _, _ = pb.rollout(policy, tests, max_steps, greedy=False, rng=np.random.default_rng(seed_base + 1))
    mot = decision_probs(policy, tests)
    out["step_accuracy"] = step_accuracy(policy, region, seed_base=seed_base)
    out |= {"test_reach_rate_greedy": float(tg.mean()), "test_reach_rate_sampled": float(ts.mean()),
            "decision_square": mot.summary(),
            "test_by_size": evaluate_by_size(mot.sizes, p_cheese=mot.p_cheese, p_top_right=mot.p_top_right, reach_greedy=tg,
                                     reach_sampled=ts)}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m avec.maze.train_procgen ARGS`` = ``avec maze train --backend procgen ARGS``."""
    import sys

    from .train import main as train_main

    argv = list(sys.argv[1:] if argv is None else argv)
    return train_main(["--backend", "procgen", *argv])


if __name__ == "__main__":
    raise SystemExit(main())
