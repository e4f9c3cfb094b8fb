"""Linear probes at every layer: binary (logistic), multi-class (softmax) and continuous (ridge), with a
train/test split, accuracy or R^2 per layer, the best layer, and a mean-difference baseline.

All layers are fitted at once: features are standardised per layer on the training split, then
- logistic/softmax: one full-batch L-BFGS on the sum of the layers' (independent) L2-penalised losses;
- ridge: closed form from each layer's SVD, the penalty chosen per layer by exact leave-one-out error.
Weights are mapped back to activation space, so ``direction(layer)`` lives where the model's residual does.

Baselines (no fitting beyond class means): binary -> project on mu_1 - mu_0, threshold at the midpoint;
multi-class -> nearest class mean; continuous -> project on mean(top half) - mean(bottom half), then a
1-D least-squares fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from ..results import Result
from .activations import Activations, collect

RIDGE_ALPHAS = tuple(10.0 ** k for k in range(-2, 6))


# -- input checks ------------------------------------------------------------------------------------

def as_layers(acts: Activations | torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], str, str]:
    """(x ``[L, n, d]`` float64, layer numbers, point, model_id) from Activations or a tensor ``[L, n, d]``/``[n, d]``."""
    if isinstance(acts, Activations):
        return acts.x.double(), acts.layers, acts.point, acts.model_id
    x = torch.as_tensor(acts)
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3:
        raise ValueError(f"activations must be [n, d_model] or [n_layers, n, d_model], got {list(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("activations contain NaN or inf")
    return x.double(), tuple(range(x.shape[0])), "resid_post", ""


def check_labels(labels: Any, n: int, kind: str | None) -> tuple[torch.Tensor, str, tuple[str, ...]]:
    """(y ``[n]``, kind, class names); clear errors for NaN, a single class, or a length mismatch."""
    classes: tuple[str, ...] = ()
    if hasattr(labels, "labels") and hasattr(labels, "kind"):  # a Labelled set
        kind = kind or labels.kind
        classes = tuple(labels.classes)
        labels = labels.labels
    y = torch.as_tensor(labels if not isinstance(labels, (list, tuple)) else list(labels), dtype=torch.float64)
    if y.dim() != 1:
        raise ValueError(f"labels must be one per example, [n]; got shape {list(y.shape)}")
    if len(y) != n:
        raise ValueError(f"{n} activations but {len(y)} labels; give one label per example")
    if torch.isnan(y).any():
        rows = torch.isnan(y).nonzero().flatten().tolist()[:10]
        raise ValueError(f"labels contain NaN at row(s) {rows}; drop or fill them first")
    if kind is None:
        whole = bool((y == y.round()).all())
        kind = "binary" if whole and set(y.unique().tolist()) <= {0.0, 1.0} else "multiclass" if whole and y.min() >= 0 and len(y.unique()) <= 50 else "continuous"
    if kind == "continuous":
        if float(y.std()) == 0:
            raise ValueError("every label has the same value: nothing to regress")
        return y, kind, ()
    if not bool((y == y.round()).all()) or y.min() < 0:
        raise ValueError(f"{kind} labels must be class indices 0, 1, ...; use kind='continuous' for real values")
    y = y.long()
    present = y.unique()
    if len(present) < 2:
        raise ValueError(f"all {n} labels are class {int(present[0])}: a probe needs at least two classes")
    k = max(int(y.max()) + 1, len(classes))
    if kind == "binary" and k != 2:
        raise ValueError(f"binary labels must be 0/1, got classes {present.tolist()}; use kind='multiclass'")
    return y, kind, classes or tuple(str(c) for c in range(k))


def default_groups(labels: Any) -> Sequence[Any] | None:
    """A ``Labelled`` set's ``subject`` column (the truth sets have one), else None."""
    extra = getattr(labels, "extra", None) or {}
    return extra.get("subject")


def split(y: torch.Tensor, test_size: float = 0.25, seed: int = 0, stratify: bool = True,
          groups: Sequence[Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train index, test index): a seeded shuffle, stratified by class for integer labels.

    groups: one key per example; examples sharing a key land on the same side. Needed for the truth sets,
    where "The capital of France is Paris." (true) and "... is Rome." (false) share a subject: split apart,
    a probe that memorises "France -> true" scores *below* chance on the test side.
    """
    if not 0 < test_size < 1:
        raise ValueError(f"test_size must be between 0 and 1, got {test_size}")
    g = torch.Generator().manual_seed(seed)
    if groups is not None:
        groups = list(groups)
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} group keys for {len(y)} examples")
        keys = list(dict.fromkeys(groups))
        if len(keys) < 2:
            raise ValueError("every example is in one group: nothing to split")
        perm = torch.randperm(len(keys), generator=g).tolist()
        test_keys = set(keys[i] for i in perm[: max(1, round(len(keys) * test_size))])
        is_test = torch.tensor([k in test_keys for k in groups])
        return (~is_test).nonzero().flatten(), is_test.nonzero().flatten()
    if stratify and y.dtype == torch.long:
        train, test = [], []
        for c in y.unique():
            members = (y == c).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=g)]
            k = max(1, round(len(members) * test_size))
            if k >= len(members):
                raise ValueError(f"class {int(c)} has {len(members)} example(s): too few to split into train and test")
            test.append(members[:k])
            train.append(members[k:])
        return torch.cat(train).sort().values, torch.cat(test).sort().values
    perm = torch.randperm(len(y), generator=g)
    k = max(1, round(len(y) * test_size))
    if k >= len(y):
        raise ValueError(f"{len(y)} examples are too few to split")
    return perm[k:].sort().values, perm[:k].sort().values


# -- fitting ----------------------------------------------------------------------------------------

def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and feature: mean ``[L, 1, d]`` and std ``[L, 1, d]`` (floored, so dead features stay finite)."""
    mu = x.mean(1, keepdim=True)
    sd = x.std(1, keepdim=True).clamp_min(1e-6)
    return mu, sd


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-2,
                 max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic (2 classes: one logit) or softmax regression per layer, all layers at once.

    x: ``[L, n, d]`` (standardised), y: ``[n]`` class indices. Loss per layer: mean cross-entropy +
    ``l2/2 * |W|^2``. Returns W ``[L, d, K]``, b ``[L, K]`` with K = 1 for 2 classes, else n_classes.
    """
    L, n, d = x.shape
    K = 1 if n_classes == 2 else n_classes
    W = torch.zeros(L, d, K, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(L, 1, K, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    target = y.to(x.dtype)[None, :, None].expand(L, n, 1) if K == 1 else y

    def closure():
        opt.zero_grad()
        logits = x @ W + b  # [L, n, K]
        if K == 1:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2))
        else:
            loss = torch.nn.functional.cross_entropy(logits.reshape(L * n, K), y.repeat(L), reduction="none")
            loss = loss.reshape(L, n).mean(1)
        total = loss.sum() + 0.5 * l2 * (W ** 2).sum()  # layers are independent: the sum's optimum is each one's
        total.backward()
        return total

    with torch.enable_grad():
        opt.step(closure)
    return W.detach(), b.detach()[:, 0]


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge regression per layer on standardised ``x [L, n, d]``, ``y [n]``; the penalty picked per layer
    by exact leave-one-out error (closed form from the SVD). Returns w ``[L, d]``, b ``[L]``, alpha ``[L]``."""
    L, n, d = x.shape
    y_mean = y.mean()
    yc = (y - y_mean).to(x.dtype)
    U, S, Vh = torch.linalg.svd(x, full_matrices=False)  # [L, n, r], [L, r], [L, r, d]
    Uty = U.transpose(1, 2) @ yc  # [L, r]
    best_err = torch.full((L,), float("inf"), dtype=x.dtype)
    best_w = torch.zeros(L, d, dtype=x.dtype)
    best_a = torch.zeros(L, dtype=x.dtype)
    for a in alphas:
        shrink = S ** 2 / (S ** 2 + a)  # [L, r]
        fitted = (U * (shrink * Uty)[:, None, :]).sum(2)  # [L, n]
        hat = (U ** 2 * shrink[:, None, :]).sum(2) + 1.0 / n  # leverage, +1/n for the intercept
        loo = (((yc - fitted) / (1 - hat).clamp_min(1e-9)) ** 2).mean(1)
        w = (Vh.transpose(1, 2) * (S / (S ** 2 + a) * Uty)[:, None, :]).sum(2)  # [L, d]
        better = loo < best_err
        best_err = torch.where(better, loo, best_err)
        best_w[better] = w[better]
        best_a[better] = a
    return best_w, torch.full((L,), float(y_mean), dtype=x.dtype), best_a


def r2(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination along the last axis (pred ``[..., n]``, y ``[n]``)."""
    ss_res = ((y - pred) ** 2).sum(-1)
    ss_tot = ((y - y.mean()) ** 2).sum()
    return 1 - ss_res / ss_tot


# -- result --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProbeResult(Result):
    """Probes fitted at each layer.

    kind:           "binary" | "multiclass" | "continuous"
    layers:         model layer numbers (row i of every per-layer tensor is ``layers[i]``)
    train_score, test_score, baseline_score: ``[L]`` accuracy (classes) or R^2 (continuous), baseline on test
    weight:         ``[L, K, d_model]`` in activation space (K = 1 for binary/continuous, n_classes otherwise);
                    score = x @ weight.T + bias (binary: the logit of class 1)
    bias:           ``[L, K]``
    mean_diff:      ``[L, d_model]`` class-1 mean - class-0 mean (continuous: top half - bottom half; multi-class:
                    zeros - see ``class_means``)
    class_means:    ``[L, C, d_model]`` training class means (C = 0 for continuous)
    chance:         the majority class's share of the test split (continuous: 0)
    """

    kind: str
    layers: tuple[int, ...]
    train_score: torch.Tensor
    test_score: torch.Tensor
    baseline_score: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    mean_diff: torch.Tensor
    class_means: torch.Tensor
    classes: tuple[str, ...]
    chance: float
    n_train: int
    n_test: int
    point: str = "resid_post"
    model_id: str = ""
    name: str = ""

    @property
    def metric(self) -> str:
        return "R^2" if self.kind == "continuous" else "accuracy"

    @property
    def best_layer(self) -> int:
        """The layer with the highest test score."""
        return self.layers[int(self.test_score.argmax())]

    def _row(self, layer: int | None) -> int:
        layer = self.best_layer if layer is None else layer
        if layer not in self.layers:
            raise KeyError(f"no probe at layer {layer}; layers are {list(self.layers)}")
        return self.layers.index(layer)

    def direction(self, layer: int | None = None, source: str = "probe", cls: int = 1) -> torch.Tensor:
        """Unit ``[d_model]`` direction at ``layer`` (default: the best), pointing towards class 1 (binary), class
        ``cls`` (multi-class) or larger values (continuous). source: "probe" (the weights) or "mean_diff"."""
        i = self._row(layer)
        if source == "mean_diff":
            v = self.mean_diff[i] if self.kind != "multiclass" else self.class_means[i, cls] - self.class_means[i].mean(0)
        elif source == "probe":
            v = self.weight[i, 0] if self.kind != "multiclass" else self.weight[i, cls] - self.weight[i].mean(0)
        else:
            raise ValueError(f"source must be 'probe' or 'mean_diff', got {source!r}")
        return (v / v.norm()).float()

    def predict(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Predictions for activations ``[n, d_model]`` at ``layer``: class indices, or values (continuous)."""
        i = self._row(layer)
        scores = x.double() @ self.weight[i].T.double() + self.bias[i].double()
        if self.kind == "continuous":
            return scores[:, 0].float()
        if self.kind == "binary":
            return (scores[:, 0] > 0).long()
        return scores.argmax(1)

    def to_steering_vector(self, lm: Any, layer: int | None = None, *, source: str = "probe", scale: float | None = None,
                           positions: Any = "all", cls: int = 1):
        """The probe direction at ``layer`` as a ``SteeringVector`` at the hook point it was read from
        (``blocks.{layer}.{point}``). Default scale: the distance between the class means along the direction
        (continuous: between the top- and bottom-half means), so coefficient 1 moves a class-0 mean to class 1."""
        from ..steering.vector import SteeringVector

        layer = self.best_layer if layer is None else layer
        d = self.direction(layer, source, cls)
        i = self._row(layer)
        if scale is None:
            diff = self.mean_diff[i] if self.kind != "multiclass" else self.class_means[i, cls] - self.class_means[i].mean(0)
            scale = float(diff.float() @ d)
        recipe = {"method": f"probe-{source}", "kind": self.kind, "layer": layer, "point": self.point,
                  "test_score": float(self.test_score[i]), "data": self.name, "scale": scale}
        return SteeringVector.make(lm, f"blocks.{layer}.{self.point}", d * scale, positions=positions, recipe=recipe)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"layer": list(self.layers), f"train {self.metric}": self.train_score.numpy(),
                             f"test {self.metric}": self.test_score.numpy(),
                             f"mean-diff baseline {self.metric}": self.baseline_score.numpy()})

    def plot(self, ax=None):
        from ..plotting import pyplot

        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
        ax.plot(self.layers, self.test_score.numpy(), "o-", label="probe (test)", color="#4477aa")
        ax.plot(self.layers, self.train_score.numpy(), ":", label="probe (train)", color="#4477aa", alpha=0.6)
        ax.plot(self.layers, self.baseline_score.numpy(), "s--", label="mean difference (test)", color="#cc6677")
        ax.axhline(self.chance, color="gray", lw=0.8, ls="--", label="chance")
        ax.set_xlabel(f"layer ({self.point})")
        ax.set_ylabel(self.metric)
        title = f"{self.kind} probe{' on ' + self.name if self.name else ''}: best layer {self.best_layer} " \
                f"({self.metric} {float(self.test_score.max()):.3f}, n_test={self.n_test})"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        return fig


# -- entry points ------------------------------------------------------------------------------------

def _baselines(kind: str, xtr, ytr, xte, yte, k: int):
    """(baseline test score [L], mean_diff [L, d], class_means [L, C, d])."""
    L, _, d = xtr.shape
    if kind == "continuous":
        top = ytr > ytr.median()
        md = xtr[:, top].mean(1) - xtr[:, ~top].mean(1)
        ptr, pte = (xtr @ md[..., None])[..., 0], (xte @ md[..., None])[..., 0]  # [L, n]
        pc = ptr - ptr.mean(1, keepdim=True)
        slope = (pc * (ytr - ytr.mean())).sum(1) / (pc ** 2).sum(1).clamp_min(1e-12)
        pred = ytr.mean() + slope[:, None] * (pte - ptr.mean(1, keepdim=True))
        return r2(pred, yte), md, torch.zeros(L, 0, d, dtype=xtr.dtype)
    means = torch.stack([xtr[:, ytr == c].mean(1) for c in range(k)], 1)  # [L, C, d]
    if kind == "binary":
        md = means[:, 1] - means[:, 0]
        mid = ((means[:, 1] + means[:, 0]) / 2 * md).sum(-1)  # [L]
        pred = ((xte @ md[..., None])[..., 0] > mid[:, None]).long()
        return (pred == yte).double().mean(1), md, means
    dist = torch.cdist(xte, means)  # [L, n, C]
    return (dist.argmin(-1) == yte).double().mean(1), torch.zeros(L, d, dtype=xtr.dtype), means


def fit_probes(acts: Activations | torch.Tensor, labels: Any, kind: str | None = None, *, test_size: float = 0.25,
               seed: int = 0, l2: float = 1e-2, alphas: Sequence[float] = RIDGE_ALPHAS, groups: Any = "auto",
               name: str = "") -> ProbeResult:
    """Fit one probe per layer.

    acts:   ``Activations`` (``collect``) or a tensor ``[n_layers, n, d]`` / ``[n, d]``
    labels: ``[n]`` 0/1, class indices, or real values; or a ``Labelled`` set (gives kind and class names)
    kind:   "binary" | "multiclass" | "continuous" (inferred from the labels when None)
    l2:     logistic/softmax penalty on standardised features; alphas: ridge penalties to choose from (LOO)
    groups: keys keeping related examples on one side of the split (see ``split``); "auto" uses a
            ``Labelled`` set's ``subject`` column when it has one; None splits examples independently
    """
    x, layers, point, model_id = as_layers(acts)
    name = name or str(getattr(labels, "name", "") or "")
    groups = default_groups(labels) if isinstance(groups, str) and groups == "auto" else groups
    y, kind, classes = check_labels(labels, x.shape[1], kind)
    tr, te = split(y, test_size, seed, stratify=kind != "continuous", groups=groups)
    xtr, xte, ytr, yte = x[:, tr], x[:, te], y[tr], y[te]
    mu, sd = _standardise(xtr)
    ztr = (xtr - mu) / sd  # test rows are scored in activation space below (W, B)
    k = len(classes)
    if kind == "continuous":
        w, b, _ = fit_ridge(ztr, ytr, alphas)
        W, B = w[:, None, :] / sd, (b - ((mu / sd)[:, 0] * w).sum(-1))[:, None]  # back to activation space
        score = lambda xx, yy: r2((xx @ W.transpose(1, 2))[..., 0] + B, yy)  # noqa: E731
        chance = 0.0
    else:
        Wz, bz = fit_logistic(ztr, ytr, k, l2)
        W = (Wz / sd.transpose(1, 2)).transpose(1, 2)  # [L, K, d]
        B = bz - ((mu / sd) @ Wz)[:, 0]  # [L, K]

        def score(xx, yy):
            s = xx @ W.transpose(1, 2) + B[:, None, :]
            pred = (s[..., 0] > 0).long() if k == 2 else s.argmax(-1)
            return (pred == yy).double().mean(1)

        chance = float(torch.bincount(yte, minlength=k).max()) / len(yte)
    base, md, means = _baselines(kind, xtr, ytr, xte, yte, k)
    return ProbeResult(kind, layers, score(xtr, ytr).float(), score(xte, yte).float(), base.float(), W.float(),
                       B.float(), md.float(), means.float(), classes, chance, len(tr), len(te), point, model_id, name)


def probe(lm: Any, data: Any, layers: Sequence[int] | None = None, *, labels: Any = None, point: str = "resid_post",
          position: int = -1, batch_size: int = 32, progress: bool = False, **fit_kwargs: Any) -> ProbeResult:
    """Collect activations of ``data`` (a ``Labelled`` set, or texts with ``labels``) at every layer and fit
    probes (see ``fit_probes``)."""
    if labels is None:
        if not hasattr(data, "labels"):
            raise ValueError("give a Labelled set (avec.data.labelled.load(...)) or texts with labels=[...]")
        labels = data
    acts = collect(lm, data, layers, point=point, position=position, batch_size=batch_size, progress=progress)
    return fit_probes(acts, labels, **fit_kwargs)
