"""Tuned lens (Belrose et al. 2023): a learned affine translator per layer before the model's own
final norm and unembedding, trained so that each layer's prediction matches the final distribution.

translator_l(h) = h + h @ A_l + b_l
loss = sum over layers of KL(final distribution || lens distribution), averaged over tokens.

Start: ``init="zero"`` (A, b = 0: training starts from the logit lens, as in the paper) or
``init="ridge"`` (default): the closed-form ridge regression of the final residual on each layer's
residual. Every KL step costs a full-vocabulary unembedding per layer (on SmolLM2, 30 x [tokens, 49152]),
which is slow on a CPU; the regression start puts the lens close to the final residual in one solve, so
a few KL steps suffice. The fitted lens is judged by ``compare_lenses`` on held-out text.

Saved as ``<dir>/tuned_lens.safetensors`` (A ``[n_layers, d_model, d_model]``, b ``[n_layers, d_model]``)
plus ``<dir>/tuned_lens.json`` (model id, layer points, training settings), both written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..io import atomic_write
from ..models.lm import LanguageModel
from ..plotting import pyplot
from ..results import Result
from .logit_lens import unembed

FILE, META = "tuned_lens.safetensors", "tuned_lens.json"


@dataclass
class TunedLens:
    """Per-layer translators for the residual entering each block (``blocks.{l}.resid_pre``)."""

    A: torch.Tensor  # [n_layers, d_model, d_model]
    b: torch.Tensor  # [n_layers, d_model]
    model_id: str
    meta: dict = field(default_factory=dict)

    @property
    def points(self) -> list[str]:
        return [f"blocks.{l}.resid_pre" for l in range(self.A.shape[0])]

    def translate(self, resid: torch.Tensor, layer: int) -> torch.Tensor:
        """``[..., d_model] -> [..., d_model]`` for the residual entering ``layer``."""
        A, b = self.A[layer].to(resid), self.b[layer].to(resid)
        return resid + resid @ A + b

    def logits(self, lm: LanguageModel, resid: torch.Tensor, layer: int) -> torch.Tensor:
        """``[..., vocab]`` the tuned lens's logits for the residual entering ``layer``."""
        self._check(lm)
        return unembed(lm, self.translate(resid, layer))

    def _check(self, lm: LanguageModel) -> None:
        if lm.model_id != self.model_id:
            raise ValueError(f"this tuned lens was trained on {self.model_id!r}, not {lm.model_id!r}")

    def save(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / FILE, lambda tmp: save_file({"A": self.A.contiguous(), "b": self.b.contiguous()}, tmp))
        meta = {"format": "avec.tuned_lens/1", "model_id": self.model_id, "points": self.points, **self.meta}
        atomic_write(d / META, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TunedLens":
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / FILE).exists() or not (d / META).exists():
            raise FileNotFoundError(f"{d} holds no tuned lens (expected {FILE} and {META})")
        meta = json.loads((d / META).read_text())
        tensors = load_file(str(d / FILE))
        model_id = meta.pop("model_id")
        for k in ("format", "points"):
            meta.pop(k, None)
        return cls(tensors["A"], tensors["b"], model_id, meta)


def _collect(lm: LanguageModel, texts: Sequence[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``([tokens, n_layers, d_model] residuals entering each block, [tokens, d_model] final residual)``."""
    if not texts:
        raise ValueError("the tuned lens needs a non-empty list of training texts")
    points = [f"blocks.{l}.resid_pre" for l in range(lm.n_layers)] + [f"blocks.{lm.n_layers - 1}.resid_post"]
    hs, finals = [], []
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            run = lm.run(list(chunk) if isinstance(chunk[0], str) else torch.stack(list(chunk)), cache=points)
            real = run.attention_mask.bool()
            real[:, 0] = False  # the first token is an attention sink with outlier norms: leave it out
            stack = torch.stack([run.cache[p] for p in points[:-1]], 2)  # [batch, pos, n_layers, d]
            hs.append(stack[real].float())
            finals.append(run.cache[points[-1]][real].float())
    return torch.cat(hs), torch.cat(finals)


def ridge_translators(h: torch.Tensor, final: torch.Tensor, ridge: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form ``(A [L, d, d], b [L, d])`` minimising ``|h_l + h_l A_l + b_l - final|^2 + lam |A_l|^2``.

    h: ``[tokens, L, d]`` residuals entering each layer; final: ``[tokens, d]``; ``lam = ridge`` times
    the mean squared norm of a (centred) feature, so the penalty is scale-free across layers.
    """
    n, L, d = h.shape
    A, b = torch.zeros(L, d, d), torch.zeros(L, d)
    for l in range(L):
        x = h[:, l].double()
        mx, y = x.mean(0), (final.double() - x)
        my = y.mean(0)
        xc, yc = x - mx, y - my
        gram = xc.T @ xc
        lam = ridge * gram.diagonal().mean()
        A[l] = torch.linalg.solve(gram + lam * torch.eye(d, dtype=gram.dtype), xc.T @ yc).float()
        b[l] = (my - mx @ A[l].double()).float()
    return A, b


def train_tuned_lens(lm: LanguageModel, texts: Sequence[Any], *, steps: int = 200, lr: float = 1e-3,
                     batch_tokens: int = 128, batch_size: int = 8, seed: int = 0, init: str = "ridge",
                     ridge: float = 0.1, progress: bool = True) -> TunedLens:
    """Fit one translator per layer on ``texts`` (strings or token-id rows): a start (``init``, see the
    module docstring), then ``steps`` Adam steps on the KL loss.

    Activations are collected once (no gradient through the model); each step samples ``batch_tokens``
    token positions. The model's own parameters are frozen during training and restored after.
    """
    from tqdm.auto import tqdm

    if init not in ("zero", "ridge"):
        raise ValueError(f"init must be 'zero' (start from the logit lens) or 'ridge' (closed-form start), got {init!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    h, final = _collect(lm, list(texts), batch_size)
    n, L, d = h.shape
    A0, b0 = ridge_translators(h, final, ridge) if init == "ridge" else (torch.zeros(L, d, d), torch.zeros(L, d))
    A, b = A0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.Adam([A, b], lr=lr)
    g = torch.Generator().manual_seed(seed)
    frozen = [(p, p.requires_grad) for p in lm.hf.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    losses = []
    try:
        bar = tqdm(range(steps), desc="tuned lens", disable=not progress)
        for _ in bar:
            idx = torch.randint(0, n, (min(batch_tokens, n),), generator=g)
            with torch.no_grad():
                target = unembed(lm, final[idx]).float().log_softmax(-1)
            opt.zero_grad()
            total = 0.0
            for l in range(L):  # one backward per layer bounds memory to one [tokens, vocab] at a time
                x = h[idx, l]
                logp = unembed(lm, x + x @ A[l] + b[l]).float().log_softmax(-1)
                kl = (target.exp() * (target - logp)).sum(-1).mean()
                kl.backward()
                total += float(kl.detach())
            opt.step()
            losses.append(total / L)
            bar.set_postfix(kl=f"{losses[-1]:.3f}")
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    meta = {"steps": steps, "lr": lr, "batch_tokens": batch_tokens, "train_tokens": n, "init": init,
            "ridge": ridge if init == "ridge" else None, "final_mean_kl": losses[-1] if losses else None}
    return TunedLens(A.detach(), b.detach(), lm.model_id, meta)


@dataclass(frozen=True)
class LensComparison(Result):
    """Mean KL(final || lens) by layer for the logit lens and the tuned lens on held-out texts."""

    logit_kl: torch.Tensor  # [n_layers]
    tuned_kl: torch.Tensor  # [n_layers]
    model_name: str

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"layer": range(len(self.logit_kl)), "logit_lens_kl": self.logit_kl.numpy(),
                             "tuned_lens_kl": self.tuned_kl.numpy()})

    def plot(self, ax=None):
        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 3.5))
        ax.plot(self.logit_kl.numpy(), marker="o", ms=3, label="logit lens")
        ax.plot(self.tuned_kl.numpy(), marker="s", ms=3, label="tuned lens")
        ax.set_xlabel("layer (resid_pre)")
        ax.set_ylabel("KL(final || lens) [nats]")
        ax.set_title(f"Logit lens vs tuned lens - {self.model_name}", fontsize=9)
        ax.legend()
        return fig


def compare_lenses(lm: LanguageModel, lens: TunedLens, texts: Sequence[Any], batch_size: int = 8,
                   max_tokens: int | None = None) -> LensComparison:
    """KL to the final distribution by layer, logit lens vs tuned lens, on ``texts``.

    max_tokens: score at most this many token positions, evenly spaced over the texts (each one costs
    a full-vocabulary unembedding per layer and lens); None scores all of them.
    """
    lens._check(lm)
    h, final = _collect(lm, list(texts), batch_size)
    if max_tokens is not None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_tokens < len(h):
            pick = torch.linspace(0, len(h) - 1, max_tokens).round().long()
            h, final = h[pick], final[pick]
    out_logit, out_tuned = [], []
    with torch.no_grad():
        target = unembed(lm, final).float().log_softmax(-1)
        p = target.exp()
        for l in range(h.shape[1]):
            for fn, out in ((lambda x: unembed(lm, x), out_logit), (lambda x: lens.logits(lm, x, l), out_tuned)):
                logp = fn(h[:, l]).float().log_softmax(-1)
                out.append((p * (target - logp)).sum(-1).mean())
    return LensComparison(torch.stack(out_logit), torch.stack(out_tuned), lm.name)
