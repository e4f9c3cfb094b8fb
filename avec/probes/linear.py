"""Linear probes at every layer: binary (logistic), multi-class (softmax) and continuous (ridge), scored on a
held-out split and, with ``folds=K``, by K-fold cross-validation (grouped when related examples exist).

Fitting is scikit-learn's, one layer at a time on features standardised with the training rows' mean and
std (ddof=0, as ``StandardScaler``):
- logistic/softmax: ``LogisticRegression(C=1 / (n_train * l2), solver="lbfgs")``, i.e. the minimiser of
  mean cross-entropy + ``l2/2 * |W|^2`` (intercept unpenalised), run to a tight tolerance (``LOGISTIC_TOL``);
- ridge: ``RidgeCV(alphas)``, the penalty picked per layer by exact leave-one-out error.
Weights are mapped back to activation space, so ``direction(layer)`` lives where the model's residual does.

Baselines (no fitting beyond class means): binary -> project on mu_1 - mu_0, threshold at the midpoint;
multi-class -> nearest class mean; continuous -> project on mean(top half) - mean(bottom half), then a
1-D least-squares fit.

Labels (``check_labels``): bools -> binary; numbers that are all whole and take at most ``MAX_CLASSES``
distinct values -> classes (two values, e.g. 0/1 or -1/+1 -> binary; more -> multi-class), mapped to indices
0..k-1 in sorted order with the values as class names; other numbers -> continuous; strings -> classes.
``kind=`` forces one of ``KINDS``.

Groups (``find_groups``): examples sharing a key stay on one side of every split. Taken from ``groups=``, else
from a ``Labelled`` set's ``pair`` / ``pair_id`` / ``group`` / ``subject`` column, else detected from the texts:
two statements with different labels that differ only in their first or last (up to 3) words form a pair
("The capital of France is Paris." / "... is Rome.").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..results import Result
from .activations import Activations, collect

KINDS = ("binary", "multiclass", "continuous")
RIDGE_ALPHAS = tuple(10.0 ** k for k in range(-2, 6))
MAX_CLASSES = 20  # whole-number labels with at most this many distinct values are classes, more are continuous
LOGISTIC_TOL = 1e-6  # L-BFGS gradient tolerance (sklearn's default 1e-4 stops short of the optimum by ~1e-5)
LOGISTIC_MAX_ITER = 5000
GROUP_COLUMNS = ("pair", "pair_id", "group", "subject")
PAIR_MAX = 6  # detect_pairs: a shared stem joins at most this many statements


# -- input checks ------------------------------------------------------------------------------------

def check_kind(kind: str | None) -> str | None:
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)} (or None to infer it from the labels), got {kind!r}")
    return kind


def as_layers(acts: Activations | torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...], str, str]:
    """(x ``[L, n, d]`` float64, layer numbers, point, model_id) from Activations or a tensor ``[L, n, d]``/``[n, d]``."""
    if isinstance(acts, Activations):
        x, layers, point, model_id = acts.x, acts.layers, acts.point, acts.model_id
    else:
        x = torch.as_tensor(np.asarray(acts) if not isinstance(acts, torch.Tensor) else acts)
        if x.dim() == 2:
            x = x[None]
        if x.dim() != 3:
            raise ValueError(f"activations must be [n, d_model] or [n_layers, n, d_model], got {list(x.shape)}")
        layers, point, model_id = tuple(range(x.shape[0])), "resid_post", ""
    if not torch.isfinite(x).all():
        rows = (~torch.isfinite(x)).any(0).any(-1).nonzero().flatten().tolist()[:10]
        raise ValueError(f"activations contain NaN or inf (example(s) {rows})")
    return x.double(), tuple(layers), point, model_id


def _label_array(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        return labels.detach().cpu().numpy()
    arr = np.asarray(labels if not isinstance(labels, (list, tuple)) else list(labels), dtype=object)
    if arr.ndim != 1:
        return arr
    missing = [i for i, v in enumerate(arr) if v is None or (isinstance(v, (float, np.floating)) and math.isnan(v))]
    if missing:
        raise ValueError(f"labels missing (None) or NaN at row(s) {missing[:10]}; drop or fill them first")
    if all(isinstance(v, (bool, np.bool_)) for v in arr):
        return arr.astype(bool)
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in arr):
        return arr.astype(np.float64)
    if all(isinstance(v, str) for v in arr):
        return arr.astype(str)
    bad = [i for i, v in enumerate(arr) if not isinstance(v, (int, float, np.integer, np.floating, str))
           or isinstance(v, (bool, np.bool_))]
    bad = bad or [i for i, v in enumerate(arr) if isinstance(v, str)]
    raise ValueError(f"labels mix types (numbers, strings, bools): row(s) {bad[:10]} are "
                     f"{[arr[i] for i in bad[:3]]!r}; give one kind of label")


def _show(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v == round(v) else repr(v)


def check_labels(labels: Any, n: int, kind: str | None) -> tuple[torch.Tensor, str, tuple[str, ...]]:
    """(y ``[n]``, kind, class names): class indices (long) for binary/multiclass, float64 for continuous.

    Clear errors for an unknown kind, missing/NaN labels, a single class, a length mismatch, and labels that do
    not fit the kind asked for. See the module docstring for how the kind is inferred.
    """
    check_kind(kind)
    if hasattr(labels, "labels") and hasattr(labels, "kind") and hasattr(labels, "classes"):  # a Labelled set
        if len(labels.labels) != n:
            raise ValueError(f"{n} activations but {len(labels.labels)} labels; give one label per example")
        own = labels.kind
        kind = kind or own
        if own != "continuous" and kind != "continuous":  # labels are indices into the set's classes
            y = torch.tensor(list(labels.labels), dtype=torch.long)
            classes = tuple(labels.classes)
            present = y.unique()
            if len(present) < 2:
                raise ValueError(f"all {n} labels are class {classes[int(present[0])]!r}: a probe needs at least two classes")
            if kind == "binary" and len(classes) != 2:
                raise ValueError(f"binary probes need two classes; this set has {len(classes)} {classes}: use kind='multiclass'")
            return y, kind, classes
        labels = labels.labels
    arr = _label_array(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one per example, [n]; got shape {list(arr.shape)}")
    if len(arr) != n:
        raise ValueError(f"{n} activations but {len(arr)} labels; give one label per example")
    if arr.dtype.kind == "f":
        bad = np.nonzero(~np.isfinite(arr))[0].tolist()
        if bad:
            what = "NaN" if np.isnan(arr).any() else "inf"
            raise ValueError(f"labels contain {what} at row(s) {bad[:10]}; drop or fill them first")
    values = np.unique(arr)
    whole = arr.dtype.kind in "biu" or (arr.dtype.kind == "f" and bool((arr == np.round(arr)).all()))
    if kind is None:
        if arr.dtype.kind == "b" or arr.dtype.kind in "US":
            kind = "binary" if len(values) <= 2 else "multiclass"
        elif whole and len(values) <= MAX_CLASSES:
            kind = "binary" if len(values) <= 2 else "multiclass"
        else:
            kind = "continuous"
    if kind == "continuous":
        if arr.dtype.kind in "US":
            raise ValueError(f"continuous labels must be numbers; got {arr[0]!r}")
        y = torch.tensor(arr.astype(np.float64))
        if float(y.std()) == 0:
            raise ValueError(f"every label is {float(y[0]):g}: nothing to regress")
        return y, kind, ()
    shown = [_show(v) for v in values[:10].tolist()]
    if len(values) < 2:
        raise ValueError(f"all {n} labels are {shown[0]}: a probe needs at least two classes")
    if kind == "binary" and len(values) != 2:
        raise ValueError(f"binary labels take two values, got {len(values)}: {shown}; use kind='multiclass'")
    if arr.dtype.kind == "f" and not whole:
        rows = np.nonzero(arr != np.round(arr))[0].tolist()
        raise ValueError(f"{kind} labels must be whole numbers, bools or names; row(s) {rows[:10]} are "
                         f"{arr[rows[:3]].tolist()}; use kind='continuous' for real values")
    index = np.searchsorted(values, arr)
    names = tuple(str(int(v)) if arr.dtype.kind == "f" else str(v) for v in values)
    return torch.tensor(index, dtype=torch.long), kind, names


def check_texts(texts: Any) -> None:
    """Raise, naming the rows, when prompts are not non-empty strings (None, numbers, "")."""
    if isinstance(texts, (list, tuple)):
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"text(s) at row(s) {bad[:10]} are not non-empty strings: {[texts[i] for i in bad[:3]]!r}")


def _words(text: str) -> list[str]:
    return text.strip().rstrip(".!?").split()


def detect_pairs(texts: Sequence[str], y: Sequence[Any]) -> tuple[list[int] | None, int]:
    """Group ids joining statements that differ only in their first or last 1-3 words and have different
    labels (a minimal pair: "The capital of France is Paris." / "... is Rome."); (None, 0) when none are found.
    The shared part must cover at least half of each text's words and be shared by at most ``PAIR_MAX`` texts
    (so a template filled with many words, "The food was {adjective}.", is not one group); returns the number
    of links made."""
    keys: dict[tuple, list[int]] = {}
    for i, t in enumerate(texts):
        w = _words(t)
        for s in (1, 2, 3):
            if len(w) - s >= max(2, math.ceil(len(w) / 2)):
                keys.setdefault(("end", *w[:-s]), []).append(i)
                keys.setdefault(("start", *w[s:]), []).append(i)
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    n_pairs = 0
    for members in keys.values():
        a = sorted(set(members))
        if 2 <= len(a) <= PAIR_MAX and len({y[i] for i in a}) > 1:
            for i in a[1:]:
                if find(i) != find(a[0]):
                    parent[find(i)] = find(a[0])
                    n_pairs += 1
    if not n_pairs:
        return None, 0
    return [find(i) for i in range(len(texts))], n_pairs


def find_groups(labels: Any, groups: Any = "auto", texts: Sequence[str] | None = None,
                y: torch.Tensor | None = None) -> tuple[list | None, str]:
    """(one group key per example or None, where they came from). groups: keys, None, or "auto" (a ``Labelled``
    set's ``pair``/``pair_id``/``group``/``subject`` column, else pairs detected in the texts)."""
    if groups is None:
        return None, "none (examples split independently)"
    if not (isinstance(groups, str) and groups == "auto"):
        if isinstance(groups, str):
            raise ValueError(f"groups must be 'auto', None or one key per example, got {groups!r}")
        return list(np.asarray(groups).tolist() if isinstance(groups, (np.ndarray, torch.Tensor)) else groups), "given"
    extra = getattr(labels, "extra", None) or {}
    for col in GROUP_COLUMNS:
        if col in extra:
            return list(extra[col]), f"column {col!r}"
    texts = texts if texts is not None else getattr(labels, "texts", None)
    if texts is not None and y is not None and y.dtype == torch.long and len(texts) == len(y):
        ids, n_pairs = detect_pairs(list(texts), y.tolist())
        if ids is not None:
            return ids, f"detected (minimal pairs in the texts: {n_pairs} links)"
    return None, "none (examples split independently)"


def default_groups(labels: Any) -> Sequence[Any] | None:
    """Group keys of a ``Labelled`` set (its pair/subject column, or detected pairs), else None."""
    y = None
    if hasattr(labels, "kind") and getattr(labels, "kind") != "continuous":
        y = torch.tensor(list(labels.labels), dtype=torch.long)
    return find_groups(labels, "auto", y=y)[0]


def _check_groups(groups: Sequence[Any], n: int) -> list:
    groups = list(groups)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group keys for {n} examples; give one per example")
    missing = [i for i, g in enumerate(groups) if g is None]
    if missing:
        raise ValueError(f"group key missing (None) at row(s) {missing[:10]}")
    return groups


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
        groups = _check_groups(groups, len(y))
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


def cv_folds(y: torch.Tensor, folds: int, seed: int = 0, groups: Sequence[Any] | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """K (train index, test index) pairs covering every example once as test. Classes (long ``y``) are
    stratified; with ``groups`` no key is on both sides of any fold (``StratifiedGroupKFold`` / ``GroupKFold``)."""
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be a whole number >= 2, got {folds!r}")
    n = len(y)
    classes = y.dtype == torch.long
    yy = y.numpy()
    if groups is not None:
        groups = _check_groups(groups, n)
        codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)[1]
        if codes.max() + 1 < folds:
            raise ValueError(f"{codes.max() + 1} groups are too few for {folds} folds (a group is never split)")
        if classes:
            out = list(StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(np.zeros(n), yy, codes))
        else:  # GroupKFold only shuffles from sklearn 1.6 on: relabel the groups at random instead
            codes = np.random.default_rng(seed).permutation(codes.max() + 1)[codes]
            out = list(GroupKFold(folds).split(np.zeros(n), yy, codes))
    else:
        if folds > n:
            raise ValueError(f"{n} examples are too few for {folds} folds")
        if classes:
            small = [(int(c), int(m)) for c, m in zip(*np.unique(yy, return_counts=True)) if m < folds]
            if small:
                raise ValueError(f"class(es) {small[:5]} (class, examples) have fewer examples than the {folds} folds; "
                                 "use fewer folds")
            cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        else:
            cv = KFold(folds, shuffle=True, random_state=seed)
        out = list(cv.split(np.zeros(n), yy))
    if classes:
        for i, (tr, _) in enumerate(out):
            if len(np.unique(yy[tr])) < 2:
                raise ValueError(f"fold {i}'s training part has a single class; use fewer folds or more data")
    return out


# -- fitting ----------------------------------------------------------------------------------------

def _standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per layer and feature: mean ``[L, 1, d]`` and std ``[L, 1, d]`` (ddof=0 as ``StandardScaler``; constant
    features get 1, so they stay finite and, centred, contribute nothing)."""
    mu = x.mean(1, keepdim=True)
    sd = x.std(1, keepdim=True, correction=0)
    return mu, torch.where(sd > 1e-12, sd, torch.ones_like(sd))


def logistic_objective(x: torch.Tensor, y: torch.Tensor, W: torch.Tensor, b: torch.Tensor, l2: float) -> torch.Tensor:
    """``[L]`` mean cross-entropy + ``l2/2 * |W|^2`` of ``fit_logistic``'s output (what it minimises)."""
    logits = x @ W + b[:, None, :]
    if W.shape[-1] == 1:
        ce = torch.nn.functional.binary_cross_entropy_with_logits(logits[..., 0], y.to(x.dtype).expand(len(x), -1),
                                                                  reduction="none").mean(1)
    else:
        ce = -torch.log_softmax(logits, -1).gather(-1, y[None, :, None].expand(len(x), -1, 1))[..., 0].mean(1)
    return ce + 0.5 * l2 * (W ** 2).sum((1, 2))


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float = 1e-2, max_iter: int = LOGISTIC_MAX_ITER,
                 tol: float = LOGISTIC_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic (2 classes: one logit) or softmax regression per layer with scikit-learn.

    x: ``[L, n, d]`` (standardised), y: ``[n]`` class indices. Minimises, per layer, mean cross-entropy +
    ``l2/2 * |W|^2`` (= ``LogisticRegression(C=1/(n*l2))``). Returns W ``[L, d, K]``, b ``[L, K]`` with K = 1 for
    2 classes, else n_classes (classes absent from ``y`` get zero weights and a bias of -1e9).
    """
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2}")
    L, n, d = x.shape
    K = 1 if n_classes == 2 else n_classes
    yy = y.numpy()
    present = np.unique(yy)
    W = torch.zeros(L, d, K, dtype=torch.float64)
    b = torch.zeros(L, K, dtype=torch.float64)
    if K > 1:
        b[:] = -1e9
    xs = x.numpy()
    for i in range(L):
        with threadpool_limits(1):  # small matrices: one BLAS thread is as fast, and far faster on a busy machine
            m = LogisticRegression(C=1.0 / (n * l2), tol=tol, max_iter=max_iter).fit(xs[i], yy)
        coef, icpt = torch.from_numpy(m.coef_).double(), torch.from_numpy(m.intercept_).double()
        if K == 1:
            W[i, :, 0], b[i, 0] = coef[0], icpt[0]
        elif len(present) == 2:  # sklearn's one logit -> two softmax columns
            W[i, :, present[1]], W[i, :, present[0]] = coef[0] / 2, -coef[0] / 2
            b[i, present[1]], b[i, present[0]] = icpt[0] / 2, -icpt[0] / 2
        else:
            W[i][:, present], b[i, present] = coef.T, icpt
    return W.to(x.dtype), b.to(x.dtype)


def fit_ridge(x: torch.Tensor, y: torch.Tensor, alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ridge regression per layer on standardised ``x [L, n, d]``, ``y [n]`` with scikit-learn's ``RidgeCV``: the
    penalty picked per layer by exact leave-one-out error. Returns w ``[L, d]``, b ``[L]``, alpha ``[L]``."""
    from sklearn.linear_model import RidgeCV
    from threadpoolctl import threadpool_limits

    L, n, d = x.shape
    w, b, a = torch.zeros(L, d, dtype=torch.float64), torch.zeros(L, dtype=torch.float64), torch.zeros(L, dtype=torch.float64)
    xs, yy = x.numpy(), y.double().numpy()
    for i in range(L):
        with threadpool_limits(1):
            m = RidgeCV(alphas=list(alphas)).fit(xs[i], yy)
        w[i], b[i], a[i] = torch.from_numpy(np.asarray(m.coef_)), float(m.intercept_), float(m.alpha_)
    return w.to(x.dtype), b.to(x.dtype), a.to(x.dtype)


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
    groups:         where the group keys keeping related examples together came from ("given", "column 'subject'",
                    "detected (...)", or "none ...")
    cv_score, cv_baseline: ``[K, L]`` held-out score of the probe / the mean-difference baseline in each of K
                    cross-validation folds (``folds=K``; None without); ``cv_mean``/``cv_std`` summarise them
    folds:          the K (train index, test index) pairs used
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
    groups: str = ""
    cv_score: torch.Tensor | None = None
    cv_baseline: torch.Tensor | None = None
    folds: tuple = ()

    @property
    def metric(self) -> str:
        return "R^2" if self.kind == "continuous" else "accuracy"

    @property
    def cv_mean(self) -> torch.Tensor | None:
        """``[L]`` mean held-out score over the cross-validation folds (None without ``folds``)."""
        return None if self.cv_score is None else self.cv_score.mean(0)

    @property
    def cv_std(self) -> torch.Tensor | None:
        """``[L]`` standard deviation (ddof=1) of the held-out score over the folds."""
        return None if self.cv_score is None else self.cv_score.std(0)

    @property
    def score(self) -> torch.Tensor:
        """``[L]`` the headline held-out score: the cross-validated mean when folds were used, else the test split's."""
        return self.test_score if self.cv_score is None else self.cv_mean

    @property
    def best_layer(self) -> int:
        """The layer with the highest held-out score (cross-validated mean when available)."""
        return self.layers[int(self.score.argmax())]

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

        cols = {"layer": list(self.layers), f"train {self.metric}": self.train_score.numpy(),
                f"test {self.metric}": self.test_score.numpy(), f"mean-diff baseline {self.metric}": self.baseline_score.numpy()}
        if self.cv_score is not None:
            k = len(self.cv_score)
            cols[f"cv{k} {self.metric} mean"] = self.cv_mean.numpy()
            cols[f"cv{k} {self.metric} std"] = self.cv_std.numpy()
            cols[f"cv{k} mean-diff baseline mean"] = self.cv_baseline.mean(0).numpy()
        return pd.DataFrame(cols)

    def plot(self, ax=None):
        from ..plotting import pyplot

        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
        ax.plot(self.layers, self.test_score.numpy(), "o-", label="probe (test)", color="#4477aa")
        if self.cv_score is not None:
            m, sd = self.cv_mean.numpy(), self.cv_std.numpy()
            ax.errorbar(self.layers, m, yerr=sd, fmt="^-", ms=3, capsize=2, color="#228833",
                        label=f"probe ({len(self.cv_score)}-fold CV, mean +- std)")
        ax.plot(self.layers, self.train_score.numpy(), ":", label="probe (train)", color="#4477aa", alpha=0.6)
        ax.plot(self.layers, self.baseline_score.numpy(), "s--", label="mean difference (test)", color="#cc6677")
        ax.axhline(self.chance, color="gray", lw=0.8, ls="--", label="chance")
        ax.set_xlabel(f"layer ({self.point})")
        ax.set_ylabel(self.metric)
        title = f"{self.kind} probe{' on ' + self.name if self.name else ''}: best layer {self.best_layer} " \
                f"({self.metric} {float(self.score.max()):.3f}, " + \
                (f"{len(self.cv_score)}-fold CV)" if self.cv_score is not None else f"n_test={self.n_test})")
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


def _fit_split(kind: str, x: torch.Tensor, y: torch.Tensor, tr, te, k: int, l2: float, alphas):
    """Fit on rows ``tr`` and score rows ``te``: (W [L, K, d], B [L, K], train [L], test [L], baseline [L], md, means)."""
    xtr, xte, ytr, yte = x[:, tr], x[:, te], y[tr], y[te]
    mu, sd = _standardise(xtr)
    ztr = (xtr - mu) / sd  # test rows are scored in activation space below (W, B)
    if kind == "continuous":
        w, b, _ = fit_ridge(ztr, ytr, alphas)
        W, B = w[:, None, :] / sd, (b - ((mu / sd)[:, 0] * w).sum(-1))[:, None]  # back to activation space

        def score(xx, yy):
            return r2((xx @ W.transpose(1, 2))[..., 0] + B, yy)
    else:
        Wz, bz = fit_logistic(ztr, ytr, k, l2)
        W = (Wz / sd.transpose(1, 2)).transpose(1, 2)  # [L, K, d]
        B = bz - ((mu / sd) @ Wz)[:, 0]  # [L, K]

        def score(xx, yy):
            s = xx @ W.transpose(1, 2) + B[:, None, :]
            pred = (s[..., 0] > 0).long() if k == 2 else s.argmax(-1)
            return (pred == yy).double().mean(1)
    base, md, means = _baselines(kind, xtr, ytr, xte, yte, k)
    return W, B, score(xtr, ytr), score(xte, yte), base, md, means


def fit_probes(acts: Activations | torch.Tensor, labels: Any, kind: str | None = None, *, test_size: float = 0.25,
               seed: int = 0, folds: int | None = None, l2: float = 1e-2, alphas: Sequence[float] = RIDGE_ALPHAS,
               groups: Any = "auto", texts: Sequence[str] | None = None, name: str = "") -> ProbeResult:
    """Fit one probe per layer.

    acts:   ``Activations`` (``collect``) or a tensor ``[n_layers, n, d]`` / ``[n, d]``
    labels: ``[n]`` bools, whole numbers, names or real values; or a ``Labelled`` set (gives kind and class names)
    kind:   "binary" | "multiclass" | "continuous" (inferred when None; see the module docstring)
    folds:  also run K-fold cross-validation over all examples (``cv_score``, ``cv_mean``, ``cv_std``); the best
            layer is then the one with the highest mean. None: the single ``test_size`` split only
    l2:     logistic/softmax penalty on standardised features (objective: mean cross-entropy + l2/2 |W|^2, i.e.
            sklearn's ``C = 1/(n_train * l2)``); alphas: ridge penalties to choose from (leave-one-out)
    groups: keys keeping related examples on one side of the split and of every fold (see ``split``); "auto"
            uses a ``Labelled`` set's pair/subject column, else minimal pairs detected in the texts (a ``Labelled``
            set's, or ``texts``); None splits examples independently
    """
    check_kind(kind)
    x, layers, point, model_id = as_layers(acts)
    name = name or str(getattr(labels, "name", "") or "")
    y, kind, classes = check_labels(labels, x.shape[1], kind)
    if texts is not None:
        check_texts(list(texts))
    groups, groups_from = find_groups(labels, groups, texts, y)
    tr, te = split(y, test_size, seed, stratify=kind != "continuous", groups=groups)
    k = len(classes)
    W, B, train, test, base, md, means = _fit_split(kind, x, y, tr, te, k, l2, alphas)
    chance = 0.0 if kind == "continuous" else float(torch.bincount(y[te], minlength=k).max()) / len(te)
    cv = cv_base = None
    splits: tuple = ()
    if folds is not None:
        splits = tuple(cv_folds(y, folds, seed, groups))
        runs = [_fit_split(kind, x, y, torch.from_numpy(a), torch.from_numpy(b), k, l2, alphas) for a, b in splits]
        cv = torch.stack([r[3] for r in runs]).float()
        cv_base = torch.stack([r[4] for r in runs]).float()
    return ProbeResult(kind, layers, train.float(), test.float(), base.float(), W.float(), B.float(), md.float(),
                       means.float(), classes, chance, len(tr), len(te), point, model_id, name, groups_from, cv, cv_base,
                       splits)


def probe(lm: Any, data: Any, layers: Sequence[int] | None = None, *, labels: Any = None, point: str = "resid_post",
          position: int = -1, batch_size: int = 32, progress: bool = False, **fit_kwargs: Any) -> ProbeResult:
    """Collect activations of ``data`` (a ``Labelled`` set, or texts with ``labels``) at every layer and fit
    probes (see ``fit_probes``; e.g. ``folds=5``)."""
    check_kind(fit_kwargs.get("kind"))
    texts = None
    if labels is None:
        if not hasattr(data, "labels"):
            raise ValueError("give a Labelled set (avec.data.labelled.load(...)) or texts with labels=[...]")
        labels = data
    elif isinstance(data, (list, tuple)):
        check_texts(data)
        texts = list(data)
        if len(texts) != len(labels):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels; give one label per text")
        check_labels(labels, len(texts), fit_kwargs.get("kind"))  # fail before the (slow) activation pass
    acts = collect(lm, data, layers, point=point, position=position, batch_size=batch_size, progress=progress)
    if texts is not None and "texts" not in fit_kwargs:
        fit_kwargs["texts"] = texts
    return fit_probes(acts, labels, **fit_kwargs)
