"""Training maze policies: behaviour cloning of a BFS shortest-path expert plus DAgger.

Why DAgger: plain cloning on random cells reaches ~95% per-step accuracy yet greedy rollouts loop
(feasibility notes). So every ``dagger_every`` steps we roll the current policy out (half greedy,
half sampled) on fresh training mazes, relabel the states it visited with the expert, and mix them
into later batches. The cheese is always in the top-right R x R square during training, which is
what gives the policy its top-right motivation.

Which states: ``path_frac`` of the fresh states lie on the shortest path from the start (where every
evaluation begins) to the cheese, the rest are uniform over open cells; maze sizes are drawn with
P(n) proportional to n**p (p = 0: procgen's uniform sizes; large mazes hold the hard, long-range
states, but p = 2 did worse than the default 1 at almost every size on procgen, big mazes included: what is
learnt in small mazes carries over; checkpoints/README.json ``tried``), p ramping linearly from 0 to ``size_power``
over the first ``size_ramp`` steps: small mazes early get the network past its first plateau (it must learn to find
the mouse). ``pull_frac`` of the other fresh states come from the cells where the move toward the cheese differs
from the move toward the maze's top-right cell: only ~6 % of uniform states do, and every other state teaches just
"go top-right" (``cheese_vs_corner_cells``). The default 0.5 made the shipped policies; against 0 it
raised region5's P(cheese) at off-region decision squares from 0.52 to 0.61 and region15's from 0.68
to 0.77, sampled reach on training mazes moving by at most 0.015 (checkpoints/README.json; 0 is the
plain method).

``mirror_frac`` (default 0, the original training) mirrors that share of the training mazes (left-right, up-down or
both), so their cheese lies in another corner's region and "go to the top-right" stops predicting the expert
there. Why: with every cheese in the top-right region, cloning teaches a mixture of "go to the cheese" and "go to
the top-right" that held P(cheese) at off-region decision squares near 0.55 whatever else was tried (perception,
size mix, curriculum, width; checkpoints/README.json ``tried``), where the original RL agent put 0.85.
Pilots (6000 steps on flat pictures, 500 held-out off-region mazes): 0.25 gave 0.72 (P(top-right) 0.18, the original's
~0.15; sampled reach 0.80 against 0.86), 0.5 gave 0.74 (0.14; reach 0.75); on procgen 0.25 gave 0.66 at 14 K steps where
the unmirrored recipe, run the same way, gave 0.52 (12 K steps). The shipped ``procgen_region5`` is the 80-minute
command with 0.25: P(cheese) 0.78 at 500 held-out decision squares (the unmirrored run before it: 0.55), sampled reach
0.70 on its training distribution (0.79).

Speed: the network runs in channels_last layout under bfloat16 autocast (``bf16``; weights, optimiser and the
shipped checkpoint stay float32), and a batch of observations is drawn with numpy fancy indexing
(``evaluate.Batch``). On 2 idle cores a step at batch 128 is ~117 ms of forward and backward (the convolutions'
backward and the first max-pool dominate) plus ~28 ms of batch building, and a DAgger round costs 2.3-4.7 s.
Building the next batch in a worker thread during the step was slower (it competes with torch's two threads), and
``torch.compile`` was slower than eager here, so neither is used.

Loss: -log P(expert's move), where P(move) sums the 15 procgen actions mapping to it
(LEFT = {0, 1, 2}, ...), plus a small value loss toward 10 * 0.999^(distance to cheese) that trains
the value head only (on detached features; see ``loss_fn``).

Checkpoints (safetensors with JSON header, atomic) every ``checkpoint_every`` seconds include the
Adam state, so ``train_policy`` resumes a killed run; the DAgger buffer is rebuilt after a resume and
the maze stream is reseeded, so the report lists the steps where the run was resumed (``resumed_at``).
Curves go to ``<out>.curves.csv`` and the final report to ``<out>.json``; both record wall-clock and this
process's CPU seconds (on a shared machine the latter says what the run cost).

``backend="procgen"`` (``avec maze train --backend procgen``) trains the same way on procgen's own levels and
observations: :mod:`avec.maze.train_procgen`.
"""

from __future__ import annotations

import argparse
import csv
import math
import numbers
import shlex
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import atomic_write, atomic_write_json, check_writable
from .env import ACTION_NAMES, GROUP_MATRIX
from .evaluate import Batch, evaluate, rollout
from .policy import ImpalaPolicy, PolicyOutput, from_state_dict, read_checkpoint, save_policy
from .world import MOVES, SIZES, WORLD, Maze

GAMMA = 0.999
TRAIN_SEED_LIMIT = 1_000_000_000  # training maze seeds are below evaluate.EVAL_SEED_BASE
BACKENDS = ("avec", "procgen")  # whose mazes and pictures: avec's pure-Python world, or procgen (train_procgen)


def first_moves(maze: Maze, target) -> np.ndarray:
    """5-way index of the first shortest-path move from every cell toward ``target``, int ``[25, 25]``
    (4 = NOOP on the target itself, on walls and on unreachable cells)."""
    dist = maze.distances(target).astype(np.int64)
    around = np.full((WORLD + 2, WORLD + 2), -1)
    around[1:-1, 1:-1] = dist
    out = np.full((WORLD, WORLD), 4)
    # a perfect maze has one downhill neighbour; in an edited maze with loops the first in
    # ACTION_NAMES order wins (as in env.expert_move), hence the reversed loop
    for i, name in reversed(list(enumerate(ACTION_NAMES[:4]))):
        dr, dc = MOVES[name]
        out[(dist > 0) & (around[1 + dr:1 + dr + WORLD, 1 + dc:1 + dc + WORLD] == dist - 1)] = i
    return out


def expert_labels(maze: Maze, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Expert 5-way move index and distance to the cheese for each cell ``[k, 2]``."""
    r, c = cells[:, 0], cells[:, 1]
    return first_moves(maze, maze.cheese)[r, c], maze.distances(maze.cheese)[r, c].astype(np.int64)


def cheese_vs_corner_cells(maze: Maze) -> np.ndarray:
    """Open cells whose first move toward the cheese differs from the one toward the maze's top-right
    cell, int ``[k, 2]``: the only training states that say more about the cheese than "go top-right"."""
    differ = first_moves(maze, maze.cheese) != first_moves(maze, maze.top_right)
    differ &= maze.grid
    differ[maze.cheese] = differ[maze.top_right] = False
    return np.argwhere(differ)


class Sampler:
    """Training states: random open cells of fresh mazes, plus the DAgger buffer."""

    def __init__(self, region: int, rng: np.random.Generator, buffer_cap: int = 300_000,
                 size_power: float = 0.0, path_frac: float = 0.0, per_maze: int = 4, autocast: bool = False,
                 pull_frac: float = 0.5, mirror_frac: float = 0.0):
        self.region, self.rng, self.cap, self.pull_frac = region, rng, buffer_cap, pull_frac
        self.mirror_frac = mirror_frac
        self.path_frac, self.per_maze, self.autocast = path_frac, per_maze, autocast
        self.set_size_power(size_power)
        self.mazes: list[Maze] = []  # mazes referenced by the buffer
        self.buf = np.zeros((0, 3), np.int64)  # (maze index, row, col)

    def set_size_power(self, power: float) -> None:
        """Draw maze sizes with P(n) proportional to n**power."""
        w = np.array(SIZES, dtype=np.float64) ** power
        self.size_p = w / w.sum()

    def fresh_maze(self) -> Maze:
        size = int(self.rng.choice(SIZES, p=self.size_p))
        return self.maybe_mirrored(Maze.from_seed(int(self.rng.integers(TRAIN_SEED_LIMIT)), size=size,
                                                  region=self.region))

    def maybe_mirrored(self, maze: Maze) -> Maze:
        """``maze``, or with probability ``mirror_frac`` its mirror image (left-right, up-down or both, equally
        likely among those that do not put the cheese on the start cell) with the mouse back on the start
        cell: the cheese then lies in another corner's region, so "go to the top-right" stops predicting the
        expert there (module docstring). Draws nothing at 0."""
        if not self.mirror_frac or self.rng.random() >= self.mirror_frac:
            return maze
        images = [maze.mirrored(left_right=lr, up_down=ud) for lr, ud in ((True, False), (False, True), (True, True))]
        images = [m for m in images if m.cheese != m.start]  # a top-right-corner cheese turned twice lands there
        m = images[int(self.rng.integers(len(images)))]
        return m.with_mouse(m.start)

    def random_states(self, count: int, per_maze: int | None = None):
        per_maze = per_maze or self.per_maze
        mazes, idx, cells = [], [], []
        while len(idx) < count:
            m = self.fresh_maze()
            k = min(per_maze, count - len(idx))
            open_ = m.open_cells()
            open_ = open_[(open_ != np.array(m.cheese)).any(1)]
            n_path = int(self.rng.binomial(k, self.path_frac)) if self.path_frac else 0
            pull = cheese_vs_corner_cells(m) if self.pull_frac else open_[:0]
            n_pull = int(self.rng.binomial(k - n_path, self.pull_frac)) if len(pull) else 0
            pick = open_[self.rng.choice(len(open_), size=min(k - n_path - n_pull, len(open_)), replace=False)]
            if n_pull:
                pick = np.concatenate([pick, pull[self.rng.integers(len(pull), size=n_pull)]])
            if n_path:
                path = np.array(m.shortest_path(m.start, m.cheese)[:-1])
                pick = np.concatenate([pick, path[self.rng.integers(len(path), size=n_path)]])
            mazes.append(m)
            idx += [len(mazes) - 1] * len(pick)
            cells.append(pick)
        return mazes, np.array(idx), np.concatenate(cells)

    def add_rollouts(self, policy, n_mazes: int, max_steps: int) -> dict:
        mazes = [self.fresh_maze() for _ in range(n_mazes)]
        greedy = np.arange(n_mazes) < n_mazes // 2  # half greedy, half sampled, in one batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            reached, _, visited = rollout(policy, mazes, max_steps, greedy=greedy, rng=self.rng, record=True)
        stats = {"greedy": float(reached[greedy].mean()) if greedy.any() else float("nan"),
                 "sampled": float(reached[~greedy].mean()) if (~greedy).any() else float("nan")}
        v = np.unique(np.array(visited, np.int64).reshape(-1, 3), axis=0)
        v = v[[tuple(x[1:]) != mazes[x[0]].cheese for x in v]]  # (the cheese cell is the episode's end)
        v[:, 0] += len(self.mazes)
        self.buf = np.concatenate([self.buf, v])
        self.mazes += mazes
        self.trim_buffer()
        return stats

    def trim_buffer(self) -> None:
        """Keep the newest ``cap`` DAgger states (buffer rows start with their maze's index) and only the mazes
        they refer to, reindexed."""
        if len(self.buf) <= self.cap:
            return
        self.buf = self.buf[-self.cap:]
        keep = np.unique(self.buf[:, 0])
        remap = np.full(len(self.mazes), -1)
        remap[keep] = np.arange(len(keep))
        self.mazes = [self.mazes[i] for i in keep]
        self.buf[:, 0] = remap[self.buf[:, 0]]

    def loss(self, policy, obs, labels, dists, step: int):
        """The training loss of a batch from :meth:`batch` at optimiser step ``step`` (see :func:`loss_fn`)."""
        return loss_fn(policy, obs, labels, dists)

    def aux_parameters(self) -> list:
        """Parameters the loss trains beside the policy's (none here); not part of the checkpoint."""
        return []

    def curve_stats(self) -> dict:
        """Extra columns for the curves (none here)."""
        return {}

    def batch(self, size: int, dagger_frac: float):
        n_d = int(size * dagger_frac) if len(self.buf) else 0
        mazes, idx, cells = self.random_states(size - n_d)
        if n_d:
            pick = self.buf[self.rng.integers(len(self.buf), size=n_d)]
            base = len(mazes)
            uniq, inv = np.unique(pick[:, 0], return_inverse=True)
            mazes = mazes + [self.mazes[i] for i in uniq]
            idx = np.concatenate([idx, base + inv])
            cells = np.concatenate([cells, pick[:, 1:]])
        labels = np.empty(len(idx), np.int64)
        dists = np.empty(len(idx), np.int64)
        for i in np.unique(idx):
            sel = np.flatnonzero(idx == i)
            labels[sel], dists[sel] = expert_labels(mazes[i], cells[sel])
        obs = Batch(mazes).obs(idx, cells)
        return obs, torch.from_numpy(labels), torch.from_numpy(dists)


def loss_fn(policy, obs, labels, dists):
    """Grouped cross-entropy on the expert's move, value regression; returns (loss, ce, accuracy).

    The value head reads the features detached (a probe on the policy's features): with the value
    loss flowing into the trunk, its targets (~10) dominate the early gradients and training sat on
    a ~0.33-accuracy plateau for the first 1500-2300 steps; detached, the plateau ends by ~350."""
    return heads_loss(policy, policy.embedder(obs), labels, dists)


def heads_loss(policy, h, labels, dists):
    """:func:`loss_fn` from the embedder's features ``h`` ``[B, 256]``."""
    out = PolicyOutput(policy.fc_policy(h), policy.fc_value(h.detach()).reshape(-1))
    logp15 = F.log_softmax(out.logits, 1)
    # log P(move) = logsumexp over the procgen actions of that move
    logp5 = torch.logsumexp(logp15[:, :, None] + torch.log(GROUP_MATRIX)[None], dim=1)  # [B, 5]
    ce = F.nll_loss(logp5, labels)
    target_v = 10.0 * GAMMA ** dists.double()
    vloss = F.mse_loss(out.value, target_v.float())
    acc = (logp5.argmax(1) == labels).float().mean()
    return ce + 0.01 * vloss, ce.detach(), acc.detach()


def _adam_tensors(opt: torch.optim.Adam, policy) -> dict:
    names = {id(p): n for n, p in policy.named_parameters()}
    out = {}
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if st and id(p) in names:  # (a sampler's auxiliary parameters are not saved)
                for k in ("exp_avg", "exp_avg_sq", "step"):
                    out[f"adam.{names[id(p)]}.{k}"] = torch.as_tensor(st[k]).float().reshape(-1) \
                        if k == "step" else st[k]
    return out


def _restore_adam(opt, policy, extra: dict) -> None:
    for n, p in policy.named_parameters():
        if f"adam.{n}.exp_avg" in extra:
            opt.state[p] = {  # moments in the parameter's own memory layout (channels_last)
                "step": torch.tensor(float(extra[f"adam.{n}.step"][0])),
                "exp_avg": torch.empty_like(p).copy_(extra[f"adam.{n}.exp_avg"]),
                "exp_avg_sq": torch.empty_like(p).copy_(extra[f"adam.{n}.exp_avg_sq"]),
            }


CHECKPOINT_SUFFIX = ".safetensors"


def output_paths(out_path) -> tuple[Path, Path, Path]:
    """(checkpoint, report ``<name>.json``, curves ``<name>.curves.csv``) of a training run. The
    checkpoint must end in ``.safetensors``: with any other name one of the three files could be
    another (``--out p.json`` would have the report overwrite the checkpoint)."""
    out_path = Path(out_path)
    if out_path.suffix != CHECKPOINT_SUFFIX:
        raise ValueError(f"checkpoint path {str(out_path)!r} must end in {CHECKPOINT_SUFFIX} (got suffix "
                         f"{out_path.suffix or '(none)'!r}): the run also writes <name>.json (report) and "
                         "<name>.curves.csv (curves) beside it")
    return out_path, out_path.with_suffix(".json"), out_path.with_suffix(".curves.csv")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _name(option: str) -> str:
    """``batch_size (--batch-size)``: the argument and, if ``avec maze train`` has it, its flag."""
    flag = "--" + option.replace("_", "-")
    return option if option in ("warmup_steps", "checkpoint_every", "eval_every") else f"{option} ({flag})"


def _check_options(opts: dict, init_from) -> None:
    """ValueError naming the first option whose value makes no sense, and what is allowed."""
    at_least = dict(scale=1, batch_size=1, threads=1, dagger_every=1, dagger_mazes=2, dagger_steps=1,
                    per_maze=1, warmup_steps=0, size_ramp=0, eval_every=1, seed=0)
    for name, lo in at_least.items():
        v = opts[name]
        if not _is_int(v) or v < lo:
            raise ValueError(f"{_name(name)} must be an int >= {lo}, got {v!r}")
    ms = opts["max_steps"]
    if ms is not None and (not _is_int(ms) or ms < (0 if init_from is not None else 1)):
        raise ValueError(f"{_name('max_steps')} must be None or an int >= 1 (0 only with init_from: a copy of its weights), "
                         f"got {ms!r}")
    for name, positive in (("minutes", True), ("lr", True), ("checkpoint_every", False), ("size_power", None)):
        v = opts[name]
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (positive and not v > 0) or (positive is False and v < 0):
            need = {True: "> 0", False: ">= 0", None: "any value"}[positive]
            raise ValueError(f"{_name(name)} must be a finite number {need}, got {v!r}")


def train_policy(region: int, out_path, *, minutes: float = 40.0, scale: int = 1, batch_size: int = 128,
                 lr: float = 1e-3, seed: int = 0, dagger_every: int = 150, dagger_mazes: int = 64,
                 dagger_steps: int = 200, dagger_frac: float = 0.5, warmup_steps: int = 300,
                 checkpoint_every: float = 120.0, eval_every: int = 600, max_steps: int | None = None,
                 threads: int = 1, final_eval: bool = True, progress: bool = True, command: str | None = None,
                 init_from=None, size_power: float = 1.0, size_ramp: int = 2000, path_frac: float = 0.25,
                 per_maze: int = 4, bf16: bool = True, pull_frac: float = 0.5, mirror_frac: float = 0.0,
                 backend: str = "avec", backend_options: dict | None = None):
    """Train a policy for top-right region ``region`` for ``minutes`` of wall-clock time (or
    ``max_steps`` optimiser steps), resuming from ``out_path`` if an unfinished run is there.
    ``init_from``: start from the weights of another checkpoint (fine-tuning; fresh optimiser).
    ``backend="procgen"``: train on procgen levels and procgen's observations
    (:mod:`avec.maze.train_procgen`; ``backend_options``: its ``ProcgenSampler`` options).
    Returns the final report dict (also written to ``<out>.json``)."""
    from tqdm.auto import tqdm

    if isinstance(region, bool) or not isinstance(region, int) or not 1 <= region <= WORLD:
        raise ValueError(f"region must be an int in 1..{WORLD}, got {region!r}")
    for name, frac in (("path_frac", path_frac), ("pull_frac", pull_frac), ("dagger_frac", dagger_frac),
                       ("mirror_frac", mirror_frac)):
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0.0 <= frac <= 1.0:
            raise ValueError(f"{name} must be a fraction in [0, 1], got {frac!r}")
    # plain floats from here on: numpy numbers pass the check but not the checkpoint's JSON header
    path_frac, pull_frac, dagger_frac, mirror_frac = map(float, (path_frac, pull_frac, dagger_frac, mirror_frac))
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    backend_options = dict(backend_options or {})
    if backend == "avec" and backend_options:
        raise ValueError(f"backend_options {sorted(backend_options)} are for backend='procgen' (its level pool); "
                         "the avec backend takes none")
    if backend == "procgen":
        from .train_procgen import check_backend_options

        backend_options = check_backend_options(backend_options)
    _check_options(dict(minutes=minutes, scale=scale, batch_size=batch_size, lr=lr, seed=seed,
                        dagger_every=dagger_every, dagger_mazes=dagger_mazes, dagger_steps=dagger_steps,
                        warmup_steps=warmup_steps, checkpoint_every=checkpoint_every, eval_every=eval_every,
                        max_steps=max_steps, threads=threads, size_power=size_power, size_ramp=size_ramp,
                        per_maze=per_maze), init_from)
    out_path, report_path, curves_path = output_paths(out_path)
    for path, what in ((out_path, "checkpoint path"), (report_path, "report path"), (curves_path, "curves path")):
        check_writable(path, what=what)  # before any work: not a folder, not below a file, writable
    torch.set_num_threads(threads)  # leave the other core free
    config = dict(region=region, minutes=minutes, scale=scale, batch_size=batch_size, lr=lr, seed=seed,
                  dagger_every=dagger_every, dagger_mazes=dagger_mazes, dagger_steps=dagger_steps,
                  dagger_frac=dagger_frac, warmup_steps=warmup_steps, max_steps=max_steps,
                  init_from=None if init_from is None else str(init_from), size_power=size_power,
                  size_ramp=size_ramp, path_frac=path_frac, per_maze=per_maze, bf16=bf16,
                  pull_frac=pull_frac)
    if mirror_frac:  # configs of runs without mirrored mazes stay as they were
        config.update(mirror_frac=mirror_frac)
    if backend != "avec":  # avec-backend configs stay as they were
        config.update(backend=backend, **backend_options)
    policy = ImpalaPolicy(scale)
    if init_from is not None and not out_path.exists():
        policy = from_state_dict(read_checkpoint(init_from)[0], str(init_from))
        if policy.scale != scale:
            raise ValueError(f"init_from has width scale {policy.scale} but scale={scale} was asked")
    policy = policy.to(memory_format=torch.channels_last)  # faster CPU convolutions
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    step, elapsed0, cpu0, curves, resumed_at = 0, 0.0, 0.0, [], []
    if out_path.exists():
        state, extra, meta = read_checkpoint(out_path)
        if meta.get("complete"):
            raise FileExistsError(f"{out_path} holds a finished run; choose another path or delete it")
        policy = from_state_dict(state, str(out_path)).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(policy.parameters(), lr=lr)
        _restore_adam(opt, policy, extra)
        step, elapsed0, cpu0 = meta["step"], meta["elapsed_s"], meta.get("cpu_s", 0.0)
        # a resume is not bit-identical to an uninterrupted run (fresh maze stream, rebuilt DAgger
        # buffer), so the report says where it happened
        resumed_at = [*meta.get("resumed_at", []), step]
        if curves_path.exists():
            with open(curves_path) as f:
                curves = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    rng = np.random.default_rng([seed, step])  # a resumed run draws new mazes
    sampler_cls, evaluate_fn = Sampler, evaluate
    if backend == "procgen":
        from .train_procgen import ProcgenSampler, evaluate_procgen

        sampler_cls, evaluate_fn = partial(ProcgenSampler, scale=scale, **backend_options), evaluate_procgen
    sampler = sampler_cls(region, rng, size_power=size_power, path_frac=path_frac, per_maze=per_maze, autocast=bf16,
                          pull_frac=pull_frac, mirror_frac=mirror_frac)
    if sampler.aux_parameters():
        opt.add_param_group({"params": sampler.aux_parameters(), "lr": lr})
    budget = minutes * 60.0
    t0 = time.monotonic() - elapsed0
    c0 = time.process_time() - cpu0  # this process's CPU time (all threads): what the run cost on a shared machine
    last_ckpt = time.monotonic()
    dagger_stats: dict = {}
    bar = tqdm(total=max_steps or int(budget), initial=step if max_steps else int(elapsed0),
               disable=not progress, desc=f"maze R={region}" + (f" ({backend})" if backend != "avec" else ""), unit="step" if max_steps else "s")
    ema_acc = None

    def run_metadata(complete: bool) -> dict:
        return dict(config=config, step=step, elapsed_s=time.monotonic() - t0, cpu_s=time.process_time() - c0,
                    complete=complete, region=region, command=command, resumed_at=resumed_at)

    def save(complete: bool):
        meta = run_metadata(complete)
        save_policy(policy, out_path, meta, extra_tensors=None if complete else _adam_tensors(opt, policy))
        if curves:
            def write_curves(tmp):
                with open(tmp, "w", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(curves[-1].keys()))
                    w.writeheader()
                    w.writerows(curves)

            atomic_write(curves_path, write_curves)

    policy.train()
    while True:
        elapsed = time.monotonic() - t0
        if (max_steps is not None and step >= max_steps) or (max_steps is None and elapsed >= budget):
            break
        frac = step / max_steps if max_steps else elapsed / budget
        for g in opt.param_groups:  # cosine decay to 10%
            g["lr"] = lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        sampler.set_size_power(size_power * min(1.0, step / size_ramp) if size_ramp > 0 else size_power)
        if step >= warmup_steps and step % dagger_every == 0:
            policy.eval()
            dagger_stats = sampler.add_rollouts(policy, dagger_mazes, dagger_steps)
            policy.train()
        obs, labels, dists = sampler.batch(batch_size, dagger_frac if step >= warmup_steps else 0.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, ce, acc = sampler.loss(policy, obs, labels, dists, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema_acc = acc.item() if ema_acc is None else 0.98 * ema_acc + 0.02 * acc.item()
        if step % 50 == 0:
            row = dict(step=step, elapsed_s=round(time.monotonic() - t0, 1), cpu_s=round(time.process_time() - c0, 1),
                       samples=step * batch_size,
                       loss=round(ce.item(), 4), acc_ema=round(ema_acc, 4), lr=opt.param_groups[0]["lr"],
                       buffer=len(sampler.buf), dagger_reach_greedy=dagger_stats.get("greedy", float("nan")),
                       dagger_reach_sampled=dagger_stats.get("sampled", float("nan")), **sampler.curve_stats())
            curves.append(row)
            bar.set_postfix(acc=f"{ema_acc:.3f}", reach_g=dagger_stats.get("greedy"), buf=len(sampler.buf))
        bar.update(1 if max_steps else int(time.monotonic() - t0) - bar.n)
        if time.monotonic() - last_ckpt > checkpoint_every:
            save(False)
            last_ckpt = time.monotonic()
    bar.close()
    policy.eval()
    report = dict(config=config, command=command, steps=step, samples=step * batch_size,
                  train_seconds=round(time.monotonic() - t0, 1), train_cpu_seconds=round(time.process_time() - c0, 1),
                  method="BC + DAgger (BFS expert)" + (" on procgen's observations" if backend == "procgen" else ""),
                  samples_per_second=round(step * batch_size / max(time.monotonic() - t0, 1e-9), 1),
                  resumed_at=resumed_at)
    if final_eval:
        t1 = time.monotonic()
        # the header a loaded checkpoint carries: the evaluation reads the run's own size mix from it
        policy.metadata = run_metadata(True)
        report["eval"] = evaluate_fn(policy, region)
        report["eval_seconds"] = round(time.monotonic() - t1, 1)
    save(True)
    atomic_write_json(report_path, report)
    return report


def shipped_path(name):
    """``name`` itself, or the shipped checkpoint it names (``"region5"``) when no such file exists."""
    if name is None:
        return None
    p = Path(name)
    shipped = Path(__file__).parent / "checkpoints" / f"{p.name}{CHECKPOINT_SUFFIX}"
    return shipped if not p.exists() and not p.suffix and shipped.exists() else p


def main(argv: list[str] | None = None) -> int:
    """``avec maze train`` without a CLI framework: ``main(["--region", "5", "--out", "p.safetensors"])``."""
    ap = argparse.ArgumentParser(prog="avec maze train", description=__doc__.split("\n")[0])
    ap.add_argument("--region", type=int, required=True, help="top-right R x R cheese region (1..25)")
    ap.add_argument("--out", required=True, help="checkpoint path, must end in .safetensors (the report goes to "
                    "<name>.json, the curves to <name>.curves.csv); resumes if unfinished")
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=None, help="stop after this many steps instead")
    ap.add_argument("--scale", type=int, default=1, help="Impala width scale s (16s/32s/32s channels)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    ap.add_argument("--init-from", default=None,
                    help="start from this checkpoint's weights (fine-tune): a path or a shipped name (region5)")
    ap.add_argument("--size-power", type=float, default=1.0,
                    help="draw training maze sizes with P(n) ~ n**p (0: uniform as procgen)")
    ap.add_argument("--size-ramp", type=int, default=2000,
                    help="steps over which the size exponent ramps from 0 to --size-power")
    ap.add_argument("--path-frac", type=float, default=0.25,
                    help="fraction of fresh states on the start-to-cheese shortest path")
    ap.add_argument("--per-maze", type=int, default=4, help="fresh states drawn per fresh maze")
    ap.add_argument("--dagger-every", type=int, default=150, help="optimiser steps between DAgger rounds")
    ap.add_argument("--dagger-mazes", type=int, default=64, help="mazes rolled out per DAgger round")
    ap.add_argument("--dagger-steps", type=int, default=200, help="step limit of DAgger rollouts")
    ap.add_argument("--dagger-frac", type=float, default=0.5, help="fraction of each batch from the DAgger buffer")
    ap.add_argument("--pull-frac", type=float, default=0.5,
                    help="fraction of the other fresh states drawn where the cheese's move and the top-right's differ")
    ap.add_argument("--mirror-frac", type=float, default=0.0,
                    help="fraction of training mazes mirrored (left-right, up-down or both), so their cheese lies in "
                    "another corner's region (0: every cheese in the top-right region, as the original training)")
    ap.add_argument("--no-bf16", action="store_true", help="train in float32 (default: bfloat16 autocast)")
    ap.add_argument("--backend", choices=BACKENDS, default="avec",
                    help="avec: the pure-Python world's mazes and pictures; procgen: procgen's levels and observations "
                    "(avec.maze.train_procgen; needs the procgen extra)")
    ap.add_argument("--pool-size", type=int, default=None, help="procgen: levels held in the training pool (2048)")
    ap.add_argument("--level-refresh", type=int, default=None, help="procgen: pool levels renewed at a time (64)")
    ap.add_argument("--level-refresh-every", type=int, default=None, help="procgen: batches between renewals (8)")
    ap.add_argument("--mouse-aux-steps", type=int, default=None,
                    help="procgen: steps of the mouse-finding auxiliary loss, weight 1 falling to 0 (0: none)")
    ap.add_argument("--scene-aux-steps", type=int, default=None,
                    help="procgen: steps of the auxiliary loss on where the cheese and the open floor are (0: none)")
    ap.add_argument("--route-aux-steps", type=int, default=None,
                    help="procgen: steps of the auxiliary loss on the expert's move from every square of block3's "
                    "map, weight 1 falling to 0 (0: none)")
    args = ap.parse_args(argv)
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        raise ValueError(f"--minutes must be a finite number > 0, got {args.minutes}")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError(f"--max-steps must be >= 1, got {args.max_steps}")
    pool = {k: getattr(args, k) for k in ("pool_size", "level_refresh", "level_refresh_every", "mouse_aux_steps",
                                          "scene_aux_steps", "route_aux_steps")
            if getattr(args, k) is not None}
    if pool and args.backend != "procgen":
        raise ValueError(f"--{next(iter(pool)).replace('_', '-')} is an option of --backend procgen (its level pool and auxiliary losses)")
    cmd = "avec maze train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    report = train_policy(args.region, args.out, minutes=args.minutes, max_steps=args.max_steps,
                          scale=args.scale, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                          threads=args.threads, final_eval=not args.no_eval, command=cmd,
                          init_from=shipped_path(args.init_from), size_power=args.size_power,
                          size_ramp=args.size_ramp, path_frac=args.path_frac,
                          per_maze=args.per_maze, dagger_every=args.dagger_every, dagger_mazes=args.dagger_mazes,
                          dagger_steps=args.dagger_steps, dagger_frac=args.dagger_frac, bf16=not args.no_bf16,
                          pull_frac=args.pull_frac, mirror_frac=args.mirror_frac, backend=args.backend, backend_options=pool)
    print(report.get("eval", report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
