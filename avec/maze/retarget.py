"""Channel retargeting: find the channels whose activation tracks the cheese location, write extra
"cheese signal" into them at the activation position of another cell, and measure whether the
policy now heads there.

How the rule was arrived at (explored on calibration mazes, seeds >= 2e9, never on the reported ones):

* **Scale.** At ``embedder.block2.res1.resadd_out`` of our width-1 policies the channels live on a
  scale of ~0.1-0.3 (std over positions), and the cheese moves its best channels by ~0.2-0.8 where
  it is. The 128-channel procgen agent's "+5.5 at one position of channel 55" is no rule for this
  network: a fixed 5.0 is tens of standard deviations off-distribution, breaks the downstream
  computation, and the path probability toward the target *falls* (shipped region5 and region15
  alike). Values are therefore expressed in units of each channel's own cheese signal.
* **Where a channel sees the cheese.** The geometric cell -> activation mapping
  (:func:`act_position`) is only where the cell's pixels land; each channel's learned cheese
  response peaks at its own small offset from it (often one position right or up). The mean
  cheese-vector footprint of each channel around the cheese gives that offset; writing there
  instead of at the geometric position helps, the more so the larger the scale.
* **Which channels.** Those whose mean cheese-vector footprint peaks highest relative to the
  channel's activation std (how many of its own standard deviations the cheese raises it, where
  the cheese is). Only positive responders qualify ("set positive at a location", as in the
  original work). 4 to 32 channels did about equally well; 8 is the default.
* **How much.** ``add scale x (the channel's mean cheese signal)`` at that position: scale 1 puts
  the average cheese's own change there. ``scale="auto"`` (:func:`choose_scale`) picks from
  :data:`SCALES` the scale with the best lower confidence bound (mean - 2 SE) of the log
  path-probability ratio on the calibration mazes: the gain grows with the scale up to a cliff
  where the written values leave the activation distribution and the effect collapses (as with
  the fixed 5.0); near the cliff the gain is erratic, and the bound steps back from it (the best
  *mean* overshot on held-out mazes).
* **Cheese removed** (default) while retargeting, as in the original retargeting statistics:
  the question is whether the written signal alone steers the policy, not whether it
  out-competes a real cheese. ``path_prob_cheese_at_target`` (the real cheese moved to the
  target) is the reference for what a real cheese signal does; ``frac_of_cheese_effect`` =
  mean log gain of retargeting / mean log gain of the real cheese.

Grid cell (row, col) -> activation position at a ``side x side`` hook point: the cell's centre
pixel ``(row + 0.5) * 64 / 25`` divided by the downsampling ``64 / side``. Path probability =
geometric mean of the on-path action probabilities along the shortest path from the start to a
target, each with the mouse on that path cell; every (maze, path cell) pair runs in one batch.
All edits go through the core (``Apply``). Channels and scale are chosen on calibration mazes
only; the experiment reports on the mazes it is given (use held-out ones).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from avec.core import Apply

from .env import five_way
from .evaluate import direction_index, observation_batch
from .experiments import DEFAULT_HOOK, _acts, _at_start
from .fields import _as_list, as_model, new_figure, png_base64
from .world import WORLD, Maze
from ..results import Result

CALIBRATION_SEED_BASE = 2_000_000_000  # calibration mazes; evaluation mazes use seeds 1e9.. (evaluate.py)
SCALES = (1.0, 2.0, 4.0, 8.0, 16.0)  # candidate multiples of the cheese signal for scale="auto"
DISTANCE_BINS = (1, 6, 11, 21, 10_000)  # path length (moves) bins for RetargetResult.by_distance


def act_position(pos, side: int = 16) -> tuple[int, int]:
    """Spatial index at a ``side x side`` activation of grid cell ``pos`` (row 0 = top)."""
    scale = side / WORLD
    return int((pos[0] + 0.5) * scale), int((pos[1] + 0.5) * scale)


def calibration_mazes(n: int, seed_base: int = CALIBRATION_SEED_BASE, backend: str = "avec") -> list[Maze]:
    """``n`` mazes, cheese anywhere, from seeds disjoint from the evaluation mazes (procgen levels for
    ``backend="procgen"``)."""
    from .backends import any_mazes

    return any_mazes(backend, n, seed_base)


# --------------------------------------------------------------------------- finding the channels
@dataclass(frozen=True)
class CheeseChannels(Result):
    """Channels at ``hook`` that track the cheese, best first.

    channels int ``[k]``; offsets int ``[k, 2]``: (d_row, d_col) from the cheese cell's
    activation position to where the channel's mean cheese signal peaks; signal float ``[k]``:
    that peak (activation units); std float ``[k]``: the channel's activation std (without cheese,
    over mazes and positions); scores float ``[C]``: peak / activation std for every channel
    (-inf where the channel does not respond positively)."""

    hook: str
    channels: np.ndarray
    offsets: np.ndarray
    signal: np.ndarray
    std: np.ndarray
    scores: np.ndarray
    n_mazes: int

    def intervention(self, targets, scale: float = 2.0, use_offsets: bool = True):
        """Add ``scale x signal`` to each channel at target cell(s) ``targets`` (one cell for every
        batch row, or one cell per row)."""
        return retarget_intervention(self.hook, self.channels, targets, add=scale * self.signal,
                                     offsets=self.offsets if use_offsets else None)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"channel": self.channels, "offset_row": self.offsets[:, 0],
                             "offset_col": self.offsets[:, 1], "signal": self.signal,
                             "std": self.std, "score": self.scores[self.channels]})

    def plot(self, ax=None):
        """Every channel's score (cheese signal / activation std), the chosen ones marked."""
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3))
        scores = np.where(np.isfinite(self.scores), self.scores, 0.0)
        ax.bar(np.arange(len(scores)), scores, color="0.7", width=1.0)
        ax.bar(self.channels, scores[self.channels], color="#c2410c", width=1.0, label="chosen")
        ax.set_xlabel(f"channel at {self.hook}")
        ax.set_ylabel("cheese signal / std")
        ax.set_title(f"{len(self.channels)} cheese channels ({self.n_mazes} mazes)", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig


def cheese_channels(policy: Any, mazes: Sequence[Maze], at: str = DEFAULT_HOOK, k: int = 8,
                    radius: int = 2) -> CheeseChannels:
    """The ``k`` channels whose cheese signal stands out most, with where and how strongly.

    v = act(with cheese) - act(without), mouse at the start. For each channel, the mean of v over
    mazes in a ``(2 radius + 1)^2`` window centred on the cheese cell's activation position (the
    channel's cheese footprint); its maximum is the channel's signal, the argmax its offset.
    Score = signal / std of the channel's activation (without cheese, all mazes and positions)."""
    model = as_model(policy)
    mazes = [m for m in _at_start(mazes) if m.cheese is not None]
    if not mazes:
        raise ValueError("cheese_channels needs mazes with cheese")
    a0 = _acts(model, [m.without_cheese() for m in mazes], at)
    v = _acts(model, mazes, at) - a0  # [N, C, H, W]
    if v.dim() != 4:
        raise ValueError(f"{at!r} is not a spatial [N, C, H, W] hook point (got shape {tuple(v.shape)})")
    r, side = int(radius), v.shape[-1]
    vp = torch.nn.functional.pad(v, (r, r, r, r))
    w = 2 * r + 1
    foot = torch.zeros(v.shape[1], w, w, dtype=v.dtype)
    for i, m in enumerate(mazes):
        y, x = act_position(m.cheese, side)
        foot += vp[i, :, y:y + w, x:x + w]
    foot /= len(mazes)
    peak, arg = foot.flatten(1).max(1)
    offsets = torch.stack([arg // w - r, arg % w - r], 1)
    std = a0.transpose(0, 1).flatten(1).std(1) + 1e-6
    scores = torch.where(peak > 0, peak / std, torch.full_like(peak, -np.inf))
    n_pos = int((peak > 0).sum())
    top = torch.argsort(scores, descending=True)[:min(int(k), n_pos)]
    return CheeseChannels(at, top.numpy(), offsets[top].numpy(), peak[top].double().numpy(),
                          std[top].double().numpy(), scores.double().numpy(), len(mazes))


# --------------------------------------------------------------------------- the intervention
def retarget_intervention(at: str, channels, pos, value=None, *, add=None, offsets=None):
    """Edit ``channels`` at the activation position of grid cell ``pos`` (plus each channel's
    ``offsets`` [k, 2], if given): set them to ``value`` or add ``add`` (each a float or one number
    per channel). ``pos`` is one cell (every batch row) or a list of cells, one per batch row.
    Writes that an offset pushes off the activation map are dropped."""
    if (value is None) == (add is None):
        raise ValueError("give exactly one of value= (set) or add= (add)")
    chans = torch.as_tensor(np.asarray(channels), dtype=torch.long).reshape(-1)
    amount = torch.as_tensor(np.asarray(value if add is None else add, dtype=np.float64)).reshape(-1)
    if amount.numel() not in (1, len(chans)):
        raise ValueError(f"{amount.numel()} values for {len(chans)} channels")
    amount = amount.expand(len(chans))
    off = torch.zeros(len(chans), 2, dtype=torch.long) if offsets is None else \
        torch.as_tensor(np.asarray(offsets), dtype=torch.long).reshape(len(chans), 2)
    cells = np.asarray(pos, dtype=np.int64)
    per_row = cells.ndim == 2

    def write(v, ctx):
        side_y, side_x = v.shape[-2:]
        grid = cells if per_row else np.broadcast_to(cells, (v.shape[0], 2))
        if len(grid) != v.shape[0]:
            raise ValueError(f"{len(grid)} target cells for a batch of {v.shape[0]} rows")
        base = torch.as_tensor([act_position(c, side_y) for c in grid], dtype=torch.long)  # [B, 2]
        ys = base[:, :1] + off[None, :, 0]  # [B, k]
        xs = base[:, 1:] + off[None, :, 1]
        rows = torch.arange(v.shape[0])[:, None].expand_as(ys)
        ch = chans[None].expand_as(ys)
        amt = amount[None].expand(ys.shape).to(v.dtype)
        ok = (ys >= 0) & (ys < side_y) & (xs >= 0) & (xs < side_x)
        idx = (rows[ok], ch[ok], ys[ok], xs[ok])
        v = v.clone()
        if add is None:
            v[idx] = amt[ok]
        else:
            v[idx] += amt[ok]
        return v

    return Apply(at, fn=write)


# --------------------------------------------------------------------------- path probabilities
@torch.no_grad()
def path_probabilities(policy: Any, mazes: Sequence[Maze], targets, steer=None, chunk: int = 256) -> np.ndarray:
    """Geometric mean of P(on-path move) along the shortest path from each maze's start to its
    target, float ``[N]``. Every (maze, path cell) pair is one batch row; ``steer(row_targets)``
    (a function of the target cell of each row) gives the interventions for a chunk of rows."""
    model = as_model(policy)
    mazes = list(mazes)
    owner, cells, moves, row_t = [], [], [], []
    for i, (m, t) in enumerate(zip(mazes, targets, strict=True)):
        t = (int(t[0]), int(t[1]))
        path = m.shortest_path(m.start, t)
        if len(path) < 2:
            raise ValueError(f"target {t} is the start of maze {i}; no path to follow")
        for a, b in zip(path[:-1], path[1:]):
            owner.append(i)
            cells.append(a)
            moves.append(direction_index(a, b))
            row_t.append(t)
    owner, cells, moves = np.array(owner), np.array(cells), np.array(moves)
    batch = observation_batch(mazes)
    logp = np.empty(len(owner))
    for s in range(0, len(owner), chunk):
        sl = slice(s, s + chunk)
        iv = [] if steer is None else _as_list(steer(row_t[sl]))
        logits = model.run(batch.obs(owner[sl], cells[sl]), interventions=iv).logits
        p5 = five_way(torch.softmax(logits.double(), 1)).numpy()
        logp[sl] = np.log(np.maximum(p5[np.arange(len(p5)), moves[sl]], 1e-12))
    n = len(mazes)
    return np.exp(np.bincount(owner, logp, minlength=n) / np.bincount(owner, minlength=n))


def path_probability(policy: Any, maze: Maze, target, steer=None) -> float:
    """Geometric mean of P(on-path move) along the shortest path from the start to ``target``
    (``steer``: interventions applied on every row)."""
    return float(path_probabilities(policy, [maze], [target], None if steer is None else (lambda rows: steer))[0])


def random_targets(mazes: Sequence[Maze], rng_seed: int = 0, exclude_cheese: bool = True) -> list:
    """One uniformly random open cell per maze, never the start (nor the cheese if ``exclude_cheese``)."""
    rng = np.random.default_rng(rng_seed)
    out = []
    for m in mazes:
        bad = {m.start} | ({m.cheese} if exclude_cheese else set())
        cells = [(int(r), int(c)) for r, c in m.open_cells() if (int(r), int(c)) not in bad]
        out.append(cells[rng.integers(len(cells))])
    return out


# --------------------------------------------------------------------------- the experiment
@dataclass(frozen=True)
class RetargetResult(Result):
    """Per-maze path probabilities toward a random target cell, float ``[N]`` each: ``before``
    (no intervention), ``after`` (retargeted), ``reference`` (real cheese moved to the target,
    or None). ``distances``: path length in moves; ``scale``/``value``: the rule used."""

    channels: CheeseChannels
    rule: str
    scale: float | None
    value: float | None
    remove_cheese: bool
    targets: list
    distances: np.ndarray
    before: np.ndarray
    after: np.ndarray
    reference: np.ndarray | None = None
    scale_search: dict | None = None

    @classmethod
    def from_dict(cls, d) -> "RetargetResult":
        """Rebuilt from ``to_dict()``, its channels included (and the scale search's keys floats again: JSON
        keeps only string keys)."""
        out = replace(super().from_dict(d), channels=CheeseChannels.from_dict(d["channels"]))
        if out.scale_search:
            out = replace(out, scale_search={float(k): float(v) for k, v in out.scale_search.items()})
        return out

    def summary(self) -> dict:
        lr = np.log(self.after / self.before)
        out = {"mazes": len(self.before), "hook": self.channels.hook,
               "channels": [int(c) for c in self.channels.channels], "rule": self.rule,
               "scale": self.scale, "remove_cheese": self.remove_cheese,
               "path_prob_before": float(np.mean(self.before)), "path_prob_after": float(np.mean(self.after)),
               "geo_mean_ratio": float(np.exp(lr.mean())), "frac_increased": float(np.mean(self.after > self.before))}
        if self.reference is not None:
            ref = np.log(self.reference / self.before).mean()
            out["path_prob_cheese_at_target"] = float(np.mean(self.reference))
            out["frac_of_cheese_effect"] = float(lr.mean() / ref) if ref > 0 else float("nan")
        if self.scale_search:
            out["scale_search_lower_bound"] = {f"{k:g}": round(v, 4) for k, v in self.scale_search.items()}
        return out

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"target_row": [t[0] for t in self.targets], "target_col": [t[1] for t in self.targets],
                           "distance": self.distances, "path_prob_before": self.before, "path_prob_after": self.after})
        if self.reference is not None:
            df["path_prob_cheese_at_target"] = self.reference
        return df

    def by_distance(self, bins=DISTANCE_BINS) -> pd.DataFrame:
        """Mean path probabilities by target distance from the start (moves)."""
        df = self.to_frame()
        labels = [f"{a}-{b - 1}" if b < 10_000 else f">={a}" for a, b in zip(bins[:-1], bins[1:])]
        df["moves"] = pd.cut(df["distance"], list(bins), right=False, labels=labels)
        df["increased"] = df["path_prob_after"] > df["path_prob_before"]
        cols = ["path_prob_before", "path_prob_after"] + \
            (["path_prob_cheese_at_target"] if self.reference is not None else [])
        g = df.groupby("moves", observed=True)
        out = g[cols].mean()
        out.insert(0, "mazes", g.size())
        out["frac_increased"] = g["increased"].mean()
        return out.reset_index()

    def plot(self, figsize=(9, 4)):
        fig = new_figure(figsize)
        ax = fig.subplots(1, 2)
        if self.reference is not None:
            ax[0].scatter(self.before, self.reference, s=8, c="0.7", label="real cheese at target")
        ax[0].scatter(self.before, self.after, s=10, label="retargeted")
        ax[0].plot([0, 1], [0, 1], "k--", lw=0.8)
        ax[0].set_xlabel("path probability, original")
        ax[0].set_ylabel("path probability, intervened")
        ax[0].legend(fontsize=7)
        ax[0].set_title(f"{len(self.channels.channels)} channels, {self.rule}", fontsize=9)
        d = self.by_distance()
        x = np.arange(len(d))
        ax[1].plot(x, d["path_prob_before"], "o-", label="original")
        ax[1].plot(x, d["path_prob_after"], "s-", label="retargeted")
        if self.reference is not None:
            ax[1].plot(x, d["path_prob_cheese_at_target"], "^--", c="0.5", label="real cheese at target")
        ax[1].set_xticks(x, [str(v) for v in d["moves"]])
        ax[1].set_xlabel("target distance from start (moves)")
        ax[1].set_ylabel("mean path probability")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        return f"{self.summary()}<br>{self.by_distance().to_html(float_format='%.3f')}" \
               f"<img src='data:image/png;base64,{png_base64(self.plot())}'/>"


def _steer(found: CheeseChannels, scale: float | None, value: float | None, use_offsets: bool):
    offsets = found.offsets if use_offsets else None
    if value is not None:
        return lambda rows: retarget_intervention(found.hook, found.channels, rows, value=value, offsets=offsets)
    return lambda rows: retarget_intervention(found.hook, found.channels, rows, add=scale * found.signal,
                                              offsets=offsets)


def _measured_mazes(mazes: Sequence[Maze], rng_seed: int, remove_cheese: bool):
    """(mazes with the mouse at the start, one random target each, the mazes the path
    probabilities are measured on: without their cheese if ``remove_cheese``)."""
    mazes = [m.with_mouse(m.start) for m in mazes]
    targets = random_targets(mazes, rng_seed, exclude_cheese=not remove_cheese)
    return mazes, targets, [m.without_cheese() for m in mazes] if remove_cheese else mazes


def choose_scale(policy: Any, found: CheeseChannels, mazes: Sequence[Maze], scales=SCALES, remove_cheese: bool = True,
                 use_offsets: bool = True, rng_seed: int = 1) -> tuple[float, dict]:
    """The scale in ``scales`` whose log path-probability ratio toward random targets in ``mazes``
    (calibration mazes: never the ones you report on) has the largest lower confidence bound,
    mean - 2 standard errors. The bound, not the mean, because the gain grows with the scale up to
    a cliff where the written values leave the activation distribution and the policy breaks; near
    the cliff the gain is erratic across mazes, and the bound steps back from it. Scales are tried
    in increasing order and the search stops at the first one past the cliff (its bound negative
    and below the best so far). Returns (scale, {scale tried: lower bound})."""
    _, targets, ms = _measured_mazes(mazes, rng_seed, remove_cheese)
    before = path_probabilities(policy, ms, targets)
    bounds = {}
    for s in sorted(float(x) for x in scales):
        lr = np.log(path_probabilities(policy, ms, targets, _steer(found, s, None, use_offsets)) / before)
        bounds[s] = float(lr.mean() - 2 * lr.std(ddof=1) / np.sqrt(len(lr))) if len(lr) > 1 else float(lr.mean())
        if len(bounds) > 1 and bounds[s] < 0 and bounds[s] < max(bounds.values()):
            break  # past the cliff: larger scales only break the policy further (saves their passes)
    return max(bounds, key=bounds.get), bounds


def retarget_experiment(policy: Any, mazes: Sequence[Maze], channels: CheeseChannels | None = None,
                        scale: float | str = "auto", value: float | None = None, k: int = 8,
                        calibration: int | Sequence[Maze] = 60, remove_cheese: bool = True,
                        use_offsets: bool = True, at: str = DEFAULT_HOOK, reference: bool = True,
                        rng_seed: int = 0) -> RetargetResult:
    """For each maze pick a random open target cell (not the start; not the cheese when it stays),
    write cheese signal into the cheese channels there, and compare the path probability toward it.

    channels: a :class:`CheeseChannels`; None finds the ``k`` best on the calibration mazes.
    scale:    add ``scale x`` each channel's mean cheese signal; "auto" chooses it from
              :data:`SCALES` on the calibration mazes (:func:`choose_scale`).
    value:    instead set the channels to this fixed value (the original fixed-magnitude rule;
              with ``use_offsets=False`` and ``remove_cheese=False`` it is the naive variant).
    calibration: calibration mazes, or how many (seeds from 2e9, cheese anywhere, of the test mazes'
              backend); used only to
              choose channels and scale, so ``mazes`` are held out.
    remove_cheese: measure with the cheese removed from each maze (default), so only the written
              signal can pull the mouse; ``reference`` also measures the real cheese moved to the target.
    use_offsets: write at each channel's calibrated peak offset (default) or at the cell's
              geometric activation position."""
    from .backends import backend_of

    model = as_model(policy)
    # calibrate on the test mazes' backend: channels found on avec's pictures say nothing about procgen's
    cal = calibration_mazes(calibration, backend=backend_of(mazes)) if isinstance(calibration, int) else list(calibration)
    found = channels if channels is not None else cheese_channels(model, cal, at, k)
    if len(found.channels) == 0:
        raise ValueError(f"no channel at {found.hook!r} responds positively to the cheese")
    search = None
    if value is not None:
        scale, rule = None, f"set to {value:g}"
    else:
        if scale == "auto":
            scale, search = choose_scale(model, found, cal, remove_cheese=remove_cheese, use_offsets=use_offsets)
        elif isinstance(scale, str):
            raise ValueError(f"scale must be a number or 'auto', got {scale!r}")
        scale = float(scale)
        rule = f"add {scale:g} x cheese signal"
    rule += " at channel offsets" if use_offsets else " at cell position"
    mazes, targets, ms = _measured_mazes(mazes, rng_seed, remove_cheese)
    before = path_probabilities(model, ms, targets)
    after = path_probabilities(model, ms, targets, _steer(found, scale, value, use_offsets))
    ref = path_probabilities(model, [m.with_cheese(t) for m, t in zip(mazes, targets)], targets) if reference else None
    dist = np.array([m.distances(m.start)[t] for m, t in zip(mazes, targets)])
    return RetargetResult(found, rule, scale, value, remove_cheese, targets, dist, before, after, ref, search)
