"""Behavioural statistics of a maze policy, by the protocol Grietzer & Turner used on the original agent.

Protocol ("Behavioural statistics for a maze-solving agent", 2023): draw standard test mazes (uniform
sizes, cheese anywhere), keep those with a decision square, roll the policy out (sampled, procgen's
500-step limit) and record whether it gets the cheese. Then ask what predicts cheese-getting with a
logistic regression on three distances they found to be real decision influences:

* ``d_euclid_cheese_top_right``: Euclidean distance from the cheese to the maze's top-right cell;
* ``d_steps_decision_cheese``: legal steps from the decision square to the cheese;
* ``d_euclid_decision_cheese``: Euclidean distance from the decision square to the cheese.

Their figures for the original rand-region-5 agent, the reference for ours: 71.4 % of 5,239
decision-square levels (of 10,000 seeds) got the cheese, the three features predicted it with 82.4 %
accuracy and ``d_euclid_cheese_top_right`` alone with 77.3 %; every coefficient was negative (closer
means more cheese). The decision-square probabilities (``p_cheese``/``p_top_right``, the first move
from the decision square) are kept beside the rollout outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .evaluate import EVAL_SEED_BASE, LOW_P_CHEESE, decision_probs, rollout, scan_mazes
from .fields import new_figure, summary_html
from .world import Maze
from ..results import Result

FEATURES = ("d_euclid_cheese_top_right", "d_steps_decision_cheese", "d_euclid_decision_cheese")
ORIGINAL_AGENT = {"got_cheese": 0.714, "accuracy": 0.824, "accuracy_d_euclid_cheese_top_right": 0.773,
                  "mazes": 5239, "seeds": 10_000}


def decision_square_mazes(count: int, seed_base: int = EVAL_SEED_BASE, max_tries: int = 1_000_000) -> list[Maze]:
    """The first ``count`` standard test mazes (from ``seed_base`` on) that have a decision square."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    out = scan_mazes(lambda m: m.decision_square() is not None, count, seed_base, max_tries)
    if len(out) < count:
        raise RuntimeError(f"only {len(out)} decision-square mazes in {max_tries} seeds")
    return out


def maze_features(maze: Maze) -> dict:
    """The three distances of the regression for one maze (which must have a decision square)."""
    d = maze.decision_square()
    if d is None:
        raise ValueError(f"{maze!r} has no decision square")
    (cr, cc), (tr, tc) = maze.cheese, maze.top_right
    return {
        "d_euclid_cheese_top_right": float(np.hypot(cr - tr, cc - tc)),
        "d_steps_decision_cheese": float(maze.distances(maze.cheese)[d]),
        "d_euclid_decision_cheese": float(np.hypot(cr - d[0], cc - d[1])),
    }


@dataclass(frozen=True)
class BehaviourStats(Result):
    """Per-maze outcomes and the regression. ``frame``: one row per maze (seed, size, got_cheese,
    steps, p_cheese, p_top_right and the FEATURES). ``coefficients``: logistic-regression weights on
    standardised features (all mazes); ``accuracy``: its cross-validated accuracy; ``single``: each
    feature's own cross-validated accuracy; ``baseline``: the majority-class accuracy."""

    frame: pd.DataFrame
    coefficients: dict
    intercept: float
    accuracy: float
    single: dict
    baseline: float

    @property
    def got_cheese(self) -> float:
        return float(self.frame["got_cheese"].mean())

    def to_frame(self) -> pd.DataFrame:
        return self.frame.copy()

    def summary(self) -> dict:
        return {
            "mazes": int(len(self.frame)),
            "got_cheese": self.got_cheese,
            "p_cheese": float(self.frame["p_cheese"].mean()),
            "p_cheese_median": float(self.frame["p_cheese"].median()),
            f"frac_p_cheese_below_{LOW_P_CHEESE:g}": float((self.frame["p_cheese"] < LOW_P_CHEESE).mean()),
            "p_top_right": float(self.frame["p_top_right"].mean()),
            "p_top_right_median": float(self.frame["p_top_right"].median()),
            "baseline_accuracy": self.baseline,
            "regression_accuracy": self.accuracy,
            **{f"accuracy_{k}": v for k, v in self.single.items()},
            **{f"coef_{k}": v for k, v in self.coefficients.items()},
        }

    def by_bins(self, feature: str, bins=(0, 2, 4, 6, 8, 12, 16, 24, 32)) -> pd.DataFrame:
        """Cheese-getting rate (and count) per bin of one feature; a last bin up to the largest value
        is added when needed, so every maze is counted."""
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}; choose one of {', '.join(FEATURES)}")
        edges = list(bins)
        top = float(self.frame[feature].max())
        if top > edges[-1]:
            edges.append(top)
        f = self.frame.assign(bin=pd.cut(self.frame[feature], edges))
        return f.groupby("bin", observed=True)["got_cheese"].agg(["mean", "count"]).rename(
            columns={"mean": "got_cheese", "count": "mazes"})

    def plot(self, figsize=(11, 3.4)):
        """Cheese-getting rate against each feature (binned)."""
        fig = new_figure(figsize)
        for ax, feat in zip(fig.subplots(1, len(FEATURES)), FEATURES):
            t = self.by_bins(feat)
            mids = [iv.mid for iv in t.index]
            ax.plot(mids, t["got_cheese"], "o-")
            ax.axhline(self.got_cheese, color="k", ls="--", lw=0.8)
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(feat.replace("_", " "), fontsize=8)
            ax.set_ylabel("got the cheese")
        fig.suptitle(f"{len(self.frame)} decision-square mazes: got the cheese {self.got_cheese:.1%}, "
                     f"regression accuracy {self.accuracy:.1%} (majority {self.baseline:.1%})", fontsize=10)
        fig.tight_layout()
        return fig

    def _repr_html_(self) -> str:
        return summary_html(self.summary(), self.plot())


def _majority(y: np.ndarray) -> float:
    """Accuracy of always predicting the more common outcome."""
    return float(max(y.mean(), 1 - y.mean()))


def _model():
    """Logistic regression on standardised features (coefficients comparable across features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression())


def _cv_accuracy(x: np.ndarray, y: np.ndarray, folds: int, seed: int) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if min(np.bincount(y.astype(int), minlength=2)) < folds:  # one outcome (almost) never happens
        return _majority(y)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(_model(), x, y, cv=cv).mean())


def regress(frame: pd.DataFrame, folds: int = 5, seed: int = 0) -> tuple[dict, float, float, dict]:
    """(coefficients on standardised features, intercept, CV accuracy, single-feature CV accuracies)."""
    x = frame[list(FEATURES)].to_numpy(float)
    y = frame["got_cheese"].to_numpy().astype(int)
    if len(np.unique(y)) < 2:
        return {k: float("nan") for k in FEATURES}, float("nan"), 1.0, {k: 1.0 for k in FEATURES}
    fit = _model().fit(x, y)[-1]
    coefs = {k: float(v) for k, v in zip(FEATURES, fit.coef_[0])}
    single = {k: _cv_accuracy(x[:, [i]], y, folds, seed) for i, k in enumerate(FEATURES)}
    return coefs, float(fit.intercept_[0]), _cv_accuracy(x, y, folds, seed), single


@torch.no_grad()
def behaviour_statistics(policy, n_mazes: int = 1000, seed_base: int = EVAL_SEED_BASE, max_steps: int = 500,
                         seed: int = 0, folds: int = 5, mazes=None, backend: str = "avec") -> BehaviourStats:
    """Roll ``policy`` out (sampled actions, rng ``seed``) on ``n_mazes`` decision-square mazes and
    regress cheese-getting on the three distances. Deterministic given the arguments. ``backend``:
    "procgen" draws procgen levels (rolled out in procgen's env) instead of pure-Python mazes.
    ``mazes``: these decision-square mazes instead (of either kind)."""
    policy.eval()
    if mazes is None:
        from .backends import decision_square_mazes as of_backend

        mazes = of_backend(backend, n_mazes, seed_base)
    else:
        mazes = list(mazes)
        if not mazes or any(m.decision_square() is None for m in mazes):
            raise ValueError("behaviour_statistics needs a non-empty list of mazes that all have a decision square")
    got, steps, _ = rollout(policy, mazes, max_steps, greedy=False, rng=np.random.default_rng(seed))
    mot = decision_probs(policy, mazes)
    frame = pd.DataFrame([{"seed": m.seed, "size": m.size, **maze_features(m)} for m in mazes])
    frame.insert(2, "got_cheese", got)
    frame.insert(3, "steps", steps)
    frame.insert(4, "p_cheese", mot.p_cheese)
    frame.insert(5, "p_top_right", mot.p_top_right)
    coefs, intercept, acc, single = regress(frame, folds, seed)
    baseline = _majority(frame["got_cheese"].to_numpy())
    return BehaviourStats(frame, coefs, intercept, acc, single, baseline)
