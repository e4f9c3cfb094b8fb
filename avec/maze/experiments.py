"""The maze steering experiments: cheese vector, top-right vector, sweeps, composition, transfer,
averaged and random baselines, and statistics over many seeds.

Everything runs through the core (``Model.run`` with ``cache=`` and ``interventions=``).
Vectors are activation differences at one hook point, computed with the mouse at the start:

* cheese vector:    act(maze) - act(maze without cheese); applied with coefficient -1
* top-right vector: act(maze with the top-right path) - act(maze); applied with +1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch

from avec.core import AddVector, Apply

from .env import five_way
from .evaluate import (EVAL_SEED_BASE, LOW_P_CHEESE, decision_targets, motivation, observation_batch,
                       resolve_region)
from .fields import as_model, new_figure, png_base64, summary_html
from .world import Maze
from ..results import Result

DEFAULT_HOOK = "embedder.block2.res1.resadd_out"
DONOR_SEED_BASE = 2_000_000_000  # the averaged vector's donor mazes; test mazes start at 1e9


@dataclass(frozen=True)
class MazeVector:
    """An activation-space vector at one hook point: ``tensor [C, H, W]`` (or ``[N, C, H, W]``:
    one vector per maze, for batched statistics). ``coeff * v`` and ``v + w`` (same hook) give new
    vectors; the core applies it through ``as_interventions()``."""

    hook: str
    tensor: torch.Tensor
    coeff: float = 1.0
    description: str = ""

    def __mul__(self, k: float) -> MazeVector:
        return MazeVector(self.hook, self.tensor, self.coeff * float(k), self.description)

    __rmul__ = __mul__

    def __neg__(self) -> MazeVector:
        return self * -1.0

    def __add__(self, other: MazeVector) -> MazeVector:
        if not isinstance(other, MazeVector) or other.hook != self.hook:
            raise ValueError("MazeVector + MazeVector needs both at the same hook point; "
                             "for different hook points pass both as interventions")
        return MazeVector(self.hook, self.coeff * self.tensor + other.coeff * other.tensor, 1.0,
                          f"({self.description}) + ({other.description})")

    def __sub__(self, other: MazeVector) -> MazeVector:
        return self + (-other)

    @property
    def norm(self) -> torch.Tensor:
        """L2 norm (per maze for a batched vector)."""
        t = self.tensor
        return t.flatten(1).norm(dim=1) if t.dim() == 4 else t.norm()

    def as_interventions(self) -> list:
        if self.tensor.dim() == 3:
            return [AddVector(self.hook, self.tensor, coeff=self.coeff)]
        # one vector per batch row: a user function through the core (AddVector takes one vector)
        rows = self.coeff * self.tensor

        def add_rows(value, ctx):
            if value.shape[0] != rows.shape[0]:
                raise ValueError(f"{rows.shape[0]} per-maze vectors but the batch has {value.shape[0]} rows")
            return value + rows.to(value)

        return [Apply(self.hook, fn=add_rows)]


def _acts(model, mazes: Sequence[Maze], hook: str) -> torch.Tensor:
    """Activations ``[N, C, H, W]`` at ``hook`` for each maze as it is (mouse where it is)."""
    obs = observation_batch(list(mazes)).obs(range(len(mazes)), [m.mouse for m in mazes])
    with torch.no_grad():
        return model.run(obs, cache=[hook]).cache[hook]


def _at_start(mazes) -> list[Maze]:
    return [m.with_mouse(m.start) for m in mazes]


def cheese_vector(policy: Any, maze: Maze | Sequence[Maze], at: str = DEFAULT_HOOK) -> MazeVector:
    """act(with cheese) - act(without cheese), same maze, mouse at the start.
    One maze -> ``[C, H, W]``; a list -> ``[N, C, H, W]`` (one vector each)."""
    model = as_model(policy)
    mazes = _at_start([maze] if isinstance(maze, Maze) else maze)
    if any(m.cheese is None for m in mazes):
        raise ValueError("the cheese vector needs mazes with cheese")
    v = _acts(model, mazes, at) - _acts(model, [m.without_cheese() for m in mazes], at)
    return MazeVector(at, v[0] if isinstance(maze, Maze) else v, 1.0, "cheese vector")


def top_right_vector(policy: Any, maze: Maze | Sequence[Maze], at: str = DEFAULT_HOOK) -> MazeVector:
    """act(maze with the top-right path) - act(maze), mouse at the start."""
    model = as_model(policy)
    mazes = _at_start([maze] if isinstance(maze, Maze) else maze)
    v = _acts(model, [m.with_top_right_path() for m in mazes], at) - _acts(model, mazes, at)
    return MazeVector(at, v[0] if isinstance(maze, Maze) else v, 1.0, "top-right vector")


def averaged_vector(vec: MazeVector) -> MazeVector:
    """Mean of a batched ``[N, C, H, W]`` vector over its mazes."""
    if vec.tensor.dim() != 4:
        raise ValueError("averaged_vector needs a batched vector [N, C, H, W] (pass a list of mazes)")
    return MazeVector(vec.hook, vec.tensor.mean(0), vec.coeff, f"mean {vec.description}")


def random_like(vec: MazeVector, seed: int = 0) -> MazeVector:
    """Gaussian direction with the same norm as ``vec`` (per maze for a batched vector): the baseline."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(vec.tensor.shape, generator=g)
    if r.dim() == 4:
        r = r * (vec.norm / r.flatten(1).norm(dim=1)).reshape(-1, 1, 1, 1)
    else:
        r = r * (vec.norm / r.norm())
    return MazeVector(vec.hook, r, vec.coeff, "random vector (same norm)")


@torch.no_grad()
def decision_probs(policy: Any, mazes: Sequence[Maze], steer=None):
    """Motivation (P(cheese), P(top-right) per maze) at each maze's decision square: one forward."""
    model = as_model(policy)
    ds = [decision_targets(m)[0] for m in mazes]
    obs = observation_batch(list(mazes)).obs(range(len(mazes)), ds)
    iv = [] if steer is None else (list(steer) if isinstance(steer, (list, tuple)) else [steer])
    logits = model.run(obs, interventions=iv).logits
    return motivation(five_way(torch.softmax(logits.double(), 1)), list(mazes))


@dataclass(frozen=True)
class SteeringStats(Result):
    """Per-maze decision-square probabilities before and after an intervention, float ``[N]``."""

    name: str
    seeds: np.ndarray
    p_cheese: np.ndarray
    p_cheese_steered: np.ndarray
    p_top_right: np.ndarray
    p_top_right_steered: np.ndarray
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Means with medians beside them, and the share of mazes whose P(cheese) was already below
        LOW_P_CHEESE (0.05) before steering, where no drop can show: the per-maze changes are skewed
        (region5's cheese vector on 500 held-out mazes: mean drop 0.31, median 0.12; 27% already below 0.05)."""
        drop = self.p_cheese - self.p_cheese_steered
        med = lambda x: float(np.median(x))  # noqa: E731
        return {
            "experiment": self.name,
            "mazes": int(len(self.seeds)),
            "p_cheese": float(self.p_cheese.mean()),
            "p_cheese_median": med(self.p_cheese),
            "p_cheese_steered": float(self.p_cheese_steered.mean()),
            "p_cheese_steered_median": med(self.p_cheese_steered),
            "p_cheese_drop": float(drop.mean()),
            "p_cheese_drop_median": med(drop),
            f"frac_p_cheese_already_below_{LOW_P_CHEESE:g}": float((self.p_cheese < LOW_P_CHEESE).mean()),
            "frac_p_cheese_decreased": float((self.p_cheese_steered < self.p_cheese).mean()),
            "p_top_right": float(self.p_top_right.mean()),
            "p_top_right_median": med(self.p_top_right),
            "p_top_right_steered": float(self.p_top_right_steered.mean()),
            "p_top_right_steered_median": med(self.p_top_right_steered),
            "frac_p_top_right_increased": float((self.p_top_right_steered > self.p_top_right).mean()),
            **self.extra,
        }

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({
            "seed": self.seeds, "p_cheese": self.p_cheese, "p_cheese_steered": self.p_cheese_steered,
            "p_top_right": self.p_top_right, "p_top_right_steered": self.p_top_right_steered,
        })

    def plot(self, figsize=(10, 4)):
        """Box plots and original-vs-steered scatter for P(cheese) and P(top-right)."""
        fig = new_figure(figsize)
        ax = fig.subplots(1, 3)
        ax[0].boxplot([self.p_cheese, self.p_cheese_steered, self.p_top_right, self.p_top_right_steered])
        ax[0].set_xticks([1, 2, 3, 4], ["P(ch)", "P(ch)\nsteered", "P(tr)", "P(tr)\nsteered"], fontsize=8)
        for a, x, y, t in ((ax[1], self.p_cheese, self.p_cheese_steered, "P(cheese)"),
                           (ax[2], self.p_top_right, self.p_top_right_steered, "P(top-right)")):
            a.scatter(x, y, s=8, alpha=0.6)
            a.plot([0, 1], [0, 1], "k--", lw=0.8)
            a.set_xlabel("original")
            a.set_ylabel("steered")
            a.set_title(t, fontsize=10)
        fig.suptitle(f"{self.name} ({len(self.seeds)} mazes)", fontsize=10)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        return summary_html(self.summary(), self.plot())


def compare_plot(stats: Sequence[SteeringStats], figsize=(11, 4)):
    """Box plots of P(cheese) and P(top-right) at the decision square: the original (from the first
    entry; give stats over the same mazes) and each experiment's steered values side by side."""
    fig = new_figure(figsize)
    ax = fig.subplots(1, 2)
    labels = ["original"] + [st.name for st in stats]
    for a, get, orig, title in ((ax[0], lambda st: st.p_cheese_steered, stats[0].p_cheese, "P(cheese)"),
                                (ax[1], lambda st: st.p_top_right_steered, stats[0].p_top_right, "P(top-right)")):
        a.boxplot([orig] + [get(st) for st in stats])
        a.set_xticks(range(1, len(labels) + 1), labels, rotation=35, ha="right", fontsize=7)
        a.set_title(f"{title} at the decision square ({len(orig)} mazes)", fontsize=9)
        a.set_ylim(-0.02, 1.02)
    fig.tight_layout()
    return fig


def steering_stats(policy: Any, mazes: Sequence[Maze], make_steer: Callable[[Any, list[Maze]], Any],
                   name: str) -> SteeringStats:
    """Decision-square probabilities of ``mazes`` without and with ``make_steer(model, mazes)``
    (which returns interventions / MazeVectors, batched per maze if needed)."""
    model = as_model(policy)
    mazes = list(mazes)
    before = decision_probs(model, mazes)
    after = decision_probs(model, mazes, make_steer(model, mazes))
    return SteeringStats(name, np.array([m.seed if m.seed is not None else -1 for m in mazes]),
                         before.p_cheese, after.p_cheese, before.p_top_right, after.p_top_right)


def stats_mazes(policy, region: int | None = None, n: int = 100, seed_base: int = EVAL_SEED_BASE,
                backend: str = "avec") -> list[Maze]:
    """The statistics' default test mazes: the first ``n`` with a decision square and the cheese outside
    the top-right ``region`` square (default: the policy's own training region, else 5), from seed
    ``seed_base`` on (pick an unused base for held-out mazes); procgen levels for ``backend="procgen"``
    (pass them as ``mazes=`` to any statistic)."""
    from .backends import off_region

    return off_region(backend, resolve_region(policy, region), n, seed_base)


def cheese_vector_stats(policy, region: int | None = None, n: int = 100, coeff: float = -1.0, at: str = DEFAULT_HOOK,
                        mazes: Sequence[Maze] | None = None, seed_base: int = EVAL_SEED_BASE,
                        backend: str = "avec") -> SteeringStats:
    """Subtract each maze's own cheese vector (coefficient -1 at every forward) on ``n`` test mazes
    (``mazes``, else :func:`stats_mazes` of ``region`` / ``seed_base`` / ``backend``: "procgen" draws procgen
    levels, seen as procgen renders them). The other statistics take the same arguments."""
    mazes = mazes or stats_mazes(policy, region, n, seed_base, backend)
    return steering_stats(policy, mazes, lambda m, ms: coeff * cheese_vector(m, ms, at), f"cheese vector x {coeff:g}")


def top_right_stats(policy, region: int | None = None, n: int = 100, coeff: float = 1.0, at: str = DEFAULT_HOOK,
                    mazes: Sequence[Maze] | None = None, seed_base: int = EVAL_SEED_BASE,
                    backend: str = "avec") -> SteeringStats:
    """Add each maze's own top-right vector. (25 x 25 mazes give a zero vector: unchanged.)"""
    mazes = mazes or stats_mazes(policy, region, n, seed_base, backend)
    return steering_stats(policy, mazes, lambda m, ms: coeff * top_right_vector(m, ms, at), f"top-right vector x {coeff:g}")


def composition_stats(policy, region: int | None = None, n: int = 100, at: str = DEFAULT_HOOK,
                      cheese_coeff: float = -1.0, top_right_coeff: float = 1.0,
                      mazes: Sequence[Maze] | None = None, seed_base: int = EVAL_SEED_BASE,
                      backend: str = "avec") -> SteeringStats:
    """Both at once: ``cheese_coeff * cheese + top_right_coeff * top_right``."""
    mazes = mazes or stats_mazes(policy, region, n, seed_base, backend)

    def make(m, ms):
        return cheese_coeff * cheese_vector(m, ms, at) + top_right_coeff * top_right_vector(m, ms, at)

    return steering_stats(policy, mazes, make, f"cheese x {cheese_coeff:g} + top-right x {top_right_coeff:g}")


def random_baseline_stats(policy, region: int | None = None, n: int = 100, coeff: float = -1.0, at: str = DEFAULT_HOOK,
                          seed: int = 0, mazes: Sequence[Maze] | None = None,
                          seed_base: int = EVAL_SEED_BASE, backend: str = "avec") -> SteeringStats:
    """A random vector with each maze's cheese-vector norm, same coefficient."""
    mazes = mazes or stats_mazes(policy, region, n, seed_base, backend)
    return steering_stats(policy, mazes, lambda m, ms: coeff * random_like(cheese_vector(m, ms, at), seed),
                          f"random vector (cheese-vector norm) x {coeff:g}")


def averaged_cheese_stats(policy, region: int | None = None, n: int = 100, coeff: float = -1.0, at: str = DEFAULT_HOOK,
                          n_average: int = 50, mazes: Sequence[Maze] | None = None,
                          seed_base: int = EVAL_SEED_BASE, backend: str = "avec") -> SteeringStats:
    """One cheese vector averaged over ``n_average`` other mazes (seeds from 2e9, of the test mazes' backend:
    procgen levels for ProcgenMazes), applied to every test maze."""
    from .backends import backend_of, off_region

    mazes = list(mazes or stats_mazes(policy, region, n, seed_base, backend))
    donors = off_region(backend_of(mazes), resolve_region(policy, region), n_average, DONOR_SEED_BASE)
    avg = averaged_vector(cheese_vector(policy, donors, at))
    return steering_stats(policy, mazes, lambda m, ms: coeff * avg, f"averaged cheese vector x {coeff:g}")


def transfer_stats(policy, region: int | None = None, n: int = 100, coeff: float = -1.0, at: str = DEFAULT_HOOK,
                   mazes: Sequence[Maze] | None = None, seed_base: int = EVAL_SEED_BASE,
                   backend: str = "avec") -> SteeringStats:
    """Cheese vector from maze A applied to maze B (B = the next maze in the list)."""
    mazes = list(mazes or stats_mazes(policy, region, n, seed_base, backend))

    def make(m, ms):
        v = cheese_vector(m, ms, at)
        return coeff * MazeVector(v.hook, torch.roll(v.tensor, 1, dims=0), 1.0, "transferred cheese vector")

    return steering_stats(policy, mazes, make, f"transferred cheese vector x {coeff:g}")


@dataclass(frozen=True)
class CoefficientSweep(Result):
    """Mean decision-square probabilities per coefficient, float ``[K]`` each, with their medians over
    the mazes and the share of mazes whose P(cheese) is below LOW_P_CHEESE at that coefficient."""

    name: str
    coeffs: np.ndarray
    p_cheese: np.ndarray
    p_top_right: np.ndarray
    p_cheese_median: np.ndarray | None = None
    p_top_right_median: np.ndarray | None = None
    frac_p_cheese_low: np.ndarray | None = None

    def to_frame(self) -> pd.DataFrame:
        df = pd.DataFrame({"coeff": self.coeffs, "p_cheese": self.p_cheese, "p_top_right": self.p_top_right,
                           "p_other": 1 - self.p_cheese - self.p_top_right})
        if self.p_cheese_median is not None:
            df["p_cheese_median"] = self.p_cheese_median
            df["p_top_right_median"] = self.p_top_right_median
            df[f"frac_p_cheese_below_{LOW_P_CHEESE:g}"] = self.frac_p_cheese_low
        return df

    def plot(self, figsize=(5, 3.5)):
        fig = new_figure(figsize)
        ax = fig.subplots()
        ax.plot(self.coeffs, self.p_cheese, "o-", label="P(cheese)")
        ax.plot(self.coeffs, self.p_top_right, "s-", label="P(top-right)")
        ax.set_xlabel("coefficient")
        ax.set_ylabel("mean probability at decision square")
        ax.set_title(self.name, fontsize=10)
        ax.legend()
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(float_format="%.3f") + \
            f"<img src='data:image/png;base64,{png_base64(self.plot())}'/>"


@torch.no_grad()
def coefficient_sweep(policy, mazes: Sequence[Maze], kind: str = "cheese", coeffs=np.linspace(-3, 3, 13),
                      at: str = DEFAULT_HOOK) -> CoefficientSweep:
    """Sweep the coefficient of each maze's own vector (``kind``: "cheese" or "top_right").
    All (maze, coefficient) pairs run as ONE batch: the coefficient varies along the batch axis."""
    model = as_model(policy)
    mazes = list(mazes)
    coeffs = np.asarray(coeffs, dtype=np.float64)
    make = {"cheese": cheese_vector, "top_right": top_right_vector}.get(kind)
    if make is None:
        raise ValueError(f"kind must be 'cheese' or 'top_right', got {kind!r}")
    vec = make(model, mazes, at).tensor  # [N, C, H, W]
    n, k = len(mazes), len(coeffs)
    rows = (torch.as_tensor(coeffs, dtype=vec.dtype)[:, None, None, None, None] * vec[None]).reshape(k * n, *vec.shape[1:])
    tiled = mazes * k  # row j*n + i = maze i at coefficient j
    mv = MazeVector(at, rows, 1.0, f"{kind} vector sweep")
    mot = decision_probs(model, tiled, mv)
    pc, pt = mot.p_cheese.reshape(k, n), mot.p_top_right.reshape(k, n)
    return CoefficientSweep(f"{kind} vector coefficient sweep ({n} mazes)", coeffs, pc.mean(1), pt.mean(1),
                            np.median(pc, 1), np.median(pt, 1), (pc < LOW_P_CHEESE).mean(1))


def layer_sweep(policy, mazes: Sequence[Maze], hooks: Sequence[str] | None = None, coeff: float = -1.0) -> pd.DataFrame:
    """The cheese-vector statistic at each hook point (default: every residual-block output)."""
    model = as_model(policy)
    hooks = hooks or resadd_hooks(model)
    rows = []
    for h in hooks:
        rows.append(cheese_vector_stats(model, mazes=mazes, coeff=coeff, at=h).summary() | {"hook": h})
    return pd.DataFrame(rows)


def resadd_hooks(policy) -> list[str]:
    """Every residual-block output (``embedder.block{1,2,3}.res{1,2}.resadd``), in forward order."""
    return [h for h in as_model(policy).hook_points if h.endswith(".resadd")]


def all_layers_stats(policy, region: int | None = None, n: int = 100, coeff: float = -1.0, hooks: Sequence[str] | None = None,
                     mazes: Sequence[Maze] | None = None, seed_base: int = EVAL_SEED_BASE,
                     backend: str = "avec") -> SteeringStats:
    """The all-layers variant: each maze's cheese vector at every hook in ``hooks`` (default: all six
    residual outputs), all added at once. Each layer's vector is the plain activation difference,
    so upstream changes are counted again downstream (as in the original all-layers experiment)."""
    model = as_model(policy)
    hooks = list(hooks or resadd_hooks(model))
    mazes = mazes or stats_mazes(policy, region, n, seed_base, backend)
    return steering_stats(model, mazes, lambda m, ms: [coeff * cheese_vector(m, ms, h) for h in hooks],
                          f"cheese vector x {coeff:g} at {len(hooks)} layers")


def full_report(policy, region: int | None = None, n: int = 100, seed_base: int = EVAL_SEED_BASE,
                backend: str = "avec") -> dict:
    """Every statistic above on the same ``n`` off-region test mazes (procgen levels for
    ``backend="procgen"``), as plain numbers."""
    model = as_model(policy)
    region = resolve_region(policy, region)
    mazes = stats_mazes(policy, region, n, seed_base, backend)
    out = {}
    for name, fn in (("cheese_vector", cheese_vector_stats), ("top_right_vector", top_right_stats),
                     ("composition", composition_stats), ("random_baseline", random_baseline_stats),
                     ("averaged_cheese_vector", averaged_cheese_stats), ("transfer", transfer_stats),
                     ("all_layers", all_layers_stats)):
        out[name] = fn(model, region=region, mazes=mazes).summary()
    out["cheese_sweep"] = coefficient_sweep(model, mazes, "cheese").to_frame().round(4).to_dict("list")
    out["top_right_sweep"] = coefficient_sweep(model, mazes, "top_right").to_frame().round(4).to_dict("list")
    out["layer_sweep"] = layer_sweep(model, mazes).round(4).to_dict("records")
    return out
