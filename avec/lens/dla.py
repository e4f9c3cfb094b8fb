"""Direct logit attribution (DLA): how much each component writes directly onto a logit (difference).

The final norm divides the residual by a per-token scale ``s``; DLA freezes ``s`` at its value in the
run. The map residual -> logit is then affine, and the final residual is the exact sum of its writes
(embed, each ``attn_out``, each ``mlp_out``), so

    logit(target) - logit(against) == sum(components) + constant

where ``constant`` holds the final norm's and the unembedding's biases. Heads split ``attn_out`` through
their slice of the output projection (``z_h @ W_O[h]``), neurons split ``mlp_out`` through the down
projection (``post_n * W_out[n]``); each layer's output bias is reported beside them.

Gemma's post-norms: there ``attn_out = post_norm(o_proj(z))``. An RMS norm is not linear (its scale
depends on all heads together), so a head's "contribution" is only defined once the post-norm's scale
is frozen too. We freeze it at its value in the run (``frozen_post_norm=True`` on the result): the head
and neuron numbers then add up to the layer's contribution, but they describe the linearised layer,
not what removing a head would do. ``head_rest`` / ``neuron_rest`` hold each layer's bias plus the
explicit remainder ``layer contribution - sum(parts)``, which is float error when the split is exact.

The logit here is the ``logits`` hook point: before Gemma 2's final soft-capping, which is monotonic
but not additive.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..models.lm import LanguageModel
from ..plotting import heatmap, pyplot
from ..results import Result
from . import weights as W
from ._common import at, columns, ensure_run, token_ids, token_label
from .decomposition import component_names, component_points, final_point


@dataclass(frozen=True)
class DLA(Result):
    """Direct logit attribution at one position of each prompt.

    components:  ``[batch, n_components]`` embed, L0 attn, L0 mlp, ... (names in ``names``)
    constant:    ``[batch]`` final-norm bias and unembedding bias terms
    logit:       ``[batch]`` the logit (difference) itself, pre soft-capping
    heads:       ``[batch, n_layers, n_heads]`` per-head contributions, or None
    head_rest:   ``[batch, n_layers]`` output-projection bias + remainder of each attention layer, or None
    neurons:     ``[batch, n_layers, d_mlp]`` per-neuron contributions, or None
    neuron_rest: ``[batch, n_layers]`` down-projection bias + remainder of each MLP layer, or None
    frozen_post_norm: heads/neurons were split through a post-norm with its scale frozen (Gemma)
    """

    components: torch.Tensor
    constant: torch.Tensor
    logit: torch.Tensor
    names: tuple[str, ...]
    target: tuple[str, ...]
    against: tuple[str, ...] | None
    position: int
    model_name: str
    heads: torch.Tensor | None = None
    head_rest: torch.Tensor | None = None
    neurons: torch.Tensor | None = None
    neuron_rest: torch.Tensor | None = None
    frozen_post_norm: bool = False

    @property
    def total(self) -> torch.Tensor:
        """``[batch]`` sum of every contribution (equals ``logit`` up to float error)."""
        return self.components.sum(1) + self.constant

    @property
    def label(self) -> str:
        t = self.target[0] if len(set(self.target)) == 1 else "target"
        if self.against is None:
            return f"logit({t!r})"
        a = self.against[0] if len(set(self.against)) == 1 else "against"
        return f"logit({t!r}) - logit({a!r})"

    def to_dict(self) -> dict:
        """Every field as JSON data, plus ``label`` and ``total`` (``[batch]``)."""
        from ..results import jsonable

        return {**super().to_dict(), "label": self.label, "total": jsonable(self.total)}

    def to_frame(self):
        """One row per component: mean contribution over prompts (and each prompt's, if several)."""
        import pandas as pd

        data = {"component": list(self.names) + ["biases"],
                "contribution": torch.cat([self.components.mean(0), self.constant.mean(0, keepdim=True)]).numpy()}
        if self.components.shape[0] > 1:
            for b in range(self.components.shape[0]):
                data[f"prompt {b}"] = torch.cat([self.components[b], self.constant[b : b + 1]]).numpy()
        return pd.DataFrame(data)

    def top_heads(self, k: int = 10):
        """The ``k`` heads with the largest |mean contribution|, as a frame."""
        if self.heads is None:
            raise ValueError("this DLA was computed without heads; call dla(..., heads=True)")
        return _top(self.heads, k, "head")

    def top_neurons(self, k: int = 10):
        """The ``k`` neurons with the largest |mean contribution|, as a frame."""
        if self.neurons is None:
            raise ValueError("this DLA was computed without neurons; call dla(..., neurons=True)")
        return _top(self.neurons, k, "neuron")

    def plot(self, ax=None):
        plt = pyplot()
        if self.heads is not None and ax is None:
            fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4), gridspec_kw={"width_ratios": [1.6, 1]})
        else:
            fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(9, 3.5))
            ax2 = None
        mean = self.components.mean(0).numpy()
        colors = ["#888"] + ["#4477aa", "#cc6677"] * ((len(mean) - 1) // 2)
        ax.bar(range(len(mean)), mean, color=colors)
        ax.set_xticks(range(0, len(mean), 2))
        ax.set_xticklabels(list(self.names)[::2], rotation=70, fontsize=6)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylabel("direct contribution")
        ax.set_title(f"DLA of {self.label} = {self.logit.mean():.3g} (blue attn, red mlp)", fontsize=9)
        if ax2 is not None:
            heads = self.heads.mean(0).numpy()
            heatmap(heads, [f"L{l}" for l in range(heads.shape[0])], [str(h) for h in range(heads.shape[1])],
                    "per head" + (" (post-norm scale frozen)" if self.frozen_post_norm else ""), ax=ax2,
                    xlabel="head", ylabel="layer")
        return fig


def _split(parts_in: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, readout: torch.Tensor,
           norm: W.ElementwiseNorm | None, written: torch.Tensor):
    """Contributions of each part (head / neuron) of one sublayer, and bias + remainder.

    parts_in: ``[batch, n_parts, k]`` (z per head, k = d_head) or ``[batch, n_parts, 1]`` (neurons);
    weight: ``[n_parts, k, d_model]``; readout: ``[batch, d_model]``; written: ``[batch, d_model]`` the
    sublayer's actual write (attn_out / mlp_out) whose contribution the parts must add up to.
    """
    total = (written.float() * readout).sum(-1)  # the whole layer's contribution
    if norm is not None:  # freeze the post-norm's scale at its value on the pre-norm output
        pre = torch.einsum("bpk,pkd->bd", parts_in.float(), weight.float())
        if bias is not None:
            pre = pre + bias.float()
        norm.check(pre, written)
        readout = norm.readout(readout, norm.scale(pre))
    per_part = torch.einsum("bpk,pkd,bd->bp", parts_in.float(), weight.float(), readout)
    rest = total - per_part.sum(1)  # the bias term plus float error
    return per_part, rest


def dla(lm: LanguageModel, inputs: Any, target: Any, against: Any = None, *, position: int = -1,
        heads: bool = False, neurons: bool = False) -> DLA:
    """Direct logit attribution of ``target`` (minus ``against``) at ``position`` of each prompt.

    inputs:   prompts / token ids ``[batch, pos]``, or a Run that cached the points needed
    target:   a single-token string or id, or one per prompt; against: the same, or None
    position: prompt-relative (-1 = each prompt's last token, which predicts the next one)
    heads:    also split each attention layer by head (through ``attn.z``)
    neurons:  also split each MLP by neuron (through ``mlp.post``)
    """
    points = component_points(lm) + [final_point(lm), "final_norm"]
    if heads:
        points += [f"blocks.{l}.attn.z" for l in range(lm.n_layers)]
    if neurons:
        points += [f"blocks.{l}.mlp.post" for l in range(lm.n_layers)]
    run = ensure_run(lm, inputs, points)
    col = columns(run, position)
    batch = col.shape[0]
    tgt = token_ids(lm, target, batch, "target")
    ag = None if against is None else token_ids(lm, against, batch, "against")

    with torch.no_grad():
        W_U = lm.W_U.float()  # [d_model, vocab]
        u = W_U[:, tgt].T  # [batch, d_model]
        if ag is not None:
            u = u - W_U[:, ag].T
        norm = W.ElementwiseNorm(lm.get_module(lm.arch.final_norm))
        x_final = at(run.cache[final_point(lm)], col)
        normed = at(run.cache["final_norm"], col)
        norm.check(x_final, normed)
        readout = norm.readout(u, norm.scale(x_final))  # [batch, d_model]

        comps = torch.stack([(at(run.cache[p], col).float() * readout).sum(-1) for p in component_points(lm)], 1)
        constant = torch.zeros(batch)
        if norm.bias is not None:
            constant = constant + (norm.bias * u).sum(-1)
        ub = W.unembed_bias(lm)
        if ub is not None:
            constant = constant + ub.float()[tgt] - (ub.float()[ag] if ag is not None else 0)
        logit = (normed.float() * u).sum(-1) + (ub.float()[tgt] - (ub.float()[ag] if ag is not None else 0) if ub is not None else 0)

        frozen = W.has_post_norms(lm) and (heads or neurons)
        head_c = head_rest = neuron_c = neuron_rest = None
        if heads:
            hs, rs = [], []
            for l in range(lm.n_layers):
                z = at(run.cache[f"blocks.{l}.attn.z"], col)  # [batch, n_heads, d_head]
                pn = W.post_norm(lm, l, "attn")
                c, r = _split(z, W.W_O(lm, l), W.b_O(lm, l), readout, None if pn is None else W.ElementwiseNorm(pn),
                              at(run.cache[f"blocks.{l}.attn_out"], col))
                hs.append(c)
                rs.append(r)
            head_c, head_rest = torch.stack(hs, 1), torch.stack(rs, 1)
        if neurons:
            ns, rs = [], []
            for l in range(lm.n_layers):
                post = at(run.cache[f"blocks.{l}.mlp.post"], col)[..., None]  # [batch, d_mlp, 1]
                pn = W.post_norm(lm, l, "mlp")
                c, r = _split(post, W.W_out(lm, l)[:, None, :], W.b_out(lm, l), readout, None if pn is None else W.ElementwiseNorm(pn),
                              at(run.cache[f"blocks.{l}.mlp_out"], col))
                ns.append(c)
                rs.append(r)
            neuron_c, neuron_rest = torch.stack(ns, 1), torch.stack(rs, 1)

    labels = lambda ids: tuple(token_label(lm, int(i)) for i in ids)  # noqa: E731
    return DLA(comps.cpu(), constant.cpu(), logit.cpu(), component_names(lm), labels(tgt),
               None if ag is None else labels(ag), position, lm.name,
               None if head_c is None else head_c.cpu(), None if head_rest is None else head_rest.cpu(),
               None if neuron_c is None else neuron_c.cpu(), None if neuron_rest is None else neuron_rest.cpu(),
               frozen)


def _top(values: torch.Tensor, k: int, unit: str):
    """The ``k`` (layer, unit) cells of ``values [batch, layer, unit]`` with the largest |mean|."""
    import pandas as pd

    mean = values.mean(0)
    idx = mean.abs().flatten().topk(min(k, mean.numel())).indices
    width = mean.shape[1]
    return pd.DataFrame({"layer": (idx // width).numpy(), unit: (idx % width).numpy(),
                         "contribution": mean.flatten()[idx].numpy()})
