"""Residual stream norms by layer (how the residual grows through the network)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..models.lm import LanguageModel
from ..results import Result


@dataclass(frozen=True)
class ResidualNorms(Result):
    """L2 norm of the residual stream entering each block and leaving the last one.

    norms:        [n_layers + 1, n_prompts] mean norm over each prompt's tokens (first token excluded
                  when ``skip_first``: it is often a norm outlier / attention sink)
    point_names:  the hook point of each row
    """

    norms: torch.Tensor
    point_names: tuple[str, ...]
    prompts: tuple[str, ...]
    model_name: str

    @property
    def mean(self) -> torch.Tensor:
        """[n_layers + 1] norm averaged over prompts."""
        return self.norms.mean(1)

    @property
    def growth(self) -> torch.Tensor:
        """[n_layers] ratio of consecutive mean norms (per-layer growth factor)."""
        m = self.mean
        return m[1:] / m[:-1]

    def to_frame(self):
        import pandas as pd

        growth = [float("nan")] + self.growth.tolist()
        return pd.DataFrame({"point": self.point_names, "mean_norm": self.mean.tolist(),
                             "std_over_prompts": self.norms.std(1).tolist() if self.norms.shape[1] > 1 else 0.0,
                             "growth": growth})

    def plot(self, ax=None):
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 3.5))
        x = range(len(self.point_names))
        ax.plot(x, self.mean.numpy(), marker="o", ms=3, label="mean over prompts")
        ax.fill_between(x, self.norms.min(1).values.numpy(), self.norms.max(1).values.numpy(), alpha=0.2, label="min-max")
        ax.set_yscale("log")
        ax.set_xlabel("layer (resid_pre; last point = final resid_post)")
        ax.set_ylabel("residual L2 norm")
        ax.set_title(f"Residual stream norm by layer - {self.model_name}")
        ax.legend()
        return fig


def residual_norms(lm: LanguageModel, prompts: Sequence[str], skip_first: bool = True) -> ResidualNorms:
    """Mean residual norm per layer and prompt, from one batched run caching only residual points."""
    prompts = list(prompts)
    points = [f"blocks.{l}.resid_pre" for l in range(lm.n_layers)] + [f"blocks.{lm.n_layers - 1}.resid_post"]
    run = lm.run(prompts, cache=points)
    mask = run.attention_mask.clone().float()  # [batch, pos]
    if skip_first:
        if (mask.sum(1) < 2).any():
            raise ValueError("skip_first needs prompts of at least two tokens")
        mask[:, 0] = 0
    rows = []
    for p in points:
        norm = run.cache[p].norm(dim=-1)  # [batch, pos]
        rows.append((norm * mask).sum(1) / mask.sum(1))
    return ResidualNorms(torch.stack(rows).cpu(), tuple(points), tuple(prompts), lm.name)


@dataclass(frozen=True)
class WeightNorms(Result):
    """Frobenius norms of what each layer can write to the residual stream.

    ov:       ``[n_layers, n_heads]`` ||W_V[h] @ W_O[h]||_F of each head's OV circuit
    mlp_out:  ``[n_layers]`` ||W_out||_F of each MLP's down projection
    Gemma's post-norms rescale these writes afterwards; the numbers are the raw weights.
    """

    ov: torch.Tensor
    mlp_out: torch.Tensor
    model_name: str

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"layer": range(len(self.mlp_out)), "ov_mean": self.ov.mean(1).numpy(),
                             "ov_max": self.ov.max(1).values.numpy(), "mlp_out": self.mlp_out.numpy()})

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6.5, 3.5))
        layers = range(len(self.mlp_out))
        for h in range(self.ov.shape[1]):
            ax.plot(layers, self.ov[:, h].numpy(), color="#4477aa", alpha=0.25, lw=0.8)
        ax.plot(layers, self.ov.mean(1).numpy(), color="#4477aa", marker="o", ms=3, label="W_OV per head (mean bold)")
        ax.plot(layers, self.mlp_out.numpy(), color="#cc6677", marker="s", ms=3, label="MLP W_out")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel("Frobenius norm")
        ax.set_title(f"Weight norms of residual writers - {self.model_name}", fontsize=9)
        ax.legend(fontsize=7)
        return fig


def weight_norms(lm: LanguageModel) -> WeightNorms:
    """Frobenius norms of each head's W_OV and each MLP's W_out (weights only, no forward pass)."""
    from . import weights as W

    ov, mlp = [], []
    with torch.no_grad():
        for l in range(lm.n_layers):
            v, o = W.W_V(lm, l).float(), W.W_O(lm, l).float()  # [h, d_model, d_head], [h, d_head, d_model]
            # ||V O||_F^2 = tr(V^T V  O O^T): two d_head x d_head Gram matrices instead of d_model^2
            g = torch.einsum("hmi,hmj->hij", v, v) * torch.einsum("him,hjm->hij", o, o)
            ov.append(g.sum((1, 2)).clamp(min=0).sqrt())
            mlp.append(torch.linalg.matrix_norm(W.W_out(lm, l).float()))
    return WeightNorms(torch.stack(ov).cpu(), torch.stack(mlp).cpu(), lm.name)


def growth_rate(norms: ResidualNorms) -> float:
    """Geometric mean per-layer growth factor of the mean residual norm (first to last point)."""
    m = norms.mean
    return float((m[-1] / m[0]) ** (1.0 / (len(m) - 1)))
