"""Residual decomposition: the residual stream at a position as the sum of what each component wrote.

``resid_post[last] == embed + sum_l (attn_out[l] + mlp_out[l])`` holds exactly on every supported
architecture (``attn_out``/``mlp_out`` are taken after Gemma's post-norms), so the pieces below add up
to the final residual; ``accumulated`` is the running sum (the residual after each component).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.lm import LanguageModel
from ..plotting import pyplot
from ..results import Result
from ._common import at, columns, ensure_run


def component_points(lm: LanguageModel) -> list[str]:
    """Hook points of every residual write in order: embed, then attn_out, mlp_out of each layer."""
    out = ["embed"]
    for l in range(lm.n_layers):
        out += [f"blocks.{l}.attn_out", f"blocks.{l}.mlp_out"]
    return out


def component_names(lm: LanguageModel) -> tuple[str, ...]:
    names = ["embed"]
    for l in range(lm.n_layers):
        names += [f"L{l} attn", f"L{l} mlp"]
    return tuple(names)


def final_point(lm: LanguageModel) -> str:
    return f"blocks.{lm.n_layers - 1}.resid_post"


@dataclass(frozen=True)
class ResidualDecomposition(Result):
    """The residual at one position of each prompt, split by the component that wrote it.

    components: ``[batch, n_components, d_model]`` (embed, L0 attn, L0 mlp, ...)
    final:      ``[batch, d_model]`` the last layer's resid_post (== components.sum(1))
    names:      component labels
    position:   the prompt-relative position (-1 = each prompt's last token)
    """

    components: torch.Tensor
    final: torch.Tensor
    names: tuple[str, ...]
    position: int
    model_name: str

    @property
    def accumulated(self) -> torch.Tensor:
        """``[batch, n_components, d_model]``: the residual after each component (running sum)."""
        return self.components.cumsum(1)

    def project(self, direction: torch.Tensor) -> torch.Tensor:
        """``[batch, n_components]`` each component's signed length along ``direction`` (``[d_model]``
        or one per prompt ``[batch, d_model]``), after normalising it to unit length."""
        d = direction.float()
        if d.shape[-1] != self.final.shape[-1]:
            raise ValueError(f"the direction has width {d.shape[-1]} but the residual has {self.final.shape[-1]}")
        norm = d.norm(dim=-1, keepdim=True)
        if (norm < 1e-12).any():
            raise ValueError("the direction has zero norm")
        d = d / norm
        return torch.einsum("bcd,bd->bc", self.components.float(), d.expand(self.final.shape[0], -1))

    def to_frame(self):
        import pandas as pd

        comp = self.components.float()
        acc = self.accumulated.float()
        cos = torch.nn.functional.cosine_similarity(comp, self.final.float()[:, None], dim=-1)
        return pd.DataFrame({
            "component": self.names,
            "norm": comp.norm(dim=-1).mean(0).numpy(),
            "accumulated_norm": acc.norm(dim=-1).mean(0).numpy(),
            "cos_with_final": cos.mean(0).numpy(),
        })

    def plot(self, ax=None):
        plt = pyplot()
        frame = self.to_frame()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(9, 3.5))
        x = range(len(frame))
        ax.bar(x, frame["norm"], color=["#888"] + ["#4477aa", "#cc6677"] * ((len(frame) - 1) // 2), label="component norm")
        ax.plot(x, frame["accumulated_norm"], color="k", marker=".", label="accumulated residual norm")
        ax.set_xticks(list(x)[::2])
        ax.set_xticklabels(list(frame["component"])[::2], rotation=70, fontsize=6)
        ax.set_ylabel("L2 norm")
        ax.set_title(f"Residual decomposition at position {self.position} - {self.model_name} (blue attn, red mlp)", fontsize=9)
        ax.legend(fontsize=7)
        return fig


def decompose(lm: LanguageModel, inputs: Any, position: int = -1) -> ResidualDecomposition:
    """Split the residual at ``position`` (prompt-relative) of each prompt into its components.

    inputs: prompts / token ids, or a Run caching ``embed``, every ``attn_out``/``mlp_out`` and the last
    ``resid_post`` at all positions.
    """
    points = component_points(lm) + [final_point(lm)]
    run = ensure_run(lm, inputs, points)
    col = columns(run, position)
    comps = torch.stack([at(run.cache[p], col) for p in component_points(lm)], dim=1)
    final = at(run.cache[final_point(lm)], col)
    return ResidualDecomposition(comps.detach().cpu(), final.detach().cpu(), component_names(lm), position, lm.name)
