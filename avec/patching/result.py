"""The result of a patching sweep (activation or attribution): one normalised score per grid cell."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..plotting import heatmap, pyplot
from ..results import Result


@dataclass(frozen=True)
class PatchingResult(Result):
    """Normalised metric per cell: 0 = the corrupted run, 1 = the clean run.

    values:  grid-shaped ``[n_layers]``, ``[n_layers, n_pos]``, ``[n_layers, n_heads]`` or
             ``[n_layers, n_heads, n_pos]`` (``axes`` names them)
    raw:     the metric itself, same shape
    point:   the patched hook point family (``resid_pre``, ``attn_out``, ``attn.z``, ...)
    method:  "activation" (real patches) or "attribution" (gradient x difference estimate)
    direction: "denoise" (corrupted run, clean activations patched in) or "noise" (the reverse)
    """

    values: torch.Tensor
    raw: torch.Tensor
    axes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]
    point: str
    method: str
    direction: str
    clean_metric: float
    corrupted_metric: float
    model_name: str
    seconds: float = float("nan")

    def to_frame(self):
        import pandas as pd

        idx = torch.cartesian_prod(*[torch.arange(n) for n in self.values.shape]) if self.values.dim() > 1 \
            else torch.arange(self.values.shape[0])[:, None]
        data = {ax: [self.labels[i][int(j)] for j in idx[:, i]] for i, ax in enumerate(self.axes)}
        data["score"] = self.values.flatten().numpy()
        data["metric"] = self.raw.flatten().numpy()
        return pd.DataFrame(data)

    def correlation(self, other: "PatchingResult") -> float:
        """Pearson correlation of the two grids' scores (e.g. attribution vs activation patching)."""
        if self.values.shape != other.values.shape:
            raise ValueError(f"grids differ: {tuple(self.values.shape)} vs {tuple(other.values.shape)}")
        a, b = self.values.flatten().double(), other.values.flatten().double()
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    def plot(self, ax=None):
        title = (f"{self.method} patching of {self.point} ({self.direction}); 1 = clean, 0 = corrupted"
                 f" - {self.model_name}")
        v = self.values
        if v.dim() == 1:
            plt = pyplot()
            fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3))
            ax.bar(range(len(v)), v.numpy(), color="#4477aa")
            ax.set_xticks(range(len(v)))
            ax.set_xticklabels(self.labels[0], fontsize=7, rotation=60)
            ax.set_xlabel(self.axes[0])
            ax.set_ylabel("normalised metric")
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(title, fontsize=9)
            return fig
        if v.dim() == 3:  # layers x heads x positions: one row per (layer, head)
            rows = [f"L{l}H{h}" for l in range(v.shape[0]) for h in range(v.shape[1])]
            return heatmap(v.reshape(-1, v.shape[2]).numpy(), rows, self.labels[2], title, ax=ax,
                           xlabel=self.axes[2], ylabel="layer.head", cbar="normalised metric")
        return heatmap(v.numpy(), [f"L{l}" for l in range(v.shape[0])], self.labels[1], title, ax=ax,
                       xlabel=self.axes[1], ylabel=self.axes[0], cbar="normalised metric")
