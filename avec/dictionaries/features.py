"""Reading and editing single features (latents) of a dictionary attached to a model.

Interventions (core interventions at the dictionary's hook points ``<prefix>.latents``, so they
combine with everything else and are removed with the run):

    ablate(prefix, i)          latent(s) i set to 0         (the error term is kept: nothing else changes)
    clamp(prefix, i, value)    latent(s) i set to ``value``
    steer(prefix, i, coeff)    latent(s) i += coeff          == adding coeff * decoder row i at ``<at>``
    steer(sae, i, coeff)       coeff * decoder row i added at the SAE's hook point (no dictionary attached)

``prefix`` is ``<at>.<name>`` (``"blocks.6.resid_post.sae"``) or the ``AttachedDictionary`` that
``lm.add_dictionary`` returned; ``i`` is one index or a list; ``positions=`` as for every intervention.
A feature index outside ``0..d_sae-1`` is refused before the run.

Reading:

    logit_effects(lm, sae, i)       decoder row i through the final norm's gain and the unembedding
    filter_features(lm, sae, at, positive, negative)   features on in every positive prompt and no negative one
    top_examples(lm, sae, at, texts, ids)    max-activating tokens with context, histograms, density
    feature_activations(lm, sae, at, texts, position=-1)   [n, d_sae] latents at one position (for probes)

Functions that take ``(sae, at)`` attach the dictionary for their runs only (or use the one already
attached at ``at``); ``sae`` may also be an ``AttachedDictionary``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from ..core.dictionary import AttachedDictionary, dims
from ..core.hookpoints import Site
from ..core.interventions import AddVector, Apply, _as_coeff
from ..core.positions import ALL
from ..results import Result

__all__ = [
    "FeatureEdit", "ablate", "clamp", "steer", "decoder_direction", "LogitEffects", "logit_effects",
    "FeatureFilter", "filter_features", "Example", "FeatureExamples", "TopExamples", "top_examples",
    "feature_activations",
]


# ----------------------------------------------------------------------------- indices
def _feature_ids(i: Any, d_sae: int | None = None, what: str = "feature") -> tuple[int, ...]:
    """One index or a list of them -> a tuple of ints, checked against ``0..d_sae-1`` when known."""
    if isinstance(i, torch.Tensor):
        i = i.tolist()
    items = list(i) if isinstance(i, (list, tuple, range, set, frozenset, np.ndarray)) else [i]
    if not items:
        raise ValueError(f"no {what} index given; give an int or a list of ints")
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"a {what} index is an int, got {v!r}")
        out.append(int(v))
    if d_sae is not None:
        bad = [v for v in out if not 0 <= v < d_sae]
        if bad:
            raise ValueError(f"{what} index {bad[0] if len(bad) == 1 else bad[:8]} is out of range: the dictionary "
                             f"has d_sae={d_sae} latents, indices 0..{d_sae - 1}")
    return tuple(out)


def _prefix(which: Any) -> tuple[str, int | None]:
    """(prefix, d_sae or None) of a prefix string or an AttachedDictionary."""
    if isinstance(which, AttachedDictionary):
        return which.prefix, dims(which.module)[1]
    if isinstance(which, str):
        p = which[: -len(".latents")] if which.endswith(".latents") else which
        return p, None
    raise TypeError(f"give a dictionary's prefix '<at>.<name>' (e.g. 'blocks.6.resid_post.sae') or the "
                    f"AttachedDictionary from lm.add_dictionary, got {type(which).__name__}")


@dataclass(frozen=True)
class FeatureEdit(Apply):
    """``Apply`` at a dictionary's ``latents`` point that edits only the latents in ``features``; its
    ``check`` refuses other hook points and indices outside the dictionary's width."""

    features: tuple[int, ...] = ()

    def check(self, site: Site, model: Any) -> None:
        if getattr(site, "part", None) != "latents":
            raise ValueError(f"feature edits apply at a dictionary's latents point ('<at>.<name>.latents'), "
                             f"not {site.name!r}")
        _feature_ids(self.features, site.width[0])


def _mask_fn(features: tuple[int, ...], value: float | None):
    def fn(v: torch.Tensor, ctx) -> torch.Tensor:
        idx = torch.tensor(features, device=v.device)
        return v.index_fill(-1, idx, 0.0 if value is None else value)
    return fn


def ablate(prefix: Any, i: Any, positions: Any = ALL) -> FeatureEdit:
    """Set latent(s) ``i`` to 0 at ``<prefix>.latents`` (error term kept)."""
    p, d = _prefix(prefix)
    ids = _feature_ids(i, d)
    return FeatureEdit(f"{p}.latents", fn=_mask_fn(ids, None), features=ids, positions=positions)


def clamp(prefix: Any, i: Any, value: float, positions: Any = ALL) -> FeatureEdit:
    """Set latent(s) ``i`` to ``value`` at ``<prefix>.latents``."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"clamp value must be a finite number, got {value!r}")
    p, d = _prefix(prefix)
    ids = _feature_ids(i, d)
    return FeatureEdit(f"{p}.latents", fn=_mask_fn(ids, float(value)), features=ids, positions=positions)


def decoder_direction(sae: Any, i: int) -> torch.Tensor:
    """``decode(e_i) - decode(0)`` ``[d_in]``: what one unit of latent i adds to the reconstruction
    (the decoder row, in the raw activation space, for any dictionary with a linear decoder)."""
    d_in, d_sae = dims(sae)
    (i,) = _feature_ids(i, d_sae)
    ref = next((p for p in getattr(sae, "parameters", lambda: iter(()))()), None)
    kw = dict(dtype=ref.dtype, device=ref.device) if ref is not None else {}
    z = torch.zeros(2, d_sae, **kw)
    z[1, i] = 1.0
    with torch.no_grad():
        out = sae.decode(z)
    return (out[1] - out[0]).detach()


def steer(target: Any, i: Any, coeff: float | torch.Tensor, positions: Any = ALL, *, at: str | None = None):
    """Add ``coeff`` along latent(s) ``i``.

    target: a prefix / ``AttachedDictionary`` -> a ``FeatureEdit`` at ``<prefix>.latents`` adding
            ``coeff`` to those latents (through the decoder: ``coeff * decoder row i`` added at the hook
            point, the error term kept), or a dictionary module -> ``AddVector`` of
            ``coeff * decoder_direction(sae, i)`` at ``at`` (default: ``sae.cfg.hook``), nothing attached.
    coeff:  a number or one per batch row ``[batch]``.
    """
    c = _as_coeff(coeff)
    if isinstance(target, (str, AttachedDictionary)):
        p, d = _prefix(target)
        ids = _feature_ids(i, d)

        def fn(v: torch.Tensor, ctx) -> torch.Tensor:
            add = torch.zeros(v.shape[-1], dtype=v.dtype, device=v.device)
            add[list(ids)] = 1.0
            if isinstance(c, torch.Tensor):
                if c.shape[0] != v.shape[0]:
                    raise ValueError(f"{c.shape[0]} coefficients (one per batch row) but the batch has {v.shape[0]} rows")
                return v + c.to(v).reshape((-1,) + (1,) * (v.dim() - 1)) * add
            return v + c * add

        return FeatureEdit(f"{p}.latents", fn=fn, features=ids, positions=positions)
    d_in, d_sae = dims(target)
    ids = _feature_ids(i, d_sae)
    # a transcoder's decoder writes where it writes, not where it reads
    hook = at or getattr(target, "writes", None) or getattr(getattr(target, "cfg", None), "hook", None)
    if not isinstance(hook, str) or not hook:
        raise ValueError("steering with a dictionary module needs its hook point: pass at='blocks.L.resid_post' "
                         "(the SAE's config names none)")
    vec = sum(decoder_direction(target, j) for j in ids)
    return AddVector(hook, vector=vec.float(), coeff=coeff, positions=positions)


# ----------------------------------------------------------------------------- attaching for a read
@contextmanager
def _attached(lm: Any, sae: Any, at: str | None) -> Iterator[AttachedDictionary]:
    """The dictionary attached at ``at`` for the block: ``sae`` itself if it is an AttachedDictionary,
    the one already attached there, or ``sae`` attached now (removed on exit)."""
    if isinstance(sae, AttachedDictionary):
        yield sae
        return
    if at is None:
        at = getattr(sae, "reads", None) or getattr(getattr(sae, "cfg", None), "hook", None)
        if not isinstance(at, str) or not at:
            raise ValueError("give at='<hook point>' (the SAE's config names none)")
    parent = lm.site(at).name
    for d in lm.dictionaries:
        if d.at == parent and d.module is sae:
            yield d
            return
    taken = {d.name for d in lm.dictionaries if d.at == parent}
    name = next(n for n in ("sae", "features", "features2", "features3", "f") if n not in taken)
    with lm.dictionary(sae, parent, name=name) as d:
        yield d


def _batches(inputs: Any, batch_size: int):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}; it must be a positive int")
    if isinstance(inputs, str):
        inputs = [inputs]
    if isinstance(inputs, torch.Tensor):
        if inputs.dim() != 2 or inputs.shape[0] == 0:
            raise ValueError(f"token ids are [n, pos] with n >= 1, got {list(inputs.shape)}")
        for s in range(0, inputs.shape[0], batch_size):
            yield s, inputs[s:s + batch_size]
        return
    inputs = list(inputs)
    if not inputs:
        raise ValueError("no texts given")
    for s in range(0, len(inputs), batch_size):
        yield s, inputs[s:s + batch_size]


def _n_inputs(inputs: Any) -> int:
    if isinstance(inputs, str):
        return 1
    return inputs.shape[0] if isinstance(inputs, torch.Tensor) else len(list(inputs))


def _skipped_ids(lm: Any, skip_tokens: Any) -> torch.Tensor:
    """``[m]`` token ids left out of reading: ``"special"`` -> the tokenizer's special tokens (BOS, EOS,
    pad, ...: where models such as SmolLM2 put a huge attention-sink activation that no SAE is trained
    on, so it would top every feature's examples); an iterable of ids; None or () -> none."""
    if skip_tokens is None:
        return torch.zeros(0, dtype=torch.long)
    if isinstance(skip_tokens, str):
        if skip_tokens != "special":
            raise ValueError(f"skip_tokens={skip_tokens!r}; allowed: 'special', token ids, or None")
        tok = lm.tokenizer
        ids = {getattr(tok, n, None) for n in ("bos_token_id", "eos_token_id", "pad_token_id")}
        ids.update(getattr(tok, "all_special_ids", None) or ())
        return torch.tensor(sorted(i for i in ids if isinstance(i, int)), dtype=torch.long)
    try:
        return torch.tensor([int(i) for i in skip_tokens], dtype=torch.long)
    except (TypeError, ValueError):
        raise ValueError(f"skip_tokens={skip_tokens!r}; allowed: 'special', token ids, or None") from None


def _read_mask(run: Any, skip: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` bool: real tokens (attention mask) whose id is not in ``skip``."""
    toks = run.tokens.cpu()
    mask = run.attention_mask.cpu().bool() if run.attention_mask is not None else torch.ones(toks.shape, dtype=torch.bool)
    return mask & ~torch.isin(toks, skip) if skip.numel() else mask


def _token_strings(lm: Any, ids: Sequence[int]) -> list[str]:
    tok = getattr(lm, "tokenizer", None)
    if tok is None:
        return [f"<{int(i)}>" for i in ids]
    return [tok.decode([int(i)]) for i in ids]


# ----------------------------------------------------------------------------- logit effects
@dataclass(frozen=True)
class LogitEffects(Result):
    """Direct effect of one feature's decoder direction on the logits.

    values: ``[vocab]`` ``(gain * center?(W_dec[i])) @ W_U`` (see ``logit_effects``)
    top / bottom: ``k`` (token id, token string, value) with the largest / smallest values
    """

    feature: int
    values: torch.Tensor
    top: tuple[tuple[int, str, float], ...]
    bottom: tuple[tuple[int, str, float], ...]
    norm: str

    def to_frame(self):
        import pandas as pd

        rows = [dict(feature=self.feature, side=side, rank=r, token_id=t, token=s, value=v)
                for side, items in (("top", self.top), ("bottom", self.bottom)) for r, (t, s, v) in enumerate(items)]
        return pd.DataFrame(rows)

    def to_dict(self) -> dict:
        return {"feature": self.feature, "norm": self.norm,
                "top": [list(x) for x in self.top], "bottom": [list(x) for x in self.bottom]}

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 0.25 * (len(self.top) + len(self.bottom)) + 1))
        items = list(self.top) + list(reversed(self.bottom))
        ax.barh(range(len(items)), [v for _, _, v in items], color=["#2a7" if v >= 0 else "#c33" for _, _, v in items])
        ax.set_yticks(range(len(items)), [repr(s) for _, s, _ in items], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("logit effect")
        ax.set_title(f"feature {self.feature}: decoder row through the unembedding")
        return fig


def logit_effects(lm: Any, sae: Any, i: int, k: int = 10) -> LogitEffects:
    """Top and bottom ``k`` tokens of feature ``i``'s decoder direction read through the final norm and
    the unembedding: ``values = (gain * center(d)) @ W_U`` with ``d = decoder_direction(sae, i)``.

    The final norm is treated as is conventional for logit effects: its gain (Gemma: 1 + weight) is
    applied and, for LayerNorm, the centring; the per-token scale 1/s(x) is ignored (it depends on the
    whole residual, and only rescales every token's value alike) and so is its bias (the same for
    every feature). The dictionary must read a residual-width point (d_in == d_model).
    """
    from ..core.norms import ElementwiseNorm

    module = sae.module if isinstance(sae, AttachedDictionary) else sae
    d_in, d_sae = dims(module)
    if d_in != lm.d_model:
        raise ValueError(f"the dictionary has d_in={d_in} but the residual stream has d_model={lm.d_model}; logit "
                         "effects read a decoder direction in the residual stream (a resid / attn_out / mlp_out SAE)")
    (i,) = _feature_ids(i, d_sae)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; it must be a positive int")
    norm = ElementwiseNorm(lm.get_module(lm.arch.final_norm))
    with torch.no_grad():
        d = decoder_direction(module, i).float()
        if norm.center:
            d = d - d.mean()
        d = d * norm.gain.detach().to(d.device)
        values = (d @ lm.W_U.detach().float().to(d.device)).cpu()
    k = min(k, values.shape[0])
    top_v, top_i = values.topk(k)
    bot_v, bot_i = (-values).topk(k)
    strings = lambda ids: _token_strings(lm, ids)  # noqa: E731
    top = tuple(zip(top_i.tolist(), strings(top_i.tolist()), top_v.tolist()))
    bottom = tuple(zip(bot_i.tolist(), strings(bot_i.tolist()), (-bot_v).tolist()))
    return LogitEffects(i, values, top, bottom, f"{norm.name}: gain{' and centring' if norm.center else ''}; scale ignored")


# ----------------------------------------------------------------------------- filtering
@dataclass(frozen=True)
class FeatureFilter(Result):
    """Features active (max over a prompt's tokens > ``threshold``) on every positive prompt and on no
    negative one.

    features: the selected feature ids, strongest first (by their smallest max over the positive prompts)
    positive_max: ``[n_pos, d_sae]`` each feature's max over each positive prompt's tokens
    negative_max: ``[n_neg, d_sae]`` the same over the negative prompts
    """

    features: tuple[int, ...]
    positive_max: torch.Tensor
    negative_max: torch.Tensor
    threshold: float

    def to_frame(self):
        import pandas as pd

        rows = [dict(feature=f, min_positive=float(self.positive_max[:, f].min()),
                     mean_positive=float(self.positive_max[:, f].mean()),
                     max_negative=float(self.negative_max[:, f].max()) if self.negative_max.shape[0] else 0.0)
                for f in self.features]
        return pd.DataFrame(rows, columns=["feature", "min_positive", "mean_positive", "max_negative"])

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "features": list(self.features),
                "table": self.to_frame().to_dict(orient="records")}

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 3))
        lo = self.positive_max.min(0).values.numpy()
        hi = (self.negative_max.max(0).values.numpy() if self.negative_max.shape[0] else np.zeros_like(lo))
        ax.scatter(hi, lo, s=6, color="#999", label="all features")
        sel = list(self.features)
        ax.scatter(hi[sel], lo[sel], s=14, color="#c33", label="selected")
        ax.axhline(self.threshold, lw=0.5, color="k")
        ax.axvline(self.threshold, lw=0.5, color="k")
        ax.set_xlabel("max over negative prompts")
        ax.set_ylabel("min over positive prompts")
        ax.legend(fontsize=7)
        return fig


def _prompt_max(lm: Any, d: AttachedDictionary, prompts: Any, batch_size: int, skip: torch.Tensor) -> torch.Tensor:
    """``[n, d_sae]`` each latent's max over each prompt's real tokens (those in ``skip`` left out)."""
    out = []
    point = d.point("latents")
    for start, batch in _batches(prompts, batch_size):
        run = lm.run(batch, cache=[point])
        lat = run.cache[point].float().cpu()
        mask = _read_mask(run, skip)
        empty = (~mask.any(1)).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"prompt {start + empty[0]} has no token left to read once skip_tokens are left out")
        out.append(lat.masked_fill(~mask[..., None], float("-inf")).max(1).values)
    return torch.cat(out)


def filter_features(lm: Any, sae: Any, at: str | None, positive_prompts: Any, negative_prompts: Any = (),
                    threshold: float = 0.0, *, batch_size: int = 8, skip_tokens: Any = "special") -> FeatureFilter:
    """Features whose max activation over the tokens of every positive prompt is ``> threshold`` and over
    the tokens of every negative prompt is ``<= threshold``. ``skip_tokens``: tokens not read (default
    the tokenizer's special tokens; see ``top_examples``)."""
    if _n_inputs(positive_prompts) == 0:
        raise ValueError("no positive prompts given")
    skip = _skipped_ids(lm, skip_tokens)
    with _attached(lm, sae, at) as d:
        pos = _prompt_max(lm, d, positive_prompts, batch_size, skip)
        neg = (_prompt_max(lm, d, negative_prompts, batch_size, skip) if _n_inputs(negative_prompts)
               else torch.zeros(0, pos.shape[1]))
    keep = (pos > threshold).all(0)
    if neg.shape[0]:
        keep &= ~(neg > threshold).any(0)
    ids = keep.nonzero().flatten()
    order = pos.min(0).values[ids].argsort(descending=True)
    return FeatureFilter(tuple(ids[order].tolist()), pos, neg, float(threshold))


# ----------------------------------------------------------------------------- top examples
@dataclass(frozen=True)
class Example:
    """One max-activating token: ``text`` index, ``position`` in it, its ``value``, and the window of
    ``tokens`` around it with the feature's activation on each (``center`` = index of the token)."""

    text: int
    position: int
    value: float
    tokens: tuple[str, ...]
    acts: tuple[float, ...]
    center: int

    def to_dict(self) -> dict:
        return {"text": self.text, "position": self.position, "value": self.value, "tokens": list(self.tokens),
                "acts": list(self.acts), "center": self.center}


@dataclass(frozen=True)
class FeatureExamples:
    """One feature over a corpus: its top ``examples``, a histogram of its non-zero activations
    (``hist_counts`` [bins], ``hist_edges`` [bins + 1]), ``n_active`` of ``n_tokens`` tokens (density)."""

    feature: int
    examples: tuple[Example, ...]
    hist_counts: tuple[int, ...]
    hist_edges: tuple[float, ...]
    n_active: int
    n_tokens: int
    max_value: float

    @property
    def density(self) -> float:
        return self.n_active / self.n_tokens if self.n_tokens else 0.0

    def to_dict(self) -> dict:
        return {"feature": self.feature, "density": self.density, "n_active": self.n_active,
                "n_tokens": self.n_tokens, "max": self.max_value, "hist_counts": list(self.hist_counts),
                "hist_edges": list(self.hist_edges), "examples": [e.to_dict() for e in self.examples]}


@dataclass(frozen=True)
class TopExamples(Result):
    """``top_examples``: one ``FeatureExamples`` per requested feature (``features[f]``)."""

    features: dict[int, FeatureExamples]
    at: str
    n_texts: int

    def __getitem__(self, i: int) -> FeatureExamples:
        if i not in self.features:
            raise KeyError(f"feature {i} was not collected; collected: {sorted(self.features)[:20]}")
        return self.features[i]

    def to_frame(self):
        import pandas as pd

        rows = []
        for f, fe in self.features.items():
            for r, e in enumerate(fe.examples):
                rows.append(dict(feature=f, rank=r, value=e.value, text=e.text, position=e.position,
                                 token=e.tokens[e.center], context="".join(e.tokens), density=fe.density))
        return pd.DataFrame(rows, columns=["feature", "rank", "value", "text", "position", "token", "context",
                                           "density"])

    def to_dict(self) -> dict:
        return {"at": self.at, "n_texts": self.n_texts,
                "features": {str(f): fe.to_dict() for f, fe in self.features.items()}}

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        feats = list(self.features.values())
        if ax is not None:
            axes, fig = [ax] * len(feats), ax.figure
        else:
            n = len(feats)
            cols = min(n, 4)
            fig, grid = plt.subplots((n + cols - 1) // cols, cols, figsize=(3 * cols, 2.2 * ((n + cols - 1) // cols)),
                                     squeeze=False)
            axes = list(grid.flat)
            for a in axes[n:]:
                a.axis("off")
        for a, fe in zip(axes, feats):
            edges = np.asarray(fe.hist_edges)
            if len(edges) > 1:
                a.bar(edges[:-1], fe.hist_counts, width=np.diff(edges), align="edge", color="#c33")
            a.set_title(f"feature {fe.feature} (density {fe.density:.2%})", fontsize=8)
            a.set_xlabel("activation", fontsize=7)
        fig.tight_layout()
        return fig


def top_examples(lm: Any, sae: Any, at: str | None, texts: Any, feature_ids: Any, k: int = 10,
                 context: tuple[int, int] | int = (8, 4), *, batch_size: int = 8, bins: int = 30,
                 skip_tokens: Any = "special") -> TopExamples:
    """The ``k`` tokens of ``texts`` (strings, or token ids ``[n, pos]``) on which each feature in
    ``feature_ids`` is largest, each with ``context`` = (tokens before, tokens after) around it and the
    feature's activation on every token of that window; plus a histogram of the non-zero activations
    (``bins`` bins) and the density (fraction of read tokens with activation > 0). Runs ``lm.run`` in
    batches of ``batch_size`` with the dictionary attached; only positive activations are examples (ties:
    the earlier text and position first). (``latents.collect_latents`` keeps every feature's latents
    for many such readings from one pass.)

    skip_tokens: tokens never read (not examples, not in the histogram or density; still shown as
    context): "special" (default: the tokenizer's BOS / EOS / pad / special tokens, which the activation
    store drops in training too), token ids, or None to read every token."""
    before, after = (context, context) if isinstance(context, int) else tuple(context)
    if any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in (before, after)):
        raise ValueError(f"context={context!r}; give tokens (before, after) as two ints >= 0, or one int")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; it must be a positive int")
    from .latents import collect_latents  # the one reading of examples: collected sparse, then read

    with _attached(lm, sae, at) as d:
        ids = _feature_ids(feature_ids, dims(d.module)[1])
        index = collect_latents(lm, d, None, texts, features=ids, batch_size=batch_size, skip_tokens=skip_tokens)
    return index.examples(ids, k=k, context=(before, after), bins=bins)


# ----------------------------------------------------------------------------- for probes
def feature_activations(lm: Any, sae: Any, at: str | None, texts: Any, position: int = -1, *,
                        batch_size: int = 16) -> torch.Tensor:
    """``[n, d_sae]`` the dictionary's latents at ``position`` (prompt-relative, e.g. -1: each prompt's last
    real token) of each text, gathered from ``lm.run(..., positions=position)`` with the dictionary
    attached. Feed it to ``avec.probes.fit_probes(acts, labels)`` for a probe over features."""
    out = []
    with _attached(lm, sae, at) as d:
        point = d.point("latents")
        for _, batch in _batches(texts, batch_size):
            run = lm.run(batch, cache=[point], positions=position)
            out.append(run.cache[point][:, 0].float().cpu())
    return torch.cat(out)
