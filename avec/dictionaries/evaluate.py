"""How good is an SAE: reconstruction, sparsity, and (with a model) what splicing it in costs.

Definitions (over all evaluated tokens; sums accumulated in float64, batch by batch):

    mse            E ||x - x_hat||^2 / d_in                 (mean over tokens and dimensions)
    fvu            E ||x - x_hat||^2 / E ||x - E x||^2       (fraction of variance unexplained)
    l0             E #{i : z_i != 0}                         (active latents per token)
    density_i      fraction of tokens on which latent i fires (z_i != 0); log10 of it is histogrammed
    dead_fraction  fraction of latents with density 0 on these tokens
    dense_fraction fraction of latents with density > dense_threshold (default 0.1: firing on > 10% of tokens)
    cosine         E cos(x, x_hat);  norm_ratio  E ||x_hat|| / ||x||   (per token, then averaged)

With a model (``lm`` and ``tokens`` [batch, pos] ids), next-token cross-entropy per token (positions
0 .. pos-2 predict tokens 1 .. pos-1) of three runs:

    ce_clean         the model as is
    ce_spliced       the SAE's reconstruction in place of the hook point (``lm.dictionary(sae, at,
                     splice="recon")``)
    ce_zero_ablation the hook point set to 0 (``Zero(at)``)
    ce_loss_recovered = (ce_zero_ablation - ce_spliced) / (ce_zero_ablation - ce_clean)
    delta_lm_loss     = ce_spliced - ce_clean
    kl                = E KL(p_clean || p_spliced) of the next-token distributions, at every position

``keep_tokens`` (token ids, e.g. the BOS / EOS an activation store drops): at the positions holding
them neither the splice nor the zero ablation applies, the model keeps its own value there (as
SAELens' ``exclude_special_tokens``). A dictionary trained without those tokens never saw their
activations, which are outliers (the first token's residual is often 100x the norm of the others: the
attention sink); reconstructing them badly would break every later position.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F

from ..results import Result

DENSE_THRESHOLD = 0.1


class ReconstructionStats:
    """Streaming float64 accumulator of the reconstruction / sparsity metrics (module docstring).

    ``update(x [n, d_in], x_hat [n, d_in], latents [n, d_sae])`` per batch; the variance of x is merged
    across batches with Chan et al.'s pairwise formula, so FVU equals the one-shot formula on the
    concatenated batches (no E||x||^2 - ||E x||^2 cancellation).
    """

    def __init__(self, d_in: int, d_sae: int):
        self.d_in, self.d_sae = d_in, d_sae
        self.n = 0
        self.mean = torch.zeros(d_in, dtype=torch.float64)
        self.m2 = torch.zeros(d_in, dtype=torch.float64)   # sum over tokens of (x - mean)^2, per dim
        self.sse = torch.zeros((), dtype=torch.float64)
        self.active = torch.zeros((), dtype=torch.float64)
        self.fires = torch.zeros(d_sae, dtype=torch.int64)
        self.cos_sum = torch.zeros((), dtype=torch.float64)
        self.ratio_sum = torch.zeros((), dtype=torch.float64)

    def update(self, x: torch.Tensor, x_hat: torch.Tensor, latents: torch.Tensor) -> "ReconstructionStats":
        x = x.detach().reshape(-1, self.d_in).double()
        x_hat = x_hat.detach().reshape(-1, self.d_in).double()
        on = latents.detach().reshape(-1, self.d_sae) != 0
        nb = x.shape[0]
        if nb == 0:
            return self
        mb = x.mean(0)
        m2b = (x - mb).pow(2).sum(0)
        total = self.n + nb
        delta = mb - self.mean
        self.m2 += m2b + delta.pow(2) * (self.n * nb / total)
        self.mean += delta * (nb / total)
        self.n = total
        self.sse += (x - x_hat).pow(2).sum()
        self.active += on.sum()
        self.fires += on.sum(0)
        self.cos_sum += F.cosine_similarity(x, x_hat, dim=-1, eps=1e-12).sum()
        self.ratio_sum += (x_hat.norm(dim=-1) / x.norm(dim=-1).clamp_min(1e-12)).sum()
        return self

    def _need_tokens(self):
        if self.n == 0:
            raise ValueError("no tokens were evaluated (empty activation batches)")

    @property
    def mse(self) -> float:
        self._need_tokens()
        return float(self.sse / (self.n * self.d_in))

    @property
    def fvu(self) -> float:
        self._need_tokens()
        return float(self.sse / self.m2.sum().clamp_min(1e-300))

    @property
    def l0(self) -> float:
        self._need_tokens()
        return float(self.active / self.n)

    @property
    def density(self) -> torch.Tensor:
        """Firing frequency per latent [d_sae] (float64)."""
        self._need_tokens()
        return self.fires.double() / self.n


@dataclass(frozen=True)
class SAEEvaluation(Result):
    """Metrics of one SAE (definitions in ``avec.dictionaries.evaluate``); model metrics are None
    when no model was given."""

    n_tokens: int
    mse: float
    fvu: float
    l0: float
    dead_fraction: float
    dense_fraction: float
    dense_threshold: float
    cosine: float
    norm_ratio: float
    density: torch.Tensor              # [d_sae]
    at: str | None = None
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero_ablation: float | None = None
    ce_loss_recovered: float | None = None
    delta_lm_loss: float | None = None
    kl: float | None = None

    @property
    def log10_density(self) -> torch.Tensor:
        """log10 of the density of latents that fired [n_live] (dead latents have none)."""
        d = self.density
        return d[d > 0].log10()

    def metrics(self) -> dict[str, Any]:
        """Every scalar metric by name (the fields but ``density``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "density"}

    def to_dict(self) -> dict[str, Any]:
        """The metrics, and ``density_histogram``: 50 bins of log10 density over the live latents
        (``counts``, ``edges``) and ``n_dead`` (what the plot draws; the full ``[d_sae]`` density is not sent)."""
        import numpy as np

        counts, edges = np.histogram(self.log10_density.numpy(), bins=50)
        hist = {"counts": counts.tolist(), "edges": edges.tolist(), "n_dead": int((self.density == 0).sum())}
        return {"type": "SAEEvaluation", **self.metrics(), "density_histogram": hist}

    def to_frame(self):
        import pandas as pd

        m = self.metrics()
        return pd.DataFrame({"metric": list(m), "value": list(m.values())})

    def plot(self, ax=None):
        """Histogram of log10 latent density (dead latents counted in the title)."""
        return density_plot(self.to_dict(), ax)


def density_plot(d: Mapping, ax=None):
    """The log10-density histogram of an ``SAEEvaluation.to_dict()`` (``SAEEvaluation.plot``)."""
    from ..plotting import log_density_histogram

    h = d["density_histogram"]
    return log_density_histogram(h["counts"], h["edges"], d["dense_threshold"], ax=ax, ylabel="latents",
                                 title=f"latent density over {d['n_tokens']} tokens; {h['n_dead']} dead, "
                                       f"L0 {d['l0']:.3g}, FVU {d['fvu']:.3g}")


# ----------------------------------------------------------------------------- model metrics
def _as_batches(tokens: Any) -> Iterable[torch.Tensor]:
    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens are integer ids [batch, pos], got {tokens.dtype} {tuple(tokens.shape)}")
        return [tokens]
    return tokens


class _LossSums:
    """float64 sums of next-token CE / KL and their token counts."""

    def __init__(self):
        self.ce = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
        self.n_ce = 0
        self.kl, self.n_kl = 0.0, 0

    def add(self, ids: torch.Tensor, clean: torch.Tensor, spliced: torch.Tensor, zero: torch.Tensor) -> None:
        target = ids[:, 1:].reshape(-1)
        for key, logits in (("clean", clean), ("spliced", spliced), ("zero", zero)):
            lp = logits[:, :-1].double().log_softmax(-1).reshape(-1, logits.shape[-1])
            self.ce[key] += float(F.nll_loss(lp, target, reduction="sum"))
        self.n_ce += target.numel()
        lp_c, lp_s = clean.double().log_softmax(-1), spliced.double().log_softmax(-1)
        self.kl += float((lp_c.exp() * (lp_c - lp_s)).sum())
        self.n_kl += lp_c.shape[0] * lp_c.shape[1]


def model_metrics(sums: _LossSums) -> dict[str, float]:
    if sums.n_ce == 0:
        raise ValueError("the token batches need at least 2 positions for next-token losses")
    clean, spliced, zero = (sums.ce[k] / sums.n_ce for k in ("clean", "spliced", "zero"))
    denom = zero - clean
    return {"ce_clean": clean, "ce_spliced": spliced, "ce_zero_ablation": zero,
            "ce_loss_recovered": (zero - spliced) / denom if denom != 0 else float("nan"),
            "delta_lm_loss": spliced - clean, "kl": sums.kl / sums.n_kl}


# ----------------------------------------------------------------------------- entry point
def evaluate(sae: Any, activations: Iterable | None = None, *, lm: Any = None, tokens: Any = None,
             at: str | None = None, dense_threshold: float = DENSE_THRESHOLD,
             keep_tokens: Iterable[int] | None = None) -> SAEEvaluation:
    """Evaluate ``sae`` (anything with encode / decode / d_in / d_sae).

    activations: batches ``[n, d_in]`` (or dicts hook -> tensor, read at ``at``) for the reconstruction
                 metrics; without them, the clean model's activations at ``at`` on ``tokens`` are used
    lm, tokens:  a LanguageModel and token ids ``[batch, pos]`` (a tensor or an iterable of them) for
                 the CE / KL metrics; ``at`` defaults to ``sae.cfg.hook``
    keep_tokens: token ids at whose positions the model keeps its own value in the spliced and
                 zero-ablated runs (module docstring); their activations also stay out of the
                 reconstruction metrics when those come from ``tokens``
    """
    from ..core.dictionary import dims
    from ..core.interventions import Zero

    d_in, d_sae = dims(sae)
    at = at or getattr(getattr(sae, "cfg", None), "hook", None)
    if not 0 < dense_threshold < 1:
        raise ValueError(f"dense_threshold={dense_threshold!r}; allowed: a fraction of tokens in (0, 1)")
    if (lm is None) != (tokens is None):
        raise ValueError("model metrics need both lm and tokens (give both, or neither)")
    if lm is not None and at is None:
        raise ValueError("with a model, say which hook point the SAE reads: at=... (or set sae.cfg.hook)")
    if activations is None and lm is None:
        raise ValueError("nothing to evaluate: give activation batches, or lm and tokens")
    stats = ReconstructionStats(d_in, d_sae)
    was_training = getattr(sae, "training", False)
    if hasattr(sae, "eval"):
        sae.eval()
    try:
        with torch.no_grad():
            if activations is not None:
                for batch in activations:
                    if isinstance(batch, Mapping):
                        if at not in batch:
                            raise KeyError(f"activation batch has no key {at!r} (keys: {sorted(batch)})")
                        batch = batch[at]
                    z = sae.encode(batch)
                    stats.update(batch, sae.decode(z), z)
            sums = None
            if lm is not None:
                sums = _LossSums()
                keep = None if keep_tokens is None else torch.tensor(sorted({int(t) for t in keep_tokens}),
                                                                          dtype=torch.int64)
                for ids in _as_batches(tokens):
                    clean = lm.run(ids, cache=[at])
                    if keep is None:
                        zero = lm.run(ids, interventions=[Zero(at)])
                        with lm.dictionary(sae, at, name="eval", splice="recon"):
                            spliced = lm.run(ids)
                    else:  # the reconstruction where the token is not kept: the error zeroed there
                        edit = ~torch.isin(ids.cpu(), keep.to(ids.dtype)).to(ids.device)
                        some = bool(edit.any())  # (an edit selecting no token is refused)
                        zero = lm.run(ids, interventions=[Zero(at, positions=edit)] if some else [])
                        with lm.dictionary(sae, at, name="eval", splice="error") as d:
                            spliced = lm.run(ids, interventions=[Zero(d.point("error"), positions=edit)] if some else [])
                    sums.add(ids, clean.logits, spliced.logits, zero.logits)
                    if activations is None:
                        x = clean.cache[at]
                        if keep is not None:
                            x = x[edit.to(x.device)]
                        z = sae.encode(x)
                        stats.update(x, sae.decode(z), z)
    finally:
        if was_training:
            sae.train()
    density = stats.density
    return SAEEvaluation(
        n_tokens=stats.n, mse=stats.mse, fvu=stats.fvu, l0=stats.l0,
        dead_fraction=float((density == 0).double().mean()),
        dense_fraction=float((density > dense_threshold).double().mean()), dense_threshold=dense_threshold,
        cosine=float(stats.cos_sum / stats.n), norm_ratio=float(stats.ratio_sum / stats.n),
        density=density, at=at, **(model_metrics(sums) if lm is not None else {}))


# ----------------------------------------------------------------------------- transcoders
@dataclass(frozen=True)
class TranscoderEvaluation(Result):
    """Per-layer metrics of a transcoder or CLT (the definitions above, each layer's target against its
    reconstruction, skip connection included); model metrics with every target spliced at once (the
    replacement model: every MLP output replaced by the reconstruction) are None without a model.

    fvu, mse, l0, dead_fraction, dense_fraction, cosine: one value per layer; density [n_layers, d_sae];
    top1_agreement: fraction of positions where the spliced model's most likely next token is the clean one.
    """

    n_tokens: int
    fvu: list
    mse: list
    l0: list
    dead_fraction: list
    dense_fraction: list
    cosine: list
    density: torch.Tensor | None  # [n_layers, d_sae]; None when made from_dict
    dense_threshold: float
    writes: tuple | None = None
    ce_clean: float | None = None
    ce_spliced: float | None = None
    ce_zero_ablation: float | None = None
    ce_loss_recovered: float | None = None
    delta_lm_loss: float | None = None
    kl: float | None = None
    top1_agreement: float | None = None

    @property
    def mean_fvu(self) -> float:
        return sum(self.fvu) / len(self.fvu)

    def to_dict(self) -> dict[str, Any]:
        """Every field but the ``[n_layers, d_sae]`` density, and ``mean_fvu``."""
        return ({"type": "TranscoderEvaluation"} | {f.name: getattr(self, f.name) for f in fields(self) if f.name != "density"}
                | {"mean_fvu": self.mean_fvu})

    @classmethod
    def from_dict(cls, d: Mapping) -> "TranscoderEvaluation":
        """The metrics back from ``to_dict()``; ``density`` is not in it and comes back as None."""
        known = {f.name for f in fields(cls)} - {"density"}
        writes = d.get("writes")
        return cls(**{k: d[k] for k in known if k in d and k != "writes"}, density=None,
                   writes=None if writes is None else tuple(writes))

    def to_frame(self):
        """One row per layer."""
        import pandas as pd

        return pd.DataFrame({"layer": range(len(self.fvu)), "fvu": self.fvu, "mse": self.mse, "l0": self.l0,
                             "dead_fraction": self.dead_fraction, "dense_fraction": self.dense_fraction,
                             "cosine": self.cosine})

    def plot(self, ax=None):
        """FVU (bars) and L0 (line, right axis) per layer."""
        from ..plotting import pyplot

        plt = pyplot()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(7, 3.2))
        layers = list(range(len(self.fvu)))
        ax.bar(layers, self.fvu, color="#4477aa", label="FVU")
        ax.set_xlabel("layer")
        ax.set_ylabel("fraction of variance unexplained")
        right = ax.twinx()
        right.plot(layers, self.l0, color="#cc6677", marker="o", ms=3, label="L0")
        right.set_ylabel("L0 (active features per token)")
        extra = f", CE loss recovered {self.ce_loss_recovered:.3g}" if self.ce_loss_recovered is not None else ""
        ax.set_title(f"{self.n_tokens} tokens; mean FVU {self.mean_fvu:.3g}{extra}", fontsize=9)
        return fig


def evaluate_transcoder(tc: Any, activations: Iterable | None = None, *, lm: Any = None, tokens: Any = None,
                        dense_threshold: float = DENSE_THRESHOLD,
                        keep_tokens: Iterable[int] | None = None) -> TranscoderEvaluation:
    """Evaluate a ``Transcoder`` / ``CrossLayerTranscoder`` (``avec.dictionaries.transcoder``).

    activations: batches its ``pick`` reads (dicts hook -> [n, d] holding its reads and writes points,
                 or (x, y) pairs); without them, the clean model's activations on ``tokens``
    lm, tokens:  a LanguageModel and token ids ``[batch, pos]`` (a tensor or an iterable of them): CE /
                 KL / top-1 agreement of the model with every target spliced (``splice="recon"`` at its
                 own points, ``tc.cfg.reads`` / ``writes``) against the clean model and against every
                 target zeroed
    keep_tokens: token ids at whose positions the model keeps its own values (as ``evaluate``)
    """
    if not 0 < dense_threshold < 1:
        raise ValueError(f"dense_threshold={dense_threshold!r}; allowed: a fraction of tokens in (0, 1)")
    if (lm is None) != (tokens is None):
        raise ValueError("model metrics need both lm and tokens (give both, or neither)")
    if activations is None and lm is None:
        raise ValueError("nothing to evaluate: give activation batches, or lm and tokens")
    reads, writes = getattr(tc.cfg, "reads", None), getattr(tc.cfg, "writes", None)
    if lm is not None and (reads is None or writes is None):
        raise ValueError("with a model, the transcoder must record the hook points it reads and writes "
                         "(TranscoderConfig reads= / writes=)")
    n = tc.n_layers
    stats = [ReconstructionStats(tc.d_out, tc.d_sae) for _ in range(n)]
    agree = 0

    def add(batch) -> None:
        x, y = tc.pick(batch)
        z, y_hat = tc.reconstruct(x)
        for l in range(n):
            stats[l].update(y[l], y_hat[l], z[l])

    was_training = tc.training
    tc.eval()
    try:
        with torch.no_grad():
            for batch in activations or ():
                add(batch)
            sums = None
            if lm is not None:
                from ..core.interventions import Zero

                sums = _LossSums()
                keep = None if keep_tokens is None else torch.tensor(sorted({int(t) for t in keep_tokens}),
                                                                          dtype=torch.int64)
                for ids in _as_batches(tokens):
                    clean = lm.run(ids, cache=[*reads, *writes] if activations is None else None)
                    if keep is None:
                        zero = lm.run(ids, interventions=[Zero(w) for w in writes])
                        with lm.dictionary(tc, name="eval", splice="recon"):
                            spliced = lm.run(ids)
                        edit = torch.ones_like(ids, dtype=torch.bool)
                    else:
                        edit = ~torch.isin(ids.cpu(), keep.to(ids.dtype)).to(ids.device)
                        some = bool(edit.any())
                        zero = lm.run(ids, interventions=[Zero(w, positions=edit) for w in writes] if some else [])
                        with lm.dictionary(tc, name="eval", splice="error") as d:
                            spliced = lm.run(ids, interventions=[Zero(d.point("error", j), positions=edit)
                                                                 for j in range(len(writes))] if some else [])
                    sums.add(ids, clean.logits, spliced.logits, zero.logits)
                    agree += int((clean.logits.argmax(-1) == spliced.logits.argmax(-1)).sum())
                    if activations is None:
                        m = edit.to(clean.logits.device)
                        add({h: clean.cache[h][m] for h in (*reads, *writes)})
    finally:
        if was_training:
            tc.train()
    density = torch.stack([s.density for s in stats])
    model = {}
    if sums is not None:
        model = model_metrics(sums)
        model["top1_agreement"] = agree / sums.n_kl
    return TranscoderEvaluation(
        n_tokens=stats[0].n, fvu=[s.fvu for s in stats], mse=[s.mse for s in stats], l0=[s.l0 for s in stats],
        dead_fraction=(density == 0).double().mean(1).tolist(),
        dense_fraction=(density > dense_threshold).double().mean(1).tolist(),
        cosine=[float(s.cos_sum / s.n) for s in stats], density=density, dense_threshold=dense_threshold,
        writes=writes, **model)
