"""Contrast-Consistent Search (Burns et al. 2022): an unsupervised probe on contrast pairs.

Each statement becomes two prompts, x+ (answered "Yes") and x- (answered "No"). Each side is normalised
on its own (mean removed, optionally divided by its per-feature std) so the probe cannot read the
answer token itself. A probe p(x) in (0, 1) is trained to be

    consistent: p(x+) = 1 - p(x-)           loss (p(x+) - (1 - p(x-)))^2
    confident:  one of them near 0          loss min(p(x+), p(x-))^2

over several random restarts; the lowest-loss restart is kept. Its prediction 0.5 (p(x+) + 1 - p(x-)) is
right or wrong only up to a global sign, so accuracy is max(acc, 1 - acc).

Every layer and every restart are trained together in one batched Adam loop (they are independent).
``confound_pairs`` builds the distractor experiment of Farquhar et al. (2023): a random word appended to
one side of each pair gives a feature that is as consistent and confident as truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..results import Result
from .activations import Activations, collect
from .linear import as_layers, check_labels, default_groups, fit_logistic, split

TEMPLATE = "{statement}\nQuestion: Is this statement true?\nAnswer:{answer}"
ANSWERS = (" Yes", " No")


def contrast_pairs(statements: Sequence[str], template: str = TEMPLATE,
                   answers: tuple[str, str] = ANSWERS) -> tuple[list[str], list[str]]:
    """(x+ texts, x- texts): each statement in ``template`` with the positive and the negative answer."""
    if "{statement}" not in template or "{answer}" not in template:
        raise ValueError("the template needs both {statement} and {answer}")
    statements = list(getattr(statements, "texts", statements))
    return ([template.format(statement=s, answer=answers[0]) for s in statements],
            [template.format(statement=s, answer=answers[1]) for s in statements])


def confound_pairs(statements: Sequence[str], seed: int = 0, words: tuple[str, str] = (" Banana", " Shed"),
                   template: str = TEMPLATE, answers: tuple[str, str] = ANSWERS) -> tuple[list[str], list[str], torch.Tensor]:
    """Contrast pairs with a distractor: for a random half, x+ ends with ``words[0]`` and x- with ``words[1]``;
    for the other half the reverse. Returns (x+, x-, z) with z ``[n]`` = 1 where x+ got ``words[0]``.
    "Which side has words[0]" is a consistent, confident feature that has nothing to do with truth."""
    pos, neg = contrast_pairs(statements, template, answers)
    z = torch.randint(0, 2, (len(pos),), generator=torch.Generator().manual_seed(seed))
    pos = [p + (words[0] if zi else words[1]) for p, zi in zip(pos, z.tolist())]
    neg = [q + (words[1] if zi else words[0]) for q, zi in zip(neg, z.tolist())]
    return pos, neg, z


def normalise(x: torch.Tensor, variance: bool = True) -> torch.Tensor:
    """One side of the pairs, ``[..., n, d]``: mean over examples removed, and each feature divided by
    its std when ``variance``."""
    x = x - x.mean(-2, keepdim=True)
    if variance:
        x = x / x.std(-2, keepdim=True).clamp_min(1e-6)
    return x


def ccs_loss(p_pos: torch.Tensor, p_neg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(consistency, confidence), each averaged over the last axis (examples)."""
    consistency = ((p_pos - (1 - p_neg)) ** 2).mean(-1)
    confidence = (torch.minimum(p_pos, p_neg) ** 2).mean(-1)
    return consistency, confidence


def _init(shape: tuple[int, ...], fan_in: int, g: torch.Generator) -> torch.Tensor:
    bound = 1.0 / fan_in ** 0.5  # nn.Linear's default init
    return (torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * bound


def _prob(params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """p(x) ``[L, n, R]`` for sides ``x [L, n, d]`` under every restart's probe.

    Restarts sit on the last axis of one ``[L, d, R*h]`` matrix, so each step is a single batched matmul
    over layers (broadcasting x over restarts instead would copy it R times per step)."""
    if "w1" in params:
        L, d, R, h = params["w1"].shape
        hid = torch.relu((x @ params["w1"].reshape(L, d, R * h)).reshape(L, -1, R, h) + params["b1"])  # [L, n, R, h]
        return torch.sigmoid((hid * params["w2"]).sum(-1) + params["b2"])
    return torch.sigmoid(x @ params["w"] + params["b"])  # [L, n, R]


def train_ccs(x_pos: torch.Tensor, x_neg: torch.Tensor, *, hidden: int = 0, n_restarts: int = 10, epochs: int = 500,
              lr: float = 1e-2, weight_decay: float = 0.01, seed: int = 0) -> dict[str, torch.Tensor]:
    """Train CCS probes on normalised sides ``[L, n, d]``; keep each layer's lowest-loss restart.

    hidden: 0 for a linear probe, else the width of a one-hidden-layer ReLU MLP.
    Returns the kept restart's params per layer (linear: ``w [L, d, 1]``, ``b [L, 1, 1]``; MLP: ``w1 [L, d, 1, h]``,
    ``b1``, ``w2``, ``b2``) and ``loss``, ``consistency``, ``confidence`` ``[L]`` on the training pairs.
    """
    L, n, d = x_pos.shape
    R = n_restarts
    if R < 1:
        raise ValueError(f"n_restarts must be >= 1, got {n_restarts}")
    g = torch.Generator().manual_seed(seed)
    if hidden:
        params = {"w1": _init((L, d, R, hidden), d, g), "b1": _init((L, 1, R, hidden), d, g),
                  "w2": _init((L, 1, R, hidden), hidden, g), "b2": _init((L, 1, R), hidden, g)}
    else:
        params = {"w": _init((L, d, R), d, g), "b": _init((L, 1, R), d, g)}
    for p in params.values():
        p.requires_grad_(True)
    xp, xn = x_pos.double(), x_neg.double()

    def losses():
        cons, conf = ccs_loss(_prob(params, xp).transpose(1, 2), _prob(params, xn).transpose(1, 2))
        return cons, conf  # [L, R]

    opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            cons, conf = losses()
            (cons + conf).sum().backward()  # restarts and layers are independent
            opt.step()
    with torch.no_grad():
        cons, conf = losses()
        loss = cons + conf
        best = loss.argmin(1)  # [L]
        rows = torch.arange(L)
        out = {}
        for k, v in params.items():
            v = v.detach()
            # keep the restart axis (size 1) so _prob works unchanged on the kept probes
            out[k] = v[rows, :, best][:, :, None] if v.dim() == 3 else v[rows, :, best][:, :, None, :]
        out.update(loss=loss[rows, best], consistency=cons[rows, best], confidence=conf[rows, best])
    return out


def _predict(params: Mapping[str, torch.Tensor], x_pos: torch.Tensor, x_neg: torch.Tensor) -> torch.Tensor:
    """``[L, n]`` 0.5 (p(x+) + 1 - p(x-)) with each layer's kept probe."""
    return 0.5 * (_prob(params, x_pos.double()) + 1 - _prob(params, x_neg.double()))[..., 0]


def accuracy_up_to_sign(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``pred [..., n]`` in (0, 1) vs 0/1 labels: max(acc, 1 - acc) (CCS cannot know which side is "true")."""
    acc = ((pred > 0.5).long() == y).double().mean(-1)
    return torch.maximum(acc, 1 - acc)


@dataclass(frozen=True)
class CCSResult(Result):
    """CCS and a supervised probe on the same contrast pairs, per layer.

    ccs_accuracy:        ``[L]`` test accuracy up to sign of the lowest-loss CCS probe
    supervised_accuracy: ``[L]`` test accuracy of logistic regression on x+ - x- (normalised sides)
    loss, consistency, confidence: ``[L]`` of the kept CCS probe on the training split
    other_accuracy:      name -> ``[L]`` CCS accuracy up to sign against other labels (e.g. a distractor)
    direction:           ``[L, d_model]`` unit CCS direction in x+ activation space (linear probes only; sign arbitrary)
    """

    layers: tuple[int, ...]
    ccs_accuracy: torch.Tensor
    supervised_accuracy: torch.Tensor
    loss: torch.Tensor
    consistency: torch.Tensor
    confidence: torch.Tensor
    other_accuracy: Mapping[str, torch.Tensor] = field(default_factory=dict)
    direction: torch.Tensor | None = None
    n_train: int = 0
    n_test: int = 0
    hidden: int = 0
    point: str = "resid_post"
    model_id: str = ""
    name: str = ""
    seconds: float = float("nan")

    @property
    def best_layer(self) -> int:
        """The layer where CCS's test accuracy is highest."""
        return self.layers[int(self.ccs_accuracy.argmax())]

    def to_frame(self):
        import pandas as pd

        data = {"layer": list(self.layers), "CCS accuracy": self.ccs_accuracy.numpy(),
                "supervised accuracy": self.supervised_accuracy.numpy(), "CCS loss": self.loss.numpy(),
                "consistency": self.consistency.numpy(), "confidence": self.confidence.numpy()}
        for k, v in self.other_accuracy.items():
            data[f"CCS accuracy vs {k}"] = v.numpy()
        return pd.DataFrame(data)

    def plot(self, ax=None):
        from ..plotting import pyplot

        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
        ax.plot(self.layers, self.supervised_accuracy.numpy(), "s-", color="#4477aa", label="supervised (x+ - x-)")
        ax.plot(self.layers, self.ccs_accuracy.numpy(), "o-", color="#cc6677", label="CCS vs truth (up to sign)")
        for (k, v), c in zip(self.other_accuracy.items(), ("#228833", "#ccbb44", "#aa3377")):
            ax.plot(self.layers, v.numpy(), "^--", color=c, label=f"CCS vs {k}")
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_ylim(0.4, 1.02)
        ax.set_xlabel(f"layer ({self.point})")
        ax.set_ylabel("test accuracy")
        kind = f"MLP({self.hidden})" if self.hidden else "linear"
        ax.set_title(f"CCS ({kind}) vs supervised probe{' on ' + self.name if self.name else ''}, n_test={self.n_test}",
                     fontsize=9)
        ax.legend(fontsize=7)
        return fig


def fit_ccs(x_pos: Activations | torch.Tensor, x_neg: Activations | torch.Tensor, labels: Any, *,
            other_labels: Mapping[str, Any] | None = None, hidden: int = 0, n_restarts: int = 10, epochs: int = 500,
            lr: float = 1e-2, weight_decay: float = 0.01, variance: bool = True, pca: int | None = None,
            test_size: float = 0.25, seed: int = 0, groups: Any = "auto", name: str = "") -> CCSResult:
    """CCS (trained without labels on the train split) and a supervised probe, evaluated on the test split.

    x_pos, x_neg: activations of the two sides, ``[L, n, d]`` / ``[n, d]`` or ``Activations``, row i = pair i
    labels:       ``[n]`` 0/1 truth of each statement (used only for evaluation and the supervised probe)
    other_labels: name -> ``[n]`` 0/1, other features to score CCS against (e.g. the distractor of ``confound_pairs``)
    pca:          train on the top-k principal components of the normalised training sides (with fewer pairs
                  than dimensions, CCS can fit any labelling: loss 0 says nothing)
    groups:       keys keeping related statements on one side of the split ("auto": a Labelled set's subjects)
    """
    t0 = time.perf_counter()
    xp, layers, point, model_id = as_layers(x_pos)
    xn, layers_n, _, _ = as_layers(x_neg)
    if xp.shape != xn.shape:
        raise ValueError(f"the two sides of the contrast pairs differ: x+ {list(xp.shape)} vs x- {list(xn.shape)}; "
                         "every statement needs exactly one positive and one negative prompt")
    if layers != layers_n:
        raise ValueError(f"x+ has layers {list(layers)} but x- has {list(layers_n)}")
    y, kind, _ = check_labels(labels, xp.shape[1], "binary")
    others = {k: check_labels(v, xp.shape[1], "binary")[0] for k, v in (other_labels or {}).items()}
    groups = default_groups(labels) if isinstance(groups, str) and groups == "auto" else groups
    tr, te = split(y, test_size, seed, groups=groups)
    # normalise each side with statistics of the training split (no peeking at the test pairs)
    def norm(x):
        mu = x[:, tr].mean(1, keepdim=True)
        sd = x[:, tr].std(1, keepdim=True).clamp_min(1e-6) if variance else torch.ones_like(mu)
        return (x - mu) / sd, sd

    zp, sdp = norm(xp)
    zn, _ = norm(xn)
    basis = None
    if pca:
        both = torch.cat([zp[:, tr], zn[:, tr]], 1)  # [L, 2 n_train, d]
        basis = torch.linalg.svd(both, full_matrices=False)[2][:, :pca].transpose(1, 2)  # [L, d, k]
        zp, zn = zp @ basis, zn @ basis
    params = train_ccs(zp[:, tr], zn[:, tr], hidden=hidden, n_restarts=n_restarts, epochs=epochs, lr=lr,
                       weight_decay=weight_decay, seed=seed)
    pred = _predict(params, zp[:, te], zn[:, te])  # [L, n_test]
    ccs_acc = accuracy_up_to_sign(pred, y[te])
    other_acc = {k: accuracy_up_to_sign(pred, v[te]).float() for k, v in others.items()}
    # supervised comparison: logistic regression on the normalised difference, same split
    diff = zp - zn
    mu, sd = diff[:, tr].mean(1, keepdim=True), diff[:, tr].std(1, keepdim=True).clamp_min(1e-6)
    W, b = fit_logistic((diff[:, tr] - mu) / sd, y[tr], 2)
    sup_pred = ((((diff[:, te] - mu) / sd) @ W)[..., 0] + b > 0).long()
    sup_acc = (sup_pred == y[te]).double().mean(1)
    direction = None
    if not hidden:
        w = params["w"][..., 0] if basis is None else (basis @ params["w"])[..., 0]  # [L, d]
        v = w / sdp[:, 0]  # back to x+ activation space
        direction = (v / v.norm(dim=-1, keepdim=True)).float()
    return CCSResult(layers, ccs_acc.float(), sup_acc.float(), params["loss"].float(), params["consistency"].float(),
                     params["confidence"].float(), other_acc, direction, len(tr), len(te), hidden, point, model_id,
                     name or str(getattr(labels, "name", "") or ""), time.perf_counter() - t0)


def ccs(lm: Any, statements: Any, layers: Sequence[int] | None = None, *, labels: Any = None,
        template: str = TEMPLATE, answers: tuple[str, str] = ANSWERS, batch_size: int = 32, **fit_kwargs: Any) -> CCSResult:
    """CCS on a model: build contrast pairs from ``statements`` (a ``Labelled`` set, or texts with ``labels``),
    collect the last token of both sides at every layer, and fit (see ``fit_ccs``)."""
    labels = statements if labels is None else labels
    pos, neg = contrast_pairs(statements, template, answers)
    ap = collect(lm, pos, layers, batch_size=batch_size)
    an = collect(lm, neg, layers, batch_size=batch_size)
    return fit_ccs(ap, an, labels, **fit_kwargs)


def confound_experiment(lm: Any, statements: Any, layers: Sequence[int] | None = None, *, labels: Any = None,
                        words: tuple[str, str] = (" Banana", " Shed"), seed: int = 0, batch_size: int = 32,
                        **fit_kwargs: Any) -> tuple[CCSResult, CCSResult]:
    """(plain CCS, CCS with a distractor word in the pairs), both scored against truth and against the
    distractor. If CCS finds truth, the second keeps truth accuracy; if it finds the surface feature,
    its accuracy against the distractor goes up and against truth falls to chance."""
    labels = statements if labels is None else labels
    texts = list(getattr(statements, "texts", statements))
    pos, neg, z = confound_pairs(texts, seed, words)
    plain_pos, plain_neg = contrast_pairs(texts)
    kw = dict(batch_size=batch_size)
    plain = fit_ccs(collect(lm, plain_pos, layers, **kw), collect(lm, plain_neg, layers, **kw), labels,
                    other_labels={"distractor": z}, seed=seed, **fit_kwargs)
    mixed = fit_ccs(collect(lm, pos, layers, **kw), collect(lm, neg, layers, **kw), labels,
                    other_labels={"distractor": z}, seed=seed, **fit_kwargs)
    return plain, mixed
