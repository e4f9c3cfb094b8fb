"""Directions from contrast pairs other than the plain mean: PCA of paired differences, and a
logistic-regression probe. Both return a ``SteeringVector`` scaled to the mean difference's
projection, so their coefficients are comparable with CAA's."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..core.positions import From, PositionsLike, as_positions
from .caa import Pair, paired_activations
from .vector import SteeringVector, Term, resolve_hooks


def _scaled(direction: torch.Tensor, diffs: torch.Tensor) -> torch.Tensor:
    """Unit ``direction`` with its sign fixed so the mean difference projects positively, scaled by
    that projection."""
    d = direction / direction.norm()
    proj = float(diffs.mean(0) @ d)
    if proj < 0:
        d, proj = -d, -proj
    return d * proj


def pca_direction(lm: Any, pairs: Sequence[Pair], at: str | int | Sequence[str | int], *, read_at: int = -1,
                  positions: PositionsLike = From(-1), batch_size: int = 16, center: bool = False) -> SteeringVector:
    """First principal component of the paired differences ``act(pos) - act(neg)``, pointing from
    negative to positive (the mean difference projects positively on it), scaled to that projection.

    center: False (default) takes the top singular vector of the raw differences: the direction they
        share, close to the mean difference when the pairs agree. True subtracts their mean first
        (scikit-learn's PCA, as repeng's ``pca_diff`` does): the direction along which the differences
        *vary* most - the same as False only when that variation lies along the shared direction.
    """
    hooks = resolve_hooks(lm, at)
    pos, neg = paired_activations(lm, pairs, hooks, read_at, batch_size)
    if center and len(pairs) < 2:
        raise ValueError("a centred PCA direction needs at least 2 pairs (one difference has no variance)")
    terms = []
    explained = {}
    for h in hooks:
        diffs = pos[h] - neg[h]  # [n, d]
        x = diffs.double() - diffs.double().mean(0) if center else diffs.double()
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        explained[h] = float(s[0] ** 2 / (s ** 2).sum())
        terms.append(Term(h, _scaled(vh[0].float(), diffs), as_positions(positions), 0))
    return SteeringVector(tuple(terms), lm.model_id, {"method": "pca", "pairs": len(pairs), "read_at": read_at,
                                                      "center": center, "explained_variance": explained})


def logistic_direction(lm: Any, pairs: Sequence[Pair], at: str | int | Sequence[str | int], *, read_at: int = -1,
                       positions: PositionsLike = From(-1), C: float = 1.0, batch_size: int = 16) -> SteeringVector:
    """The weight vector of a logistic regression separating positive from negative activations
    (standardised features, weights mapped back), pointing towards positive."""
    from sklearn.linear_model import LogisticRegression

    hooks = resolve_hooks(lm, at)
    pos, neg = paired_activations(lm, pairs, hooks, read_at, batch_size)
    if len(pairs) < 2:
        raise ValueError("a logistic direction needs at least 2 pairs")
    terms, accuracy = [], {}
    for h in hooks:
        x = torch.cat([pos[h], neg[h]]).double()
        y = torch.cat([torch.ones(len(pos[h])), torch.zeros(len(neg[h]))]).numpy()
        mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
        clf = LogisticRegression(C=C, max_iter=2000).fit(((x - mu) / sd).numpy(), y)
        accuracy[h] = float(clf.score(((x - mu) / sd).numpy(), y))
        w = torch.tensor(clf.coef_[0]) / sd  # back to activation space
        terms.append(Term(h, _scaled(w.float(), pos[h] - neg[h]), as_positions(positions), 0))
    return SteeringVector(tuple(terms), lm.model_id, {"method": "logistic", "pairs": len(pairs), "read_at": read_at,
                                                      "train_accuracy": accuracy, "C": C})
