"""The injection coefficient scan: sweep a steering vector's coefficient along the batch axis and
decompose its effect on a logit difference into the residual stream's components.

One forward pass: the prompt repeated N times, row i steered with coefficient ``c_i``. At the answer
position (prompt-relative, default -1) the final residual is exactly

    embed + sum_l (attn_out[l] + mlp_out[l]) + injected

where ``injected`` is what the vector itself added to the residual stream there (resid_pre/mid/post
terms; additions at attn_out/mlp_out/embed are inside those components). The final norm is linear
once its scale is fixed: ``norm(x) = g * center(x) / s + b`` with ``s`` the scale computed in *that*
run for that row, so each component's contribution to the metric is ``(g * center(c) / s) . d + ...``,
with ``d`` the logit direction (``W_U[:, X] - W_U[:, Y]``, or any vector in the final norm's output
space) and the norm's bias as one more component. Contributions sum to the total metric exactly
(up to float error, reported as ``max_error`` against the run's own logits).

Optionally attention is split per head: ``z[:, h] @ W_O[h]`` (plus the output projection's bias).
Gemma normalises attention's output before it joins the residual (``attn_out = post_norm(o_proj(z))``);
an RMS norm is not linear, so there the post-norm's scale is frozen at its value in the run (per row),
as direct logit attribution does (``avec.lens.dla``): ``head_h = gain * (z_h @ W_O[h]) / s_post``. The
heads then add up exactly to ``attn_out`` (``info["heads error"]``), and describe the layer linearised
at this run's scale - not what removing a head would do (that would change the scale).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.positions import TokenContext
from ..lens import weights as W
from ..core.norms import ElementwiseNorm
from ..results import Result
from .vector import SteeringVector

_RESID = re.compile(r"^blocks\.\d+\.resid_(pre|mid|post)$")


@dataclass(frozen=True, eq=False)
class ScanResult(Result):
    """coeffs: [N]; contributions: [N, C] (component j's share of the metric at coefficient i);
    total: [N] (sum of contributions); actual: [N] (the metric read from the run's own output);
    clusters: [C] cluster label of each component's profile."""

    coeffs: torch.Tensor
    names: tuple[str, ...]
    contributions: torch.Tensor
    total: torch.Tensor
    actual: torch.Tensor
    clusters: tuple[int, ...]
    metric: str
    max_error: float
    info: dict = field(default_factory=dict)

    def to_frame(self):
        import pandas as pd

        frame = pd.DataFrame(self.contributions.numpy(), columns=list(self.names),
                             index=pd.Index(self.coeffs.numpy().round(4), name="coefficient"))
        frame["total"] = self.total.numpy()
        return frame

    def cluster_frame(self):
        """One row per component: its cluster, its metric at the lowest/zero/highest coefficient and range."""
        import pandas as pd

        c = self.contributions
        zero = int(self.coeffs.abs().argmin())
        return pd.DataFrame({"cluster": list(self.clusters), "at min coeff": c[0].numpy(), "at ~0": c[zero].numpy(),
                             "at max coeff": c[-1].numpy(), "range": (c.max(0).values - c.min(0).values).numpy()},
                            index=pd.Index(list(self.names), name="component")).sort_values("range", ascending=False)

    def top(self, k: int = 8) -> list[str]:
        """The k components whose contribution changes most over the scan."""
        span = self.contributions.max(0).values - self.contributions.min(0).values
        return [self.names[i] for i in span.argsort(descending=True)[:k].tolist()]

    def plot(self, ax=None, k: int = 8):
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        x = self.coeffs.numpy()
        axes[0].plot(x, self.total.numpy(), color="k", lw=2, label="total (sum of components)")
        axes[0].plot(x, self.actual.numpy(), color="tab:orange", ls="--", label="from the run's logits")
        axes[0].set(xlabel="coefficient", ylabel=self.metric, title="metric vs injection coefficient")
        axes[0].axhline(0, color="grey", lw=0.5)
        axes[0].legend(fontsize=8)
        cmap = plt.get_cmap("tab10")
        for name in self.top(k):
            j = self.names.index(name)
            axes[1].plot(x, self.contributions[:, j].numpy(), color=cmap(self.clusters[j] % 10),
                         label=f"{name} (cluster {self.clusters[j]})")
        axes[1].set(xlabel="coefficient", ylabel="contribution", title=f"top {k} components (colour = cluster)")
        axes[1].axhline(0, color="grey", lw=0.5)
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        return fig


def _direction(lm: Any, target: Any) -> tuple[torch.Tensor, str, tuple[int, int] | None]:
    """[d_model] direction in the final norm's output space, a label, and the token pair if any."""
    if isinstance(target, torch.Tensor):
        if target.shape != (lm.d_model,):
            raise ValueError(f"a target vector must have shape [{lm.d_model}], got {list(target.shape)}")
        return target.detach().float().cpu(), "vector . final_norm(x)", None
    if isinstance(target, (tuple, list)) and len(target) == 2:
        x, y = lm.token_id(target[0]), lm.token_id(target[1])
        W_U = lm.W_U.detach().float().cpu()
        label = f"logit({lm.tokenizer.decode([x]) if lm.tokenizer else x!r}) - logit({lm.tokenizer.decode([y]) if lm.tokenizer else y!r})"
        return W_U[:, x] - W_U[:, y], label, (x, y)
    raise TypeError("target must be a pair of tokens (X, Y) for logit(X) - logit(Y), or a [d_model] vector")


def _coeffs(coeffs: Any, n: int, lo: float, hi: float) -> torch.Tensor:
    c = torch.linspace(lo, hi, n) if coeffs is None else torch.as_tensor(coeffs, dtype=torch.float32).reshape(-1)
    if c.numel() == 0:
        raise ValueError("no coefficients to scan")
    if not torch.isfinite(c).all():
        bad = (~torch.isfinite(c)).nonzero().flatten().tolist()[:10]
        raise ValueError(f"coefficients must be finite numbers; entries {bad} are NaN or inf")
    return c


@torch.no_grad()
def _head_parts(lm: Any, layer: int, z: torch.Tensor, attn_out: torch.Tensor) -> dict[str, torch.Tensor]:
    """Layer ``layer``'s attention output split into ``{"L{l}.H{h}": [N, d_model], ...}`` (+ biases) that sum
    to ``attn_out`` [N, d_model]; z: [N, n_heads, d_head]. Through a post-norm (Gemma) its scale is frozen
    at its value in the run: with ``s`` fixed the norm is linear, ``gain * center(x) / s (+ bias)``."""
    W_O = W.W_O(lm, layer).detach().float().cpu()  # [H, d_head, d_model]
    b_O = W.b_O(lm, layer)
    per_head = torch.einsum("nhk,hkd->nhd", z.float(), W_O)  # [N, H, d_model]
    parts = {f"L{layer}.H{h}": per_head[:, h] for h in range(per_head.shape[1])}
    if b_O is not None:
        parts[f"L{layer}.attn.bias"] = b_O.detach().float().cpu().expand(z.shape[0], -1)
    module = W.post_norm(lm, layer, "attn")
    if module is None:
        return parts
    post = ElementwiseNorm(module)
    pre = sum(parts.values())  # o_proj's output, rebuilt from z
    post.check(pre, attn_out)  # the frozen reading must reproduce the module on this run
    scale = post.scale(pre)  # [N, 1]: frozen here
    frozen = {k: post.frozen(v, scale) for k, v in parts.items()}
    if post.bias is not None:
        frozen[f"L{layer}.attn.post_norm.bias"] = post.bias.detach().cpu().expand(z.shape[0], -1)
    return frozen


def coefficient_scan(
    lm: Any,
    prompt: str | Sequence[int] | torch.Tensor,
    vector: SteeringVector,
    target: Any,
    *,
    coeffs: Sequence[float] | torch.Tensor | None = None,
    n: int = 128,
    lo: float = -10.0,
    hi: float = 10.0,
    positions: Any = None,
    position: int = -1,
    heads: bool = False,
    n_clusters: int = 4,
) -> ScanResult:
    """Scan ``vector``'s coefficient in one batched run and decompose ``target``'s metric.

    prompt:    one prompt (a string, or token ids [pos]), repeated once per coefficient
    target:    (X, Y) single-token strings -> logit(X) - logit(Y); or a [d_model] vector
    coeffs:    explicit coefficients [N] (default ``linspace(lo, hi, n)``, n = 128)
    positions: override the vector's positions (default: its own)
    position:  the answer position, prompt-relative (-1 = last prompt token)
    heads:     split each layer's attention into heads (through Gemma's post-norm with its scale frozen)
    """
    c = _coeffs(coeffs, n, lo, hi)
    vector.check(lm)
    N = c.shape[0]
    d, label, pair = _direction(lm, target)
    if isinstance(prompt, str):
        ids, mask = lm.tokenize([prompt])
    else:  # token ids [pos]
        ids = torch.as_tensor(prompt, dtype=torch.long, device=lm.device).reshape(1, -1)
        mask = torch.ones_like(ids)
    T = ids.shape[1]
    pos = position if position >= 0 else T + position
    if not 0 <= pos < T:
        raise ValueError(f"position {position} is outside the prompt ({T} tokens)")
    L = lm.n_layers
    cache = ["embed", "blocks.*.attn_out", "blocks.*.mlp_out", f"blocks.{L - 1}.resid_post", "final_norm"]
    if heads:
        cache.append("blocks.*.attn.z")
    ivs = vector.as_interventions(positions=positions, coeff=c)
    run = lm.run({"input_ids": ids.expand(N, -1), "attention_mask": mask.expand(N, -1)}, cache=cache,
                 interventions=ivs, positions=pos)
    get = lambda h: run.cache[h][:, 0].float().cpu()  # noqa: E731  [N, d]

    # what the vector itself put into the residual stream at the answer position
    ctx = TokenContext.plain(N, T)
    injected = torch.zeros(N, lm.d_model)
    for iv in ivs:
        site = lm.site(iv.hook)
        if not _RESID.match(site.name):
            continue
        sel = iv.selected(ctx, site)  # the columns the hooks edited
        on = torch.ones(N, dtype=torch.bool) if sel is None else sel[:, pos].cpu()
        vec = iv.vector
        if vec.dim() == 2:  # one row per prompt position (row i at position start + i)
            vec = vec[min(max(pos - iv.start, 0), vec.shape[0] - 1)]
        injected += (c * on)[:, None] * vec.float()[None]

    comps: dict[str, torch.Tensor] = {"embed": get("embed")}
    heads_error = 0.0
    for l in range(L):
        if heads:
            parts = _head_parts(lm, l, get(f"blocks.{l}.attn.z"), get(f"blocks.{l}.attn_out"))
            heads_error = max(heads_error, float((sum(parts.values()) - get(f"blocks.{l}.attn_out")).abs().max()))
            comps.update(parts)
        else:
            comps[f"L{l}.attn"] = get(f"blocks.{l}.attn_out")
        comps[f"L{l}.mlp"] = get(f"blocks.{l}.mlp_out")
    comps["injected"] = injected
    final = get(f"blocks.{L - 1}.resid_post")  # [N, d]
    decomposition_error = float((torch.stack(list(comps.values())).sum(0) - final).abs().max())

    norm = ElementwiseNorm(lm.get_module(lm.arch.final_norm))
    norm_error = norm.check(final, get("final_norm"))  # the reading below must reproduce the module
    readout = norm.readout(d, norm.scale(final)).detach()  # [N, d]: the final norm frozen at this run's scale
    names = list(comps)
    contrib = torch.stack([(comps[k].float() * readout).sum(-1) for k in names], dim=1)  # [N, C]
    if norm.bias is not None:
        names.append("final_norm.bias")
        contrib = torch.cat([contrib, (norm.bias.detach().cpu() @ d).expand(N, 1)], dim=1)
    total = contrib.sum(1)
    if pair is not None:
        logits = run.logits[:, pos].float().cpu()
        actual = logits[:, pair[0]] - logits[:, pair[1]]
    else:
        actual = get("final_norm") @ d
    max_error = float((total - actual).abs().max())
    labels = cluster_profiles(contrib, c, n_clusters)
    info = {"prompt": prompt if isinstance(prompt, str) else ids[0].tolist(), "vector": repr(vector), "answer position": pos, "decomposition error": decomposition_error,
            "final norm error": norm_error, "norm": "LayerNorm" if norm.center else "RMSNorm"}
    if heads:
        info["heads error"] = heads_error  # max |sum of a layer's head terms - its attn_out|
        info["frozen post-norm"] = W.post_norm(lm, 0, "attn") is not None
    return ScanResult(c, tuple(names), contrib, total, actual, labels, label, max_error, info)


def cluster_profiles(contrib: torch.Tensor, coeffs: torch.Tensor, n_clusters: int = 4) -> tuple[int, ...]:
    """KMeans over component profiles (each component's contribution across the scan, minus its value
    at the coefficient closest to 0: how it *responds* to the vector)."""
    from sklearn.cluster import KMeans

    C = contrib.shape[1]
    k = max(1, min(n_clusters, C))
    zero = int(coeffs.abs().argmin())
    profiles = (contrib - contrib[zero]).T.double().numpy()  # [C, N]
    import numpy as np

    k = min(k, len(np.unique(profiles.round(9), axis=0)))  # KMeans needs k distinct points
    if C == 1 or k <= 1:
        return tuple([0] * C)
    labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit_predict(profiles)
    return tuple(int(x) for x in labels)
